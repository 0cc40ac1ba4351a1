"""The ``fsqueue`` command line: one click group, errors mapped once to documented exit codes.

Exit codes: 0 success; 1 error; 2 usage; 3 nothing to claim; 4 pipeline halted;
5 lease lost (fenced); 6 upstream stale or missing (``fsqueue check``).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click

from ._config import Config, load_config
from ._errors import FsQueueError, InvalidPayload
from ._layout import create_root, default_root
from ._queue import Queue

EXIT_NOTHING_TO_CLAIM = 3
EXIT_UPSTREAM_STALE = 6


class CliError(click.ClickException):
    """An FsQueueError at the CLI boundary: one line on stderr, its own exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        # click declares exit_code a ClassVar; ours varies per error, so set it on the instance.
        setattr(self, "exit_code", exit_code)  # noqa: B010

    def show(self, file: Any = None) -> None:
        click.echo(f"fsqueue: error: {self.format_message()}", err=True)


@dataclass
class Context:
    """What every command needs: where the queue is and how it is configured."""

    root: str
    config_path: str | None
    debug: bool
    _queue: Queue | None = field(default=None, repr=False)

    def config(self) -> Config:
        return load_config(self.config_path) if self.config_path else Config()

    def queue(self) -> Queue:
        if self._queue is None:
            self._queue = Queue(self.root, config=self.config())
        return self._queue


pass_ctx = click.make_pass_decorator(Context)


@contextmanager
def _errors(debug: bool) -> Iterator[None]:
    try:
        yield
    except FsQueueError as exc:
        if debug:
            traceback.print_exc()
        raise CliError(str(exc), exc.exit_code) from exc
    except OSError as exc:
        if debug:
            traceback.print_exc()
        where = f" {exc.filename}" if exc.filename else ""
        raise CliError(f"{exc.strerror or exc}{where}", 1) from exc


