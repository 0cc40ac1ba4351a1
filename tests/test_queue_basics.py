"""The queue's everyday behaviour: enqueue, claim order, complete, fail, retry, dead-letter, requeue."""

from __future__ import annotations

import pytest

from fsqueue import Config, LeaseLost, ManualClock, Queue, TaskExists, TaskNotFound


def test_enqueue_then_claim_returns_payload_and_attempt(queue: Queue) -> None:
    """A claimed task carries its payload, a token and attempt 1."""
    task_id = queue.enqueue({"url": "https://example.org"})
    claim = queue.claim("scraper")
    assert claim is not None
    assert (claim.id, claim.payload, claim.attempt) == (task_id, {"url": "https://example.org"}, 1)
    assert len(claim.token) == 32
    assert queue.claim("scraper") is None


def test_claim_on_empty_queue_returns_none(queue: Queue) -> None:
    """Nothing ready means None, not an error."""
    assert queue.claim("a") is None


def test_priority_first_then_fifo(queue: Queue, clock: ManualClock) -> None:
    """Higher priority is claimed first; within a priority, the oldest first."""
    order = []
    for i, prio in enumerate([0, 0, 5, 0, 5, -1]):
        order.append(queue.enqueue(i, priority=prio))
        clock.advance(0.001)
    claimed = []
    while (claim := queue.claim("w")) is not None:
        claimed.append(claim.payload)
        claim.complete()
    assert claimed == [2, 4, 0, 1, 3, 5]


def test_complete_and_fail_reuse_the_record_the_claim_read(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim's complete or fail does not read the unchanged task record again (one lstat instead)."""
    from fsqueue._store import Store

    queue.enqueue("a", id="t1")
    queue.enqueue("b", id="t2", max_attempts=1)
    first, second = queue.claim("w"), queue.claim("w")
    assert first is not None and second is not None

    def refuse(self: Store, task_id: str) -> None:
        raise AssertionError(f"record of {task_id} read again")

    monkeypatch.setattr(Store, "read_task", refuse)
    first.complete("r")
    assert second.fail("boom") == "dead"
    monkeypatch.undo()
    assert (queue.task("t1").state, queue.task("t1").result) == ("done", "r")
    assert queue.task("t2").state == "dead"


def test_delayed_task_is_not_claimable_until_due(queue: Queue, clock: ManualClock) -> None:
    """A delay hides the task from claimers until its time comes."""
    queue.enqueue("later", delay=60)
    assert queue.claim("w") is None
    assert queue.status()["tasks"]["delayed"] == 1
    clock.advance(60)
    claim = queue.claim("w")
    assert claim is not None and claim.payload == "later"


def test_complete_stores_result_and_fences_second_commit(queue: Queue) -> None:
    """A result is committed once; the same claim cannot commit again."""
    queue.enqueue("x", id="t1")
    claim = queue.claim("w")
    assert claim is not None
    claim.complete({"ok": True})
    info = queue.task("t1")
    assert (info.state, info.result, info.attempts) == ("done", {"ok": True}, 1)
    with pytest.raises(LeaseLost):
        claim.complete({"ok": False})
    assert queue.task("t1").result == {"ok": True}


def test_fail_retries_with_backoff_then_dead_letters(root: object, clock: ManualClock) -> None:
    """Each failure backs off exponentially; after max_attempts the task is dead with its history."""
    queue = Queue(root, create=True, clock=clock, config=Config(retry_base=10, retry_max=1000))  # type: ignore[arg-type]
    queue.enqueue("poison", id="p", max_attempts=3)
    delays = []
    for attempt in (1, 2, 3):
        claim = queue.claim("w")
        assert claim is not None and claim.attempt == attempt
        state = claim.fail(f"boom {attempt}")
        if attempt < 3:
            assert state == "pending"
            info = queue.task("p")
            delays.append(info.ready_at - clock.now())
            assert queue.claim("w") is None  # backing off
            clock.advance(info.ready_at - clock.now())
        else:
            assert state == "dead"
    assert 5 <= delays[0] < 10 and 10 <= delays[1] < 20
    info = queue.task("p")
    assert info.state == "dead" and info.attempts == 3
    assert [e["error"] for e in info.history if e["event"] == "failed"] == ["boom 1", "boom 2", "boom 3"]


def test_fail_without_retry_goes_straight_to_dead(queue: Queue) -> None:
    """retry=False dead-letters at once."""
    queue.enqueue(1, id="d")
    claim = queue.claim("w")
    assert claim is not None
    assert claim.fail("bad input", retry=False) == "dead"
    assert queue.task("d").state == "dead"


def test_requeue_brings_dead_task_back_with_fresh_budget(queue: Queue) -> None:
    """A dead letter can be requeued; attempts restart, the fence keeps growing."""
    queue.enqueue(1, id="d", max_attempts=1)
    first = queue.claim("w")
    assert first is not None
    first.fail("x")
    queue.requeue("d")
    again = queue.claim("w")
    assert again is not None and again.attempt == 1 and again.fence == 2
    with pytest.raises(TaskNotFound):
        queue.requeue("nope")


def test_duplicate_id_refused_unless_if_absent(queue: Queue) -> None:
    """An explicit id that exists is refused; if_absent makes it a no-op."""
    queue.enqueue(1, id="same")
    with pytest.raises(TaskExists, match="already exists"):
        queue.enqueue(2, id="same")
    assert queue.enqueue(2, id="same", if_absent=True) == "same"
    assert queue.task("same").payload == 1


def test_context_manager_completes_or_fails(queue: Queue, clock: ManualClock) -> None:
    """A Claim used as a context manager completes on success and fails on an exception."""
    queue.enqueue(1, id="ok")
    clock.advance(0.001)
    queue.enqueue(2, id="bad")
    with queue.claim("w") as claim:  # type: ignore[union-attr]
        assert claim.id == "ok"
    with pytest.raises(RuntimeError), queue.claim("w"):  # type: ignore[union-attr]
        raise RuntimeError("broken")
    assert queue.task("ok").state == "done"
    bad = queue.task("bad")
    assert bad.state == "delayed" and "RuntimeError: broken" in bad.history[-1]["error"]


def test_renew_extends_lease(queue: Queue, clock: ManualClock) -> None:
    """Renewing moves the lease expiry to now + ttl."""
    queue.enqueue(1, ttl=100)
    claim = queue.claim("w")
    assert claim is not None and claim.expires_at == clock.now() + 100
    clock.advance(90)
    assert claim.renew() == clock.now() + 100
    lock = queue.locks()[0]
    assert lock.verdict == "alive" and lock.lease_left == pytest.approx(100)
