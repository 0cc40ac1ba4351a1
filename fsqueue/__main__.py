"""``python -m fsqueue`` runs the CLI."""

from fsqueue.cli import main

main()
