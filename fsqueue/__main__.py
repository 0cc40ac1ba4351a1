"""``python -m fsqueue`` runs the CLI."""

from fsqueue._entry import main

main()
