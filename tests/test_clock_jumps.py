"""Wall-clock jumps, forwards and backwards, with the injected clock and with mtimes set by ``os.utime``.

What the documentation promises (docs/concepts.md "Leases", docs/protocol.md):

- A lease expires at its lock's mtime; a lock is ``expired`` once ``mtime <= now`` and only then breakable
  (``clear --expired`` at once, the watchdog after two consecutive sweeps saw the same inode and mtime).
  Expiry makes a lock breakable, not broken: its holder may still renew or commit.
- A holder renews to ``now + ttl``; only a forward jump of more than two thirds of the TTL between renewals
  can expire a live holder's lease, so a backward jump -- of any size -- never can.
- A process-owned lock whose owner is provably dead is ``dead`` whatever its mtime says.
- A task is claimable once the ``when16`` in its marker's *name* is not after now; the marker's mtime means
  nothing. A backward jump makes a pending task wait again; order is by ready time, not by enqueue order.
- A heartbeat is judged by its ``at`` field (``age = now - at``), not by the file's mtime.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fsqueue import Claim, Config, LeaseLost, LockHeld, ManualClock, Queue
from fsqueue_watchdog import ActionLog, Sweeper, WatchdogSettings

TTL = 60.0
DAY = 86400.0
SETTINGS = WatchdogSettings(retention_done=None, retention_dead=None)


@pytest.fixture
def queue(root: Path, clock: ManualClock) -> Queue:
    """A queue with a 60 s TTL on the injected clock."""
    return Queue(root, create=True, clock=clock, config=Config(ttl=TTL, durability="none"), rng=random.Random(7))


@pytest.fixture
def sweeper(queue: Queue) -> Sweeper:
    """A watchdog that keeps its two-sweep memory between sweeps, on the queue's clock."""
    return Sweeper(queue, SETTINGS, ActionLog("text", io.StringIO()), persist=False)


def claimed(queue: Queue, **options: Any) -> Claim:
    claim = queue.claim("w", **options)
    assert claim is not None
    return claim


def verdict(queue: Queue, task_id: str) -> str:
    info = queue.lock_info(task_id)
    assert info is not None
    return info.verdict


def set_mtime(path: str, when: float) -> None:
    os.utime(path, (when, when), follow_symlinks=False)


# -- leases and the injected clock ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lease_only", [False, True], ids=["process", "lease-only"])
def test_holder_renewing_through_clock_jumps_is_never_broken(
    queue: Queue, clock: ManualClock, sweeper: Sweeper, seed: int, lease_only: bool
) -> None:
    """Backward jumps of any size, and forward ones under 2/3 TTL between renewals, never break a renewing holder."""
    rng = random.Random(seed)
    queue.enqueue("long", id="long")
    claim = claimed(queue, lease_only=lease_only)
    for _ in range(120):  # two hours of renewals every third of the TTL
        before = rng.uniform(0, TTL / 3)
        jump = rng.choice([-DAY, -3600.0, -TTL, -1.0, 0.0, 1.0, TTL / 3, 2 * TTL / 3 - 1])
        after = rng.uniform(0, TTL / 3 - before)  # the holder's ticks: a third of the TTL apart
        for step in (before, jump, after):
            clock.advance(step)
            assert queue.clear(expired=True) == []
            assert sweeper.sweep().breaks == {}
        assert claim.renew() == clock.now() + TTL  # never LeaseLost
        assert os.stat(queue.layout.lock("long")).st_mtime == clock.now() + TTL
    claim.complete({"ok": True})
    assert queue.task("long").attempts == 1


def test_forward_jump_past_the_ttl_makes_the_lease_breakable_only_as_documented(
    queue: Queue, clock: ManualClock, sweeper: Sweeper
) -> None:
    """Past the TTL a live owner's lock is expired: clear --dead ignores it, one sweep waits, a renewal resets."""
    queue.enqueue("t", id="t")
    claim = claimed(queue)
    clock.advance(TTL - 0.5)
    assert verdict(queue, "t") == "alive"
    clock.advance(0.5)  # exactly at the expiry: mtime <= now
    assert verdict(queue, "t") == "expired"
    assert queue.clear(dead=True) == []  # the owner is alive: expired is not dead
    assert sweeper.sweep().breaks == {}  # first sight
    claim.renew()  # the holder comes back in time: the second sweep sees another mtime
    assert sweeper.sweep().breaks == {}
    clock.advance(DAY)  # a big jump forward, no renewal
    assert sweeper.sweep().breaks == {}
    assert dict(sweeper.sweep().breaks) == {"expired": 1}
    with pytest.raises(LeaseLost):
        claim.complete("late")
    info = queue.task("t")
    assert (info.attempts, info.history[-1]["event"]) == (1, "broken")


def test_expired_but_unbroken_lease_can_still_commit(queue: Queue, clock: ManualClock) -> None:
    """A forward jump makes the lease breakable, not broken: until someone breaks it, its holder commits."""
    queue.enqueue("t", id="t")
    claim = claimed(queue)
    clock.advance(DAY)
    assert verdict(queue, "t") == "expired"
    claim.complete("made it")
    assert queue.task("t").result == "made it"


