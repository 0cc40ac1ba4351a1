"""Every state transition of a task, each run under the task's guard (see ``_guard``).

States are told by which files exist (``docs/protocol.md``)::

    pending  records/<id>.json + ready/<...>/<when>-<id>
    running  records/<id>.json + tasks/<id>.lock
    done     done/<id>.json        (the commit point: wins over any leftover)
    dead     dead/<id>.json        (likewise)

Each transition writes the file that decides the new state *first* and removes the old state's files
last, so a crash at any instruction leaves a state that the next transition of that task (or a break
of its lock) completes idempotently: nothing is lost and nothing is counted twice.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from ._errors import CorruptRecord, LeaseLost
from ._frozen import replace
from ._fsio import (
    exists_nofollow,
    fsync_dir,
    publish_new,
    publish_replace,
    storage_errors,
    unlink_quietly,
    write_staged,
)
from ._guard import guarded
from ._identity import Owner, owner_state
from ._index import add_entry, entry_for, remove_entry
from ._layout import Layout
from ._owners import ensure_owner_dir, forget_owner_dir, owner_link, unlink_owner_link
from ._record import (
    Event,
    FinalRecord,
    ForeignFormat,
    LockRecord,
    TaskRecord,
    clip_error,
    encode_final,
    encode_lock,
    encode_task,
)
from ._store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Concatenate, Literal, ParamSpec, TypeVar

    BreakOutcome = Literal["requeued", "dead", "cleaned", "quarantined"]

    Verdict = Literal["alive", "lease", "foreign", "expired", "dead", "corrupt", "unknown-format"]

    R = TypeVar("R")

    P = ParamSpec("P")
else:
    # Literal needs ``typing`` at run time; importers of these names only use them in annotations.
    BreakOutcome = str
    Verdict = str


def _storage_errors(
    action: str, where: Callable[[Layout, str], str]
) -> Callable[[Callable[Concatenate[Store, str, P], R]], Callable[Concatenate[Store, str, P], R]]:
    """Run a transition with bare OSErrors turned into StorageError naming ``action`` and the path."""

    def decorate(fn: Callable[Concatenate[Store, str, P], R]) -> Callable[Concatenate[Store, str, P], R]:
        @functools.wraps(fn)
        def run(store: Store, task_id: str, /, *args: P.args, **kwargs: P.kwargs) -> R:
            with storage_errors(action, where(store.layout, task_id), task_id):
                return fn(store, task_id, *args, **kwargs)

        return run

    return decorate


def judge(lock: LockRecord, expires_at: float, now: float) -> Verdict:
    """How a lock stands: ``dead`` owner (provably), ``expired`` lease, or live (alive/lease/foreign)."""
    state = owner_state(lock.owner) if lock.mode == "process" else "foreign"
    if state == "dead":
        return "dead"
    if expires_at <= now:
        return "expired"
    if lock.mode == "lease":
        return "lease"
    return state


def backoff(store: Store, attempts: int) -> float:
    """Exponential back-off with jitter: base * 2^(n-1), capped, times a random factor in [0.5, 1)."""
    delay = min(store.config.retry_max, store.config.retry_base * 2.0 ** max(0, attempts - 1))
    return delay * (0.5 + store.rng.random() * 0.5)


def try_claim(
    store: Store,
    rel: str,
    task_id: str,
    agent: str,
    *,
    ttl: float | None,
    mode: Literal["process", "lease"],
    owner: Owner,
    blocking: bool,
) -> tuple[LockRecord, tuple[TaskRecord, os.stat_result], float] | Literal["busy"] | None:
    """Claim the task behind index marker ``rel``; None when it is not claimable, "busy" when the guard is.

    Returns the lock, the task record with the fstat of its file (so the claim's complete or fail can
    reuse it while the file is unchanged: ``Store.task_if_unchanged``), and the lease expiry.
    """
    layout = store.layout
    with guarded(layout.guard(task_id), blocking=blocking) as held:
        if not held:
            return "busy"
        if exists_nofollow(layout.lock(task_id)):
            # Left by a claim (or a failure) that crashed before removing its marker: the lock wins.
            remove_entry(layout.ready, rel)
            return None
        try:
            version = store.read_task_version(task_id)
        except ForeignFormat:
            return None  # written by a newer fsqueue: not ours to run, and not garbage either
        except CorruptRecord as exc:
            store.quarantine(layout.record(task_id), str(exc))
            remove_entry(layout.ready, rel)
            return None
        if version is None:
            _drop_leftovers(store, task_id, rel, None)
            return None
        task = version[0]
        if task.entry != rel or store.finished_state(task_id) is not None:
            _drop_leftovers(store, task_id, rel, task)
            return None
        if task.attempts >= task.max_attempts:
            _bury(store, task, "attempts exhausted", token="", agent=agent)
            remove_entry(layout.ready, rel)
            return None
        now = store.clock.now()
        lease = ttl or task.ttl or store.config.ttl
        lock = LockRecord(
            task=task_id,
            agent=agent,
            token=os.urandom(16).hex(),  # 128 random bits (secrets costs 5 ms of import per cron start)
            attempt=task.attempts + 1,
            fence=task.fence + 1,
            claimed_at=now,
            ttl=lease,
            mode=mode,
            owner=owner,
        )
        if not _publish_lock(store, lock, now + lease):
            return None
        remove_entry(layout.ready, rel, prune=False)
        return lock, version, now + lease


def _publish_lock(store: Store, lock: LockRecord, expires: float) -> bool:
    """Create ``tasks/<id>.lock`` (complete, in one link) and, for a process owner, its owner-index link.

    The owner link is made first: a crash between the two leaves only a stray index link (swept later),
    never a lock that the owner index does not know -- which would hide a dead owner until its TTL.
    """
    layout = store.layout
    tmp = write_staged(layout.staging, encode_lock(lock), durable=store.durable, mtime=expires)
    try:
        linked = None
        if lock.mode == "process":
            owner_dir = ensure_owner_dir(layout.owners, layout.staging, lock.owner)
            linked = owner_link(layout.owners, lock.owner, lock.task)
            try:
                os.link(tmp, linked, follow_symlinks=False)
            except FileExistsError:
                # A stray link from a crash of an earlier claim of this task by this same process. It
                # is an index entry only (no lock has this inode: we hold the guard and there is no
                # lock), so replacing it is safe; linking first saves an unlink on every claim.
                unlink_quietly(linked)
                os.link(tmp, linked, follow_symlinks=False)
            except FileNotFoundError:  # the directory was removed by hand since this process made it
                forget_owner_dir(owner_dir)
                ensure_owner_dir(layout.owners, layout.staging, lock.owner)
                os.link(tmp, linked, follow_symlinks=False)
        try:
            os.link(tmp, layout.lock(lock.task), follow_symlinks=False)
        except FileExistsError:
            if linked is not None:
                unlink_quietly(linked)
            return False
    finally:
        unlink_quietly(tmp)
    if store.durable:
        fsync_dir(layout.tasks)
    return True


def _drop_leftovers(store: Store, task_id: str, rel: str, task: TaskRecord | None) -> None:
    # A marker whose record is gone or points elsewhere, or a task already done/dead: crash leftovers.
    remove_entry(store.layout.ready, rel)
    if task is not None and task.entry == rel and store.finished_state(task_id) is not None:
        unlink_quietly(store.layout.record(task_id))


def checked_lock(store: Store, task_id: str, token: str) -> tuple[LockRecord, os.stat_result]:
    """The lock if it is still this claim's; else LeaseLost (the fence). Call under the guard."""
    path = store.layout.lock(task_id)
    try:
        found = store.read_lock(task_id)
    except CorruptRecord:
        found = None
    if found is None or found[0].token != token:
        raise LeaseLost(
            f"lease on task {task_id} was lost: {path} is gone or belongs to another claim; "
            "the operation was refused and nothing was committed (another worker may run the task)",
            path=path,
            task_id=task_id,
        )
    return found


