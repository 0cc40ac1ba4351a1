"""The collector's ledger (``spool/ledger.json``) and the per-agent rollups it carries.

The ledger is the truth of what has been aggregated: the committed size of every daily archive, the
segments of the last committed batch, running totals and the rollups. It is one record replaced by one
``rename()`` (fsynced), so archive sizes, rollups and totals move together: a batch is counted in all
of them or in none, which is what makes a rerun after a crash neither lose nor double a line (P9).
"""

from __future__ import annotations

import errno
import json
import os

from ._errors import CorruptRecord
from ._frozen import frozen
from ._fsio import publish_replace, read_nofollow, storage_error
from ._record import FORMAT, load_record, read_field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Final

    #: A segment as the ledger remembers it: name, inode, size, mtime in ns. The name alone could be reused
    #: by a careless shell writer; the other three tell a new segment of that name from the one archived.
    SegmentId = tuple[str, int, int, int]

LEDGER_KIND: Final = "spool-ledger"
TOTAL_KEYS: Final = ("segments", "lines", "bytes", "partial", "corrupt", "expired")
#: Distinct event names counted per agent; the rest are counted under ``(other)``.
MAX_KINDS: Final = 200
OTHER_KIND: Final = "(other)"
ERROR_LEVELS: Final = frozenset({"error", "critical", "fatal"})
MAX_ERROR_TEXT: Final = 200


def segment_id(name: str, st: os.stat_result) -> SegmentId:
    return (name, st.st_ino, st.st_size, st.st_mtime_ns)


def _is_segment_id(item: object) -> bool:
    return (
        isinstance(item, list)
        and len(item) == 4
        and isinstance(item[0], str)
        and all(isinstance(x, int) and not isinstance(x, bool) for x in item[1:])
    )


