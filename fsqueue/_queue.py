"""The public ``Queue``: enqueue, claim, and the token-carrying operations the CLI exposes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from itertools import islice

from . import _transitions as transitions
from ._breaker import Halt, check_running, count_committed_output, read_halt, record_output, resume, trip
from ._claim import Claim
from ._degraded import Mode, upstream
from ._errors import InvalidPayload, InvalidTaskId, StorageError, TaskExists
from ._fsio import exists_nofollow, publish_new, storage_error
from ._guard import guarded
from ._heartbeat import AgentInfo, Heartbeat, HeartbeatRecord, list_agents, read_beat, write_beat
from ._identity import Owner, current_owner, lease_only_owner, owner_of
from ._ids import new_task_id, validate_task_id
from ._index import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    add_entry,
    entry_for,
    iter_entries,
    priorities,
    remove_entry,
)
from ._inspect import Inspection
from ._record import Event, TaskRecord, encode_task

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final, Literal

MAX_PAYLOAD_BYTES: Final = 4 * 1024 * 1024
MAX_AGENT_LENGTH: Final = 128
#: Records nest the payload a few levels deep and must parse back: keep far below the parser's limit.
MAX_JSON_DEPTH: Final = 200
#: Upper bounds that keep every number a record stores within what its reader accepts.
MAX_SECONDS: Final = 100 * 365 * 86400.0
MAX_ATTEMPTS: Final = 1_000_000
#: Claimers try the head of the queue first, then spread over this many next candidates, so 145 workers
#: do not all collide on one name (python-dirq's collapse at high concurrency).
_SPREAD: Final = 32


def check_json(value: Any, what: str) -> bytes:
    """Encode ``value`` as JSON or raise InvalidPayload naming what was wrong."""
    if _depth(value) > MAX_JSON_DEPTH:
        raise InvalidPayload(
            f"{what} is not JSON-serializable: nested more than {MAX_JSON_DEPTH} levels deep (or circular)"
        )
    try:
        data = json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayload(f"{what} is not JSON-serializable: {type(exc).__name__}: {exc}") from None
    if len(data) > MAX_PAYLOAD_BYTES:
        raise InvalidPayload(f"{what} is {len(data)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    return data


def _depth(value: Any) -> int:
    """Nesting depth of lists and dicts, without recursion (a hostile payload cannot blow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list | tuple):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                break
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_agent(agent: str) -> str:
    if not isinstance(agent, str) or not agent or len(agent) > MAX_AGENT_LENGTH or not agent.isprintable():
        raise InvalidPayload(f"agent name {agent!r} is refused: use 1-{MAX_AGENT_LENGTH} printable characters")
    return agent


