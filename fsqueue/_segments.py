"""The collector's side of the spool: where it lives, and reading sealed segments -- complete lines
only, each checked to be a telemetry record, grouped by the day of its archive.

A writer killed in the middle of a line leaves a segment whose last line has no newline. That tail is
dropped and counted (``partial``), never archived: appended to an archive it would glue itself to the
next batch's first line and corrupt a good record too.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time

from ._ids import _ID_PATTERN, MAX_ID_LENGTH
from ._spool import MAX_LINE_BYTES, SPOOL_DIR, check_root

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final, TypeGuard

#: A segment larger than this was not written by a conforming writer (they seal at 1 GiB at most).
MAX_SEGMENT_BYTES: Final = (1 << 30) + MAX_LINE_BYTES
#: Timestamps outside [0, MAX_TS) (year 5138) are not telemetry times.
MAX_TS: Final = 1e11

_DAYS: dict[int, str] = {}


class SpoolPaths:
    """Where the telemetry spool of one queue root lives (``<root>/spool``)."""

    __slots__ = ("dir", "ledger", "root")

    def __init__(self, root: str) -> None:
        self.root = root
        self.dir = os.path.join(root, SPOOL_DIR)
        self.ledger = os.path.join(self.dir, "ledger.json")

    def sub(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def archive(self, day: str) -> str:
        return os.path.join(self.dir, "archive", f"{day}.jsonl")


def spool_paths(root: str | os.PathLike[str]) -> SpoolPaths:
    """The spool of the queue at ``root``; QueueRootError when ``root`` is not a queue."""
    path = os.path.abspath(os.fspath(root))
    check_root(path)
    return SpoolPaths(path)


def day_of(ts: float) -> str:
    """The UTC day of a timestamp, ``YYYY-MM-DD``: the archive a line goes to."""
    key = int(ts // 86400)
    day = _DAYS.get(key)
    if day is None:
        day = _DAYS[key] = time.strftime("%Y-%m-%d", time.gmtime(key * 86400))
    return day


def read_segment(path: str) -> tuple[bytes, os.stat_result] | None:
    """A segment's bytes and fstat; None for a symlink, a non-file or an oversized file (to be moved aside)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SEGMENT_BYTES:
            return None
        chunks = []
        while chunk := os.read(fd, max(st.st_size, 1 << 16)):
            chunks.append(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: One decoder for every line (``json.loads`` with an option builds a new one per call).
_DECODE: Final = json.JSONDecoder(parse_constant=_refuse_constant).decode
_NUMBER: Final = (int, float)


def _name_ok(value: object, known: set[str]) -> TypeGuard[str]:
    if not isinstance(value, str):
        return False
    if value in known:
        return True
    if len(value) <= MAX_ID_LENGTH and _ID_PATTERN.fullmatch(value):
        known.add(value)
        return True
    return False


class Batch:
    """The lines of one batch of segments, by archive day, with what the rollups need of each."""

    def __init__(self, oldest_day: str) -> None:
        self.oldest_day = oldest_day
        self.by_day: dict[str, list[bytes]] = {}
        self.events: list[tuple[str, str, float, dict[str, Any]]] = []
        self.lines = self.bytes = self.partial = self.corrupt = self.expired = 0
        self._names: set[str] = set()

    def add_segment(self, data: bytes) -> None:
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self.partial += 1  # a writer died mid-line: the tail is not a record
        raws = data[:end].split(b"\n")[:-1]
        try:
            # "\n" never occurs inside a UTF-8 sequence, so the decoded lines pair up with the raw ones.
            texts: list[str] | None = data[:end].decode().split("\n")[:-1]
        except UnicodeDecodeError:
            texts = None  # decode line by line: only the bad lines are refused
        for i, raw in enumerate(raws):
            record = self._parse(raw, texts[i] if texts is not None else None)
            if record is None:
                self.corrupt += 1
                continue
            self.events.append(record)
            day = day_of(record[2])
            if day < self.oldest_day:
                self.expired += 1  # counted in the rollups; its day's archive is already past retention
                continue
            lines = self.by_day.get(day)
            if lines is None:
                lines = self.by_day[day] = []
            lines.append(raw)
            self.lines += 1
            self.bytes += len(raw) + 1

    def archive_data(self, day: str) -> bytes:
        """The lines of ``day`` as they go into its archive, each with its newline."""
        return b"\n".join(self.by_day[day]) + b"\n"

    def _parse(self, raw: bytes, text: str | None) -> tuple[str, str, float, dict[str, Any]] | None:
        """(agent, event, ts, fields) of a valid telemetry line, else None."""
        if len(raw) >= MAX_LINE_BYTES:
            return None
        try:
            obj = _DECODE(raw.decode() if text is None else text)
        except (ValueError, RecursionError):
            return None
        if type(obj) is not dict:
            return None
        ts: Any = obj.get("ts")
        agent, event, fields = obj.get("agent"), obj.get("event"), obj.get("fields")
        if (
            type(ts) not in _NUMBER
            or not 0 <= ts < MAX_TS
            or type(fields) is not dict
            or not isinstance(obj.get("host"), str)
            or type(obj.get("pid")) is not int
            or not _name_ok(agent, self._names)
            or not _name_ok(event, self._names)
        ):
            return None
        return agent, event, float(ts), fields
