"""Entries planted in the queue root by any member of its group: nothing hangs, crashes or wedges.

A FIFO, a stray directory, an over-long name or a symlink where fsqueue expects one of its own files must
never block an open, stop a claim, crash a sweep, or make fsqueue write outside its root: the queue keeps
serving tasks and the watchdog keeps breaking expired leases. Operations that could block run in a thread
joined with a timeout, so a regression fails the test instead of hanging it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from blocking import finishes

from fsqueue import Claim, Config, CorruptRecord, ManualClock, PipelineHalted, Queue, Rule
from fsqueue._identity import current_owner
from fsqueue._layout import guard_shard
from fsqueue._owners import owner_key
from fsqueue_watchdog import ActionLog, AlreadyRunning, Sweeper, WatchdogSettings, hold_singleton


def open_writer(fifo: str) -> None:
    """Release a reader blocked opening ``fifo`` (a writer appears, then goes)."""
    try:
        os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
    except OSError:
        pass


def action_log() -> ActionLog:
    return ActionLog("text", io.StringIO())


def logged(log: ActionLog) -> str:
    assert isinstance(log.stream, io.StringIO)
    return log.stream.getvalue()


def sweep_twice(queue: Queue, clock: ManualClock, log: ActionLog) -> dict[str, int]:
    """Two sweeps a lease-length apart (the two-sweep rule); the breaks of the second."""
    sweeper = Sweeper(queue, WatchdogSettings(), log, persist=False)
    clock.advance(3600)
    sweeper.sweep()
    clock.advance(60)
    return dict(sweeper.sweep().breaks)


def same_shard(task_id: str) -> str:
    """Another task id whose guard is the same shard file as ``task_id``'s."""
    return next(f"t{i}" for i in range(100_000) if guard_shard(f"t{i}") == guard_shard(task_id))


def claimed(queue: Queue, **options: Any) -> Claim:
    claim = queue.claim("w", **options)
    assert claim is not None
    return claim


# -- a FIFO planted at a task's guard -------------------------------------------------------------


def _renew(queue: Queue, clock: ManualClock, claim: Claim) -> object:
    return queue.renew(claim.id, claim.token) == clock.now() + claim.ttl


def _complete(queue: Queue, clock: ManualClock, claim: Claim) -> object:
    claim.complete("r")
    return queue.task(claim.id).state == "done"


def _fail(queue: Queue, clock: ManualClock, claim: Claim) -> object:
    return claim.fail("boom") == "pending"


def _clear(queue: Queue, clock: ManualClock, claim: Claim) -> object:
    return queue.clear([claim.id], force=True) == [(claim.id, "requeued", "alive")]


def _enqueue_same_shard(queue: Queue, clock: ManualClock, claim: Claim) -> object:
    other = same_shard(claim.id)
    return queue.enqueue(1, id=other) == other


def _claim_same_shard(queue: Queue, clock: ManualClock, claim: Claim) -> object:
    other = same_shard(claim.id)
    queue.enqueue(2, id=other)
    return claimed(queue).id == other


def _sweep(queue: Queue, clock: ManualClock, claim: Claim) -> object:
    return sweep_twice(queue, clock, action_log()) == {"expired": 1}


GUARD_OPERATIONS = [_renew, _complete, _fail, _clear, _enqueue_same_shard, _claim_same_shard, _sweep]


@pytest.mark.parametrize("operation", GUARD_OPERATIONS, ids=lambda op: op.__name__.strip("_"))
def test_fifo_at_a_guard_never_blocks(
    queue: Queue, clock: ManualClock, operation: Callable[[Queue, ManualClock, Claim], object]
) -> None:
    """A FIFO at guards/<xx> is moved aside: every transition on that shard finishes and succeeds."""
    queue.enqueue("x", id="job-1")
    claim = claimed(queue, ttl=60)
    guard = queue.layout.guard("job-1")
    os.unlink(guard)
    os.mkfifo(guard)
    assert finishes(lambda: operation(queue, clock, claim), unblock=lambda: open_writer(guard)) is True
    assert stat.S_ISREG(os.lstat(guard).st_mode)


# -- a FIFO planted as an owner record ------------------------------------------------------------


