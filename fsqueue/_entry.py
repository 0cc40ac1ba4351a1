"""The ``fsqueue`` console script: ``fsqueue run`` without click, every other command through it.

A cron line runs ``fsqueue run --agent A -- CMD`` every minute, and most runs find nothing to do.
Importing click costs ~30 ms -- three times a bare interpreter's start-up -- so a ``run`` invocation
written in the plain form below is parsed here with the standard library and handed straight to
``run_tasks``. Anything this parser does not fully understand (help, an unknown or malformed option,
an option after the command that click would also read, a value outside click's range) goes to the
click CLI unchanged, so usage errors and help read exactly as before; only the parsing is shared.

The plain form::

    fsqueue [--root DIR] [--config FILE] [--debug] run --agent A [--ttl S] [--max-tasks N]
            [--timeout S] [--] COMMAND [ARG ...]

Options take their value as the next word or after ``=`` (given twice, the last wins, as in click);
``FSQUEUE_ROOT``, ``FSQUEUE_CONFIG`` and ``FSQUEUE_DEBUG`` are read as click reads them.
"""

from __future__ import annotations

import math
import os
import sys

from ._frozen import frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

_GLOBAL_VALUES = ("--root", "--config")
_RUN_VALUES = ("--agent", "--ttl", "--max-tasks", "--timeout")
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off", ""})


@frozen
class RunArgs:
    """A ``fsqueue run`` invocation, parsed and range-checked as click would."""

    root: str | None
    config_path: str | None
    debug: bool
    agent: str
    ttl: float | None
    max_tasks: int
    timeout: float | None
    command: tuple[str, ...]


def main() -> None:
    """Console-script entry point."""
    args = parse_run(sys.argv[1:], os.environ)
    if args is None:
        from .cli import main as click_main

        click_main()
        return
    sys.exit(run(args))


def parse_run(argv: Sequence[str], env: Mapping[str, str]) -> RunArgs | None:
    """The invocation when it is a plain ``run`` (see the module docstring), else None."""
    values: dict[str, str] = {}
    i = _take_options(argv, 0, _GLOBAL_VALUES, ("--debug",), values)
    if i is None or i >= len(argv) or argv[i] != "run":
        return None
    i = _take_options(argv, i + 1, _RUN_VALUES, (), values)
    if i is None:
        return None
    if i < len(argv) and argv[i] == "--":
        command = tuple(argv[i + 1 :])
    else:
        command = tuple(argv[i:])
        # click reads options anywhere before "--" (and passes unknown ones into COMMAND): leave those to it
        if any(word.startswith("-") for word in command):
            return None
    return _checked(values, command, env)


def _take_options(
    argv: Sequence[str], i: int, with_value: tuple[str, ...], flags: tuple[str, ...], into: dict[str, str]
) -> int | None:
    """Consume ``--name value``/``--name=value``/``--flag`` words from ``i``; None on anything unexpected."""
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        name, eq, value = argv[i].partition("=")
        if name in flags and not eq:
            into[name] = "1"
            i += 1
        elif name in with_value and eq:
            into[name] = value
            i += 1
        elif name in with_value and i + 1 < len(argv):
            into[name] = argv[i + 1]
            i += 2
        else:
            return None  # -h, --help, --version, an unknown option, a missing value: click says it best
    return i


def _checked(values: dict[str, str], command: tuple[str, ...], env: Mapping[str, str]) -> RunArgs | None:
    root = values.get("--root", env.get("FSQUEUE_ROOT") or None)
    config_path = values.get("--config", env.get("FSQUEUE_CONFIG") or None)
    debug_env = env.get("FSQUEUE_DEBUG", "").strip().lower()
    agent = values.get("--agent")
    ttl = _number(values.get("--ttl"), float, 0.001)
    max_tasks = _number(values.get("--max-tasks", "1"), int, 1)
    timeout = _number(values.get("--timeout"), float, 0.001)
    if (
        not command
        or agent is None
        or root == ""
        or ttl is False
        or max_tasks is False
        or max_tasks is None
        or timeout is False
        or debug_env not in _TRUE | _FALSE
        or (config_path is not None and (config_path == "" or os.path.isdir(config_path)))
    ):
        return None
    return RunArgs(
        root=root,
        config_path=config_path,
        debug="--debug" in values or debug_env in _TRUE,
        agent=agent,
        ttl=ttl,
        max_tasks=int(max_tasks),
        timeout=timeout,
        command=command,
    )


def _number(text: str | None, kind: type[int] | type[float], minimum: float) -> float | bool | None:
    """The value, None when absent, False when click would refuse it (not a number, or below ``minimum``)."""
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        return False
    if not math.isfinite(value) or value < minimum:
        return False
    return value


def run(args: RunArgs) -> int:
    """Run as ``fsqueue run`` does, with the CLI's error reporting and exit codes."""
    import traceback

    from ._config import Config, load_config
    from ._errors import FsQueueError
    from ._layout import default_root
    from ._queue import Queue
    from ._runner import run_tasks

    try:
        config = load_config(args.config_path) if args.config_path else Config()
        queue = Queue(args.root or default_root(), config=config)
        return run_tasks(queue, args.agent, args.command, ttl=args.ttl, max_tasks=args.max_tasks, timeout=args.timeout)
    except FsQueueError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"fsqueue: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if args.debug:
            traceback.print_exc()
        where = f" {exc.filename}" if exc.filename else ""
        print(f"fsqueue: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