@_storage_errors("renew the lease in", Layout.lock)
def renew(store: Store, task_id: str, token: str, ttl: float | None) -> float:
    """Extend this claim's lease to now + ttl; LeaseLost when the lock is no longer this claim's."""
    with guarded(store.layout.guard(task_id)):
        lock, _ = checked_lock(store, task_id, token)
        expires = store.clock.now() + (ttl or lock.ttl)
        # Under the guard no break can run, so the name still denotes the inode just checked.
        os.utime(store.layout.lock(task_id), (expires, expires), follow_symlinks=False)
        return expires


@_storage_errors("complete task into", Layout.done)
def complete(
    store: Store,
    task_id: str,
    token: str,
    result: object,
    agent: str,
    known: tuple[TaskRecord, os.stat_result] | None = None,
) -> str:
    """Commit ``result`` for the claim with ``token``: at most once, refused once the lock is not ours.

    Returns the agent credited with the output (for the circuit breaker, counted by the caller
    once the task's guard is released: two guards held at once could be the same flock file).
    ``known`` is the task record as the claim read it, reused if the file is unchanged.
    """
    layout = store.layout
    with guarded(layout.guard(task_id)):
        lock, st = checked_lock(store, task_id, token)
        if _finish_committed(store, task_id, token, st, lock):
            return agent or lock.agent  # this claim committed before a crash: the retry is a no-op
        task = store.task_if_unchanged(task_id, known)
        if task is None:
            raise CorruptRecord(
                f"task {task_id} is claimed but {layout.record(task_id)} is missing",
                path=layout.record(task_id),
                task_id=task_id,
            )
        now = store.clock.now()
        event = Event(now, "completed", attempt=lock.attempt, agent=agent or lock.agent)
        done = task.with_event(
            event, attempts=max(task.attempts, lock.attempt), fence=max(task.fence, lock.fence), settled=token
        )
        final = FinalRecord("done", done, now, result=result, token=token, agent=agent or lock.agent)
        publish_new(layout.staging, encode_final(final), layout.done(task_id), durable=store.durable)
        # Committed. What follows is cleanup that any later transition would also perform.
        unlink_quietly(layout.record(task_id))
        _unlink_lock_if_same(store, task_id, st, lock)
        return agent or lock.agent


