"""A crash at every step of every transition, then the next actor: nothing lost, nothing counted twice.

A crash is a :class:`Crash` raised by a patched seam before (or just after) its N-th call inside the
transition. Nothing in fsqueue catches it, as nothing catches SIGKILL; the guard's flock is released
when its descriptor closes, as it is when a process dies. The patch is then removed and the test does
what a real system does next -- a claimer comes by, the watchdog breaks the crashed holder's lock, the
producer or operator retries -- and reads the directory tree to check that the task ends in exactly one
state with its result and its attempt count intact.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

import fsqueue._queue
from fsqueue import Claim, ManualClock, Queue
from fsqueue import _transitions as transitions
from fsqueue._identity import current_owner
from fsqueue._owners import ensure_owner_dir, owner_link
from fsqueue._transitions import Verdict

#: Every verdict a live lock can get: a crashed holder in this process still looks alive, so the
#: test passes all of them, as a watchdog would once it has proven the holder dead.
ANY_VERDICT: frozenset[Verdict] = frozenset({"alive", "dead", "expired", "lease", "foreign", "corrupt"})


EXPIRED: frozenset[Verdict] = frozenset({"expired"})
CORRUPT: frozenset[Verdict] = frozenset({"corrupt"})


class Crash(BaseException):
    """The process dies here: raised by a seam, caught by nothing in fsqueue."""


@dataclass(frozen=True)
class Step:
    """Crash before (or just after) the ``nth`` call of ``seam`` within one transition.

    ``seam`` names a function in the transition's module, or ``os.link`` (counting only links whose
    destination ends with ``dest``).
    """

    seam: str
    nth: int = 1
    after: bool = False
    dest: str = ""

    def __str__(self) -> str:
        dest = f"[{self.dest}]" if self.dest else ""
        return f"{'after' if self.after else 'before'}-{self.seam}{dest}#{self.nth}"


def arm(monkeypatch: pytest.MonkeyPatch, module: ModuleType, step: Step) -> None:
    if step.seam == "os.link":
        target: object = os
        name = "link"
    else:
        target, name = module, step.seam
    real = getattr(target, name)
    calls = 0

    def seam(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if step.dest and not os.fspath(args[1]).endswith(step.dest):
            return real(*args, **kwargs)
        calls += 1
        if calls != step.nth:
            return real(*args, **kwargs)
        if step.after:
            real(*args, **kwargs)
        raise Crash(str(step))

    monkeypatch.setattr(target, name, seam)


def crash(step: Step, action: Callable[[], object], module: ModuleType = transitions) -> None:
    """Run ``action`` until it dies at ``step``; the seam is restored afterwards."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        arm(monkeypatch, module, step)
        with pytest.raises(Crash):
            action()


def markers(queue: Queue, task_id: str) -> list[str]:
    found = []
    for directory, _, files in os.walk(queue.layout.ready):
        found += [os.path.join(directory, name) for name in files if name.endswith(f"-{task_id}")]
    return found


def where(queue: Queue, task_id: str) -> dict[str, int]:
    """Which state files of ``task_id`` exist (ready/ counts markers)."""
    layout = queue.layout
    return {
        "records": int(os.path.lexists(layout.record(task_id))),
        "tasks": int(os.path.lexists(layout.lock(task_id))),
        "ready": len(markers(queue, task_id)),
        "done": int(os.path.lexists(layout.done(task_id))),
        "dead": int(os.path.lexists(layout.dead(task_id))),
    }


def assert_settled(queue: Queue, task_id: str, state: str) -> None:
    """The task is in ``state`` (done or dead) and nothing of any other state is left behind."""
    expected = {"records": 0, "tasks": 0, "ready": 0, "done": 0, "dead": 0, state: 1}
    assert where(queue, task_id) == expected


def state_of(queue: Queue, task_id: str) -> str:
    """The one state the files of ``task_id`` spell; fails if they spell two.

    A done or dead record stands alone; a running task is its record and lock; a pending one is its
    record and the marker the record names (an older marker that names nothing is a leftover that the
    next claimer drops).
    """
    found = where(queue, task_id)
    for final in ("done", "dead"):
        if found[final]:
            assert_settled(queue, task_id, final)
            return final
    if not found["records"]:
        assert found == {"records": 0, "tasks": 0, "ready": 0, "done": 0, "dead": 0}
        return "absent"
    task = queue.read_task(task_id)
    assert task is not None
    entry = os.path.join(queue.layout.ready, task.entry)
    if found["tasks"]:
        assert entry not in markers(queue, task_id)
        return "running"
    assert entry in markers(queue, task_id)
    return "pending"


