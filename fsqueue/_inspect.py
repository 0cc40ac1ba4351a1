"""Looking at a queue: tasks by state, one task in full, locks with their owners' state, clearing locks."""

from __future__ import annotations

import os

from . import _transitions as transitions
from ._errors import CorruptRecord, LockHeld, TaskNotFound
from ._frozen import as_dict, field, frozen
from ._fsio import exists_nofollow
from ._ids import validate_task_id
from ._index import iter_all
from ._record import ForeignFormat
from ._store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal

    from ._record import TaskState
    from ._transitions import Verdict

STATES: tuple[TaskState, ...] = ("pending", "delayed", "running", "done", "dead")


@frozen
class LockInfo:
    """One lock as ``fsqueue locks`` shows it."""

    task: str
    verdict: Verdict
    agent: str = ""
    pid: int = 0
    host: str = ""
    mode: str = ""
    attempt: int = 0
    claimed_at: float = 0.0
    expires_at: float = 0.0
    age: float = 0.0
    lease_left: float = 0.0
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return as_dict(self)


@frozen
class TaskInfo:
    """One task as ``fsqueue show`` and ``fsqueue tasks`` show it."""

    id: str
    state: TaskState
    priority: int = 0
    attempts: int = 0
    max_attempts: int = 0
    enqueued_at: float = 0.0
    ready_at: float = 0.0
    finished_at: float | None = None
    agent: str = ""
    payload: Any = None
    result: Any = None
    reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    lock: LockInfo | None = None

    def to_json(self) -> dict[str, Any]:
        data = as_dict(self)
        data["lock"] = None if self.lock is None else self.lock.to_json()
        return data


