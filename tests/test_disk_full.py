"""A full disk (ENOSPC) on a tiny tmpfs: every writer says so clearly, nothing accepted is lost, nothing wedges.

The queue root lives on a tmpfs the test mounts. A ballast file fills it to the last byte, so every write
of data fails: enqueue, claim, complete, fail, dead-letter, requeue, heartbeats, halting the pipeline and
the watchdog's breaks and state. Each must raise (or print) one clear error naming the path and saying the
disk is full, leave no half-written file and no wedge; once the ballast is removed, everything resumes and
every accepted task is still there and completes exactly once (P2).

``test_bad_input.py`` already pins enqueue, claim, complete and fail at ENOSPC through the API; this file
adds the other writers, the command line, the watchdog, and a disk that fills up while work goes on.
"""

from __future__ import annotations

import errno
import io
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fault_injection import (
    assert_clean_exit,
    assert_one_line_error,
    assert_queue_works,
    drain,
    fill_disk,
    grow,
    markers,
    run_cli,
    snapshot,
    tmpfs,
)

from fsqueue import Claim, Config, ManualClock, Queue, StorageError
from fsqueue_watchdog import ActionLog, Sweeper, WatchdogSettings

#: A start time in the past, so that CLI subprocesses on the real clock see the tasks as ready.
PAST = 1_600_000_000.0
FULL = "disk is full"
SETTINGS = WatchdogSettings(retention_done=None, retention_dead=None)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, unmounted afterwards (skipped without root, except in CI)."""
    with tmpfs(tmp_path / "tiny", "512k") as mount_point:
        yield mount_point


@pytest.fixture
def past_clock() -> ManualClock:
    """A clock in the past: the CLI's real clock then sees every task as ready and every lease as current."""
    return ManualClock(start=PAST)


def new_queue(disk: Path, clock: ManualClock) -> Queue:
    return Queue(disk / "queue", create=True, clock=clock, config=Config(ttl=60), rng=random.Random(7))


def log_text(log: ActionLog) -> str:
    assert isinstance(log.stream, io.StringIO)
    return log.stream.getvalue()


def sweeps(sweeper: Sweeper, clock: ManualClock, count: int) -> dict[str, int]:
    """The breaks of ``count`` sweeps a second apart."""
    breaks: Counter[str] = Counter()
    for _ in range(count):
        clock.advance(1)
        breaks.update(sweeper.sweep().breaks)
    return dict(breaks)


def assert_disk_full(exc: BaseException, path: str) -> None:
    """A StorageError with errno ENOSPC whose message names ``path`` and says the disk is full."""
    assert isinstance(exc, StorageError), repr(exc)
    assert exc.errno == errno.ENOSPC, exc.errno
    assert FULL in str(exc) and path in str(exc), str(exc)


def refused(action: Callable[[], object], path: str) -> None:
    """``action`` raises a disk-full StorageError naming ``path``."""
    with pytest.raises(StorageError) as caught:
        action()
    assert_disk_full(caught.value, path)