def history(queue: Queue, task_id: str) -> list[tuple[str, int]]:
    return [(event["event"], event["attempt"]) for event in queue.task(task_id).history]


def break_leftover_locks(queue: Queue) -> list[str]:
    """What the watchdog does once it has proven a crashed holder dead: break each lock it left."""
    outcomes: list[str] = []
    for name in sorted(os.listdir(queue.layout.tasks)):
        if name.endswith(".lock"):
            got = transitions.break_lock(queue, name.removesuffix(".lock"), allow=ANY_VERDICT)
            outcomes.append("not broken" if got is None else got[0])
    return outcomes


def drain(queue: Queue, clock: ManualClock, result: object) -> None:
    """Claim and complete everything, waiting out any back-off (retry_max is an hour)."""
    for _ in range(20):
        clock.advance(4000)
        claim = queue.claim("next")
        if claim is None:
            return
        claim.complete(result)
    raise AssertionError("the queue never drained")


def claimed(queue: Queue) -> Claim:
    claim = queue.claim("crashed", ttl=60)
    assert claim is not None
    return claim


@contextmanager
def kept(path: str) -> Iterator[None]:
    """The file at ``path`` (a committed outcome) is still there, byte for byte, after the block."""
    with open(path, "rb") as handle:
        before = handle.read()
    yield
    with open(path, "rb") as handle:
        assert handle.read() == before


def corrupt_lock(queue: Queue, task_id: str) -> None:
    """Overwrite the lock in place, as a non-atomic writer or a bad disk would."""
    with open(queue.layout.lock(task_id), "wb") as handle:
        handle.write(b"\0garbage")


def ids(cases: list[Any]) -> list[str]:
    return [str(case[0]) for case in cases]


# enqueue: the marker first, then the record (the record makes it pending)

ENQUEUE_STEPS = [
    Step("add_entry"),
    Step("add_entry", after=True),
    Step("publish_new"),
    Step("publish_new", after=True),
]


@pytest.mark.parametrize("step", ENQUEUE_STEPS, ids=str)
def test_enqueue_crash_then_retry_enqueues_once(queue: Queue, clock: ManualClock, step: Step) -> None:
    """An enqueue killed at any step is either invisible or whole; the producer's retry enqueues exactly once."""
    crash(step, lambda: queue.enqueue("job", id="t1"), module=fsqueue._queue)
    claim = queue.claim("w")  # a claimer passes first: it must not trip over a half-made task
    if claim is not None:
        claim.complete("r")
    assert state_of(queue, "t1") == ("done" if claim else "absent")
    clock.advance(1)
    assert queue.enqueue("job", id="t1", if_absent=True) == "t1"  # the producer got no id: it retries
    assert state_of(queue, "t1") == ("done" if claim else "pending")
    drain(queue, clock, "r")
    assert_settled(queue, "t1", "done")
    assert history(queue, "t1") == [("enqueued", 0), ("completed", 1)]
    assert queue.task("t1").result == "r"


# claim: stage the lock, link the owner index, link tasks/<id>.lock (the claim), drop the marker

CLAIM_STEPS = [
    (Step("exists_nofollow"), False),
    (Step("write_staged"), False),
    (Step("write_staged", after=True), False),
    (Step("ensure_owner_dir", after=True), False),
    (Step("os.link", dest="t1.lock"), False),
    (Step("os.link", dest="t1.lock", after=True), False),  # the owner-index link comes first
    (Step("os.link", nth=2, dest="t1.lock"), False),
    (Step("os.link", nth=2, dest="t1.lock", after=True), True),
    (Step("unlink_quietly"), True),  # the staging name
    (Step("unlink_quietly", after=True), True),
    (Step("fsync_dir"), True),
    (Step("remove_entry"), True),
    (Step("remove_entry", after=True), True),
]


@pytest.mark.parametrize(("step", "published"), CLAIM_STEPS, ids=ids(CLAIM_STEPS))
def test_claim_crash_counts_the_attempt_only_if_the_lock_was_published(
    queue: Queue, clock: ManualClock, step: Step, published: bool
) -> None:
    """A claimer killed mid-claim either took nothing or holds a lock whose break counts its attempt once."""
    queue.enqueue("job", id="t1")
    crash_claim_and_recover(queue, clock, step, published)
    if published:
        assert history(queue, "t1") == [("enqueued", 0), ("broken", 1), ("completed", 2)]
    else:
        assert history(queue, "t1") == [("enqueued", 0), ("completed", 1)]
    assert queue.task("t1").attempts == (2 if published else 1)


