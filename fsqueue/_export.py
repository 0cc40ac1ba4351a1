"""Reading the archives: lines filtered by time, agent and event, as JSON lines or CSV; spool status.

An archive is read only up to the size the ledger committed: bytes past it belong to a batch whose
commit has not happened (or never will, if its collector crashed) and may yet be rolled back.
"""

from __future__ import annotations

import json
import math
import os
import re

from ._config import parse_duration
from ._errors import ConfigError, InvalidPayload
from ._ledger import read_ledger
from ._segments import day_of, spool_paths

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import IO, Any, Final

CSV_HEADER: Final = ("ts", "agent", "host", "pid", "event", "fields")
FORMATS: Final = ("jsonl", "csv")
_ARCHIVE: Final = re.compile(r"(\d{4}-\d{2}-\d{2})\.jsonl")
_NUMBER: Final = re.compile(r"\d+(\.\d+)?")
_CHUNK: Final = 1 << 20


def parse_time(value: str, now: float) -> float:
    """Seconds since the epoch from ``1718000000``, ``2024-06-10``, ``2024-06-10T12:00:00+02:00`` (UTC
    when no zone is given), or an age -- ``90m``, ``2h``, ``7d`` -- counted back from ``now``."""
    from datetime import UTC, datetime

    text = value.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    try:
        return now - parse_duration(text, "time")
    except ConfigError:
        raise InvalidPayload(
            f"time {value!r} is not understood: give epoch seconds (1718000000), an ISO date or time "
            "(2024-06-10, 2024-06-10T12:00:00Z) or an age such as 90m, 2h, 7d"
        ) from None


class Filter:
    """Which lines to export: ``since`` <= ts < ``until``; agent and event among the given (any if none)."""

    __slots__ = ("agents", "events", "since", "until")

    def __init__(
        self,
        since: float | None = None,
        until: float | None = None,
        agents: Iterable[str] = (),
        events: Iterable[str] = (),
    ) -> None:
        self.since, self.until = since, until
        self.agents, self.events = frozenset(agents), frozenset(events)

    def wants_day(self, day: str) -> bool:
        return (self.since is None or day >= day_of(self.since)) and (self.until is None or day <= day_of(self.until))

    def matches(self, obj: dict[str, Any]) -> bool:
        ts = obj.get("ts")
        if not isinstance(ts, int | float) or not math.isfinite(ts):
            return False
        return (
            (self.since is None or ts >= self.since)
            and (self.until is None or ts < self.until)
            and (not self.agents or obj.get("agent") in self.agents)
            and (not self.events or obj.get("event") in self.events)
        )


def read_archived(root: str | os.PathLike[str], flt: Filter | None = None) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Each archived line that passes ``flt`` (without its newline) and its parsed object, day by day."""
    flt = flt or Filter()
    paths = spool_paths(root)
    committed = read_ledger(paths.ledger).archives
    try:
        names = sorted(os.listdir(paths.sub("archive")))
    except FileNotFoundError:
        return
    for name in names:
        match = _ARCHIVE.fullmatch(name)
        if match is None or not flt.wants_day(match.group(1)):
            continue
        for raw in _lines(os.path.join(paths.sub("archive"), name), committed.get(match.group(1))):
            try:
                obj = json.loads(raw)
            except ValueError:
                continue  # not a record: never written by the collector; skipped, as a reader must
            if isinstance(obj, dict) and flt.matches(obj):
                yield raw, obj


def _lines(path: str, limit: int | None) -> Iterator[bytes]:
    """Complete lines of ``path`` within its first ``limit`` bytes (all when None), streamed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, OSError):
        return  # removed by retention meanwhile, or planted (a symlink): nothing of ours to read
    try:
        left = limit
        rest = b""
        while left is None or left > 0:
            chunk = os.read(fd, _CHUNK if left is None else min(_CHUNK, left))
            if not chunk:
                break
            if left is not None:
                left -= len(chunk)
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()  # an unfinished line: completed by the next chunk, or not committed
            yield from parts
    finally:
        os.close(fd)


def write_jsonl(rows: Iterable[tuple[bytes, dict[str, Any]]], out: IO[bytes]) -> int:
    """Write each line as archived; return how many."""
    n = 0
    for raw, _ in rows:
        out.write(raw + b"\n")
        n += 1
    return n


def csv_row(obj: dict[str, Any]) -> list[str]:
    """ts, agent, host, pid, event, then the fields as one compact JSON object with sorted keys."""
    fields = obj.get("fields")
    return [
        json.dumps(obj.get("ts")),
        str(obj.get("agent", "")),
        str(obj.get("host", "")),
        str(obj.get("pid", "")),
        str(obj.get("event", "")),
        json.dumps(
            fields if isinstance(fields, dict) else {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ),
    ]


def write_csv(rows: Iterable[tuple[bytes, dict[str, Any]]], out: IO[str]) -> int:
    """Write a header and one row per line, quoted by the csv module; return how many rows."""
    import csv

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    n = 0
    for _, obj in rows:
        writer.writerow(csv_row(obj))
        n += 1
    return n


def spool_status(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Segments waiting in each directory, archives with committed sizes, totals, last collection."""
    paths = spool_paths(root)
    ledger = read_ledger(paths.ledger)
    waiting = {}
    for name in ("open", "ready", "collecting"):
        try:
            waiting[name] = sum(1 for e in os.scandir(paths.sub(name)) if e.name.endswith(".jsonl"))
        except FileNotFoundError:
            waiting[name] = 0
    return {
        "spool": paths.dir,
        "segments": waiting,
        "archives": dict(sorted(ledger.archives.items())),
        "totals": ledger.totals,
        "batches": ledger.batches,
        "collected_at": ledger.collected_at,
    }
