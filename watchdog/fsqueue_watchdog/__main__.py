"""``python -m fsqueue_watchdog`` runs the watchdog."""

from fsqueue_watchdog.cli import main

main()
