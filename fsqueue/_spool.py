"""The telemetry spool's writer: one JSON line per event, appended to this process's own open segment.

Maildir for log lines (tmp -> new): each writer process appends only to its own file in ``spool/open/``,
so no lock is taken on the hot path and no two writers can ever interleave inside a line. A segment is
sealed by one ``rename()`` into ``spool/ready/`` once it holds ``segment_bytes`` or is ``segment_age``
old, when the writer exits, or -- for a writer that died -- by the collector, which proves the death
from the segment's name (PID + start time + boot id). Nothing is ever truncated or rewritten in place, so
the lines lost between "read the spool" and "delete it" (logrotate's copytruncate, pitfall 10) cannot be.

This module is on every emit's path: beyond what ``import fsqueue`` loads it imports only ``atexit``
(no ``threading``, ``typing`` or ``dataclasses``), and it builds each line with one f-string.
"""

from __future__ import annotations

import atexit
import errno
import json
import json.encoder
import os
from _thread import allocate_lock  # threading.Lock without importing threading
from _weakref import ref
from itertools import count
from time import monotonic as _monotonic
from time import time_ns as _time_ns

from ._config import SpoolSettings, load_spool_settings
from ._errors import FsQueueError, InvalidPayload, QueueRootError
from ._fsio import ensure_real_dir, storage_error
from ._identity import Owner, boot_id, machine_id, pid_namespace, start_ticks
from ._ids import _ID_PATTERN, MAX_ID_LENGTH
from ._layout import ROOT_MARKER, default_root

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Final, NoReturn

#: Longest line (with its newline) a writer emits and the collector archives; longer lines are refused.
MAX_LINE_BYTES: Final = 64 * 1024
SPOOL_DIR: Final = "spool"
SEGMENT_SUFFIX: Final = ".jsonl"

_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
_write: Final = os.write