def _finish_committed(store: Store, task_id: str, token: str, st: os.stat_result, lock: LockRecord) -> bool:
    """A final record already exists beside this claim's lock (a crash after the commit point): clean up.

    True when it is this claim's own done record; a final record of anything else means the lease is gone.
    """
    state = store.finished_state(task_id)
    if state is None:
        return False
    final = store.read_final(task_id, state)
    unlink_quietly(store.layout.record(task_id))
    _unlink_lock_if_same(store, task_id, st, lock)
    if state == "done" and final is not None and final.token == token:
        return True
    raise LeaseLost(f"task {task_id} is already {state}; nothing was written", task_id=task_id)


def _unlink_lock_if_same(store: Store, task_id: str, st: os.stat_result, lock: LockRecord | None = None) -> None:
    path = store.layout.lock(task_id)
    try:
        now_st = os.lstat(path)
    except FileNotFoundError:
        now_st = None
    if now_st is not None and (now_st.st_ino, now_st.st_dev) == (st.st_ino, st.st_dev):
        unlink_quietly(path)
    # The index link goes after the lock: a crash in between leaves a stray link, not a hidden lock.
    if lock is not None and lock.mode == "process":
        unlink_owner_link(store.layout.owners, lock.owner, task_id)


@_storage_errors("record the failure in", Layout.record)
def fail(
    store: Store,
    task_id: str,
    token: str,
    error: str,
    *,
    retry: bool,
    agent: str,
    known: tuple[TaskRecord, os.stat_result] | None = None,
) -> str:
    """Record a failed attempt: back to pending with back-off, or dead-letter. Returns the new state."""
    with guarded(store.layout.guard(task_id)):
        lock, st = checked_lock(store, task_id, token)
        if _finish_committed(store, task_id, token, st, lock):
            raise LeaseLost(f"task {task_id} was already completed by this claim", task_id=task_id)
        task = store.task_if_unchanged(task_id, known)
        if task is None:
            raise CorruptRecord(
                f"task {task_id} is claimed but its record is missing",
                path=store.layout.record(task_id),
                task_id=task_id,
            )
        return settle_failure(store, task, lock, st, error=error, event="failed", retry=retry, agent=agent)


