"""The on-disk records (format ``fsqueue/1``): one encode/parse pair per kind, every field checked.

A record that fails to parse is :class:`CorruptRecord`; a record with another ``format`` is
:class:`ForeignFormat` -- written by a newer or foreign implementation, so never judged as garbage.
"""

from __future__ import annotations

import json
import math

from ._errors import CorruptRecord
from ._frozen import frozen, replace
from ._identity import Owner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final, Literal

    TaskState = Literal["pending", "delayed", "running", "done", "dead"]
else:
    # Literal needs ``typing`` at run time; importers of these names only use them in annotations.
    TaskState = str


FORMAT: Final = "fsqueue/1"
MAX_HISTORY: Final = 50
MAX_ERROR_TEXT: Final = 4000


class ForeignFormat(CorruptRecord):
    """A record whose ``format`` this version does not know: treated as a live foreign owner."""


@frozen
class Event:
    """One line of a task's history."""

    at: float
    event: str
    attempt: int = 0
    agent: str = ""
    error: str = ""


@frozen
class TaskRecord:
    """A task as stored in ``records/<id>.json`` (and embedded in done and dead records)."""

    id: str
    payload: Any
    priority: int
    max_attempts: int
    ttl: float | None
    enqueued_at: float
    ready_at: float
    entry: str
    attempts: int = 0
    fence: int = 0
    settled: str | None = None
    agent: str = ""
    history: tuple[Event, ...] = ()

    def with_event(self, event: Event, **changes: Any) -> TaskRecord:
        """A copy with ``event`` appended to the (bounded) history and ``changes`` applied."""
        history = (*self.history, event)[-MAX_HISTORY:]
        return replace(self, history=history, **changes)


@frozen
class LockRecord:
    """A claim as stored in ``tasks/<id>.lock``; the file's mtime is the lease expiry."""

    task: str
    agent: str
    token: str
    attempt: int
    fence: int
    claimed_at: float
    ttl: float
    mode: Literal["process", "lease"]
    owner: Owner


@frozen
class FinalRecord:
    """A task that reached ``done/`` or ``dead/``: the task plus its outcome."""

    state: Literal["done", "dead"]
    task: TaskRecord
    finished_at: float
    result: Any = None
    reason: str = ""
    token: str = ""
    agent: str = ""


def _dumps(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n").encode()


def _task_dict(task: TaskRecord) -> dict[str, Any]:
    # Built by hand: dataclasses.asdict deep-copies and costs more than the write it feeds.
    return {
        "id": task.id,
        "payload": task.payload,
        "priority": task.priority,
        "max_attempts": task.max_attempts,
        "ttl": task.ttl,
        "enqueued_at": task.enqueued_at,
        "ready_at": task.ready_at,
        "entry": task.entry,
        "attempts": task.attempts,
        "fence": task.fence,
        "settled": task.settled,
        "agent": task.agent,
        "history": [
            {"at": e.at, "event": e.event, "attempt": e.attempt, "agent": e.agent, "error": e.error}
            for e in task.history
        ],
    }


def encode_task(task: TaskRecord) -> bytes:
    return _dumps({"format": FORMAT, "kind": "task", **_task_dict(task)})


def encode_lock(lock: LockRecord) -> bytes:
    return _dumps(
        {
            "format": FORMAT,
            "kind": "lock",
            "task": lock.task,
            "agent": lock.agent,
            "token": lock.token,
            "attempt": lock.attempt,
            "fence": lock.fence,
            "claimed_at": lock.claimed_at,
            "ttl": lock.ttl,
            "mode": lock.mode,
            "owner": owner_dict(lock.owner),
        }
    )


def encode_final(final: FinalRecord) -> bytes:
    return _dumps(
        {
            "format": FORMAT,
            "kind": final.state,
            "finished_at": final.finished_at,
            "result": final.result,
            "reason": final.reason,
            "token": final.token,
            "agent": final.agent,
            "task": _task_dict(final.task),
        }
    )


def load_record(data: bytes, path: str, kind: str) -> dict[str, Any]:
    """Parse a versioned record of ``kind``: CorruptRecord if unreadable, ForeignFormat if another version."""
    if not data:
        raise CorruptRecord(f"{path} is empty (expected a {FORMAT} {kind} record)", path=path)
    try:
        obj = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptRecord(
            f"{path} is not valid JSON ({type(exc).__name__}: {str(exc)[:120]}); it is truncated or garbage. "
            "Move it aside (fsqueue clear ID for a lock; the watchdog quarantines records)",
            path=path,
        ) from exc
    if not isinstance(obj, dict):
        raise CorruptRecord(f"{path} holds JSON that is not an object", path=path)
    fmt = obj.get("format")
    if not isinstance(fmt, str) or not fmt.startswith("fsqueue/"):
        raise CorruptRecord(f"{path} has no valid 'format' field ({fmt!r}); it is not an fsqueue record", path=path)
    if fmt != FORMAT:
        raise ForeignFormat(f"{path} has format {fmt!r}; this fsqueue reads {FORMAT!r}", path=path)
    if obj.get("kind") != kind:
        raise CorruptRecord(f"{path} is a {obj.get('kind')!r} record where a {kind!r} was expected", path=path)
    return obj


def _positive(value: float, key: str, path: str) -> float:
    if value <= 0:
        raise CorruptRecord(f"{path}: field {key!r} must be positive ({value!r})", path=path)
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a record")


def read_field(obj: dict[str, Any], key: str, types: type | tuple[type, ...], path: str) -> Any:
    """``obj[key]`` if it has one of ``types`` (numbers finite and sane), else CorruptRecord naming it."""
    value = obj.get(key)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _as_tuple(types))
    if ok and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            ok = math.isfinite(float(value)) and abs(value) < 1e18  # times, counts, ids: all far below
        except OverflowError:
            ok = False
    if not ok:
        shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
        raise CorruptRecord(f"{path}: field {key!r} is missing or has the wrong type or range ({shown})", path=path)
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