def test_every_writer_refuses_cleanly_at_enospc_and_resumes(disk: Path, clock: ManualClock) -> None:
    """Each writer raises a disk-full StorageError naming its path, changes nothing, and works once space is freed."""
    queue = new_queue(disk, clock)
    accepted = [queue.enqueue({"n": n}, id=f"t{n}") for n in range(4)]
    queue.enqueue("held", id="held", priority=9)
    queue.enqueue("stale", id="stale", priority=8)
    queue.enqueue("buried", id="buried", priority=7, max_attempts=1)
    held = queue.claim("w")
    stale = queue.claim("w", lease_only=True)
    buried = queue.claim("w")
    assert held is not None and stale is not None and buried is not None
    assert buried.fail("boom") == "dead"
    queue.beat("scraper", message="before the disk filled")
    log = ActionLog("text", io.StringIO())
    sweeper = Sweeper(queue, SETTINGS, log, persist=False)
    clock.advance(120)  # past the 60 s TTL of every claim
    held.renew()  # the process-owned claim stays current; the lease-only one is left to expire
    assert sweeper.sweep().breaks == {}  # the first sweep to see "stale" expired only remembers it
    ballast = fill_disk(disk / "ballast")
    layout = queue.layout
    before = snapshot(queue.root, skip=("guards",))

    refused(lambda: queue.enqueue({"n": 99}, id="new"), layout.record("new"))
    refused(lambda: queue.claim("w2"), layout.sub("tasks"))
    refused(lambda: held.complete({"ok": True}), layout.done("held"))
    refused(lambda: held.fail("boom", retry=False), layout.record("held"))
    refused(lambda: queue.beat("scraper"), os.path.join(layout.sub("status"), "scraper.heartbeat"))
    refused(lambda: queue.heartbeat("writer").__enter__(), os.path.join(layout.sub("status"), "writer.heartbeat"))
    refused(lambda: queue.clear(expired=True), layout.lock("stale"))
    report = sweeper.sweep()  # sees "stale" expired a second time: tries to break it, and cannot
    assert report.breaks == {}
    assert f"cannot break the lock {layout.lock('stale')}: the {FULL}" in log_text(log)
    assert snapshot(queue.root, skip=("guards",)) == before  # nothing written, nothing half-written
    assert not held.finished and not held.lost
    assert queue.renew("held", held.token) == clock.now() + 60  # a renewal writes no data: the holder keeps it
    assert queue.last_beat("scraper").message == "before the disk filled"  # type: ignore[union-attr]
    # These two leave documented leftovers (protocol.md, crash leftovers): a marker beside the dead
    # record, which claimers drop, and an empty alert lock in staging/, which the watchdog removes.
    refused(lambda: queue.requeue("buried"), layout.record("buried"))
    refused(lambda: queue.halt("maintenance"), os.path.join(queue.root, "halt.json"))
    assert queue.task("buried").state == "dead" and queue.halted() is None

    ballast.unlink()
    held.complete({"ok": True})
    queue.requeue("buried")
    queue.beat("scraper", message="after")
    assert queue.enqueue({"n": 99}, id="new") == "new"
    assert sweeps(sweeper, clock, 2) == {"expired": 1}  # the two-sweep rule is met again once there is room
    stale_info = queue.task("stale")
    assert (stale_info.attempts, stale_info.history[-1]["event"]) == (1, "broken")  # counted once, not twice
    clock.advance(3600)  # past every back-off
    ran = drain(queue)
    assert sorted(ran) == sorted([*accepted, "buried", "new", "stale"])
    assert queue.task("held").result == {"ok": True}
    assert_queue_works(queue)


def test_cli_commands_at_enospc_print_one_clear_line(
    disk: Path, past_clock: ManualClock, fsqueue_cmd: list[str]
) -> None:
    """enqueue, claim, complete, fail, beat and requeue exit 1 with one disk-full line; reading commands work."""
    queue = new_queue(disk, past_clock)
    queue.enqueue("waiting", id="waiting")
    queue.enqueue("buried", id="buried", max_attempts=1, priority=2)
    buried = queue.claim("w")
    assert buried is not None and buried.fail("boom") == "dead"
    held = queue.claim("w", ttl=10**6)
    assert held is not None and held.id == "waiting"
    queue.enqueue("next", id="next")
    env = dict(os.environ, FSQUEUE_ROOT=queue.root)
    env.pop("FSQUEUE_CONFIG", None)
    ballast = fill_disk(disk / "ballast")
    before = snapshot(queue.root, skip=("guards",))

    layout = queue.layout
    for args, path in (
        (["enqueue", "--id", "fresh", "{}"], layout.record("fresh")),
        (["claim", "--agent", "w"], layout.lock("next")),
        (["complete", "waiting", "--token", held.token, '"done"'], layout.done("waiting")),
        (["fail", "waiting", "--token", held.token, "--no-retry"], layout.record("waiting")),
        (["beat", "scraper"], os.path.join(layout.sub("status"), "scraper.heartbeat")),
    ):
        assert_one_line_error(run_cli(fsqueue_cmd, env, *args), FULL, path)
    for args in (["status"], ["tasks", "--json"], ["locks", "--json"], ["agents"], ["show", "waiting"]):
        assert_clean_exit(run_cli(fsqueue_cmd, env, *args))
    assert snapshot(queue.root, skip=("guards",)) == before
    for args, path in (  # each leaves a documented, harmless leftover (see the test above)
        (["requeue", "buried"], layout.record("buried")),
        (["halt", "--reason", "maintenance"], os.path.join(queue.root, "halt.json")),
    ):
        assert_one_line_error(run_cli(fsqueue_cmd, env, *args), FULL, path)

    ballast.unlink()
    assert assert_clean_exit(run_cli(fsqueue_cmd, env, "enqueue", "--id", "fresh", "{}")).strip() == "fresh"
    assert_clean_exit(run_cli(fsqueue_cmd, env, "complete", "waiting", "--token", held.token, '"done"'))
    assert_clean_exit(run_cli(fsqueue_cmd, env, "requeue", "buried"))
    assert_clean_exit(run_cli(fsqueue_cmd, env, "watchdog", "--once"))
    past_clock.set(time.time() + 1)  # the CLI enqueued and requeued at the real time
    assert sorted(drain(queue)) == ["buried", "fresh", "next"]
    assert queue.task("waiting").result == "done"


