"""CLI commands for heartbeats, degraded mode and the circuit breaker (registered on ``fsqueue``)."""

from __future__ import annotations

import sys
from typing import Any

import click

from .cli import EXIT_UPSTREAM_STALE, Context, _ago, _errors, _json_out, _table, _when, cli, pass_ctx


@cli.command()
@click.argument("agent")
@click.option("--state", default="ok", show_default=True, help="A short word: ok, running, idle, degraded, ...")
@click.option("--message", default="", help="A short message shown by `fsqueue agents`.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.001),
    default=None,
    help="Seconds until the next beat is due [default: heartbeats.interval, 300].",
)
@click.option(
    "--pid",
    "owner_pid",
    type=int,
    default=None,
    help="The agent's process, for the ALIVE column [default: the calling process, $PPID].",
)
@pass_ctx
def beat(ctx: Context, agent: str, state: str, message: str, interval: float | None, owner_pid: int | None) -> None:
    """Write AGENT's heartbeat (status/AGENT.heartbeat) now."""
    import os

    with _errors(ctx.debug):
        ctx.queue().beat(
            agent,
            state=state,
            message=message,
            interval=interval,
            owner_pid=os.getppid() if owner_pid is None else owner_pid,
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def agents(ctx: Context, as_json: bool) -> None:
    """Every agent that beats: state, last beat, age, verdict (ok / late / down), pid, alive, telemetry."""
    from ._cli_spool import read_telemetry

    with _errors(ctx.debug):
        queue = ctx.queue()
        infos = queue.agents()
        telemetry = read_telemetry(queue.root)
    rollups: dict[str, Any] = telemetry["agents"] if telemetry else {}
    if as_json:
        _json_out([{**i.to_json(), "telemetry": rollups.get(i.agent)} for i in infos])
        return
    alive = {True: "yes", False: "no", None: "?"}
    _table(
        ["agent", "verdict", "state", "last beat", "age", "pid", "alive", "events", "errors", "message"],
        [
            [
                i.agent,
                i.verdict,
                i.state,
                _when(i.at) if i.at else "-",
                _ago(i.age),
                str(i.pid or "-"),
                alive[i.alive],
                str(rollups[i.agent]["total"]) if i.agent in rollups else "-",
                str(rollups[i.agent]["errors"]) if i.agent in rollups else "-",
                i.message[:60],
            ]
            for i in infos
        ],
    )


@cli.command()
@click.argument("agent")
@click.option(
    "--max-age",
    type=click.FloatRange(min=0),
    default=None,
    help="Stale after this many seconds [default: the agent's interval + heartbeats.grace].",
)
@pass_ctx
def check(ctx: Context, agent: str, max_age: float | None) -> None:
    """Exit 0 if AGENT's heartbeat is fresh, 6 if it is stale or missing (prints nothing)."""
    from ._degraded import upstream_fresh
    from ._heartbeat import check_agent_name

    with _errors(ctx.debug):
        queue = ctx.queue()
        check_agent_name(agent)
        fresh, _ = upstream_fresh(queue, agent, max_age, queue.clock.now())
    sys.exit(0 if fresh else EXIT_UPSTREAM_STALE)


@cli.command()
@click.argument("agent")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True, help="How many outputs.")
@pass_ctx
def output(ctx: Context, agent: str, count: int) -> None:
    """Count outputs of AGENT made outside the queue (a post, an email) for the circuit breaker.

    Exits 4 when the pipeline is halted (by this output, which then sent the alert, or before).
    """
    with _errors(ctx.debug):
        queue = ctx.queue()
        halt = queue.record_output(agent, count) or queue.halted()
    if halt is not None:
        # The output happened and is counted; exit 4 tells the agent to stop producing more.
        click.echo(f"fsqueue: pipeline halted {halt.describe()}", err=True)
        sys.exit(4)


@cli.command()
@click.option("--reason", required=True, help="Why (shown by `fsqueue status` and in every refusal).")
@pass_ctx
def halt(ctx: Context, reason: str) -> None:
    """Halt the pipeline by hand: every claim and enqueue exits 4 until `fsqueue resume`."""
    with _errors(ctx.debug):
        queue = ctx.queue()
        if queue.halt(reason) is None:
            current = queue.halted()
            click.echo(f"already halted {current.describe() if current else ''}".rstrip())


@cli.command()
@pass_ctx
def resume(ctx: Context) -> None:
    """Lift the halt (breaker trip or `fsqueue halt`); logged in breaker/log.jsonl."""
    with _errors(ctx.debug):
        lifted = ctx.queue().resume()
    click.echo(f"resumed (was halted {lifted.describe()})" if lifted else "the pipeline was not halted")