def settle_failure(
    store: Store,
    task: TaskRecord,
    lock: LockRecord,
    st: os.stat_result | None,
    *,
    error: str,
    event: str,
    retry: bool,
    agent: str = "",
) -> str:
    """Turn a finished-without-commit claim into pending (with back-off) or dead. Call under the guard."""
    layout = store.layout
    if task.settled == lock.token:
        # This claim's outcome was recorded before a crash: finish the move without counting it again.
        if exists_nofollow(layout.record(task.id)):
            add_entry(layout.ready, task.entry, durable=store.durable)
        _release_lock(store, task.id, st, lock)
        return "pending"
    now = store.clock.now()
    attempts = max(task.attempts, lock.attempt)
    record = task.with_event(
        Event(now, event, attempt=lock.attempt, agent=agent or lock.agent, error=clip_error(error)),
        attempts=attempts,
        fence=max(task.fence, lock.fence),
        settled=lock.token,
    )
    if retry and attempts < task.max_attempts:
        ready_at = now + backoff(store, attempts)
        rel = entry_for(task.priority, ready_at, task.id)
        record = replace(record, ready_at=ready_at, entry=rel)
        publish_replace(layout.staging, encode_task(record), layout.record(task.id), durable=store.durable)
        add_entry(layout.ready, rel, durable=store.durable)
        _release_lock(store, task.id, st, lock)
        return "pending"
    reason = error if not retry else f"attempts exhausted ({attempts}/{task.max_attempts}): {error}"
    _bury(store, record, clip_error(reason), token=lock.token, agent=agent or lock.agent)
    _release_lock(store, task.id, st, lock)
    return "dead"


def _release_lock(store: Store, task_id: str, st: os.stat_result | None, lock: LockRecord | None = None) -> None:
    if st is None:
        unlink_quietly(store.layout.lock(task_id))
        if lock is not None and lock.mode == "process":
            unlink_owner_link(store.layout.owners, lock.owner, task_id)
    else:
        _unlink_lock_if_same(store, task_id, st, lock)


def _bury(store: Store, task: TaskRecord, reason: str, *, token: str, agent: str) -> None:
    """Move a task to dead-letter: the dead record first (commit point), then the record goes."""
    layout = store.layout
    final = FinalRecord("dead", task, store.clock.now(), reason=reason, token=token, agent=agent)
    try:
        publish_new(layout.staging, encode_final(final), layout.dead(task.id), durable=store.durable)
    except FileExistsError:
        pass  # buried before a crash; finish the cleanup
    unlink_quietly(layout.record(task.id))