def test_fifo_owner_record_never_blocks_the_sweep(queue: Queue, clock: ManualClock) -> None:
    """A FIFO at owners/<key>/owner.json is unreadable, not a wait: the sweep still breaks expired leases."""
    fifo = os.path.join(queue.layout.owners, "0" * 24, "owner.json")
    os.mkdir(os.path.dirname(fifo))
    os.mkfifo(fifo)
    queue.enqueue("x", id="job-1")
    claimed(queue, lease_only=True, ttl=10)
    log = action_log()
    assert finishes(lambda: sweep_twice(queue, clock, log), unblock=lambda: open_writer(fifo)) == {"expired": 1}
    assert "pass failed" not in logged(log)
    clock.advance(3600)  # past the retry back-off
    assert claimed(queue).id == "job-1"


# -- stray directories ----------------------------------------------------------------------------

STRAY_READY_DIRS = [
    "lost+found",
    "0/lost+found",
    "0/12",
    "0/0000000",
    "0/000000/tmp",
    "0/000000/00/x",
    "0/000000/00/00/lost+found",
    "0/000000/00/00/00/dir",
]


@pytest.mark.parametrize("stray", STRAY_READY_DIRS)
def test_stray_directory_in_ready_is_not_part_of_the_index(queue: Queue, clock: ManualClock, stray: str) -> None:
    """A directory fsqueue did not make under ready/ is skipped: claims see the real tasks, not it."""
    os.makedirs(os.path.join(queue.layout.ready, stray))
    assert finishes(lambda: queue.claim("w")) is None
    queue.enqueue("x", id="job-1")
    assert finishes(lambda: claimed(queue)).id == "job-1"


@pytest.mark.parametrize("stray", STRAY_READY_DIRS)
def test_stray_directory_in_ready_never_stops_one_shot_watchdogs(queue: Queue, clock: ManualClock, stray: str) -> None:
    """Watchdogs started once per sweep (cron) still break an expired lease beside a stray ready/ directory."""
    queue.enqueue("x", id="job-1")
    claimed(queue, lease_only=True, ttl=10)
    os.makedirs(os.path.join(queue.layout.ready, stray))
    log = action_log()
    clock.advance(3600)
    for _ in range(2):
        finishes(Sweeper(queue, WatchdogSettings(), log).sweep)
        clock.advance(60)
    assert not os.path.lexists(queue.layout.lock("job-1"))
    assert "pass failed" not in logged(log)
    assert queue.task("job-1").state == "pending"


def test_cli_claim_on_empty_queue_with_stray_ready_directory_exits_3(
    queue: Queue, fsqueue_cmd: list[str], cli_env: dict[str, str]
) -> None:
    """`fsqueue claim` beside a stray ready/ directory reports "nothing to claim", not a traceback."""
    os.makedirs(os.path.join(queue.layout.ready, "0", "lost+found"))
    result = subprocess.run(
        [*fsqueue_cmd, "claim", "--agent", "w"], env=cli_env, capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout) == (3, "")
    assert "Traceback" not in result.stderr