def test_a_backward_jump_between_two_sweeps_resets_the_two_sweep_rule(
    queue: Queue, clock: ManualClock, sweeper: Sweeper
) -> None:
    """A sweep sees the lease expired, the clock steps back before the next: no break until two fresh sightings."""
    queue.enqueue("t", id="t", ttl=TTL)
    claimed(queue, lease_only=True)
    clock.advance(TTL + 1)
    assert sweeper.sweep().breaks == {}
    clock.advance(-(TTL + 1))  # NTP steps the clock back: the lease is current again
    assert verdict(queue, "t") == "lease"
    assert sweeper.sweep().breaks == {}
    clock.advance(TTL + 1)
    assert sweeper.sweep().breaks == {}  # one sighting since the step back is not two
    assert dict(sweeper.sweep().breaks) == {"expired": 1}


def test_renewal_after_a_backward_jump_is_measured_from_the_new_now(queue: Queue, clock: ManualClock) -> None:
    """A renewal sets the expiry to now + ttl even when that is earlier than the expiry it replaces."""
    queue.enqueue("t", id="t")
    claim = claimed(queue)
    first = claim.expires_at
    clock.advance(-3600)
    assert claim.renew() == clock.now() + TTL < first
    assert verdict(queue, "t") == "alive"


# -- leases aged or extended with os.utime ---------------------------------------------------------------


def test_lock_aged_with_utime_is_expired_whatever_the_clock(queue: Queue, clock: ManualClock) -> None:
    """A lock whose mtime is in the past is expired at once, and clear --expired breaks it."""
    queue.enqueue("t", id="t")
    claimed(queue)
    set_mtime(queue.layout.lock("t"), 0)
    assert verdict(queue, "t") == "expired"
    assert queue.clear(expired=True) == [("t", "requeued", "expired")]


@pytest.mark.parametrize("lease_only", [False, True], ids=["process", "lease-only"])
def test_lock_with_a_far_future_mtime_is_a_current_lease(
    queue: Queue, clock: ManualClock, sweeper: Sweeper, lease_only: bool
) -> None:
    """A lease extended a year ahead is current: no sweep or clear breaks it; only a forced clear does."""
    queue.enqueue("t", id="t")
    claim = claimed(queue, lease_only=lease_only)
    set_mtime(queue.layout.lock("t"), clock.now() + 365 * DAY)
    clock.advance(DAY)
    assert verdict(queue, "t") == ("lease" if lease_only else "alive")
    assert queue.clear(dead=True, expired=True) == []
    assert sweeper.sweep().breaks == {} and sweeper.sweep().breaks == {}
    with pytest.raises(LockHeld):
        queue.clear(["t"])
    assert queue.clear(["t"], force=True) == [("t", "requeued", "lease" if lease_only else "alive")]
    with pytest.raises(LeaseLost):
        claim.renew()


def test_dead_owner_is_broken_at_once_whatever_the_mtime(queue: Queue, clock: ManualClock, sweeper: Sweeper) -> None:
    """A process-owned lock whose owner has exited is dead, even with an expiry a year ahead (checked first)."""
    queue.enqueue("t", id="t")
    worker = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        claimed(queue, owner_pid=worker.pid)
    finally:
        worker.communicate(b"")  # exits and is reaped
    set_mtime(queue.layout.lock("t"), clock.now() + 365 * DAY)
    assert verdict(queue, "t") == "dead"
    assert dict(sweeper.sweep().breaks) == {"dead": 1}


# -- delayed tasks ------------------------------------------------------------------------------------


def test_delayed_task_is_due_exactly_at_its_ready_time(queue: Queue, clock: ManualClock) -> None:
    """A task enqueued with delay d is claimable from enqueue time + d, to the microsecond, and not before."""
    queue.enqueue("later", id="later", delay=100)
    ready_at = clock.now() + 100
    clock.set(ready_at - 2e-6)
    assert queue.claim("w") is None
    assert queue.task("later").state == "delayed"
    clock.set(ready_at)
    assert claimed(queue).id == "later"


def test_backward_jump_makes_a_pending_task_wait_again(queue: Queue, clock: ManualClock) -> None:
    """A task ready now is not claimable after the clock steps back; it is once the clock passes its ready time."""
    queue.enqueue("now", id="now")
    clock.advance(-30)
    assert queue.claim("w") is None
    assert queue.task("now").state == "delayed"
    assert queue.status()["tasks"]["delayed"] == 1
    clock.advance(30)
    assert claimed(queue).id == "now"


