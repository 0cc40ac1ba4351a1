"""The per-task guard: an exclusive ``flock`` held around every state transition of a task.

Claim, renew, complete, fail, break and requeue of task X all run while holding the flock of
``guards/<md5(X)[:2]>``. Transitions of one task are therefore serialized by the kernel, and a
holder whose lock is being broken cannot commit in between (the break and the commit are mutually
exclusive). A flock dies with its process, so a holder killed mid-transition never wedges the guard.
The 256 guard files are created once and never deleted, which avoids the unlink-while-locked race of
per-task lock files; two tasks sharing a shard merely take turns for a few microseconds.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from ._fsio import storage_error


@contextmanager
def guarded(path: str, *, blocking: bool = True) -> Iterator[bool]:
    """Hold the guard at ``path``; yields False (holding nothing) when non-blocking and it is busy."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise storage_error(exc, "open guard", path) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the only descriptor releases the flock