def test_staging_name_taken_by_a_leftover_is_skipped(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file already at the next staging name (a dead process's leftover) is left alone, never reported as
    the destination being taken: the writer draws another name and the enqueue and claim go through."""
    from fsqueue import _fsio

    monkeypatch.setattr(_fsio, "_STAGE", [os.getpid(), 0xDEADBEEF, 0])
    staging = Path(queue.layout.staging)
    leftovers = [staging / f"{os.getpid()}-deadbeef{seq:08x}.tmp" for seq in range(2)]
    for leftover in leftovers:
        leftover.write_bytes(b"left by a dead writer")
    assert queue.enqueue("job", id="t1") == "t1"
    claim = queue.claim("w")
    assert claim is not None and claim.payload == "job"
    claim.complete("r")
    assert queue.task("t1").result == "r"
    assert [leftover.read_bytes() for leftover in leftovers] == [b"left by a dead writer"] * 2
    assert sorted(staging.iterdir()) == leftovers


def test_stray_directory_in_staging_is_left_alone(queue: Queue, clock: ManualClock) -> None:
    """An old directory in staging/ is not removed, and the stale staging files beside it still are."""
    staging = Path(queue.layout.staging)
    stray, stale = staging / "old-dir", staging / "123-dead.tmp"
    stray.mkdir()
    stale.write_bytes(b"x")
    for path in (stray, stale):
        os.utime(path, (clock.now() - 7200, clock.now() - 7200))
    log = action_log()
    finishes(Sweeper(queue, WatchdogSettings(staging_max_age=3600), log, persist=False).sweep)
    assert stray.is_dir() and not stale.exists()
    assert "pass failed" not in logged(log)


# -- a directory where a task's lock goes ---------------------------------------------------------


def _break_by_sweeps(queue: Queue) -> list[dict[str, int]]:
    sweeper = Sweeper(queue, WatchdogSettings(), action_log(), persist=False)
    return [dict(sweeper.sweep().breaks) for _ in range(2)]


def _break_by_clear(queue: Queue) -> object:
    return queue.clear(["job-1"], force=True)


@pytest.mark.parametrize(
    ("breaker", "outcome"),
    [(_break_by_sweeps, [{"corrupt": 1}, {}]), (_break_by_clear, [("job-1", "requeued", "corrupt")])],
    ids=["watchdog", "clear"],
)
def test_directory_at_lock_path_is_broken_and_the_task_retried(
    queue: Queue, clock: ManualClock, breaker: Callable[[Queue], object], outcome: object
) -> None:
    """A directory at tasks/<id>.lock blocks no claim, is judged corrupt, moved aside, and its task retried."""
    queue.enqueue("x", id="job-1")
    lock = queue.layout.lock("job-1")
    os.mkdir(lock)
    assert finishes(lambda: queue.claim("w")) is None
    info = queue.lock_info("job-1")
    assert info is not None and info.verdict == "corrupt"
    assert finishes(lambda: breaker(queue)) == outcome
    assert not os.path.lexists(lock)
    assert queue.task("job-1").state != "running"
    clock.advance(3600)
    claim = claimed(queue)
    assert (claim.id, claim.attempt) == ("job-1", 2)


# -- an over-long marker name in ready/ -----------------------------------------------------------


def test_overlong_marker_name_is_moved_aside_and_claims_go_on(queue: Queue) -> None:
    """A 255-byte marker name (a legal file name, an invalid task id) is quarantined; the real task is claimed."""
    queue.enqueue("real work", id="job-1")
    leaf = Path(queue.layout.ready, "0", "000000", "00", "00", "00")
    leaf.mkdir(parents=True)
    marker = leaf / ("0000000000000001-" + "a" * 238)
    assert len(marker.name) == 255
    marker.touch()
    assert finishes(lambda: claimed(queue)).id == "job-1"
    assert not marker.exists()
    assert any("aaaa" in name for name in os.listdir(queue.layout.quarantine))
    assert finishes(lambda: queue.claim("w")) is None


# -- a symlink where the watchdog stages its pid file ---------------------------------------------


@pytest.mark.parametrize("planted", ["watchdog.pid.{pid}.tmp", "watchdog.pid"], ids=["staging-name", "pid-file"])
def test_symlink_at_watchdog_pid_paths_is_never_written_through(queue: Queue, tmp_path: Path, planted: str) -> None:
    """A symlink planted at the pid file's predictable names is never followed: its target is untouched."""
    victim = tmp_path / "victim.conf"
    victim.write_text("important\n")
    # The name a watchdog once staged its pid file under: predictable from its pid, so anyone could plant it.
    os.symlink(victim, Path(queue.root, planted.format(pid=os.getpid())))
    lock = finishes(lambda: hold_singleton(str(queue.root), wait=False))
    try:
        assert victim.read_text() == "important\n"
        pid_file = Path(queue.root, "watchdog.pid")
        assert not pid_file.is_symlink()
        assert pid_file.read_text() == f"{os.getpid()}\n"
        with pytest.raises(AlreadyRunning):
            hold_singleton(str(queue.root), wait=False)
    finally:
        lock.release()


# -- symlinks planted where fsqueue keeps its other records ------------------------------------------------
# (test_bad_input.py covers locks, task records, queue subdirectories, ready/ and guards.)


def plant(link: str, tmp_path: Path) -> tuple[Path, tuple[bytes, int]]:
    """A symlink at ``link`` to a precious file outside the root; returns the target and how it looked."""
    target = tmp_path / "outside" / f"precious-{os.path.basename(link)}"
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(b"precious\n")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(target, link)
    return target, (target.read_bytes(), target.stat().st_mtime_ns)


def untouched(target: Path) -> tuple[bytes, int]:
    return target.read_bytes(), target.stat().st_mtime_ns


def _window(queue: Queue) -> str:
    digest = hashlib.md5(b"poster", usedforsecurity=False).hexdigest()  # protocol.md: breaker/<md5 of agent>.window
    return os.path.join(queue.layout.sub("breaker"), f"{digest}.window")


#: Records replaced whole at each write: (where the symlink is planted, the write that replaces it).
REPLACED_RECORDS: dict[str, tuple[Callable[[Queue], str], Callable[[Queue], object]]] = {
    "heartbeat": (lambda q: os.path.join(q.layout.sub("status"), "up.heartbeat"), lambda q: q.beat("up")),
    "modes": (
        lambda q: os.path.join(q.layout.sub("status"), "down.modes"),
        lambda q: q.upstream("up", agent="down"),
    ),
    "breaker-window": (_window, lambda q: q.record_output("poster")),
    "watchdog-state": (
        lambda q: os.path.join(q.root, "watchdog.state.json"),
        lambda q: Sweeper(q, WatchdogSettings(), action_log()).sweep(),
    ),
}


@pytest.mark.parametrize("kind", sorted(REPLACED_RECORDS))
def test_symlink_at_a_replaced_record_is_replaced_never_written_through(
    root: Path, clock: ManualClock, tmp_path: Path, kind: str
) -> None:
    """A symlink at a heartbeat, .modes, breaker window or watchdog state is read as no record and replaced."""
    queue = Queue(root, create=True, clock=clock, config=Config(rules=(Rule("poster", 5, 600),)))
    where, write = REPLACED_RECORDS[kind]
    link = where(queue)
    target, before = plant(link, tmp_path)
    for _ in range(2):
        finishes(lambda: write(queue))
    assert untouched(target) == before
    assert not os.path.islink(link) and stat.S_ISREG(os.lstat(link).st_mode)
    assert json.loads(Path(link).read_text())["format"] == "fsqueue/1"


def test_symlink_at_a_heartbeat_is_reported_corrupt_not_followed(queue: Queue, tmp_path: Path) -> None:
    """Reading a heartbeat that is a symlink names it; agents lists it corrupt; upstream is degraded."""
    link = os.path.join(queue.layout.sub("status"), "up.heartbeat")
    target, before = plant(link, tmp_path)
    with pytest.raises(CorruptRecord, match="symlink"):
        queue.last_beat("up")
    assert [(info.agent, info.verdict) for info in queue.agents()] == [("up", "corrupt")]
    assert queue.upstream("up").degraded
    assert untouched(target) == before


def test_symlink_at_halt_file_halts_and_resume_moves_the_link(queue: Queue, tmp_path: Path) -> None:
    """A symlinked halt.json halts (fail closed) without being read through; resume moves the link itself."""
    queue.enqueue("waiting", id="waiting")
    link = os.path.join(queue.root, "halt.json")
    target, before = plant(link, tmp_path)
    for action in (lambda: queue.claim("w"), lambda: queue.enqueue("refused")):
        with pytest.raises(PipelineHalted, match="cannot be read"):
            action()
    lifted = queue.resume()
    assert lifted is not None and lifted.id == "unreadable"
    (moved,) = Path(queue.layout.sub("breaker")).glob("halt-unreadable-*.json")
    assert moved.is_symlink() and not os.path.lexists(link)
    assert untouched(target) == before
    assert claimed(queue).id == "waiting"


def test_symlink_at_an_alert_record_is_left_alone(queue: Queue, clock: ManualClock, tmp_path: Path) -> None:
    """A symlink in alerts/ is never read through nor sent: the sweep leaves it and carries on."""
    link = os.path.join(queue.layout.sub("alerts"), "halt-0123456789abcdef.json")
    target, before = plant(link, tmp_path)
    log = action_log()
    finishes(lambda: Sweeper(queue, WatchdogSettings(), log, persist=False).sweep())
    assert os.path.islink(link) and untouched(target) == before
    assert "pass failed" not in logged(log)


@pytest.mark.parametrize("final", ["done", "dead"])
def test_symlink_at_a_final_record_does_not_finish_a_pending_task(
    queue: Queue, clock: ManualClock, tmp_path: Path, final: str
) -> None:
    """A symlink planted at done/ or dead/ is not a commit: the pending task is kept and still claimed."""
    queue.enqueue("victim", id="victim")
    link = queue.layout.done("victim") if final == "done" else queue.layout.dead("victim")
    plant(link, tmp_path)
    claim = queue.claim("w")
    assert claim is not None and claim.id == "victim"


def test_symlink_at_this_processs_owner_directory_is_not_written_through(queue: Queue, tmp_path: Path) -> None:
    """A symlink planted at owners/<key> of the claiming process gets nothing written through it."""
    outside = tmp_path / "outside-owner"
    outside.mkdir()
    os.symlink(outside, os.path.join(queue.layout.owners, owner_key(current_owner())), target_is_directory=True)
    queue.enqueue("x", id="job-1")
    claimed(queue).complete()
    assert list(outside.iterdir()) == []
