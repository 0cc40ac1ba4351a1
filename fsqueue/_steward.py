"""The steward: the one writer of shared state (P10), one per root, as a daemon, from cron or a watchdog.

Agents never write a shared document. They submit merge patches (``_state.submit``); the steward
applies them in ticket order, exactly once, and publishes each document as a complete snapshot
(``_rounds.Steward``, where every crash point is named). Exactly one steward runs per root: it holds
``state/steward.lock`` with filelock -- a flock, which the kernel releases when the holder dies, so a
killed steward never blocks its successor. Three ways to run it:

- ``fsqueue steward``: a daemon, a round every ``--interval`` seconds (``run_steward``);
- ``fsqueue steward --once`` from cron;
- :func:`steward_step` from a watchdog sweep, which skips when a steward daemon holds the lock.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import IO, TYPE_CHECKING, Any

from ._clock import Clock
from ._config import Config
from ._errors import FsQueueError, StewardRunning
from ._fsio import ensure_real_dir, publish_replace, read_nofollow
from ._layout import open_root
from ._rounds import RoundReport, Steward, StewardSettings
from ._state import StatePaths

if TYPE_CHECKING:
    from filelock import BaseFileLock

__all__ = ["RoundReport", "Steward", "StewardSettings", "hold_steward_lock", "run_steward", "steward_step"]


def hold_steward_lock(root: str | os.PathLike[str], *, wait: bool) -> BaseFileLock:
    """Take the one-steward-per-root lock, ``state/steward.lock`` (filelock's flock); StewardRunning if held.

    filelock is imported here, not at module level: ``import fsqueue`` stays standard-library only.
    """
    from filelock import FileLock, Timeout

    paths = StatePaths(open_root(os.fspath(root)).root)
    ensure_real_dir(paths.dir, durable=False)
    # The kernel drops a flock when its holder dies, so a killed steward never blocks its successor;
    # preserve_lock_file: the path is never unlinked (which would split waiters across two inodes).
    lock = FileLock(paths.steward_lock, timeout=-1 if wait else 0, preserve_lock_file=True)
    try:
        lock.acquire()
    except Timeout:
        pid = _read_pid(paths.steward_pid)
        raise StewardRunning(
            f"another steward already applies updates under {paths.root} ({paths.steward_lock} is held"
            f"{f' by pid {pid}' if pid else ''}); stop it first, or pass --wait to take over when it exits",
            path=paths.steward_lock,
            holder_pid=pid,
        ) from None
    publish_replace(paths.staging, f"{os.getpid()}\n".encode(), paths.steward_pid, durable=False)
    return lock


def _read_pid(path: str) -> int | None:
    try:
        data, _ = read_nofollow(path)
        return int(data.strip())
    except (OSError, ValueError):
        return None


def steward_step(
    root: str | os.PathLike[str],
    *,
    config: Config | None = None,
    settings: StewardSettings | None = None,
    clock: Clock | None = None,
    max_rounds: int | None = None,
) -> RoundReport | None:
    """Apply what is pending unless another steward runs -- the hook for a watchdog sweep.

    Takes the singleton lock without waiting and returns None when it is held (a ``fsqueue steward``
    daemon owns the root); otherwise drains the inbox (at most ``max_rounds`` rounds of
    ``settings.batch``, so a backlog cannot stretch one sweep; ``report.more`` says work is left) and
    releases the lock.
    """
    try:
        lock = hold_steward_lock(root, wait=False)
    except StewardRunning:
        return None
    try:
        return Steward(root, config=config, settings=settings, clock=clock).drain(max_rounds=max_rounds)
    finally:
        lock.release()


def run_steward(
    root: str | os.PathLike[str],
    *,
    config: Config | None = None,
    settings: StewardSettings | None = None,
    once: bool = False,
    wait: bool = False,
    verbose: bool = False,
    out: IO[str] | None = None,
) -> int:
    """``fsqueue steward``: hold the lock, then drain once or every interval until SIGTERM/SIGINT."""
    log = out or sys.stderr
    settings = settings or StewardSettings()
    lock = hold_steward_lock(root, wait=wait)
    try:
        steward = Steward(root, config=config, settings=settings)
        if once:
            report = steward.drain()
            if not report.idle:
                print(f"fsqueue steward: {report.summary()}", file=log, flush=True)
            return 0
        stop = threading.Event()

        def on_stop(signum: int, frame: Any) -> None:
            stop.set()  # the round in flight finishes; each round is crash-safe anyway

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        print(
            f"fsqueue steward: pid {os.getpid()} holds {steward.paths.steward_lock}; "
            f"applying updates every {settings.interval:g}s",
            file=log,
            flush=True,
        )
        while not stop.is_set():
            try:
                report = steward.drain(stop)
            except (FsQueueError, OSError) as exc:
                print(f"fsqueue steward: error: {exc}; retrying in {settings.interval:g}s", file=log, flush=True)
            else:
                if verbose and not report.idle:
                    print(f"fsqueue steward: {report.summary()}", file=log, flush=True)
            stop.wait(settings.interval)
        return 0
    finally:
        lock.release()