def test_back_off_is_an_absolute_time_across_a_backward_jump(queue: Queue, clock: ManualClock) -> None:
    """A failed task waits until failure time + back-off on the wall clock, however the clock moved since."""
    queue.enqueue("flaky", id="flaky")
    claimed(queue).fail("boom")
    ready_at = queue.task("flaky").ready_at
    clock.advance(-3600)
    assert queue.claim("w") is None
    clock.set(ready_at - 1e-3)
    assert queue.claim("w") is None
    clock.set(ready_at)
    assert claimed(queue).attempt == 2


def test_order_follows_ready_time_not_enqueue_order_across_a_backward_jump(queue: Queue, clock: ManualClock) -> None:
    """Enqueued after a backward jump, a task has the earlier ready time and is claimed first (same priority)."""
    queue.enqueue("first", id="first")
    clock.advance(-10)
    queue.enqueue("second", id="second")
    clock.advance(20)
    assert [claimed(queue).id, claimed(queue).id] == ["second", "first"]


def test_marker_and_record_mtimes_mean_nothing(queue: Queue, clock: ManualClock) -> None:
    """Aging or post-dating a delayed task's marker and record with utime changes neither state nor due time."""
    queue.enqueue("later", id="later", delay=100)
    queue.enqueue("now", id="now")
    for dirpath, _, filenames in os.walk(queue.layout.ready):
        for index, name in enumerate(sorted(filenames)):
            set_mtime(os.path.join(dirpath, name), [0.0, clock.now() + DAY][index % 2])
    set_mtime(queue.layout.record("later"), 0)
    set_mtime(queue.layout.record("now"), clock.now() + DAY)
    assert {info.id: info.state for info in queue.tasks()} == {"now": "pending", "later": "delayed"}
    assert claimed(queue).id == "now"
    assert queue.claim("w") is None
    clock.advance(100)
    assert claimed(queue).id == "later"


# -- heartbeats ---------------------------------------------------------------------------------------


def cli_check(root: str, agent: str) -> int:
    """`fsqueue check` exit status (it runs on the real clock)."""
    env = dict(os.environ, FSQUEUE_ROOT=root)
    env.pop("FSQUEUE_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "fsqueue", "check", agent], env=env, capture_output=True, text=True, check=False
    )
    assert result.stderr == "", result.stderr
    return result.returncode


def test_heartbeat_is_judged_by_its_at_field_not_its_mtime(root: Path) -> None:
    """Aging or post-dating a heartbeat file with utime changes no verdict: the record's `at` decides."""
    real = ManualClock()
    queue = Queue(root, create=True, clock=real)
    queue.beat("fresh", interval=60)
    queue.beat("stale", interval=60)
    stale = Path(queue.layout.sub("status"), "stale.heartbeat")
    record = json.loads(stale.read_text())
    record["at"] -= 3600  # an hour-old beat, published as a writer would (rename into place)
    tmp = stale.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.rename(stale)
    set_mtime(str(Path(queue.layout.sub("status"), "fresh.heartbeat")), 0)
    set_mtime(str(stale), real.now() + 365 * DAY)
    assert {info.agent: info.verdict for info in queue.agents()} == {"fresh": "ok", "stale": "down"}
    assert queue.upstream("fresh").full and queue.upstream("stale").degraded
    assert cli_check(queue.root, "fresh") == 0
    assert cli_check(queue.root, "stale") == 6


def test_heartbeat_ages_with_forward_jumps_and_is_judged_by_distance_across_a_backward_one(
    queue: Queue, clock: ManualClock
) -> None:
    """A beat goes late and down as the clock jumps forward; after a step back it is judged by distance.

    A beat that a step back leaves dated an hour ahead is not trusted (the same rule that keeps a
    dead agent with a future-dated beat from staying fresh), until the agent's next beat.
    """
    grace = queue.config.heartbeat_grace
    queue.beat("up", interval=60)
    clock.advance(-1)
    assert queue.agents()[0].verdict == "ok" and queue.upstream("up").full  # a second ahead is within tolerance
    clock.advance(-3600)
    assert queue.agents()[0].verdict == "down" and queue.upstream("up").degraded
    queue.beat("up", interval=60)
    assert queue.agents()[0].verdict == "ok" and queue.upstream("up").full
    clock.set(queue.last_beat("up").at + 60 + grace + 1)  # type: ignore[union-attr]
    assert queue.agents()[0].verdict == "late" and queue.upstream("up").degraded
    clock.advance(DAY)
    assert queue.agents()[0].verdict == "down"
    clock.advance(-DAY)
    assert queue.agents()[0].verdict == "late"


@pytest.mark.parametrize("ahead", [DAY, 1_795_598_544_633_291.0 - 1_800_000_000.0], ids=["a-day", "microseconds"])
def test_heartbeat_dated_far_in_the_future_is_not_fresh(queue: Queue, clock: ManualClock, ahead: float) -> None:
    """A beat dated more than one interval + grace ahead of now is not trusted as fresh."""
    writer = ManualClock(start=clock.now() + ahead)
    Queue(queue.root, clock=writer).beat("up", interval=60)
    assert queue.upstream("up").degraded
    assert queue.agents()[0].verdict != "ok"
