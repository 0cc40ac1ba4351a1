"""Forced interleavings of two actors on one task: each race is made to happen, then its outcome is pinned.

Each test stops one thread at a seam -- inside the task's guard, or just before it -- and lets the other
act (or block on the guard) before the first is released. ``flock`` excludes two threads of one process
because every ``guarded`` call opens its own file description, so these threads stand in for processes.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from fsqueue import Claim, LeaseLost, ManualClock, Queue
from fsqueue import _transitions as transitions
from fsqueue._layout import guard_shard
from fsqueue._transitions import Verdict

#: Safety net for every wait and join; a healthy run never comes near it.
TIMEOUT = 10.0


class Pause:
    """A point where one thread stops until the test releases it."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.released = threading.Event()

    def hold(self) -> None:
        self.reached.set()
        assert self.released.wait(TIMEOUT), "a paused thread was never released"

    def wait_reached(self) -> None:
        assert self.reached.wait(TIMEOUT), "the thread never reached its pause point"

    def release(self) -> None:
        self.released.set()


class Actor(threading.Thread):
    """Runs one operation in a named thread and keeps its return value or exception."""

    def __init__(self, name: str, action: Callable[[], Any]) -> None:
        super().__init__(name=name, daemon=True)
        self._action = action
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._action()
        except BaseException as exc:
            self.error = exc

    def outcome(self) -> Any:
        """Join (bounded) and return the result, re-raising what the operation raised."""
        self.join(TIMEOUT)
        assert not self.is_alive(), f"{self.name} did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def started(name: str, action: Callable[[], Any]) -> Actor:
    actor = Actor(name, action)
    actor.start()
    return actor