def test_watchdog_once_at_enospc_says_the_disk_is_full(disk: Path, past_clock: ManualClock) -> None:
    """`fsqueue-watchdog --once` on a full disk exits 1 with one line naming the path and saying the disk is full."""
    queue = new_queue(disk, past_clock)
    env = dict(os.environ, FSQUEUE_ROOT=queue.root)
    env.pop("FSQUEUE_CONFIG", None)
    fill_disk(disk / "ballast")
    result = run_cli([sys.executable, "-m", "fsqueue_watchdog"], env, "--once")
    assert_one_line_error(result, FULL, queue.root, prefix="fsqueue-watchdog: error:")


def test_sweep_at_enospc_logs_each_failure_and_keeps_sweeping(disk: Path, clock: ManualClock) -> None:
    """A sweep on a full disk logs one error per lock it cannot break and per state save, and raises nothing."""
    queue = new_queue(disk, clock)
    for n in range(3):
        queue.enqueue(n, id=f"t{n}")
        assert queue.claim("w", lease_only=True) is not None
    log = ActionLog("text", io.StringIO())
    sweeper = Sweeper(queue, SETTINGS, log, persist=True)
    clock.advance(3600)
    sweeper.sweep()
    ballast = fill_disk(disk / "ballast")
    for _ in range(3):  # a daemon keeps sweeping; no pass dies for good
        clock.advance(1)
        assert sweeper.sweep().breaks == {}
    text = log_text(log)
    for n in range(3):
        assert text.count(f"cannot break the lock {queue.layout.lock(f't{n}')}: the {FULL}") >= 2
    assert "cannot save sweep state" in text
    assert "pass failed" not in text
    assert {info.state for info in queue.tasks()} == {"running"}
    ballast.unlink()
    assert sweeps(sweeper, clock, 2) == {"expired": 3}
    assert [info.attempts for info in queue.tasks()] == [1, 1, 1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_disk_filling_up_during_work_loses_no_accepted_task(disk: Path, clock: ManualClock, seed: int) -> None:
    """While a ballast grows to ENOSPC, every refused call is a clear StorageError and every accepted task survives."""
    rng = random.Random(seed)
    queue = new_queue(disk, clock)
    queue.enqueue({"n": 0}, id="late", delay=10**6)  # claimable only once the disk is full
    queue.enqueue({"n": 0}, id="kept", priority=9)
    kept = queue.claim("w", ttl=10**7)
    assert kept is not None
    sweeper = Sweeper(queue, SETTINGS, ActionLog("text", io.StringIO()), persist=True)
    ballast = disk / "ballast"
    accepted: dict[str, int] = {}
    completed: set[str] = set()
    held: list[Claim] = []
    refusals: dict[str, int] = dict.fromkeys(("enqueue", "claim", "complete", "beat"), 0)

    def attempt(operation: str) -> None:
        try:
            if operation == "enqueue":
                n = len(accepted) + 1
                accepted[queue.enqueue({"n": n}, id=f"t{n:04d}")] = n
            elif operation == "claim":
                if (claim := queue.claim("w", ttl=10**7)) is not None:
                    held.append(claim)
            elif operation == "complete" and held:
                held[0].complete({"n": held[0].payload["n"]})
                completed.add(held.pop(0).id)
            elif operation == "beat":
                queue.beat("agent", message=f"{len(accepted)} accepted")
        except StorageError as exc:
            assert exc.errno == errno.ENOSPC and FULL in str(exc) and queue.root in str(exc), str(exc)
            refusals[operation] += 1

    while grow(ballast, rng.choice([700, 3000, 9000])):  # odd sizes: some records fit only in part
        for operation in rng.choices(sorted(refusals), k=4):
            attempt(operation)
        clock.advance(1)
        sweeper.sweep()
    clock.advance(10**6)  # "late" is due: there is something to claim
    for operation in sorted(refusals):
        attempt(operation)
    refused(lambda: kept.complete({"n": 0}), queue.layout.done("kept"))
    assert all(refusals.values()), refusals
    assert os.listdir(queue.layout.staging) == []  # no refused write left a partial file behind
    pending = set(markers(queue))
    running = {info.task for info in queue.locks()}
    assert pending | running | completed == {*accepted, "late", "kept"}, "an accepted task went missing"
    assert not (pending & running) and not (completed & (pending | running))

    ballast.unlink()
    kept.complete({"n": 0})
    for claim in held:
        claim.complete({"n": claim.payload["n"]})
        completed.add(claim.id)
    ran = drain(queue)
    assert set(ran) | completed | {"kept"} == {*accepted, "late", "kept"} and not set(ran) & completed
    assert all(queue.task(task_id).result == {"n": n} for task_id, n in accepted.items() if task_id in completed)
    assert all(ran[task_id] == {"n": accepted.get(task_id, 0)} for task_id in ran)
    assert_queue_works(queue)