@_storage_errors("break the lock", Layout.lock)
def break_lock(
    store: Store,
    task_id: str,
    *,
    allow: frozenset[Verdict],
    force: bool = False,
    expect_token: str | None = None,
    reason: str = "",
    blocking: bool = True,
) -> tuple[BreakOutcome, Verdict, LockRecord | None] | None:
    """Break the lock of ``task_id`` if, judged under the guard, its verdict is in ``allow`` (or forced).

    Identity-checked: the judgement and the removal happen under the task's guard, so no claim, renew
    or commit can slip in between (never "stat, then unlink by name"). ``expect_token`` additionally
    pins the exact claim a caller judged earlier. Returns None when nothing was broken -- also, with
    ``blocking=False``, when the guard is held: a sweep must not wait on a holder that was stopped
    (SIGSTOP, a debugger, Ctrl-Z) in the middle of a transition, or every other dead holder waits too.
    """
    layout = store.layout
    with guarded(layout.guard(task_id), blocking=blocking) as held:
        if not held:
            return None
        lock: LockRecord | None = None
        st: os.stat_result | None = None
        try:
            found = store.read_lock(task_id)
        except ForeignFormat:
            if not force:
                return None  # another version's live owner: never judged as garbage
            verdict: Verdict = "unknown-format"
        except CorruptRecord:
            verdict = "corrupt"
        else:
            if found is None:
                return None
            lock, st = found
            if expect_token is not None and lock.token != expect_token:
                return None  # not the claim that was judged: a new claim took its place
            verdict = judge(lock, st.st_mtime, store.clock.now())
        if verdict not in allow and not force:
            return None
        try:
            return _apply_break(store, task_id, verdict, lock, st, reason), verdict, lock
        except ForeignFormat:
            return None


def _apply_break(
    store: Store, task_id: str, verdict: Verdict, lock: LockRecord | None, st: os.stat_result | None, reason: str
) -> BreakOutcome:
    layout = store.layout
    if store.finished_state(task_id) is not None:
        unlink_quietly(layout.record(task_id))  # committed before a crash: only leftovers remain
        _release_lock(store, task_id, st, lock)
        return "cleaned"
    why = reason or f"lease broken: owner {verdict}"
    try:
        task = store.read_task(task_id)
    except ForeignFormat:
        raise  # a newer fsqueue's task: not ours to judge (the caller breaks nothing)
    except CorruptRecord as exc:
        store.quarantine(layout.record(task_id), str(exc))
        task = None
    if lock is None:
        if task is None:
            store.quarantine(layout.lock(task_id), f"{verdict} lock record")
            return "quarantined"
        # Copy the corrupt lock aside but keep it in place until the task is settled: removing it
        # first would strand a record with neither lock nor marker if we crash in between. The
        # stand-in token names this very lock file, so a re-break after a crash recognises its own
        # settlement while a later, different corrupt lock is counted again.
        st = os.lstat(layout.lock(task_id))
        store.quarantine(layout.lock(task_id), f"{verdict} lock record", copy=True)
        # The claim's attempt is unknown: count one conservatively.
        lock = LockRecord(
            task_id,
            "",
            f"corrupt-{st.st_ino}-{st.st_mtime_ns}",
            task.attempts + 1,
            task.fence + 1,
            0.0,
            0.0,
            "lease",
            Owner("", "", "", 0, 0, 0),
        )
    elif task is None:
        store.quarantine(layout.lock(task_id), "lock without a task record")
        return "quarantined"
    outcome = settle_failure(store, task, lock, st, error=why, event="broken", retry=True)
    return "dead" if outcome == "dead" else "requeued"


@_storage_errors("requeue task into", Layout.record)
def requeue(store: Store, task_id: str, agent: str = "") -> None:
    """Move a dead-lettered task back to pending with a fresh attempt budget."""
    from ._errors import TaskNotFound

    layout = store.layout
    with guarded(layout.guard(task_id)):
        final = store.read_final(task_id, "dead")
        if final is None:
            state = "done" if exists_nofollow(layout.done(task_id)) else None
            detail = "it is done, not dead" if state else "no dead letter with that id"
            raise TaskNotFound(
                f"cannot requeue task {task_id}: {detail} ({layout.dead(task_id)})",
                path=layout.dead(task_id),
                task_id=task_id,
            )
        now = store.clock.now()
        rel = entry_for(final.task.priority, now, task_id)
        task = final.task.with_event(
            Event(now, "requeued", agent=agent), attempts=0, settled=None, ready_at=now, entry=rel
        )
        unlink_quietly(layout.lock(task_id))  # a dead task holds no claim: any lock is a crash leftover
        add_entry(layout.ready, rel, durable=store.durable)
        publish_replace(layout.staging, encode_task(task), layout.record(task_id), durable=store.durable)
        unlink_quietly(layout.dead(task_id))
