"""CLI commands for shared state: ``fsqueue state get|list|submit|wait`` and ``fsqueue steward``.

Exit codes added here: 7 the update was rejected; 8 the update is still pending when ``--timeout``
ran out (both ``state wait``); 9 another steward already runs on this root (``steward``).
"""

from __future__ import annotations

import json
import sys
import time

import click

from .cli import Context, _errors, _json_out, _read_json_arg, _table, _when, cli, pass_ctx

EXIT_REJECTED = 7
EXIT_PENDING = 8


@cli.group()
def state() -> None:
    """Shared documents: one steward writes them, every agent reads them and submits updates."""


@state.command("get")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The whole snapshot as JSON.")
@pass_ctx
def get(ctx: Context, name: str, as_json: bool) -> None:
    """Print the latest snapshot of document NAME (version 0 and {} if never written)."""
    from ._state import SharedState

    with _errors(ctx.debug):
        snap = SharedState(ctx.root, config=ctx.config()).read(name)
    if as_json:
        _json_out(snap.to_json())
        return
    published = _when(snap.published_at) if snap.published_at else "never"
    click.echo(f"document   {snap.name}\nversion    {snap.version}\npublished  {published}")
    if snap.tickets:
        click.echo(f"tickets    {len(snap.tickets)} decided in this publication, last {snap.last_ticket}")
    click.echo(json.dumps(snap.document, indent=2, sort_keys=True, ensure_ascii=False))


@state.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def list_documents(ctx: Context, as_json: bool) -> None:
    """Every document with its version and publication time."""
    from ._state import SharedState

    with _errors(ctx.debug):
        shared = SharedState(ctx.root, config=ctx.config())
        snaps = [shared.read(name) for name in shared.names()]
    if as_json:
        _json_out([{"name": s.name, "version": s.version, "published_at": s.published_at} for s in snaps])
        return
    _table(
        ["document", "version", "published"],
        [[s.name, str(s.version), _when(s.published_at) if s.published_at else "-"] for s in snaps],
    )


@state.command("submit")
@click.argument("name")
@click.argument("patch")
@click.option(
    "--if-version",
    type=click.IntRange(min=0),
    default=None,
    help="Apply only if the document is at exactly this version then (0: never written); else rejected.",
)
@pass_ctx
def submit(ctx: Context, name: str, patch: str, if_version: int | None) -> None:
    """Queue a JSON merge patch (RFC 7396) for NAME; PATCH is a JSON object, or - for stdin. Prints the ticket."""
    from ._state import SharedState

    with _errors(ctx.debug):
        shared = SharedState(ctx.root, config=ctx.config())
        ticket = shared.submit(name, _read_json_arg(patch, "patch"), if_version=if_version)
    click.echo(ticket)


@state.command("wait")
@click.argument("ticket")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the steward; 0 reports at once.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def wait(ctx: Context, ticket: str, timeout: float, as_json: bool) -> None:
    """Wait for TICKET: exit 0 applied (prints the version), 7 rejected (the reason), 8 still pending."""
    from ._state import SharedState

    with _errors(ctx.debug):
        got = SharedState(ctx.root, config=ctx.config()).wait(ticket, timeout)
    if as_json:
        _json_out(got.to_json())
    else:
        click.echo(got.describe())
    sys.exit({"applied": 0, "rejected": EXIT_REJECTED}.get(got.state, EXIT_PENDING))


@cli.command()
@click.option("--once", is_flag=True, help="Apply what is pending, then exit (for cron).")
@click.option(
    "--interval", type=click.FloatRange(min=0.001), default=1.0, show_default=True, help="Seconds between rounds."
)
@click.option("--wait", "wait_for_lock", is_flag=True, help="If another steward runs, wait for it instead of exit 9.")
@click.option(
    "--history", type=click.IntRange(min=1), default=20, show_default=True, help="Snapshots kept per document."
)
@click.option(
    "--batch", type=click.IntRange(min=1, max=100_000), default=500, show_default=True, help="Updates per round."
)
@click.option(
    "--keep-outcomes",
    type=click.FloatRange(min=1),
    default=86400.0,
    show_default=True,
    help="Seconds an outcome stays readable by `state wait`.",
)
@click.option("--verbose", is_flag=True, help="Log every round that did something.")
@pass_ctx
def steward(
    ctx: Context,
    once: bool,
    interval: float,
    wait_for_lock: bool,
    history: int,
    batch: int,
    keep_outcomes: float,
    verbose: bool,
) -> None:
    """Apply submitted updates in ticket order, one writer per root; exit 9 if another steward runs."""
    from ._steward import StewardSettings, run_steward

    started = time.monotonic()
    with _errors(ctx.debug):
        settings = StewardSettings(history=history, batch=batch, keep_outcomes=keep_outcomes, interval=interval)
        code = run_steward(
            ctx.root, config=ctx.config(), settings=settings, once=once, wait=wait_for_lock, verbose=verbose
        )
    if verbose:
        click.echo(f"fsqueue steward: stopped after {time.monotonic() - started:.1f}s", err=True)
    sys.exit(code)
