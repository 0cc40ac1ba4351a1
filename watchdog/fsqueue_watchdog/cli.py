"""``fsqueue-watchdog`` (and ``fsqueue watchdog``): run the sweep as a daemon or once from cron."""

from __future__ import annotations

import sys

import click

from fsqueue import FsQueueError, default_root
from fsqueue.cli import config_option, root_option


@click.command(name="fsqueue-watchdog", context_settings={"help_option_names": ["-h", "--help"]})
@root_option
@config_option
@click.option("--interval", type=click.FloatRange(min=0.01), default=None, help="Seconds between sweeps.")
@click.option("--once", is_flag=True, help="Sweep once and exit (for cron or a systemd timer).")
@click.option("--wait", is_flag=True, help="If another watchdog runs for this root, wait for it to exit.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None, help="Log lines for people or JSON.")
def watchdog(
    root: str | None, config_path: str | None, interval: float | None, once: bool, wait: bool, log_format: str | None
) -> None:
    """Break dead and expired claims, repair crash leftovers, write metrics."""
    from ._daemon import Daemon, hold_singleton

    root = root or default_root()
    try:
        singleton = hold_singleton(root, wait=wait)
        daemon = Daemon(root, config_path=config_path, interval=interval, log_format=log_format)  # type: ignore[arg-type]  # click.Choice gives the literals
    except FsQueueError as exc:
        click.echo(f"fsqueue-watchdog: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    try:
        if not once:
            daemon.install_signal_handlers()
        sys.exit(daemon.run(once=once))
    finally:
        singleton.release()


def main() -> None:
    """Console-script entry point."""
    watchdog(prog_name="fsqueue-watchdog")