class Ledger:
    """What has been aggregated so far; mutated by one collector run, then written whole at commit."""

    __slots__ = ("archives", "batches", "collected_at", "last_batch", "rollups", "totals")

    def __init__(
        self,
        archives: dict[str, int] | None = None,
        last_batch: list[SegmentId] | None = None,
        batches: int = 0,
        collected_at: float | None = None,
        totals: dict[str, int] | None = None,
        rollups: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        #: Committed size in bytes of each daily archive, by day (``YYYY-MM-DD``).
        self.archives = {} if archives is None else archives
        #: Segments of the last committed batch: archived, maybe not yet removed from ``collecting/``.
        self.last_batch = [] if last_batch is None else last_batch
        self.batches = batches
        self.collected_at = collected_at
        self.totals = dict.fromkeys(TOTAL_KEYS, 0) if totals is None else totals
        self.rollups = {} if rollups is None else rollups


def encode_ledger(ledger: Ledger) -> bytes:
    data = {
        "format": FORMAT,
        "kind": LEDGER_KIND,
        "archives": ledger.archives,
        "last_batch": ledger.last_batch,
        "batches": ledger.batches,
        "collected_at": ledger.collected_at,
        "totals": ledger.totals,
        "rollups": ledger.rollups,
    }
    return (json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n").encode()


def parse_ledger(data: bytes, path: str) -> Ledger:
    """A ledger record; CorruptRecord naming the field when anything is off (it is never guessed)."""
    obj = load_record(data, path, LEDGER_KIND)
    archives = read_field(obj, "archives", dict, path)
    batch = read_field(obj, "last_batch", list, path)
    totals = read_field(obj, "totals", dict, path)
    rollups = read_field(obj, "rollups", dict, path)
    collected = obj.get("collected_at")
    if collected is not None:
        collected = float(read_field(obj, "collected_at", (int, float), path))
    for key, size in archives.items():
        read_field(archives, key, int, path)
        if size < 0:
            raise CorruptRecord(f"{path}: archive size of {key!r} is negative", path=path)
    if not all(_is_segment_id(item) for item in batch):
        raise CorruptRecord(f"{path}: field 'last_batch' must list [name, inode, size, mtime_ns] entries", path=path)
    for key in TOTAL_KEYS:
        totals.setdefault(key, 0)
        read_field(totals, key, int, path)
    for agent, rollup in rollups.items():
        _check_rollup(agent, rollup, path)
    return Ledger(
        archives, [tuple(item) for item in batch], read_field(obj, "batches", int, path), collected, totals, rollups
    )


def _check_rollup(agent: str, rollup: object, path: str) -> None:
    where = f"{path} (rollup of {agent!r})"
    if not isinstance(rollup, dict):
        raise CorruptRecord(f"{where}: not an object", path=path)
    for key in ("total", "errors"):
        read_field(rollup, key, int, where)
    for key in ("first_at", "last_at"):
        read_field(rollup, key, (int, float), where)
    read_field(rollup, "last_event", str, where)
    read_field(rollup, "last_error", str, where)
    if rollup.get("last_error_at") is not None:
        read_field(rollup, "last_error_at", (int, float), where)
    events = read_field(rollup, "events", dict, where)
    for kind in events:
        read_field(events, kind, int, where)


def read_ledger(path: str) -> Ledger:
    """The ledger at ``path``; a fresh one when none was written yet."""
    try:
        data, _ = read_nofollow(path)
    except FileNotFoundError:
        return Ledger()
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EFBIG):
            raise CorruptRecord(
                f"{path} is a symlink, not a regular file, or too large; move it aside only if you accept "
                "that segments in collecting/ may then be archived twice",
                path=path,
            ) from exc
        raise storage_error(exc, "read", path) from exc
    return parse_ledger(data, path)


def write_ledger(path: str, staging_dir: str, ledger: Ledger) -> None:
    """Replace the ledger in one rename, file and directory fsynced: the commit point of a batch."""
    publish_replace(staging_dir, encode_ledger(ledger), path, durable=True)


# --------------------------------------------------------------------------------------------- rollups


def is_error(event: str, fields: Mapping[str, Any]) -> bool:
    """An error event: named ``error``, or with ``level`` error / critical / fatal (any case)."""
    if event == "error":
        return True
    level = fields.get("level")
    return isinstance(level, str) and level.lower() in ERROR_LEVELS


def _error_text(event: str, fields: Mapping[str, Any]) -> str:
    for key in ("message", "error", "msg"):
        value = fields.get(key)
        if value is not None:
            text = value if isinstance(value, str) else json.dumps(value)
            return text[:MAX_ERROR_TEXT]
    return event


def add_event(rollups: dict[str, dict[str, Any]], agent: str, event: str, ts: float, fields: Mapping[str, Any]) -> None:
    """Count one archived line in its agent's rollup."""
    rollup = rollups.get(agent)
    if rollup is None:
        rollup = rollups[agent] = {
            "total": 0,
            "errors": 0,
            "events": {},
            "first_at": ts,
            "last_at": ts,
            "last_event": event,
            "last_error_at": None,
            "last_error": "",
        }
    rollup["total"] += 1
    events = rollup["events"]
    kind = event if event in events or len(events) < MAX_KINDS else OTHER_KIND
    events[kind] = events.get(kind, 0) + 1
    rollup["first_at"] = min(rollup["first_at"], ts)
    if ts >= rollup["last_at"]:
        rollup["last_at"], rollup["last_event"] = ts, event
    if is_error(event, fields):
        rollup["errors"] += 1
        if rollup["last_error_at"] is None or ts >= rollup["last_error_at"]:
            rollup["last_error_at"], rollup["last_error"] = ts, _error_text(event, fields)


@frozen
class AgentRollup:
    """One agent's archived telemetry: events by kind, error count, first and last event."""

    agent: str
    total: int
    errors: int
    events: Mapping[str, int]
    first_at: float
    last_at: float
    last_event: str
    last_error_at: float | None
    last_error: str

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "total": self.total,
            "errors": self.errors,
            "events": dict(self.events),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "last_event": self.last_event,
            "last_error_at": self.last_error_at,
            "last_error": self.last_error,
        }


def rollups_of(ledger: Ledger) -> dict[str, AgentRollup]:
    """The ledger's rollups as records, by agent name (sorted)."""
    return {
        agent: AgentRollup(
            agent=agent,
            total=r["total"],
            errors=r["errors"],
            events=dict(sorted(r["events"].items())),
            first_at=float(r["first_at"]),
            last_at=float(r["last_at"]),
            last_event=r["last_event"],
            last_error_at=None if r.get("last_error_at") is None else float(r["last_error_at"]),
            last_error=r["last_error"],
        )
        for agent, r in sorted(ledger.rollups.items())
    }
