"""Watchdog sweep decisions with an injected clock: what is broken, what is never touched."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import fsqueue
import fsqueue._queue
from fsqueue import ManualClock, Queue
from fsqueue._identity import Owner, current_owner
from fsqueue_watchdog import ActionLog, Sweeper, WatchdogSettings

MINUTE = 60.0


@pytest.fixture
def log() -> ActionLog:
    """An action log captured in memory."""
    return ActionLog("text", io.StringIO())


@pytest.fixture
def sweeper(queue: Queue, log: ActionLog) -> Sweeper:
    """A sweeper over the test queue; its first (start-up) sweep is already done."""
    sweeper = Sweeper(queue, WatchdogSettings(), log)
    sweeper.sweep()
    return sweeper


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that the test can kill for real."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def logged(log: ActionLog) -> str:
    assert isinstance(log.stream, io.StringIO)
    return log.stream.getvalue()


def broken_events(queue: Queue, task_id: str) -> list[dict[str, object]]:
    return [e for e in queue.task(task_id).history if e["event"] == "broken"]


def test_dead_owner_is_broken_on_the_first_sweep(
    queue: Queue, sweeper: Sweeper, child: subprocess.Popen[bytes]
) -> None:
    """A claim whose owner process died is broken at once, long before its 30-minute lease runs out."""
    queue.enqueue("x", id="t")
    claim = queue.claim("a", owner_pid=child.pid)
    assert claim is not None
    child.kill()
    child.wait()
    report = sweeper.sweep()
    assert report.breaks == {"dead": 1}
    assert not (Path(queue.root) / "tasks" / "t.lock").exists()
    assert broken_events(queue, "t")[0]["attempt"] == 1
    assert "break task=t agent=a" in logged(sweeper.log)


def test_zombie_owner_is_dead(queue: Queue, sweeper: Sweeper) -> None:
    """A killed owner that its parent has not reaped yet (a zombie) is judged dead."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        queue.enqueue("x", id="z")
        queue.claim("a", owner_pid=proc.pid)
        proc.kill()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # dead but not reaped: a zombie
        assert sweeper.sweep().breaks == {"dead": 1}
    finally:
        proc.wait()


def test_expired_lease_is_broken_only_on_the_second_sweep(queue: Queue, sweeper: Sweeper, clock: ManualClock) -> None:
    """An unrenewed lease is broken once seen expired on two consecutive sweeps."""
    queue.enqueue("x", id="t", ttl=30 * MINUTE)
    queue.claim("a", lease_only=True)
    clock.advance(30 * MINUTE)
    assert sweeper.sweep().breaks == {}
    assert sweeper.sweep().breaks == {"expired": 1}
    assert queue.task("t").state == "delayed"


def test_renewal_between_sweeps_resets_the_two_sweep_rule(queue: Queue, sweeper: Sweeper, clock: ManualClock) -> None:
    """A lease renewed after being seen expired is not broken by the next sweep, even if late again."""
    queue.enqueue("x", id="t", ttl=MINUTE)
    claim = queue.claim("a", lease_only=True)
    assert claim is not None
    clock.advance(MINUTE)
    assert sweeper.sweep().breaks == {}
    claim.renew()
    clock.advance(MINUTE)  # expired again, but with another expiry than the one seen
    assert sweeper.sweep().breaks == {}
    assert sweeper.sweep().breaks == {"expired": 1}


@pytest.mark.parametrize("minutes", [31, 60, 600])
def test_live_renewing_owner_is_never_broken(queue: Queue, sweeper: Sweeper, clock: ManualClock, minutes: int) -> None:
    """A live holder that renews every 10 minutes keeps its claim however long it works."""
    queue.enqueue("x", id="long")
    claim = queue.claim("a")
    assert claim is not None
    elapsed = 0
    while elapsed < minutes:
        step = min(10, minutes - elapsed)
        clock.advance(step * MINUTE)
        elapsed += step
        claim.renew()
        assert sweeper.sweep().breaks == {}
        assert sweeper.sweep().breaks == {}
    claim.complete("finished")
    assert queue.task("long").state == "done"
    assert logged(sweeper.log) == ""


def test_live_owner_with_expired_lease_is_broken(queue: Queue, sweeper: Sweeper, clock: ManualClock) -> None:
    """A holder that is alive but stopped renewing (hung) loses its claim after its TTL; its commit is fenced."""
    queue.enqueue("x", id="hung", ttl=MINUTE)
    claim = queue.claim("a")
    assert claim is not None
    clock.advance(2 * MINUTE)
    sweeper.sweep()
    assert sweeper.sweep().breaks == {"expired": 1}
    with pytest.raises(fsqueue.LeaseLost):
        claim.complete("late")