class Inspection(Store):
    """Read-mostly operations; mixed into :class:`fsqueue.Queue`."""

    def lock_info(self, task_id: str, now: float | None = None) -> LockInfo | None:
        """The lock of one task with its verdict, None when unclaimed."""
        now = self.clock.now() if now is None else now
        try:
            found = self.read_lock(task_id)
        except ForeignFormat as exc:
            return LockInfo(task_id, "unknown-format", error=str(exc))
        except CorruptRecord as exc:
            return LockInfo(task_id, "corrupt", error=str(exc))
        if found is None:
            return None
        lock, st = found
        return LockInfo(
            task=task_id,
            verdict=transitions.judge(lock, st.st_mtime, now),
            agent=lock.agent,
            pid=lock.owner.pid,
            host=lock.owner.host,
            mode=lock.mode,
            attempt=lock.attempt,
            claimed_at=lock.claimed_at,
            expires_at=st.st_mtime,
            age=now - lock.claimed_at,
            lease_left=st.st_mtime - now,
        )

    def locks(self) -> list[LockInfo]:
        """Every lock under ``tasks/``, oldest claim first."""
        now = self.clock.now()
        infos = []
        for name in _names(self.layout.tasks, ".lock"):
            info = self.lock_info(name, now)
            if info is not None:
                infos.append(info)
        return sorted(infos, key=lambda info: (info.claimed_at, info.task))

    def task(self, task_id: str) -> TaskInfo:
        """One task in full: state, attempts, history, lease, and the result once done."""
        validate_task_id(task_id)
        final_states: tuple[Literal["done", "dead"], ...] = ("done", "dead")
        for final_state in final_states:
            final = self.read_final(task_id, final_state)
            if final is not None:
                t = final.task
                return TaskInfo(
                    t.id,
                    final.state,
                    t.priority,
                    t.attempts,
                    t.max_attempts,
                    t.enqueued_at,
                    t.ready_at,
                    final.finished_at,
                    t.agent,
                    t.payload,
                    final.result,
                    final.reason,
                    [as_dict(e) for e in t.history],
                )
        task = self.read_task(task_id)
        if task is None:
            raise TaskNotFound(
                f"no task {task_id} in {self.root} (not pending, running, done or dead)", task_id=task_id
            )
        lock = self.lock_info(task_id)
        state: TaskState = "running" if lock else ("delayed" if task.ready_at > self.clock.now() else "pending")
        return TaskInfo(
            task.id,
            state,
            task.priority,
            task.attempts,
            task.max_attempts,
            task.enqueued_at,
            task.ready_at,
            None,
            task.agent,
            task.payload,
            None,
            "",
            [as_dict(e) for e in task.history],
            lock,
        )

    def tasks(self, state: TaskState | None = None) -> list[TaskInfo]:
        """Tasks in one state (or all), in the order they would be claimed or finished."""
        out: list[TaskInfo] = []
        want = set(STATES) if state is None else {state}
        if want & {"pending", "delayed", "running"}:
            for task_id in _names(self.layout.records, ".json"):
                try:
                    info = self.task(task_id)
                except (TaskNotFound, CorruptRecord, ValueError):
                    continue
                if info.state in want and info.state not in ("done", "dead"):
                    out.append(info)
        for final_state in ("done", "dead"):
            if final_state in want:
                for task_id in _names(self.layout.sub(final_state), ".json"):
                    try:
                        out.append(self.task(task_id))
                    except (TaskNotFound, CorruptRecord, ValueError):
                        continue
        order = {name: i for i, name in enumerate(STATES)}
        return sorted(out, key=lambda t: (order[t.state], -t.priority, t.finished_at or t.ready_at, t.id))

    def status(self) -> dict[str, Any]:
        """Counts by state, the oldest ready task's age, and locks by verdict."""
        now = self.clock.now()
        counts = dict.fromkeys(STATES, 0)
        oldest: float | None = None
        for _, ready_at, task_id in iter_all(self.layout.ready):
            if exists_nofollow(self.layout.lock(task_id)):
                continue
            if ready_at > now:
                counts["delayed"] += 1
            else:
                counts["pending"] += 1
                oldest = ready_at if oldest is None else min(oldest, ready_at)
        locks = self.locks()
        counts["running"] = len(locks)
        counts["done"] = len(_names(self.layout.sub("done"), ".json"))
        counts["dead"] = len(_names(self.layout.sub("dead"), ".json"))
        by_verdict: dict[str, int] = {}
        for info in locks:
            by_verdict[info.verdict] = by_verdict.get(info.verdict, 0) + 1
        from ._breaker import read_halt

        halt = read_halt(self)
        return {
            "root": self.root,
            "halted": None if halt is None else halt.to_json(),
            "tasks": counts,
            "oldest_pending_age": None if oldest is None else max(0.0, now - oldest),
            "locks": by_verdict,
        }

    def clear(
        self, task_ids: list[str] | None = None, *, dead: bool = False, expired: bool = False, force: bool = False
    ) -> list[tuple[str, str, Verdict]]:
        """Break locks: named ones (if dead, expired or corrupt, or with ``force``), or every dead/expired one.

        Returns ``(task, outcome, verdict)`` per lock broken. A named lock whose owner is alive and whose
        lease is current raises LockHeld unless ``force``.
        """
        allow: set[Verdict] = set()
        if dead:
            allow |= {"dead", "corrupt"}
        if expired:
            allow |= {"expired", "dead"}  # a dead owner's lock is broken however its lease stands
        done: list[tuple[str, str, Verdict]] = []
        if task_ids:
            for task_id in task_ids:
                validate_task_id(task_id)
                got = transitions.break_lock(
                    self, task_id, allow=frozenset(allow or {"dead", "expired", "corrupt"}), force=force
                )
                if got is not None:
                    done.append((task_id, got[0], got[1]))
                    continue
                info = self.lock_info(task_id)
                if info is None:
                    raise TaskNotFound(f"task {task_id} holds no lock in {self.layout.tasks}", task_id=task_id)
                raise LockHeld(
                    f"lock on task {task_id} was not broken: owner is {info.verdict} (agent {info.agent}, pid "
                    f"{info.pid}, host {info.host}, lease left {info.lease_left:.0f}s); use --force to break it",
                    path=self.layout.lock(task_id),
                    task_id=task_id,
                )
            return done
        for name in _names(self.layout.tasks, ".lock"):
            got = transitions.break_lock(self, name, allow=frozenset(allow))
            if got is not None:
                done.append((name, got[0], got[1]))
        return done


def _names(directory: str, suffix: str) -> list[str]:
    """Task ids of the ``<id><suffix>`` regular files (and planted symlinks) in ``directory``."""
    try:
        with os.scandir(directory) as entries:
            names = [e.name[: -len(suffix)] for e in entries if e.name.endswith(suffix) and not e.is_dir()]
    except FileNotFoundError:
        return []
    valid = []
    for name in names:
        try:
            valid.append(validate_task_id(name))
        except ValueError:
            continue
    return sorted(valid)
