"""inotify for tests: wake when a directory changes instead of looking at it again and again.

The stdlib has no binding; libc's three calls through ctypes are enough. An ``Inotify`` is a
non-blocking descriptor usable in ``select``; ``drain()`` consumes what is queued, ``wait()`` blocks
until something arrives or a timeout passes (a deadline, never the expected moment of the change).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import select
import struct
from collections.abc import Iterable
from types import TracebackType
from typing import Any

IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_OPEN = 0x020
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_ISDIR = 0x40000000
#: Every way a name enters or leaves a directory, or a file in it is finished.
CHANGES = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
#: What happens to a file itself when it is unlinked (its link count drops), renamed or freed.
GONE = IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


class Inotify:
    """An inotify descriptor; ``add`` watches a path, ``wait``/``drain`` count the events that came."""

    def __init__(self, paths: Iterable[str | os.PathLike[str]] = (), mask: int = CHANGES) -> None:
        fd = int(_libc().inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK))
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self.fd = fd
        try:
            for path in paths:
                self.add(path, mask)
        except BaseException:
            os.close(fd)
            raise

    def add(self, path: str | os.PathLike[str], mask: int = CHANGES) -> int:
        """Watch ``path``; its watch descriptor. OSError (ENOENT when the path is gone) on failure."""
        wd = int(_libc().inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_add_watch: {os.strerror(code)}", os.fspath(path))
        return wd

    def remove(self, wd: int) -> None:
        """Stop a watch; one the kernel already dropped (its file was freed) is no error."""
        if _libc().inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_rm_watch: {os.strerror(code)}")

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[tuple[int, int, str]]:
        """The events queued now, consumed: (watch descriptor, mask, name; "" for the watched path itself)."""
        events: list[tuple[int, int, str]] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                events.append((wd, mask, data[offset : offset + length].rstrip(b"\0").decode(errors="replace")))
                offset += length

    def drain(self) -> int:
        """How many events are queued now, consuming them (an overflow counts as one)."""
        return len(self.read())

    def wait(self, timeout: float | None) -> int:
        """Block until an event arrives (or ``timeout`` seconds pass); how many were consumed."""
        readable, _, _ = select.select([self.fd], [], [], timeout)
        return self.drain() if readable else 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