def crash_claim_and_recover(queue: Queue, clock: ManualClock, step: Step, published: bool) -> None:
    """Crash a claim of t1 at ``step``; its lock exists iff ``published``, and a break and a drain finish it."""
    crash(step, lambda: queue.claim("crashed", ttl=60))
    assert where(queue, "t1")["tasks"] == int(published)
    assert break_leftover_locks(queue) == (["requeued"] if published else [])
    assert state_of(queue, "t1") == "pending"
    drain(queue, clock, "r")
    assert_settled(queue, "t1", "done")


def plant_stray_owner_link(queue: Queue, task_id: str) -> str:
    """An owners/<key>/<id>.lock of this process that no lock shares: left by an earlier failed claim."""
    ensure_owner_dir(queue.layout.owners, queue.layout.staging, current_owner())
    stray = owner_link(queue.layout.owners, current_owner(), task_id)
    with open(stray, "wb") as handle:
        handle.write(b"left by an earlier claim\n")
    return stray


# A stray owner link is replaced (unlink, link again) only when the first link finds it: the same steps,
# then the claim goes on as above.
STRAY_LINK_STEPS = [
    (Step("os.link", dest="t1.lock", after=False), False),
    (Step("unlink_quietly"), False),
    (Step("unlink_quietly", after=True), False),
    (Step("os.link", nth=2, dest="t1.lock"), False),
    (Step("os.link", nth=2, dest="t1.lock", after=True), False),
    (Step("os.link", nth=3, dest="t1.lock"), False),
    (Step("os.link", nth=3, dest="t1.lock", after=True), True),
]


@pytest.mark.parametrize(("step", "published"), STRAY_LINK_STEPS, ids=ids(STRAY_LINK_STEPS))
def test_claim_over_a_stray_owner_link_crash_counts_the_attempt_only_if_published(
    queue: Queue, clock: ManualClock, step: Step, published: bool
) -> None:
    """A claim that meets a stray owner link of its own process replaces it; a crash meanwhile loses nothing."""
    queue.enqueue("job", id="t1")
    plant_stray_owner_link(queue, "t1")
    crash_claim_and_recover(queue, clock, step, published)
    assert queue.task("t1").attempts == (2 if published else 1)


def test_claim_replaces_a_stray_owner_link_with_the_lock(queue: Queue) -> None:
    """The owner index ends up pointing at the new lock (same inode), not at the stray file it replaced."""
    queue.enqueue("job", id="t1")
    stray = plant_stray_owner_link(queue, "t1")
    claim = claimed(queue)
    assert os.path.samefile(stray, queue.layout.lock("t1"))
    claim.complete("r")
    assert not os.path.lexists(stray)
    assert_settled(queue, "t1", "done")


# complete: publish done/<id>.json (the commit point), then remove the record, the lock, the index link

COMPLETE_STEPS = [
    (Step("publish_new"), False),
    (Step("os.link", dest="done/t1.json", after=True), True),  # linked, directory not yet flushed
    (Step("publish_new", after=True), True),
    (Step("unlink_quietly"), True),
    (Step("unlink_quietly", after=True), True),
    (Step("unlink_quietly", nth=2), True),
    (Step("unlink_quietly", nth=2, after=True), True),
    (Step("unlink_owner_link", after=True), True),
]


@pytest.mark.parametrize(("step", "committed"), COMPLETE_STEPS, ids=ids(COMPLETE_STEPS))
def test_complete_crash_never_loses_or_repeats_the_commit(
    queue: Queue, clock: ManualClock, step: Step, committed: bool
) -> None:
    """A holder killed mid-complete: a committed result survives the break untouched; otherwise the task reruns."""
    queue.enqueue("job", id="t1")
    claim = claimed(queue)
    crash(step, lambda: claim.complete({"by": "first"}))
    assert where(queue, "t1")["done"] == int(committed)
    lock_left = where(queue, "t1")["tasks"]
    if committed:
        with kept(queue.layout.done("t1")):
            assert break_leftover_locks(queue) == ["cleaned"] * lock_left
            assert state_of(queue, "t1") == "done"
            drain(queue, clock, {"by": "second"})
        assert history(queue, "t1") == [("enqueued", 0), ("completed", 1)]
    else:
        assert break_leftover_locks(queue) == ["requeued"]
        assert state_of(queue, "t1") == "pending"
        drain(queue, clock, {"by": "second"})
        assert history(queue, "t1") == [("enqueued", 0), ("broken", 1), ("completed", 2)]
    assert_settled(queue, "t1", "done")
    info = queue.task("t1")
    assert (info.result, info.attempts) == ({"by": "first"} if committed else {"by": "second"}, 1 + (not committed))


# fail, retry path: republish the record (settled, backed off), add its marker, release the lock