def test_foreign_host_is_judged_by_lease_only(
    queue: Queue, sweeper: Sweeper, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An owner on another machine is never probed: kept while its lease is current, broken after it."""
    me = current_owner()
    foreign = Owner("elsewhere", "0" * 32, "b" * 36, me.pidns, 1, 1)
    monkeypatch.setattr(fsqueue._queue, "current_owner", lambda: foreign)
    queue.enqueue("x", id="f", ttl=MINUTE)
    queue.claim("a")
    report = sweeper.sweep()
    assert report.breaks == {} and report.locks_by_owner == {"foreign": 1}
    clock.advance(MINUTE)
    sweeper.sweep()
    assert sweeper.sweep().breaks == {"expired": 1}


def test_reused_pid_is_dead(
    queue: Queue, sweeper: Sweeper, child: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PID now held by an unrelated process (other start time) does not keep a dead owner's claim."""
    me = current_owner()
    recycled = Owner(me.host, me.machine_id, me.boot_id, me.pidns, child.pid, me.start_ticks + 12345)
    monkeypatch.setattr(fsqueue._queue, "current_owner", lambda: recycled)
    queue.enqueue("x", id="r")
    queue.claim("a")
    assert sweeper.sweep().breaks == {"dead": 1}
    assert child.poll() is None  # the unrelated process was not touched


def test_corrupt_lock_is_quarantined_and_task_retried(queue: Queue, sweeper: Sweeper, clock: ManualClock) -> None:
    """A garbage lock file is moved to quarantine once expired, and its task retried with the attempt counted."""
    queue.enqueue("x", id="c")
    lock = Path(queue.root) / "tasks" / "c.lock"
    lock.write_bytes(b"\x00garbage{")
    os.utime(lock, (clock.now() - 1, clock.now() - 1))
    sweeper.sweep()
    sweeper.sweep()
    assert not lock.exists()
    assert any(p.name.endswith("c.lock") for p in (Path(queue.root) / "quarantine").iterdir())
    assert queue.task("c").attempts == 1


def test_unknown_format_lock_is_left_alone(queue: Queue, sweeper: Sweeper, clock: ManualClock) -> None:
    """A lock written by another version is a live foreign owner: never broken, logged once."""
    queue.enqueue("x", id="u")
    lock = Path(queue.root) / "tasks" / "u.lock"
    lock.write_text(json.dumps({"format": "fsqueue/99", "kind": "lock"}))
    os.utime(lock, (clock.now() - 1, clock.now() - 1))
    for _ in range(4):
        assert sweeper.sweep().breaks == {}
    assert lock.exists()
    assert logged(sweeper.log).count("unknown format") == 1


def test_nothing_logged_when_nothing_happened(queue: Queue, log: ActionLog) -> None:
    """A quiet queue produces no log lines (cron mails any output)."""
    queue.enqueue("x")
    sweeper = Sweeper(queue, WatchdogSettings(), log)
    for _ in range(3):
        sweeper.sweep()
    assert logged(log) == ""


def test_repairs_orphans_and_committed_leftovers(queue: Queue, log: ActionLog) -> None:
    """A record that lost its marker is re-indexed; a committed task's leftover record is removed."""
    queue.enqueue("x", id="orphan")
    queue.enqueue("y", id="committed")
    root = Path(queue.root)
    for marker in (root / "ready").rglob("*-orphan"):
        marker.unlink()
    for marker in (root / "ready").rglob("*-committed"):
        marker.unlink()
    # "committed" looks like a crash right after its done record (the commit point) was written.
    (root / "done" / "committed.json").write_bytes(b"{}")
    assert queue.claim("a") is None  # the orphan is invisible to claimers until repaired
    Sweeper(queue, WatchdogSettings(), log).sweep()
    assert not (root / "records" / "committed.json").exists()
    assert "re-indexed" in logged(log)
    claim = queue.claim("a")
    assert claim is not None and claim.id == "orphan"


def test_stale_staging_files_are_removed(queue: Queue, log: ActionLog, clock: ManualClock) -> None:
    """A staging file left by a writer that crashed between write and link is removed after the bound."""
    stale = Path(queue.root) / "staging" / "123-dead.tmp"
    fresh = Path(queue.root) / "staging" / "456-live.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (clock.now() - 7200, clock.now() - 7200))
    os.utime(fresh, (clock.now(), clock.now()))
    Sweeper(queue, WatchdogSettings(staging_max_age=3600), log).sweep()
    assert not stale.exists() and fresh.exists()


def test_retention_prunes_old_done_and_dead(queue: Queue, log: ActionLog, clock: ManualClock) -> None:
    """Done results and dead letters older than their retention are pruned; newer ones stay."""
    for task_id in ("old", "new"):
        queue.enqueue(task_id, id=task_id)
        claim = queue.claim("a")
        assert claim is not None
        claim.complete()
    old = Path(queue.root) / "done" / "old.json"
    os.utime(old, (clock.now() - 8 * 86400, clock.now() - 8 * 86400))
    os.utime(Path(queue.root) / "done" / "new.json", (clock.now(), clock.now()))
    Sweeper(queue, WatchdogSettings(retention_done=7 * 86400), log).sweep()
    assert not old.exists() and (Path(queue.root) / "done" / "new.json").exists()
    assert "prune task=old" in logged(log)


def test_metrics_file_is_written(root: Path, tmp_path: Path) -> None:
    """After a sweep the Prometheus file holds tasks, locks, oldest age, breaks, duration, last sweep."""
    from fsqueue_watchdog import Daemon

    queue = Queue(root, create=True)
    metrics = tmp_path / "fsqueue.prom"
    config = tmp_path / "config.yaml"
    config.write_text(f"watchdog:\n  metrics: {metrics}\n")
    queue.enqueue("x")
    Daemon(queue.root, config_path=str(config), stream=io.StringIO()).run(once=True)
    text = metrics.read_text()
    for name in (
        "fsqueue_tasks{",
        "fsqueue_locks_total{",
        "fsqueue_oldest_pending_age_seconds{",
        "fsqueue_watchdog_sweep_duration_seconds{",
        "fsqueue_watchdog_last_sweep_timestamp_seconds{",
    ):
        assert name in text
    assert 'state="pending"} 1' in text


def test_one_shot_runs_share_the_two_sweep_rule(queue: Queue, log: ActionLog, clock: ManualClock) -> None:
    """Two one-shot watchdog runs (new processes each time) still break an expired lease on the second."""
    queue.enqueue("x", id="t", ttl=MINUTE)
    queue.claim("a", lease_only=True)
    clock.advance(MINUTE)
    assert Sweeper(queue, WatchdogSettings(), log).sweep().breaks == {}
    assert Sweeper(queue, WatchdogSettings(), log).sweep().breaks == {"expired": 1}