def _refuse(obj: object) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _encoder() -> Callable[[Any, int], Sequence[str]]:
    """Compact, NaN-refusing JSON through a C encoder made once (``json.dumps`` makes one per call).

    Returns ``encode(obj, 0) -> chunks``. No circular-reference markers: a cycle ends in RecursionError,
    refused like any other bad field.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator
        slow = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
        return lambda obj, _: (slow(obj),)
    encode: Callable[[Any, int], Sequence[str]] = make(
        None, _refuse, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    return encode


_ENCODE: Final = _encoder()
#: Segment numbers are unique within a process, across every Spool it opens (names never collide).
_SEQ: Final = count()
#: Agent and event names already checked: the regex runs once per distinct name, not per line.
_VALID: set[str] = set()
#: Every Spool of this process (weakly), so that exit seals them all and a forked child forgets them.
_LIVE: dict[int, ref[Spool]] = {}


def host_tag(host: str) -> str:
    """The host name as it appears in segment names: ``[A-Za-z0-9_-]``, at most 64 characters."""
    tag = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in host)[:64]
    return tag or "host"


def _hex8(value: str) -> str:
    return (value.replace("-", "")[:8] or "0").rjust(8, "0")


def identity_prefix(pid: int) -> str:
    """``<host>.<machine8>.<boot8>.<pidns>.<pid>.<start ticks>``: whose segment it is, provably."""
    ticks = start_ticks(pid) or 0
    return f"{host_tag(os.uname().nodename)}.{_hex8(machine_id())}.{_hex8(boot_id())}.{pid_namespace()}.{pid}.{ticks}"


def segment_writer(name: str) -> Owner | None:
    """The writer of a segment named by :func:`identity_prefix`, to judge with ``owner_state``.

    None when the name does not say (another host or machine, or not our naming): such a segment is
    foreign and only its writer seals it.
    """
    if not name.endswith(SEGMENT_SUFFIX):
        return None
    parts = name[: -len(SEGMENT_SUFFIX)].split(".")
    if len(parts) != 7 or not all(p.isdigit() for p in parts[3:]):
        return None
    host, machine8, boot8, pidns, pid, ticks, _ = parts
    here = os.uname().nodename
    if host != host_tag(here) or machine8 != _hex8(machine_id()):
        return None
    # Another boot of this machine: owner_state sees a boot id that differs and proves the writer dead.
    boot = boot_id() if boot8 == _hex8(boot_id()) else boot8
    return Owner(here, machine_id(), boot, int(pidns), int(pid), int(ticks))


def check_name(kind: str, name: object) -> str:
    """An agent or event name: the task-id rules (letters, digits, ``. _ : @ = + -``, at most 128)."""
    if not isinstance(name, str) or not name or len(name) > MAX_ID_LENGTH or not _ID_PATTERN.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise InvalidPayload(
            f"{kind} name {shown} is refused: use 1 to {MAX_ID_LENGTH} letters, digits and . _ : @ = + -, "
            "starting with a letter or digit"
        )
    if len(_VALID) >= 10_000:
        _VALID.clear()  # a process that makes up names without end must not grow this cache without end
    _VALID.add(name)
    return name


def _bad_fields(exc: Exception) -> InvalidPayload:
    return InvalidPayload(f"telemetry fields are not JSON-serializable ({type(exc).__name__}: {exc})")


class Spool:
    """Appends this process's telemetry lines to ``<root>/spool``: one open segment at a time.

    Thread-safe: an in-process mutex orders the threads' appends and rotations (the file itself is
    never locked). Use it as a context manager, or call :meth:`close`, to seal the open segment.
    """

    __slots__ = (
        "__weakref__",
        "_fd",
        "_host",
        "_mutex",
        "_name",
        "_opened",
        "_pid",
        "_prefix",
        "_size",
        "dir",
        "root",
        "segment_age",
        "segment_bytes",
    )

    def __init__(self, root: str | os.PathLike[str] | None = None, *, settings: SpoolSettings | None = None) -> None:
        settings = settings or SpoolSettings()
        self.root = os.path.abspath(os.fspath(root) if root is not None else default_root())
        self.dir = os.path.join(self.root, SPOOL_DIR)
        self.segment_bytes = settings.segment_bytes
        self.segment_age = settings.segment_age
        self._host = json.dumps(os.uname().nodename)
        self._forget()
        key = id(self)
        _LIVE[key] = ref(self, lambda _: _LIVE.pop(key, None))

    def _forget(self) -> None:
        """Drop the open segment without sealing it (a forked child: the segment is its parent's)."""
        self._mutex = allocate_lock()
        self._fd = -1
        self._name = ""
        self._size = 0
        self._opened = 0.0
        self._pid = os.getpid()
        self._prefix = ""

    def emit(self, agent: str, event: str, /, **fields: Any) -> None:
        """Append one event; ``fields`` must be JSON-serializable."""
        self.emit_event(agent, event, fields)

    def emit_event(self, agent: str, event: str, fields: dict[str, Any] | None = None) -> None:
        """Append ``{"ts", "agent", "host", "pid", "event", "fields"}`` as one line, in one write."""
        try:
            known = agent in _VALID and event in _VALID
        except TypeError:  # an unhashable name
            known = False
        if not known:
            check_name("agent", agent)
            check_name("event", event)
        if fields and not isinstance(fields, dict):
            raise InvalidPayload(f"telemetry fields must be a JSON object (a dict), got {type(fields).__name__}")
        try:
            body = "".join(_ENCODE(fields, 0)) if fields else "{}"
        except (TypeError, ValueError, RecursionError) as exc:
            raise _bad_fields(exc) from None
        us = str(_time_ns() // 1000)  # exact microseconds; cheaper than formatting a float
        line = (
            f'{{"ts":{us[:-6]}.{us[-6:]},"agent":"{agent}","host":{self._host},"pid":{self._pid},'
            f'"event":"{event}","fields":{body}}}\n'
        ).encode()
        if len(line) > MAX_LINE_BYTES:
            raise InvalidPayload(
                f"telemetry line for {agent}/{event} is {len(line)} bytes; the limit is {MAX_LINE_BYTES}: "
                "send less in its fields (keep big data in a file and emit its path)"
            )
        with self._mutex:
            if self._fd < 0 or _monotonic() - self._opened >= self.segment_age:
                self._rotate()
            try:
                written = _write(self._fd, line)
                # A short write on a regular file means ENOSPC, EFBIG or a signal. This process is the
                # segment's only writer, so finishing the line with more writes still keeps it whole.
                while written < len(line):
                    written += _write(self._fd, line[written:])
            except OSError as exc:
                self._write_failed(exc)
            self._size += len(line)
            if self._size >= self.segment_bytes:
                self._seal_locked()  # now, not at the next emit: the collector can take it at once

    def _rotate(self) -> None:
        """Seal the segment that has grown old (if any) and open a fresh one."""
        self._seal_locked()
        self._open_segment()

    def _write_failed(self, exc: OSError) -> NoReturn:
        # The line may now be cut. Seal the segment so no later line is glued to the torn one: the
        # collector drops an unterminated last line and counts it.
        path = os.path.join(self.dir, "open", self._name)
        self._seal_locked()
        raise storage_error(exc, "append telemetry to", path) from exc

    def _open_segment(self) -> None:
        if not self._prefix:
            self._prepare()
        open_dir = os.path.join(self.dir, "open")
        for _ in range(1000):
            name = f"{self._prefix}.{next(_SEQ):06d}{SEGMENT_SUFFIX}"  # padded: ls lists them in order
            try:
                self._fd = os.open(os.path.join(open_dir, name), _FLAGS, 0o640)
            except FileExistsError:
                continue  # left by an earlier Spool of a process with this pid and start time: this one
            except OSError as exc:
                raise storage_error(exc, "create telemetry segment in", open_dir) from exc
            self._name, self._size, self._opened = name, 0, _monotonic()
            return
        raise QueueRootError(f"cannot create a telemetry segment in {open_dir}: every name is taken", path=open_dir)

    def _prepare(self) -> None:
        """Check the root once per process and create the spool directories on first use."""
        check_root(self.root)
        for path in (self.dir, os.path.join(self.dir, "open"), os.path.join(self.dir, "ready")):
            ensure_real_dir(path)
        self._prefix = identity_prefix(self._pid)
        _register_exit_hook()

    def _seal_locked(self) -> None:
        """Rename the open segment into ``ready/``; never raises (see below)."""
        fd, name = self._fd, self._name
        if fd < 0:
            return
        self._fd, self._name = -1, ""
        try:
            os.rename(os.path.join(self.dir, "open", name), os.path.join(self.dir, "ready", name))
        except OSError:
            # Every line it holds is already written. A segment that cannot be renamed now stays in
            # open/ and is sealed by the collector once this process has exited (its writer is then dead).
            pass
        finally:
            os.close(fd)

    def seal(self) -> None:
        """Seal the open segment now (the next emit opens a new one)."""
        with self._mutex:
            if self._pid == os.getpid():
                self._seal_locked()

    close = seal

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.seal()


def check_root(root: str) -> None:
    """Refuse a directory that is not a queue root, with the command that makes one."""
    if not os.path.lexists(os.path.join(root, ROOT_MARKER)):
        raise QueueRootError(
            f"{root} is not an fsqueue root (no {ROOT_MARKER}); create one with `fsqueue init --root {root}`",
            path=root,
        )


_hook_registered = False


def _register_exit_hook() -> None:
    global _hook_registered  # noqa: PLW0603  # one atexit hook per process, registered on first use
    if not _hook_registered:
        atexit.register(_seal_all)
        _hook_registered = True


def _live() -> list[Spool]:
    return [spool for spool in (r() for r in list(_LIVE.values())) if spool is not None]


def _seal_all() -> None:
    """At exit: seal every open segment of this process (never a parent's, after a fork)."""
    for spool in _live():
        spool.seal()


def _after_fork() -> None:
    # The child inherited its parent's descriptors and open segments: appending to them or sealing
    # them at the child's exit would let two processes write one segment. Start afresh instead.
    for spool in _live():
        fd = spool._fd
        spool._forget()
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise


os.register_at_fork(after_in_child=_after_fork)


_default: Spool | None = None


def default_spool() -> Spool:
    """The process-wide spool: ``FSQUEUE_ROOT`` (else the default root), ``FSQUEUE_CONFIG``'s ``spool:``."""
    global _default  # noqa: PLW0603  # created on the first emit of the process
    if _default is None:
        config = os.environ.get("FSQUEUE_CONFIG")
        settings = load_spool_settings(config) if config else None
        _default = Spool(os.environ.get("FSQUEUE_ROOT") or None, settings=settings)
    return _default


def configure(root: str | os.PathLike[str] | None = None, *, settings: SpoolSettings | None = None) -> Spool:
    """Point :func:`emit` at ``root`` with ``settings`` (sealing the previous default's segment)."""
    global _default  # noqa: PLW0603  # replaces the process-wide spool
    if _default is not None:
        _default.seal()
    _default = Spool(root, settings=settings)
    return _default


def emit(agent: str, event: str, /, **fields: Any) -> None:
    """Append one telemetry event for ``agent`` to the process-wide spool; no lock, one write."""
    (_default or default_spool()).emit_event(agent, event, fields)


def record_event(root: str | os.PathLike[str], agent: str, event: str, /, **fields: Any) -> None:
    """One line for fsqueue's own events (breaker halts, degraded mode) on the same timeline.

    Never raises: the event happened whether or not it could be recorded (a full disk, a root that
    cannot hold ``spool/``), and the breaker or the degraded switch must not fail because of it.
    """
    try:
        with Spool(root) as spool:  # sealed at once: these events are rare and must not wait in open/
            spool.emit_event(agent, event, fields)
    except (OSError, FsQueueError):
        pass