SETTLE_STEPS = [
    (Step("publish_replace"), False),
    (Step("publish_replace", after=True), True),
    (Step("add_entry"), True),
    (Step("add_entry", after=True), True),
    (Step("unlink_quietly"), True),
    (Step("unlink_quietly", after=True), True),
    (Step("unlink_owner_link", after=True), True),
]


@pytest.mark.parametrize(("step", "recorded"), SETTLE_STEPS, ids=ids(SETTLE_STEPS))
def test_fail_retry_crash_counts_the_attempt_once(queue: Queue, clock: ManualClock, step: Step, recorded: bool) -> None:
    """A holder killed while recording a retryable failure: attempt 1 is counted once (failed or broken)."""
    queue.enqueue("job", id="t1", max_attempts=3)
    claim = claimed(queue)
    crash(step, lambda: claim.fail("boom", retry=True))
    lock_left = where(queue, "t1")["tasks"]
    assert break_leftover_locks(queue) == ["requeued"] * lock_left
    assert state_of(queue, "t1") == "pending"
    drain(queue, clock, "r")
    assert_settled(queue, "t1", "done")
    first = "failed" if recorded else "broken"
    assert history(queue, "t1") == [("enqueued", 0), (first, 1), ("completed", 2)]
    assert queue.task("t1").attempts == 2


def test_complete_after_a_crashed_fail_of_the_same_claim_commits_the_rewritten_record(queue: Queue) -> None:
    """The record the claim read is reused by its complete only while the file is unchanged.

    A fail of this claim that died after rewriting the record (settled, a ``failed`` event) leaves the
    lock in place; the holder's complete must build the done record from the rewritten file, not from
    the copy it read at claim time.
    """
    queue.enqueue("job", id="t1", max_attempts=3)
    claim = claimed(queue)
    crash(Step("publish_replace", after=True), lambda: claim.fail("boom", retry=True))
    claim.complete("r")
    assert_settled(queue, "t1", "done")
    assert history(queue, "t1") == [("enqueued", 0), ("failed", 1), ("completed", 1)]
    assert queue.task("t1").result == "r"


# fail, dead path (and a break that exhausts the attempts): publish dead/<id>.json, remove record, lock, link

BURY_STEPS = [
    (Step("publish_new"), False),
    (Step("publish_new", after=True), True),
    (Step("unlink_quietly"), True),
    (Step("unlink_quietly", after=True), True),
    (Step("unlink_quietly", nth=2), True),
    (Step("unlink_quietly", nth=2, after=True), True),
    (Step("unlink_owner_link", after=True), True),
]


@pytest.mark.parametrize(("step", "buried"), BURY_STEPS, ids=ids(BURY_STEPS))
def test_fail_dead_crash_buries_once(queue: Queue, clock: ManualClock, step: Step, buried: bool) -> None:
    """A holder killed while dead-lettering: the task ends dead exactly once, its one attempt counted once."""
    queue.enqueue("job", id="t1", max_attempts=1)
    claim = claimed(queue)
    crash(step, lambda: claim.fail("bad input", retry=False))
    lock_left = where(queue, "t1")["tasks"]
    if buried:
        with kept(queue.layout.dead("t1")):
            assert break_leftover_locks(queue) == ["cleaned"] * lock_left
            assert state_of(queue, "t1") == "dead"
            drain(queue, clock, "r")
    else:
        assert break_leftover_locks(queue) == ["dead"]  # the last attempt, counted by the break
        drain(queue, clock, "r")
    assert_settled(queue, "t1", "dead")
    info = queue.task("t1")
    assert history(queue, "t1") == [("enqueued", 0), ("failed" if buried else "broken", 1)]
    assert info.attempts == 1
    assert (info.reason == "bad input") == buried


# break: the same settle steps, run by a breaker that dies; the watchdog's next sweep breaks again


@pytest.mark.parametrize("step", [case[0] for case in SETTLE_STEPS], ids=str)
def test_break_crash_then_rebreak_counts_one_broken_attempt(queue: Queue, clock: ManualClock, step: Step) -> None:
    """A breaker killed mid-break: the next break finishes the requeue without counting the attempt again."""
    queue.enqueue("job", id="t1", max_attempts=3)
    claimed(queue)
    clock.advance(61)
    crash(step, lambda: transitions.break_lock(queue, "t1", allow=EXPIRED))
    lock_left = where(queue, "t1")["tasks"]
    assert break_leftover_locks(queue) == ["requeued"] * lock_left
    assert state_of(queue, "t1") == "pending"
    task = queue.read_task("t1")
    assert task is not None and task.attempts == 1
    assert [os.path.relpath(path, queue.layout.ready) for path in markers(queue, "t1")] == [task.entry]
    drain(queue, clock, "r")
    assert_settled(queue, "t1", "done")
    assert history(queue, "t1") == [("enqueued", 0), ("broken", 1), ("completed", 2)]


