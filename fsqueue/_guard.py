"""The per-task guard: an exclusive ``flock`` held around every state transition of a task.

Claim, renew, complete, fail, break and requeue of task X all run while holding the flock of
``guards/<md5(X)[:2]>``. Transitions of one task are therefore serialized by the kernel, and a
holder whose lock is being broken cannot commit in between (the break and the commit are mutually
exclusive). A flock dies with its process, so a holder killed mid-transition never wedges the guard.
The 256 guard files are created once and never deleted, which avoids the unlink-while-locked race of
per-task lock files; two tasks sharing a shard merely take turns for a few microseconds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from ._fsio import storage_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType


def _open_guard(path: str) -> int:
    flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o640)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR):
            raise
    else:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)  # a FIFO, socket or device planted at a guard: never wait on it
    # A symlink planted at a guard: never follow it (flock on its target would guard nothing we
    # own). Guards are empty files, so move the link aside and create the real one.
    quarantine = os.path.join(os.path.dirname(os.path.dirname(path)), "quarantine")
    try:
        os.rename(path, os.path.join(quarantine, f"{os.getpid()}-{os.urandom(4).hex()}-guard-{os.path.basename(path)}"))
    except FileNotFoundError:
        pass
    try:
        return os.open(path, flags | os.O_EXCL, 0o640)
    except FileExistsError:
        return os.open(path, flags, 0o640)  # another process recreated it first: same empty guard


class guarded:  # used as a function: ``with guarded(path) as held``
    """Hold the guard at ``path``; ``as`` gives False (holding nothing) when non-blocking and it is busy.

    A class, not ``@contextmanager``: it runs twice per task and ``contextlib`` costs start-up time.
    """

    __slots__ = ("_blocking", "_fd", "_path")

    def __init__(self, path: str, *, blocking: bool = True) -> None:
        self._path, self._blocking, self._fd = path, blocking, -1

    def __enter__(self) -> bool:
        try:
            fd = _open_guard(self._path)
        except OSError as exc:
            raise storage_error(exc, "open guard", self._path) from exc
        self._fd = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self._blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        except BaseException:
            self._fd = -1
            os.close(fd)
            raise
        return True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # closing the only descriptor releases the flock