def pause_at(
    monkeypatch: pytest.MonkeyPatch,
    target: object,
    name: str,
    *,
    thread: str,
    pause: Pause,
    after: bool = False,
    only: Callable[..., bool] = lambda *args, **kwargs: True,
) -> None:
    """Stop ``thread`` at its first matching call of ``target.name`` (before it, or just after it)."""
    real = getattr(target, name)

    def seam(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name != thread or pause.reached.is_set() or not only(*args, **kwargs):
            return real(*args, **kwargs)
        if not after:
            pause.hold()
            return real(*args, **kwargs)
        result = real(*args, **kwargs)
        pause.hold()
        return result

    monkeypatch.setattr(target, name, seam)


class GuardWatch:
    """Wraps the ``flock`` of ``fsqueue._guard``: reports threads that block on a guard, or stops one before it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *names: str, hold: dict[str, Pause] | None = None) -> None:
        self._blocked = {name: threading.Event() for name in names}
        self._hold = dict(hold or {})
        real = fcntl.flock

        def flock(fd: int, operation: int) -> None:
            me = threading.current_thread().name
            pause = self._hold.get(me)
            if pause is not None and not pause.reached.is_set():
                pause.hold()
            if me in self._blocked and not operation & fcntl.LOCK_NB:
                self._blocked[me].set()  # about to wait: the guard is held by the paused thread
            real(fd, operation)

        monkeypatch.setattr(fcntl, "flock", flock)  # the module fsqueue._guard calls

    def wait_blocked(self, name: str) -> None:
        assert self._blocked[name].wait(TIMEOUT), f"{name} never reached the guard"


def markers(queue: Queue, task_id: str) -> list[str]:
    """The ready-index markers of ``task_id``, relative to ``ready/``."""
    found = []
    for directory, _, files in os.walk(queue.layout.ready):
        for name in files:
            if name.endswith(f"-{task_id}"):
                found.append(os.path.relpath(os.path.join(directory, name), queue.layout.ready))
    return found


def lock_token(queue: Queue, task_id: str) -> str | None:
    found = queue.read_lock(task_id)
    return None if found is None else found[0].token


def events(queue: Queue, task_id: str, kind: str) -> list[dict[str, Any]]:
    return [event for event in queue.task(task_id).history if event["event"] == kind]


def claimed(queue: Queue, agent: str = "w", ttl: float | None = 60) -> Claim:
    claim = queue.claim(agent, ttl=ttl)
    assert claim is not None
    return claim


EXPIRED: frozenset[Verdict] = frozenset({"expired"})


# Claim vs claim


def test_two_claimers_on_one_task_exactly_one_wins(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claimer that arrives while another is publishing its lock waits, then finds the task taken."""
    task_id = queue.enqueue("job", id="t1")
    publishing = Pause()
    pause_at(
        monkeypatch,
        os,
        "link",
        thread="first",
        pause=publishing,
        only=lambda src, dst, **kw: dst == queue.layout.lock(task_id),
    )
    guard = GuardWatch(monkeypatch, "second")
    first = started("first", lambda: queue.claim("a"))
    publishing.wait_reached()
    second = started("second", lambda: queue.claim("b"))
    guard.wait_blocked("second")
    publishing.release()
    winner, loser = first.outcome(), second.outcome()
    assert isinstance(winner, Claim) and (winner.id, winner.attempt) == (task_id, 1)
    assert loser is None
    assert lock_token(queue, task_id) == winner.token
    assert markers(queue, task_id) == []


def test_second_claimer_takes_next_task_without_waiting(
    queue: Queue, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claimer that loses the head of the queue takes the next task while the first is still mid-claim."""
    assert guard_shard("t1") != guard_shard("t2")  # separate guards, as two tasks usually have
    queue.enqueue("head", id="t1")
    clock.advance(0.001)
    queue.enqueue("next", id="t2")
    publishing = Pause()
    pause_at(
        monkeypatch,
        os,
        "link",
        thread="first",
        pause=publishing,
        only=lambda src, dst, **kw: dst == queue.layout.lock("t1"),
    )
    first = started("first", lambda: queue.claim("a"))
    publishing.wait_reached()
    second = started("second", lambda: queue.claim("b"))
    other = second.outcome()  # finishes while "first" still holds the guard of t1
    publishing.release()
    head = first.outcome()
    assert (head.id, other.id) == ("t1", "t2")
    assert (lock_token(queue, "t1"), lock_token(queue, "t2")) == (head.token, other.token)


def test_claimer_with_stale_index_view_does_not_reclaim(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claimer that saw the marker before another claimed and completed the task gets None, changing nothing."""
    task_id = queue.enqueue("job", id="t1")
    at_guard = Pause()
    GuardWatch(monkeypatch, hold={"late": at_guard})
    late = started("late", lambda: queue.claim("late"))
    at_guard.wait_reached()  # it has read the marker and stands before the guard
    claim = claimed(queue)
    claim.complete("result")
    at_guard.release()
    assert late.outcome() is None
    info = queue.task(task_id)
    assert (info.state, info.result, info.attempts) == ("done", "result", 1)
    assert not os.path.lexists(queue.layout.record(task_id))
    assert not os.path.lexists(queue.layout.lock(task_id))
    assert markers(queue, task_id) == []


# Claim vs break


@pytest.mark.parametrize("pinned", [True, False], ids=["fresh-claim-also-expired", "fresh-claim-current"])
def test_break_judged_on_old_claim_spares_the_claim_that_replaced_it(
    queue: Queue, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, pinned: bool
) -> None:
    """A break decided on an expired claim never removes the new claim that took its place (pitfall 1)."""
    task_id = queue.enqueue("job", id="t1")
    old = claimed(queue, "a")
    clock.advance(61)
    before_guard = Pause()
    GuardWatch(monkeypatch, hold={"watchdog": before_guard})

    def sweep() -> Any:
        # The judgement a watchdog makes outside the guard: this lock, this token, expired.
        info = queue.lock_info(task_id)
        assert info is not None and info.verdict == "expired"
        judged = lock_token(queue, task_id)
        assert judged == old.token
        pin = judged if pinned else None
        return transitions.break_lock(queue, task_id, allow=EXPIRED, expect_token=pin)

    watchdog = started("watchdog", sweep)
    before_guard.wait_reached()
    # Meanwhile the old claim is broken by someone else and a new claimer takes the task.
    assert queue.clear([task_id]) == [(task_id, "requeued", "expired")]
    clock.advance(4000)
    fresh = claimed(queue, "b")
    fresh_inode = os.lstat(queue.layout.lock(task_id)).st_ino
    if pinned:
        clock.advance(61)  # now only the token pin tells the two claims apart
    before_guard.release()
    assert watchdog.outcome() is None
    assert lock_token(queue, task_id) == fresh.token
    assert os.lstat(queue.layout.lock(task_id)).st_ino == fresh_inode
    assert len(events(queue, task_id, "broken")) == 1
    fresh.complete("ok")
    info = queue.task(task_id)
    assert (info.state, info.result, info.attempts) == ("done", "ok", 2)


def test_claim_waits_for_break_in_progress_and_takes_next_attempt(
    queue: Queue, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claimer that sees the marker a break just wrote waits for the break to finish, then claims attempt 2."""
    task_id = queue.enqueue("job", id="t1")
    old = claimed(queue, "a")
    clock.advance(61)
    requeued = Pause()
    pause_at(monkeypatch, transitions, "add_entry", thread="breaker", pause=requeued, after=True)
    guard = GuardWatch(monkeypatch, "claimer")
    breaker = started("breaker", lambda: transitions.break_lock(queue, task_id, allow=EXPIRED))
    requeued.wait_reached()  # new marker written, old lock not yet released
    assert lock_token(queue, task_id) == old.token
    clock.advance(4000)
    claimer = started("claimer", lambda: queue.claim("b", ttl=60))
    guard.wait_blocked("claimer")
    requeued.release()
    outcome, verdict, _ = breaker.outcome()
    fresh = claimer.outcome()
    assert (outcome, verdict) == ("requeued", "expired")
    assert isinstance(fresh, Claim) and (fresh.attempt, fresh.fence) == (2, 2)
    assert lock_token(queue, task_id) == fresh.token
    with pytest.raises(LeaseLost):
        old.complete("stale")
    fresh.complete("fresh")
    assert queue.task(task_id).result == "fresh"


# Renew vs break


@pytest.mark.parametrize("first", ["renew", "break"])
def test_renew_racing_break_never_both_succeed(
    queue: Queue, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """Either the renew wins and the lock stays, or the break wins and the renew raises LeaseLost."""
    task_id = queue.enqueue("job", id="t1")
    claim = claimed(queue)
    clock.advance(61)  # the holder renews late: its lease has already run out
    inside = Pause()
    if first == "renew":
        lock_path = queue.layout.lock(task_id)
        pause_at(
            monkeypatch, os, "utime", thread="renewer", pause=inside, only=lambda path, *a, **kw: path == lock_path
        )
    else:
        pause_at(monkeypatch, queue, "read_lock", thread="breaker", pause=inside, after=True)
    leader_name, follower_name = ("renewer", "breaker") if first == "renew" else ("breaker", "renewer")
    guard = GuardWatch(monkeypatch, follower_name)
    actions = {
        "renewer": lambda: claim.renew(),
        "breaker": lambda: transitions.break_lock(queue, task_id, allow=EXPIRED),
    }
    leader = started(leader_name, actions[leader_name])
    inside.wait_reached()
    follower = started(follower_name, actions[follower_name])
    guard.wait_blocked(follower_name)
    inside.release()
    actors = {leader.name: leader, follower.name: follower}
    if first == "renew":
        assert actors["renewer"].outcome() == clock.now() + 60
        assert actors["breaker"].outcome() is None
        assert lock_token(queue, task_id) == claim.token
        assert events(queue, task_id, "broken") == []
        assert not claim.lost
    else:
        assert actors["breaker"].outcome()[0] == "requeued"
        with pytest.raises(LeaseLost):
            actors["renewer"].outcome()
        assert claim.lost
        assert lock_token(queue, task_id) is None
        assert len(events(queue, task_id, "broken")) == 1


def test_break_judged_before_a_renew_is_judged_again(
    queue: Queue, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watchdog that found the lease expired, then lost the race to a renew, leaves the renewed lock alone."""
    task_id = queue.enqueue("job", id="t1")
    claim = claimed(queue)
    clock.advance(61)
    before_guard = Pause()
    GuardWatch(monkeypatch, hold={"watchdog": before_guard})

    def sweep() -> Any:
        info = queue.lock_info(task_id)
        assert info is not None and info.verdict == "expired"
        return transitions.break_lock(queue, task_id, allow=EXPIRED, expect_token=lock_token(queue, task_id))

    watchdog = started("watchdog", sweep)
    before_guard.wait_reached()
    claim.renew()
    before_guard.release()
    assert watchdog.outcome() is None
    assert lock_token(queue, task_id) == claim.token
    claim.complete("ok")
    assert queue.task(task_id).state == "done"


# Complete vs break


@pytest.mark.parametrize("first", ["break", "commit-before-publish", "commit-after-publish"])
def test_complete_racing_break_never_both_succeed(
    queue: Queue, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """Either the break wins and the stale commit is refused, or the commit wins and the break does nothing."""
    task_id = queue.enqueue("job", id="t1")
    claim = claimed(queue)
    clock.advance(61)
    inside = Pause()
    if first == "break":
        pause_at(monkeypatch, queue, "read_lock", thread="breaker", pause=inside, after=True)
        leader_name, follower_name = "breaker", "completer"
    else:
        # Before the done record is published, or after it but before the old state's files are removed.
        seam = "publish_new" if first == "commit-before-publish" else "unlink_quietly"
        pause_at(monkeypatch, transitions, seam, thread="completer", pause=inside)
        leader_name, follower_name = "completer", "breaker"
    guard = GuardWatch(monkeypatch, follower_name)
    actions = {
        "completer": lambda: claim.complete({"by": "holder"}),
        "breaker": lambda: transitions.break_lock(queue, task_id, allow=EXPIRED),
    }
    leader = started(leader_name, actions[leader_name])
    inside.wait_reached()
    follower = started(follower_name, actions[follower_name])
    guard.wait_blocked(follower_name)
    inside.release()
    actors = {leader.name: leader, follower.name: follower}
    done_path = queue.layout.done(task_id)
    if first == "break":
        assert actors["breaker"].outcome()[0] == "requeued"
        with pytest.raises(LeaseLost):
            actors["completer"].outcome()
        assert not os.path.lexists(done_path)
        info = queue.task(task_id)
        assert (info.state, info.attempts) == ("delayed", 1)
        assert len(events(queue, task_id, "broken")) == 1
        assert markers(queue, task_id) == [queue.read_task(task_id).entry]  # type: ignore[union-attr]
    else:
        assert actors["completer"].outcome() is None
        assert actors["breaker"].outcome() is None
        info = queue.task(task_id)
        assert (info.state, info.result, info.attempts) == ("done", {"by": "holder"}, 1)
        assert events(queue, task_id, "broken") == []
        assert not os.path.lexists(queue.layout.record(task_id))
        assert markers(queue, task_id) == []
    assert not os.path.lexists(queue.layout.lock(task_id))


# Break vs break


@pytest.mark.parametrize("second_kind", ["sweep", "pinned"])
def test_two_breakers_count_the_attempt_once(
    queue: Queue, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, second_kind: str
) -> None:
    """Two breakers of one expired lock: one breaks it, one finds nothing; one attempt, one event, one marker."""
    task_id = queue.enqueue("job", id="t1", max_attempts=3)
    claim = claimed(queue)
    clock.advance(61)
    inside = Pause()
    pause_at(monkeypatch, queue, "read_lock", thread="first", pause=inside, after=True)
    guard = GuardWatch(monkeypatch, "second")
    first = started("first", lambda: transitions.break_lock(queue, task_id, allow=EXPIRED))
    inside.wait_reached()
    if second_kind == "sweep":
        second = started("second", lambda: queue.clear(expired=True))
    else:
        second = started(
            "second", lambda: transitions.break_lock(queue, task_id, allow=EXPIRED, expect_token=claim.token)
        )
    guard.wait_blocked("second")
    inside.release()
    outcome, verdict, lock = first.outcome()
    assert (outcome, verdict, lock.token) == ("requeued", "expired", claim.token)
    assert second.outcome() in (None, [])
    task = queue.read_task(task_id)
    assert task is not None
    assert (task.attempts, task.settled) == (1, claim.token)
    assert [(e.event, e.attempt) for e in task.history] == [("enqueued", 0), ("broken", 1)]
    assert markers(queue, task_id) == [task.entry]
    assert not os.path.lexists(queue.layout.lock(task_id))