@pytest.mark.parametrize("step", [case[0] for case in BURY_STEPS], ids=str)
def test_break_crash_on_last_attempt_buries_once(queue: Queue, clock: ManualClock, step: Step) -> None:
    """A breaker killed while dead-lettering an exhausted task: the next break leaves it dead, counted once."""
    queue.enqueue("job", id="t1", max_attempts=1)
    claimed(queue)
    clock.advance(61)
    crash(step, lambda: transitions.break_lock(queue, "t1", allow=EXPIRED))
    buried = where(queue, "t1")["dead"]
    lock_left = where(queue, "t1")["tasks"]
    assert break_leftover_locks(queue) == [("cleaned" if buried else "dead")] * lock_left
    assert state_of(queue, "t1") == "dead"
    drain(queue, clock, "r")
    assert_settled(queue, "t1", "dead")
    assert history(queue, "t1") == [("enqueued", 0), ("broken", 1)]
    assert queue.task("t1").attempts == 1


CORRUPT_LOCK_STEPS = [
    pytest.param(Step("publish_replace")),
    pytest.param(Step("publish_replace", after=True)),
    pytest.param(Step("add_entry")),
    pytest.param(Step("add_entry", after=True)),
    pytest.param(Step("unlink_quietly", after=True)),
]


@pytest.mark.parametrize("step", CORRUPT_LOCK_STEPS, ids=str)
def test_break_of_corrupt_lock_crash_then_rebreak_requeues_once(queue: Queue, clock: ManualClock, step: Step) -> None:
    """A breaker killed while clearing a corrupt lock: the task is still requeued and run, its attempt counted once."""
    queue.enqueue("job", id="t1", max_attempts=3)
    claimed(queue)
    corrupt_lock(queue, "t1")
    crash(step, lambda: transitions.break_lock(queue, "t1", allow=CORRUPT))
    break_leftover_locks(queue)
    assert state_of(queue, "t1") == "pending"
    drain(queue, clock, "r")
    assert_settled(queue, "t1", "done")
    assert history(queue, "t1") == [("enqueued", 0), ("broken", 1), ("completed", 2)]


def test_each_corrupt_lock_break_counts_its_attempt(queue: Queue, clock: ManualClock) -> None:
    """A task whose lock is found corrupt after every claim still reaches dead-letter after max_attempts."""
    queue.enqueue("job", id="t1", max_attempts=2)
    for _ in range(3):
        if queue.claim("w", ttl=60) is None:
            break
        corrupt_lock(queue, "t1")
        transitions.break_lock(queue, "t1", allow=CORRUPT)
        clock.advance(4000)
    assert_settled(queue, "t1", "dead")
    assert history(queue, "t1") == [("enqueued", 0), ("broken", 1), ("broken", 2)]


# requeue: drop any stale lock, add the marker, republish the record, remove the dead letter

REQUEUE_STEPS = [
    Step("unlink_quietly"),
    Step("unlink_quietly", after=True),
    Step("add_entry"),
    Step("add_entry", after=True),
    Step("publish_replace"),
    Step("publish_replace", after=True),
    Step("unlink_quietly", nth=2),
    Step("unlink_quietly", nth=2, after=True),
]


@pytest.mark.parametrize("claimer_first", [True, False], ids=["claimer-first", "operator-first"])
@pytest.mark.parametrize("step", REQUEUE_STEPS, ids=str)
def test_requeue_crash_then_retry_requeues_once(
    queue: Queue, clock: ManualClock, step: Step, claimer_first: bool
) -> None:
    """A requeue killed at any step is finished by rerunning it: the task runs again, requeued exactly once."""
    queue.enqueue("job", id="t1", max_attempts=1)
    claimed(queue).fail("bad input", retry=False)
    crash(step, lambda: queue.requeue("t1"))
    clock.advance(1)
    if claimer_first:
        claim = queue.claim("w")
        if claim is not None:
            claim.complete("r")
    if queue.task("t1").state == "dead":
        queue.requeue("t1")  # the operator saw no success: reruns it
    assert state_of(queue, "t1") in ("pending", "done")
    drain(queue, clock, "r")
    assert_settled(queue, "t1", "done")
    assert history(queue, "t1") == [("enqueued", 0), ("failed", 1), ("requeued", 0), ("completed", 1)]
    assert queue.task("t1").attempts == 1