_NUM = (int, float)


def _parse_event(obj: Any, path: str) -> Event:
    if not isinstance(obj, dict):
        raise CorruptRecord(f"{path}: a history entry is not an object", path=path)
    return Event(
        at=float(read_field(obj, "at", _NUM, path)),
        event=read_field(obj, "event", str, path),
        attempt=read_field(obj, "attempt", int, path),
        agent=read_field(obj, "agent", str, path),
        error=read_field(obj, "error", str, path),
    )


def _parse_task_dict(obj: dict[str, Any], path: str) -> TaskRecord:
    history = obj.get("history")
    if not isinstance(history, list):
        raise CorruptRecord(f"{path}: field 'history' is missing or not a list", path=path)
    if "payload" not in obj:
        raise CorruptRecord(f"{path}: field 'payload' is missing", path=path)
    ttl = obj.get("ttl")
    if ttl is not None and (float(read_field(obj, "ttl", _NUM, path)) <= 0):
        raise CorruptRecord(f"{path}: field 'ttl' must be positive ({ttl!r})", path=path)
    settled = obj.get("settled")
    if settled is not None and not isinstance(settled, str):
        raise CorruptRecord(f"{path}: field 'settled' has the wrong type ({settled!r})", path=path)
    return TaskRecord(
        id=read_field(obj, "id", str, path),
        payload=obj["payload"],
        priority=read_field(obj, "priority", int, path),
        max_attempts=read_field(obj, "max_attempts", int, path),
        ttl=None if ttl is None else float(ttl),
        enqueued_at=float(read_field(obj, "enqueued_at", _NUM, path)),
        ready_at=float(read_field(obj, "ready_at", _NUM, path)),
        entry=read_field(obj, "entry", str, path),
        attempts=read_field(obj, "attempts", int, path),
        fence=read_field(obj, "fence", int, path),
        settled=settled,
        agent=read_field(obj, "agent", str, path),
        history=tuple(_parse_event(item, path) for item in history),
    )


def parse_task(data: bytes, path: str) -> TaskRecord:
    return _parse_task_dict(load_record(data, path, "task"), path)


def parse_owner(owner: object, path: str) -> Owner:
    """The ``owner`` object of a lock or heartbeat record."""
    if not isinstance(owner, dict):
        raise CorruptRecord(f"{path}: field 'owner' is missing or not an object", path=path)
    return Owner(
        host=read_field(owner, "host", str, path),
        machine_id=read_field(owner, "machine_id", str, path),
        boot_id=read_field(owner, "boot_id", str, path),
        pidns=read_field(owner, "pidns", int, path),
        pid=read_field(owner, "pid", int, path),
        start_ticks=read_field(owner, "start_ticks", int, path),
    )


def owner_dict(o: Owner) -> dict[str, Any]:
    return {
        "host": o.host,
        "machine_id": o.machine_id,
        "boot_id": o.boot_id,
        "pidns": o.pidns,
        "pid": o.pid,
        "start_ticks": o.start_ticks,
    }


def parse_lock(data: bytes, path: str) -> LockRecord:
    obj = load_record(data, path, "lock")
    owner = parse_owner(obj.get("owner"), path)
    mode = read_field(obj, "mode", str, path)
    if mode not in ("process", "lease"):
        raise CorruptRecord(f"{path}: field 'mode' is {mode!r}, expected 'process' or 'lease'", path=path)
    return LockRecord(
        task=read_field(obj, "task", str, path),
        agent=read_field(obj, "agent", str, path),
        token=read_field(obj, "token", str, path),
        attempt=read_field(obj, "attempt", int, path),
        fence=read_field(obj, "fence", int, path),
        claimed_at=float(read_field(obj, "claimed_at", _NUM, path)),
        ttl=_positive(float(read_field(obj, "ttl", _NUM, path)), "ttl", path),
        mode=mode,
        owner=owner,
    )


def parse_final(data: bytes, path: str, state: Literal["done", "dead"]) -> FinalRecord:
    obj = load_record(data, path, state)
    task = obj.get("task")
    if not isinstance(task, dict):
        raise CorruptRecord(f"{path}: field 'task' is missing or not an object", path=path)
    return FinalRecord(
        state=state,
        task=_parse_task_dict(task, path),
        finished_at=float(read_field(obj, "finished_at", _NUM, path)),
        result=obj.get("result"),
        reason=read_field(obj, "reason", str, path),
        token=read_field(obj, "token", str, path),
        agent=read_field(obj, "agent", str, path),
    )


def clip_error(text: str) -> str:
    """Keep the tail of a long error text (the end of a traceback says the most)."""
    return text if len(text) <= MAX_ERROR_TEXT else "..." + text[-MAX_ERROR_TEXT:]