def _json_out(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{sign}{seconds / size:.1f}{unit}"
    return f"{sign}{seconds:.0f}s"


def _read_json_arg(value: str | None, what: str) -> Any:
    if value is None:
        return None
    text = sys.stdin.read() if value == "-" else value
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidPayload(f"{what} is not JSON-serializable: nested too deep to parse") from None
    except ValueError as exc:
        raise InvalidPayload(f'{what} is not valid JSON ({exc}); quote it, e.g. \'{{"url": "..."}}\'') from None


#: The two options every fsqueue entry point shares (also used by fsqueue-watchdog).
root_option = click.option(
    "--root",
    envvar="FSQUEUE_ROOT",
    type=click.Path(),
    default=None,
    help=f"Queue directory [env FSQUEUE_ROOT; default {default_root()}].",
)
config_option = click.option(
    "--config",
    "config_path",
    envvar="FSQUEUE_CONFIG",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML settings file [env FSQUEUE_CONFIG].",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@root_option
@config_option
@click.option("--debug", is_flag=True, envvar="FSQUEUE_DEBUG", help="Show tracebacks on errors.")
@click.version_option(package_name="fsqueue")
@click.pass_context
def cli(ctx: click.Context, root: str | None, config_path: str | None, debug: bool) -> None:
    """A task queue whose only state is a directory tree."""
    ctx.obj = Context(root or default_root(), config_path, debug)


@cli.command()
@pass_ctx
def init(ctx: Context) -> None:
    """Create the queue directory (idempotent)."""
    with _errors(ctx.debug):
        ctx.config()
        create_root(ctx.root)


@cli.command()
@click.option("--agent", default="", help="Who enqueues (recorded in the task's history).")
@click.option("--id", "task_id", default=None, help="Explicit task id (default: a time-ordered unique id).")
@click.option("--if-absent", is_flag=True, help="With --id: do nothing if the task already exists.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher is claimed first.")
@click.option("--delay", type=float, default=0, help="Seconds before the task may be claimed.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=None, help="Claims before dead-letter.")
@click.option("--ttl", type=click.FloatRange(min=0.001), default=None, help="Lease TTL in seconds for this task.")
@click.argument("payload", required=False)
@pass_ctx
def enqueue(
    ctx: Context,
    agent: str,
    task_id: str | None,
    if_absent: bool,
    priority: int,
    delay: float,
    max_attempts: int | None,
    ttl: float | None,
    payload: str | None,
) -> None:
    """Add a task; PAYLOAD is JSON, or - to read it from stdin. Prints the id."""
    with _errors(ctx.debug):
        data = _read_json_arg(payload, "payload")
        new_id = ctx.queue().enqueue(
            data,
            id=task_id,
            priority=priority,
            delay=delay,
            max_attempts=max_attempts,
            ttl=ttl,
            agent=agent,
            if_absent=if_absent,
        )
    click.echo(new_id)


@cli.command()
@click.option("--agent", required=True, help="Who claims.")
@click.option("--ttl", type=click.FloatRange(min=0.001), default=None, help="Lease TTL in seconds.")
@click.option(
    "--owner-pid",
    type=int,
    default=None,
    help="Bind the claim to this process (e.g. $$): it is broken at once when that process dies. "
    "Without it the claim is lease-only: renew it with `fsqueue renew` before it expires.",
)
@pass_ctx
def claim(ctx: Context, agent: str, ttl: float | None, owner_pid: int | None) -> None:
    """Claim the next ready task and print it as JSON; exit 3 when none is ready."""
    with _errors(ctx.debug):
        got = ctx.queue().claim(agent, ttl=ttl, owner_pid=owner_pid, lease_only=owner_pid is None)
    if got is None:
        sys.exit(EXIT_NOTHING_TO_CLAIM)
    _json_out(
        {
            "id": got.id,
            "token": got.token,
            "attempt": got.attempt,
            "fence": got.fence,
            "agent": got.agent,
            "payload": got.payload,
            "ttl": got.ttl,
            "expires_at": got.expires_at,
            "max_attempts": got.max_attempts,
        }
    )


@cli.command()
@click.argument("task_id")
@click.option("--token", required=True, help="The claim's token.")
@click.option("--ttl", type=click.FloatRange(min=0.001), default=None, help="New lease length (default: the claim's).")
@pass_ctx
def renew(ctx: Context, task_id: str, token: str, ttl: float | None) -> None:
    """Extend a lease; exit 5 when it is no longer yours."""
    with _errors(ctx.debug):
        ctx.queue().renew(task_id, token, ttl=ttl)


@cli.command()
@click.argument("task_id")
@click.argument("result", required=False)
@click.option("--token", required=True, help="The claim's token.")
@pass_ctx
def complete(ctx: Context, task_id: str, result: str | None, token: str) -> None:
    """Commit RESULT (JSON, or - for stdin); exit 5 when the lease was lost."""
    with _errors(ctx.debug):
        ctx.queue().complete(task_id, token, _read_json_arg(result, "result"))


@cli.command()
@click.argument("task_id")
@click.option("--token", required=True, help="The claim's token.")
@click.option("--error", "error", default="failed", help="What went wrong (kept in the task's history).")
@click.option("--no-retry", is_flag=True, help="Send the task to dead-letter now.")
@pass_ctx
def fail(ctx: Context, task_id: str, token: str, error: str, no_retry: bool) -> None:
    """Record a failed attempt (retried with back-off, or dead-lettered); exit 5 when the lease was lost."""
    with _errors(ctx.debug):
        ctx.queue().fail(task_id, token, error, retry=not no_retry)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--agent", required=True, help="Who claims.")
@click.option("--ttl", type=click.FloatRange(min=0.001), default=None, help="Lease TTL in seconds.")
@click.option("--max-tasks", type=click.IntRange(min=1), default=1, show_default=True, help="Tasks to run.")
@click.option("--timeout", type=click.FloatRange(min=0.001), default=None, help="Kill the command after this.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_ctx
def run(
    ctx: Context, agent: str, ttl: float | None, max_tasks: int, timeout: float | None, command: tuple[str, ...]
) -> None:
    """Claim tasks and run COMMAND for each (payload on stdin); quiet when there is nothing to do."""
    from ._runner import run_tasks

    with _errors(ctx.debug):
        code = run_tasks(ctx.queue(), agent, command, ttl=ttl, max_tasks=max_tasks, timeout=timeout)
    sys.exit(code)


@cli.command()
@click.option("--state", type=click.Choice(["pending", "delayed", "running", "done", "dead"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def tasks(ctx: Context, state: str | None, as_json: bool) -> None:
    """List tasks (all, or one state)."""
    with _errors(ctx.debug):
        queue = ctx.queue()
        infos = queue.tasks(state)  # type: ignore[arg-type]  # click.Choice restricts it to the literals
        now = queue.clock.now()
    if as_json:
        _json_out([{k: v for k, v in i.to_json().items() if k != "history"} for i in infos])
        return
    _table(
        ["id", "state", "prio", "attempts", "age", "agent"],
        [
            [i.id, i.state, str(i.priority), f"{i.attempts}/{i.max_attempts}", _ago(now - i.enqueued_at), i.agent]
            for i in infos
        ],
    )


@cli.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def show(ctx: Context, task_id: str, as_json: bool) -> None:
    """One task in full: state, attempts, history, lease, result."""
    with _errors(ctx.debug):
        info = ctx.queue().task(task_id)
    if as_json:
        _json_out(info.to_json())
        return
    click.echo(
        f"task      {info.id}\nstate     {info.state}\npriority  {info.priority}\n"
        f"attempts  {info.attempts}/{info.max_attempts}\nenqueued  {_when(info.enqueued_at)}"
    )
    if info.state == "delayed":
        click.echo(f"ready at  {_when(info.ready_at)}")
    if info.lock is not None:
        lock = info.lock
        click.echo(
            f"lock      {lock.verdict}: agent {lock.agent}, pid {lock.pid}, host {lock.host}, "
            f"lease left {_ago(lock.lease_left)}"
        )
    click.echo(f"payload   {json.dumps(info.payload)}")
    if info.state == "done":
        click.echo(f"result    {json.dumps(info.result)}")
    if info.reason:
        click.echo(f"reason    {info.reason}")
    for event in info.history:
        error = f"  {event['error'].splitlines()[-1] if event['error'] else ''}"
        click.echo(
            f"  {_when(event['at'])}  {event['event']:<10} attempt {event['attempt']}  {event['agent']}{error}".rstrip()
        )


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def locks(ctx: Context, as_json: bool) -> None:
    """List locks with their owners' state: alive / dead / foreign / expired / lease."""
    with _errors(ctx.debug):
        infos = ctx.queue().locks()
    if as_json:
        _json_out([i.to_json() for i in infos])
        return
    _table(
        ["task", "agent", "pid", "host", "age", "lease left", "owner"],
        [[i.task, i.agent, str(i.pid or "-"), i.host, _ago(i.age), _ago(i.lease_left), i.verdict] for i in infos],
    )


@cli.command()
@click.argument("task_ids", nargs=-1)
@click.option("--dead", is_flag=True, help="Break every lock whose owner is provably dead (or corrupt).")
@click.option("--expired", is_flag=True, help="Break every lock whose lease expired.")
@click.option("--force", is_flag=True, help="With task ids: break even a live owner's lock.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def clear(ctx: Context, task_ids: tuple[str, ...], dead: bool, expired: bool, force: bool, as_json: bool) -> None:
    """Break locks safely; their tasks are retried (or dead-lettered) as failed attempts."""
    if not task_ids and not (dead or expired):
        raise click.UsageError("name task ids, or pass --dead and/or --expired")
    if force and not task_ids:
        raise click.UsageError("--force breaks only the locks you name; give task ids")
    with _errors(ctx.debug):
        broken = ctx.queue().clear(list(task_ids), dead=dead, expired=expired, force=force)
    if as_json:
        _json_out([{"task": t, "outcome": o, "verdict": v} for t, o, v in broken])
        return
    for task_id, outcome, verdict in broken:
        click.echo(f"cleared {task_id}: owner {verdict}, task {outcome}")


@cli.command()
@click.argument("task_id")
@pass_ctx
def requeue(ctx: Context, task_id: str) -> None:
    """Move a dead-lettered task back to pending with a fresh attempt budget."""
    with _errors(ctx.debug):
        ctx.queue().requeue(task_id)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Counts by state, oldest pending age, locks by owner state, telemetry per agent."""
    from ._cli_spool import echo_telemetry, read_telemetry

    with _errors(ctx.debug):
        info = ctx.queue().status()
        telemetry = read_telemetry(info["root"])
    if telemetry is not None:
        info["telemetry"] = telemetry
    if as_json:
        _json_out(info)
        return
    counts = info["tasks"]
    click.echo(f"queue   {info['root']}")
    click.echo("tasks   " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    click.echo(f"oldest pending  {_ago(info['oldest_pending_age'])}")
    locks_line = "  ".join(f"{k} {v}" for k, v in sorted(info["locks"].items())) or "none"
    click.echo(f"locks   {locks_line}")
    halt = info.get("halted")
    if halt:
        who = f" (agent {halt['agent']}, pid {halt['pid']} on {halt['host']})" if halt["agent"] else ""
        click.echo(f"HALTED  {_when(halt['at'])}: {halt['reason']}{who}; `fsqueue resume` to continue")
    if telemetry is not None:
        echo_telemetry(telemetry)


@cli.command(
    name="watchdog", context_settings={"ignore_unknown_options": True, "help_option_names": []}, add_help_option=False
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def watchdog_command(ctx: Context, args: tuple[str, ...]) -> None:
    """Run the watchdog (the same options as fsqueue-watchdog; see `fsqueue watchdog --help`)."""
    from fsqueue_watchdog.cli import watchdog

    prefix = ["--root", ctx.root, *(["--config", ctx.config_path] if ctx.config_path else [])]
    watchdog.main(args=[*prefix, *args], prog_name="fsqueue watchdog")


# Heartbeat and circuit-breaker commands live in their own module; importing it registers them.
from . import _cli_pipeline, _cli_spool, _cli_state  # noqa: E402, F401


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="fsqueue")