def _check_number(name: str, value: float | None, *, minimum: float, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < minimum:
        raise InvalidPayload(f"{name} must be a finite number >= {minimum}, got {value!r}")


class Queue(Inspection):
    """A directory that is a task queue. Safe for any number of processes and any crash."""

    def enqueue(
        self,
        payload: Any = None,
        *,
        id: str | None = None,
        priority: int = 0,
        delay: float = 0,
        max_attempts: int | None = None,
        ttl: float | None = None,
        agent: str = "",
        if_absent: bool = False,
    ) -> str:
        """Add a task and return its id; durable once this returns (fsync of file and directories)."""
        check_json(payload, "payload")
        check_running(self)
        task_id = new_task_id() if id is None else validate_task_id(id)
        if isinstance(priority, bool) or not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise InvalidPayload(f"priority must be an integer in [{MIN_PRIORITY}, {MAX_PRIORITY}], got {priority!r}")
        _check_number("delay", delay, minimum=0, allow_none=False)
        _check_number("ttl", ttl, minimum=0.001)
        if delay > MAX_SECONDS or (ttl is not None and ttl > MAX_SECONDS):
            raise InvalidPayload(f"delay and ttl must be at most {MAX_SECONDS:.0f} seconds (100 years)")
        attempts = self.config.max_attempts if max_attempts is None else max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= MAX_ATTEMPTS:
            raise InvalidPayload(f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS}, got {max_attempts!r}")
        now = self.clock.now()
        rel = entry_for(priority, now + delay, task_id)
        task = TaskRecord(
            id=task_id,
            payload=payload,
            priority=priority,
            max_attempts=attempts,
            ttl=ttl,
            enqueued_at=now,
            ready_at=now + delay,
            entry=rel,
            agent=agent,
            history=(Event(now, "enqueued", agent=agent),),
        )
        layout = self.layout
        with guarded(layout.guard(task_id)):
            state = self._existing_state(task_id)
            if state is not None:
                if if_absent:
                    return task_id
                raise TaskExists(
                    f"task {task_id} already exists ({state}); pass --if-absent (if_absent=True) to make a "
                    "repeated enqueue a no-op",
                    path=layout.record(task_id),
                    task_id=task_id,
                )
            # The marker goes first: a crash before the record leaves a marker that the next claimer,
            # holding this guard, recognises as a leftover and removes. The enqueue was never acknowledged.
            try:
                add_entry(layout.ready, rel, durable=self.durable)
                publish_new(layout.staging, encode_task(task), layout.record(task_id), durable=self.durable)
            except OSError as exc:
                try:
                    remove_entry(layout.ready, rel)
                except OSError:
                    pass  # e.g. a read-only filesystem: a marker without a record is a harmless leftover
                where = exc.filename2 or exc.filename or layout.record(task_id)  # the refused path itself
                raise storage_error(exc, "enqueue task into", where, task_id) from exc
        if agent:
            record_output(self, agent)
        return task_id

    def _existing_state(self, task_id: str) -> str | None:
        layout = self.layout
        for state, path in (
            ("done", layout.done(task_id)),
            ("dead", layout.dead(task_id)),
            ("claimed", layout.lock(task_id)),
            ("pending", layout.record(task_id)),
        ):
            if exists_nofollow(path):
                return state
        return None

    def claim(
        self,
        agent: str,
        *,
        ttl: float | None = None,
        auto_renew: bool = False,
        owner_pid: int | None = None,
        lease_only: bool = False,
    ) -> Claim | None:
        """Claim the next ready task (highest priority, then oldest), or None when nothing is ready.

        The owner is this process (its death is detected at once) unless ``owner_pid`` names another
        local process, or ``lease_only`` makes the claim live exactly as long as it is renewed.
        """
        check_agent(agent)
        _check_number("ttl", ttl, minimum=0.001)
        if ttl is not None and ttl > MAX_SECONDS:
            raise InvalidPayload(f"ttl must be at most {MAX_SECONDS:.0f} seconds (100 years)")
        check_running(self)
        owner, mode = self._owner(owner_pid, lease_only)
        for blocking in (False, True):
            busy = False
            for priority in priorities(self.layout.ready, self._listings):
                for rel, _, task_id in self._candidates(priority):
                    try:
                        validate_task_id(task_id)
                    except InvalidTaskId:
                        try:
                            self.quarantine(f"{self.layout.ready}/{rel}", "index marker with an invalid task id")
                        except OSError:
                            remove_entry(self.layout.ready, rel)  # cannot move it aside: just drop the marker
                        continue
                    try:
                        got = transitions.try_claim(
                            self, rel, task_id, agent, ttl=ttl, mode=mode, owner=owner, blocking=blocking
                        )
                    except StorageError:
                        raise
                    except OSError as exc:
                        raise storage_error(exc, "claim task", self.layout.lock(task_id), task_id) from exc
                    if got == "busy":
                        busy = True
                    elif got is not None:
                        lock, version, expires = got
                        task = version[0]
                        return Claim(
                            self,
                            id=task_id,
                            payload=task.payload,
                            token=lock.token,
                            attempt=lock.attempt,
                            fence=lock.fence,
                            agent=agent,
                            ttl=lock.ttl,
                            expires_at=expires,
                            max_attempts=task.max_attempts,
                            auto_renew=auto_renew,
                            record=version,
                        )
            if not busy:
                return None
        return None

    def _candidates(self, priority: int) -> Iterator[tuple[str, float, str]]:
        entries = iter_entries(self.layout.ready, priority, until=self.clock.now(), listings=self._listings)
        head = next(entries, None)
        if head is None:
            return
        yield head  # a lone claimer takes the head: strict priority-then-FIFO order
        # Only a claimer that lost the head gets here: spread over the next few so that many
        # concurrent claimers do not all collide on one name (python-dirq's collapse at W=145).
        window = list(islice(entries, _SPREAD))
        self.rng.shuffle(window)
        yield from window
        yield from entries

    def _owner(self, owner_pid: int | None, lease_only: bool) -> tuple[Owner, Literal["process", "lease"]]:
        if lease_only:
            return lease_only_owner(), "lease"
        if owner_pid is None:
            return current_owner(), "process"
        owner = owner_of(owner_pid)
        if owner is None:
            raise InvalidPayload(f"owner pid {owner_pid} is not a running process on this host")
        return owner, "process"

    # Token-carrying operations for callers that hold only the id and token (the CLI, shell scripts).

    def renew(self, task_id: str, token: str, *, ttl: float | None = None) -> float:
        """Extend a lease by id and token; LeaseLost when it is no longer that claim's."""
        validate_task_id(task_id)
        _check_number("ttl", ttl, minimum=0.001)
        return transitions.renew(self, task_id, token, ttl)

    def complete(self, task_id: str, token: str, result: Any = None, *, agent: str = "") -> None:
        """Commit a result by id and token (fenced)."""
        validate_task_id(task_id)
        check_json(result, "result")
        credited = transitions.complete(self, task_id, token, result, agent)
        count_committed_output(self, credited)

    def fail(self, task_id: str, token: str, error: str, *, retry: bool = True, agent: str = "") -> str:
        """Record a failed attempt by id and token (fenced); returns "pending" or "dead"."""
        validate_task_id(task_id)
        return transitions.fail(self, task_id, token, error, retry=retry, agent=agent)

    # Heartbeats and degraded mode.

    def beat(
        self,
        agent: str,
        *,
        state: str = "ok",
        message: str = "",
        interval: float | None = None,
        owner_pid: int | None = None,
    ) -> HeartbeatRecord:
        """Publish ``agent``'s heartbeat now (for cron agents that run a few seconds)."""
        owner = None
        if owner_pid is not None:
            owner = owner_of(owner_pid)
            if owner is None:
                raise InvalidPayload(f"owner pid {owner_pid} is not a running process on this host")
        return write_beat(self, agent, state=state, message=message, interval=interval, owner=owner)

    def heartbeat(
        self, agent: str, *, interval: float | None = None, state: str = "running", message: str = ""
    ) -> Heartbeat:
        """A context manager that beats on entry, every ``interval`` meanwhile, and on exit."""
        return Heartbeat(self, agent, interval=interval, state=state, message=message)

    def last_beat(self, agent: str) -> HeartbeatRecord | None:
        """``agent``'s last heartbeat, or None."""
        return read_beat(self, agent)

    def agents(self) -> list[AgentInfo]:
        """Every agent that ever beat, with its verdict (ok / late / down)."""
        return list_agents(self)

    def upstream(
        self, name: str, *, max_age: float | None = None, agent: str | None = None, recover_after: float | None = None
    ) -> Mode:
        """Is ``name`` alive? ``Mode.degraded`` says to run the degraded path (with hysteresis)."""
        return upstream(self, name, max_age=max_age, agent=agent, recover_after=recover_after)

    # The circuit breaker.

    def record_output(self, agent: str, count: int = 1) -> Halt | None:
        """Count outputs of ``agent`` outside the queue (a post, an email); returns the halt if this tripped it."""
        check_agent(agent)
        return record_output(self, agent, count)

    def halt(self, reason: str) -> Halt | None:
        """Halt the pipeline by hand (no alert); None if it was already halted."""
        return trip(self, f"halted by hand: {reason}", alert=False)

    def resume(self) -> Halt | None:
        """Lift the halt; returns the halt that was lifted, or None if the pipeline was running."""
        return resume(self)

    def halted(self) -> Halt | None:
        """The current halt, or None when the pipeline runs."""
        return read_halt(self)

    def requeue(self, task_id: str) -> None:
        """Move a dead-lettered task back to pending with a fresh attempt budget."""
        validate_task_id(task_id)
        transitions.requeue(self, task_id)
