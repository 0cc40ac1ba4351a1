"""CLI commands for the telemetry spool: ``fsqueue emit`` and ``fsqueue spool collect|export|status``."""

from __future__ import annotations

import io
import json
import os
import sys
import time

import click

from ._config import SpoolSettings, load_spool_settings
from ._errors import InvalidPayload
from .cli import Context, _ago, _errors, _json_out, _table, _when, cli, pass_ctx

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _settings(ctx: Context) -> SpoolSettings:
    return load_spool_settings(ctx.config_path) if ctx.config_path else SpoolSettings()


def _fields(json_object: str | None, pairs: tuple[str, ...]) -> dict[str, Any]:
    """The event's fields: ``--json`` (an object) first, then each ``--field KEY=VALUE`` (a string)."""
    fields: dict[str, Any] = {}
    if json_object is not None:
        try:
            parsed = json.loads(json_object)
        except RecursionError:
            raise InvalidPayload("--json is nested too deep to parse") from None
        except ValueError as exc:
            raise InvalidPayload(f"--json is not valid JSON ({exc}); quote it, e.g. --json '{{\"n\": 3}}'") from None
        if not isinstance(parsed, dict):
            raise InvalidPayload(f"--json must be a JSON object such as '{{\"n\": 3}}', got {type(parsed).__name__}")
        fields.update(parsed)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidPayload(f"--field {pair!r} is not KEY=VALUE; write e.g. --field url=https://example.org")
        fields[key] = value
    return fields


@cli.command()
@click.argument("agent")
@click.argument("event")
@click.option("--field", "pairs", multiple=True, metavar="KEY=VALUE", help="A string field (repeatable).")
@click.option("--json", "json_object", metavar="OBJECT", help="Fields as one JSON object (numbers, lists, ...).")
@pass_ctx
def emit(ctx: Context, agent: str, event: str, pairs: tuple[str, ...], json_object: str | None) -> None:
    """Append one telemetry event for AGENT to the spool (sealed at once; collected by `spool collect`)."""
    from ._spool import Spool

    with _errors(ctx.debug):
        fields = _fields(json_object, pairs)
        with Spool(ctx.root, settings=_settings(ctx)) as spool:  # sealed on exit: this process ends now
            spool.emit_event(agent, event, fields)


@cli.group(name="spool")
def spool_group() -> None:
    """The telemetry spool: collect sealed segments, export archives, show status and rollups."""


@spool_group.command()
@click.option("--wait", is_flag=True, help="Wait for a running collector instead of returning at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's report as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Also report routine work (lines archived).")
@pass_ctx
def collect(ctx: Context, wait: bool, as_json: bool, verbose: bool) -> None:
    """Archive sealed segments exactly once (one-shot, for cron); quiet unless something was wrong."""
    from ._collect import collect as run_collect

    with _errors(ctx.debug):
        report = run_collect(ctx.root, settings=_settings(ctx), wait=wait)
    if as_json:
        _json_out(report.to_json())
    elif (verbose or report.anomalies()) and (summary := report.summary()):
        click.echo(summary)  # cron mails any output: routine archiving is silent without -v


@spool_group.command()
@click.option("--since", default=None, help="From this time: epoch seconds, ISO date/time (UTC), or an age (2h, 7d).")
@click.option("--until", default=None, help="Before this time (same forms).")
@click.option("--agent", "agents", multiple=True, help="Only this agent (repeatable).")
@click.option("--event", "events", multiple=True, help="Only this event (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@pass_ctx
def export(
    ctx: Context, since: str | None, until: str | None, agents: tuple[str, ...], events: tuple[str, ...], fmt: str
) -> None:
    """Print archived events: JSON lines as archived, or CSV (ts, agent, host, pid, event, fields)."""
    import time

    from ._export import Filter, read_archived, write_csv, write_jsonl

    with _errors(ctx.debug):
        now = time.time()
        flt = Filter(_time(since, now), _time(until, now), agents, events)
        rows = read_archived(ctx.root, flt)
        if fmt == "jsonl":
            write_jsonl(rows, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="", write_through=True)
            try:
                write_csv(rows, out)
            finally:
                out.detach()  # leave sys.stdout's buffer open for click


def _time(value: str | None, now: float) -> float | None:
    from ._export import parse_time

    return None if value is None else parse_time(value, now)


@spool_group.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def spool_status_command(ctx: Context, as_json: bool) -> None:
    """Segments waiting, archives, totals, and per-agent rollups (events, errors, last event)."""
    import time

    from ._collect import read_rollups
    from ._export import spool_status

    with _errors(ctx.debug):
        info = spool_status(ctx.root)
        rollups = read_rollups(ctx.root)
    if as_json:
        _json_out({**info, "rollups": [r.to_json() for r in rollups.values()]})
        return
    totals, waiting = info["totals"], info["segments"]
    click.echo(f"spool      {info['spool']}")
    click.echo("segments   " + "  ".join(f"{k} {v}" for k, v in waiting.items()))
    click.echo(f"archives   {len(info['archives'])} days, {sum(info['archives'].values())} bytes")
    click.echo("totals     " + "  ".join(f"{k} {v}" for k, v in totals.items()))
    collected = info["collected_at"]
    click.echo(
        f"collected  {_when(collected) + ' (' + _ago(time.time() - collected) + ' ago)' if collected else 'never'}"
    )
    if rollups:
        now = time.time()
        _table(
            ["agent", "events", "errors", "last event", "age", "top events"],
            [
                [
                    r.agent,
                    str(r.total),
                    str(r.errors),
                    r.last_event,
                    _ago(now - r.last_at),
                    ", ".join(f"{k} {v}" for k, v in sorted(r.events.items(), key=lambda kv: -kv[1])[:3]),
                ]
                for r in rollups.values()
            ],
        )


def read_telemetry(root: str) -> dict[str, Any] | None:
    """Per-agent rollups of collected telemetry and the segments waiting; None when nothing was emitted."""
    if not os.path.isdir(os.path.join(root, "spool")):
        return None
    from ._collect import read_rollups
    from ._export import spool_status

    spool = spool_status(root)
    return {
        "waiting": spool["segments"],
        "collected_at": spool["collected_at"],
        "agents": {name: rollup.to_json() for name, rollup in sorted(read_rollups(root).items())},
    }


def echo_telemetry(telemetry: dict[str, Any]) -> None:
    waiting = telemetry["waiting"]
    collected = telemetry["collected_at"]
    click.echo(
        f"telemetry  collected {_when(collected) if collected else 'never'}; "
        f"segments open {waiting['open']}, sealed {waiting['ready']}"
    )
    rows = [
        [
            name,
            str(r["total"]),
            str(r["errors"]),
            f"{r['last_event']} {_ago(time.time() - r['last_at'])} ago",
            f"{r['last_error'][:40]} {_ago(time.time() - r['last_error_at'])} ago" if r["last_error_at"] else "-",
        ]
        for name, r in telemetry["agents"].items()
    ]
    if rows:
        _table(["agent", "events", "errors", "last event", "last error"], rows)
