"""`kill -9` of claim holders at random points: their locks are judged dead at once, nothing is lost.

Holders are real processes killed with a real SIGKILL and reaped with waitpid. Leases keep the default
30 minutes (only the foreign-owner case ages one, with ``os.utime``), so a lock broken by ``clear --dead``
was broken on proof that its owner is gone (PID + start time + boot id), never by age. Every run is
checked against an independent history (``tests/history.py``).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from history import Report, append, check, open_history, parse_history

from fsqueue import Config, LeaseLost, Queue

TESTS_DIR = str(Path(__file__).parent)
FRESH_LEASE = 1700.0  # seconds: a lease this far from expiry was not broken for its age
WAIT = 60.0  # upper bound on any single wait for a real event (a process exit, a pipe line)

# hold: claim one task, report it, block on stdin (the test's pipe) until killed or released, then commit.
# busy: report ready, then claim -> `start` -> complete -> `commit` as fast as possible until killed.
HOLDER = """
import os, sys
from fsqueue import LeaseLost, Queue, load_config
import history

root, config, path, agent, mode = sys.argv[1:6]
queue = Queue(root, config=load_config(config))
fd = history.open_history(path)
pid = os.getpid()

def commit(claim):
    try:
        claim.complete({"pid": pid, "token": claim.token})
    except LeaseLost:
        history.append(fd, "fenced", claim.id, pid, claim.token)
        return
    history.append(fd, "commit", claim.id, pid, claim.token)

if mode == "hold":
    claim = queue.claim(agent)
    if claim is None:
        os.write(1, b"none\\n")
        sys.exit(3)
    history.append(fd, "start", claim.id, pid, claim.token)
    os.write(1, f"claimed {claim.id} {claim.attempt}\\n".encode())
    os.read(0, 1)
    commit(claim)
else:
    os.write(1, b"ready\\n")
    while (claim := queue.claim(agent)) is not None:
        history.append(fd, "start", claim.id, pid, claim.token)
        commit(claim)
"""


class Harness:
    """One queue, its config file, its history, and the holder processes started on it."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "queue"
        self.history = tmp_path / "history.log"
        self.history.touch()
        self.config_path = tmp_path / "fsqueue.yaml"
        # A broken lease's task is claimable again after 1 ms, so rounds never wait on back-off.
        self.config_path.write_text("retry:\n  base: 1ms\n  max: 1ms\n")
        self.queue = Queue(self.root, create=True, config=Config(retry_base=0.001, retry_max=0.001))
        self.enqueued: set[str] = set()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(
            os.environ,
            FSQUEUE_ROOT=str(self.root),
            FSQUEUE_CONFIG=str(self.config_path),
            PYTHONPATH=os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])),
        )

    def enqueue(self, count: int, **options: object) -> list[str]:
        ids = [self.queue.enqueue({"n": len(self.enqueued) + n}, **options) for n in range(count)]  # type: ignore[arg-type]
        self.enqueued.update(ids)
        return ids

    def spawn(self, agent: str, mode: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-c", HOLDER, str(self.root), str(self.config_path), str(self.history), agent, mode]
        proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fsqueue", *args], env=self.env, capture_output=True, text=True, timeout=WAIT
        )

    def cli_json(self, *args: str) -> list[dict[str, Any]]:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows

    def drain(self) -> int:
        """Finish every ready task with a clean in-process worker that also writes the history."""
        fd = open_history(self.history)
        count = 0
        try:
            while (claim := self.queue.claim("drain")) is not None:
                append(fd, "start", claim.id, os.getpid(), claim.token)
                claim.complete({"pid": os.getpid(), "token": claim.token})
                append(fd, "commit", claim.id, os.getpid(), claim.token)
                count += 1
        finally:
            os.close(fd)
        return count

    def report(self) -> Report:
        return check(parse_history(self.history), self.root, self.enqueued)

    def reap(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """A queue with 1 ms retry back-off and a history file; every holder is reaped afterwards."""
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.reap()


def read_line(proc: subprocess.Popen[bytes]) -> str:
    """The next line a process reports on stdout (or stderr), waiting on the pipe, never on a timer."""
    pipe = proc.stdout or proc.stderr
    assert pipe is not None
    readable, _, _ = select.select([pipe], [], [], WAIT)
    assert readable, f"process {proc.pid} reported nothing within {WAIT}s"
    line = pipe.readline().decode()
    assert line, f"process {proc.pid} exited (status {proc.wait()}) before reporting"
    return line.strip()


def kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=WAIT) == -signal.SIGKILL


def pending_or_finished(h: Harness) -> set[str]:
    """Ids in a settled state: done, dead, or pending (record present, no lock)."""
    names = {p.stem for p in (h.root / "done").iterdir()} | {p.stem for p in (h.root / "dead").iterdir()}
    locked = {p.stem for p in (h.root / "tasks").iterdir()}
    return names | ({p.stem for p in (h.root / "records").iterdir()} - locked)


def broken_attempts(h: Harness, task_id: str) -> list[int]:
    return [e["attempt"] for e in h.queue.task(task_id).history if e["event"] == "broken"]


def assert_all_done_once(h: Harness) -> Report:
    report = h.report()
    assert report.problems() == {}, report
    assert (report.double_commits, report.lost, report.unexpected, report.mismatched) == (0, 0, 0, 0)
    assert report.done == report.enqueued, report
    assert os.listdir(h.root / "tasks") == []
    return report


def test_killed_holders_are_judged_dead_at_once_and_requeued(harness: Harness) -> None:
    """Holders killed right after their claim: dead at once (30 min lease untouched), requeued, attempt counted."""
    rng = random.Random(1)
    harness.enqueue(12)
    for _ in range(3):
        holders = [harness.spawn(f"holder-{n}", "hold") for n in range(6)]
        claimed = {}
        for proc in holders:
            _, claimed_id, claimed_attempt = read_line(proc).split()
            claimed[proc.pid] = (claimed_id, int(claimed_attempt))
        victims = rng.sample(holders, 4)
        for proc in victims:
            kill_and_reap(proc)
        locks = {lock["task"]: lock for lock in harness.cli_json("locks")}
        for proc in holders:
            task_id, attempt = claimed[proc.pid]
            expected = "dead" if proc in victims else "alive"
            assert (locks[task_id]["verdict"], locks[task_id]["attempt"]) == (expected, attempt)
            assert locks[task_id]["lease_left"] > FRESH_LEASE
        cleared = harness.cli_json("clear", "--dead")
        assert sorted((c["task"], c["outcome"], c["verdict"]) for c in cleared) == sorted(
            (claimed[p.pid][0], "requeued", "dead") for p in victims
        )
        for proc in victims:
            task_id, attempt = claimed[proc.pid]
            assert broken_attempts(harness, task_id)[-1] == attempt
            assert harness.queue.task(task_id).attempts == attempt
        for proc in holders:
            if proc not in victims:  # the live holders were not touched: they commit normally
                assert proc.stdin is not None
                proc.stdin.close()
                assert proc.wait(timeout=WAIT) == 0
        assert pending_or_finished(harness) == harness.enqueued
    harness.drain()
    report = assert_all_done_once(harness)
    assert report.committed_once == report.enqueued


def test_random_kills_of_busy_workers_lose_nothing(harness: Harness) -> None:
    """Busy workers killed at random offsets (mid-claim, mid-complete): clear --dead recovers every claim."""
    rng = random.Random(20240229)
    harness.enqueue(40, max_attempts=100)
    seen = {"locks": 0, "committed_before_cleanup": 0}
    for round_no in range(12):
        harness.enqueue(30, max_attempts=100)
        workers = [harness.spawn(f"busy-{round_no}-{n}", "busy") for n in range(4)]
        for proc in workers:
            assert read_line(proc) == "ready"
        for proc in workers:
            for _ in range(rng.randrange(400_000)):  # a random offset into the worker's claim/complete loop
                pass
            os.kill(proc.pid, signal.SIGKILL)
        for proc in workers:
            proc.wait(timeout=WAIT)
        locks = harness.queue.locks()
        assert all(lock.verdict == "dead" and lock.lease_left > FRESH_LEASE for lock in locks), locks
        finished = {lock.task for lock in locks if (harness.root / "done" / f"{lock.task}.json").exists()}
        cleared = {c["task"]: c for c in harness.cli_json("clear", "--dead")}
        assert set(cleared) == {lock.task for lock in locks}
        for lock in locks:
            if lock.task in finished:  # killed after the commit point: only leftovers were removed
                assert cleared[lock.task]["outcome"] == "cleaned"
            else:
                assert cleared[lock.task]["outcome"] == "requeued"
                assert lock.attempt in broken_attempts(harness, lock.task)
        assert os.listdir(harness.root / "tasks") == []
        assert pending_or_finished(harness) == harness.enqueued
        seen["locks"] += len(locks)
        seen["committed_before_cleanup"] += len(finished)
    assert seen["locks"] > 0, "no kill ever landed while a claim was held"
    harness.drain()
    assert_all_done_once(harness)


def test_poison_task_goes_to_dead_letter_after_max_attempts(harness: Harness) -> None:
    """A task whose worker is killed every time is dead-lettered after max_attempts, counted at claim."""
    (task_id,) = harness.enqueue(1, max_attempts=3)
    for attempt in (1, 2, 3):
        proc = harness.spawn(f"victim-{attempt}", "hold")
        assert read_line(proc) == f"claimed {task_id} {attempt}"
        lock = harness.queue.lock_info(task_id)
        assert lock is not None and lock.attempt == attempt  # the attempt is on disk before any outcome
        kill_and_reap(proc)
        (cleared,) = harness.queue.clear(dead=True)
        assert cleared == (task_id, "dead" if attempt == 3 else "requeued", "dead")
    info = harness.queue.task(task_id)
    assert (info.state, info.attempts) == ("dead", 3)
    assert "attempts exhausted (3/3)" in info.reason
    assert broken_attempts(harness, task_id) == [1, 2, 3]
    late = harness.spawn("late", "hold")
    assert read_line(late) == "none"
    assert late.wait(timeout=WAIT) == 3
    report = harness.report()
    assert (report.dead, report.lost, report.double_commits, report.done) == (1, 0, 0, 0)


def test_killed_fsqueue_run_takes_its_command_down_and_task_is_recovered(harness: Harness, tmp_path: Path) -> None:
    """`kill -9` of `fsqueue run`: its command dies with it (PDEATHSIG) and clear --dead requeues the task."""
    (task_id,) = harness.enqueue(1)
    hold = tmp_path / "hold.fifo"
    os.mkfifo(hold)  # nobody writes it: the command blocks opening it until it is killed
    command = 'echo "child $$" >&2; exec cat "$1"'
    run = subprocess.Popen(
        [sys.executable, "-m", "fsqueue", "run", "--agent", "runner", "--", "sh", "-c", command, "sh", str(hold)],
        env=harness.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    harness.procs.append(run)
    pidfd = -1
    try:
        line = read_line(run)
        while not line.startswith("child "):
            line = read_line(run)
        child = int(line.split()[1])
        pidfd = os.pidfd_open(child)  # taken while the child is alive, so it can never name a reused pid
        assert psutil.Process(child).ppid() == run.pid
        lock = harness.queue.lock_info(task_id)
        assert lock is not None and (lock.verdict, lock.pid) == ("alive", run.pid)
        kill_and_reap(run)
        readable, _, _ = select.select([pidfd], [], [], WAIT)
        assert readable, "the command outlived its `fsqueue run`"
        lock = harness.queue.lock_info(task_id)
        assert lock is not None and lock.verdict == "dead" and lock.lease_left > FRESH_LEASE
        assert harness.cli_json("clear", "--dead") == [{"task": task_id, "outcome": "requeued", "verdict": "dead"}]
    finally:
        if pidfd >= 0:
            if not select.select([pidfd], [], [], 0)[0]:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
    assert broken_attempts(harness, task_id) == [1]
    finish = harness.cli("run", "--agent", "finisher", "--", "sh", "-c", 'printf "{\\"ok\\": true}"')
    assert finish.returncode == 0, finish.stderr
    info = harness.queue.task(task_id)
    assert (info.state, info.attempts, info.result) == ("done", 2, {"ok": True})


# `fsqueue run` (its CLI, unchanged) with the forked child held inside the fork -> prctl(PR_SET_PDEATHSIG)
# window. `_runner._prctl()` resolves libc's prctl in the parent; it is wrapped so that the child, on entering
# it, reports its pid on one pipe and blocks reading another, and reports again once the real prctl returned.
# The child does there what the real code does: raw system calls only, no import and no lock.
RUN_HELD_BEFORE_PRCTL = """
import os, sys
from fsqueue import _runner
from fsqueue.cli import main

window, release = int(sys.argv[1]), int(sys.argv[2])
prctl = _runner._prctl()
assert prctl is not None, "libc has no prctl"

def held_prctl(*args):
    os.write(window, b"%d\\n" % os.getpid())
    os.read(release, 1)
    done = prctl(*args)
    os.write(window, b"prctl\\n")
    return done

_runner._prctl = lambda: held_prctl
sys.argv = ["fsqueue", *sys.argv[3:]]
main()
"""


def read_fd_line(fd: int) -> str:
    """The next short line on a pipe, waiting on the pipe (never on a timer); '' once its writers are gone."""
    readable, _, _ = select.select([fd], [], [], WAIT)
    assert readable, f"nothing arrived on fd {fd} within {WAIT}s"
    return os.read(fd, 64).decode().strip()


def test_fsqueue_run_killed_between_fork_and_prctl_leaves_no_orphan(harness: Harness, tmp_path: Path) -> None:
    """`kill -9` of `fsqueue run` while its child is between fork and prctl: the command never runs.

    The child is held in the window until its `fsqueue run` is killed and reaped, so the death signal it then
    asks for can never come: only the child's own check of its parent keeps the command from running as an
    orphan. The killed run's claim is judged dead at once (30 min lease untouched) and requeued.
    """
    (task_id,) = harness.enqueue(1)
    started, hold = tmp_path / "started.fifo", tmp_path / "hold.fifo"
    os.mkfifo(started)  # the command writes its pid here first: a line means it ran
    os.mkfifo(hold)  # nobody writes it: a command that ran blocks opening it until it is killed
    reader = os.open(started, os.O_RDONLY | os.O_NONBLOCK)
    keep = os.open(started, os.O_WRONLY | os.O_NONBLOCK)  # a writer always exists, so no spurious EOF
    window_r, window_w = os.pipe()
    release_r, release_w = os.pipe()
    command = 'printf "%s\\n" "$$" >"$2"; exec cat "$1"'
    argv = [sys.executable, "-c", RUN_HELD_BEFORE_PRCTL, str(window_w), str(release_r)]
    argv += ["run", "--agent", "runner", "--", "sh", "-c", command, "sh", str(hold), str(started)]
    pidfd = -1
    try:
        try:
            run = subprocess.Popen(
                argv,
                env=harness.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(window_w, release_r),
            )
            harness.procs.append(run)
        finally:
            os.close(window_w)  # now only `fsqueue run` and its child hold these ends
            os.close(release_r)
        line = read_fd_line(window_r)
        assert line, f"`fsqueue run` exited (status {run.wait()}) without forking its command"
        child = int(line)
        pidfd = os.pidfd_open(child)  # taken while the child is held, so it can never name a reused pid
        assert psutil.Process(child).ppid() == run.pid
        lock = harness.queue.lock_info(task_id)
        assert lock is not None and (lock.verdict, lock.pid) == ("alive", run.pid)
        kill_and_reap(run)  # it dies inside Popen, its child between fork and prctl
        os.write(release_w, b"\n")  # the child goes on: prctl(PR_SET_PDEATHSIG) with its parent already gone
        assert read_fd_line(window_r) == "prctl"
        readable, _, _ = select.select([pidfd, reader], [], [], WAIT)
        assert readable, f"child {child} neither died nor started the command within {WAIT}s"
        ran = select.select([reader], [], [], 0)[0]
        assert not ran, f"the command ran after its `fsqueue run` was killed: {os.read(reader, 64)!r}"
        assert pidfd in readable
        lock = harness.queue.lock_info(task_id)
        assert lock is not None and lock.verdict == "dead" and lock.lease_left > FRESH_LEASE
        assert harness.queue.clear(dead=True) == [(task_id, "requeued", "dead")]
    finally:
        if pidfd >= 0:
            if not select.select([pidfd], [], [], 0)[0]:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        for fd in (reader, keep, window_r, release_w):
            os.close(fd)
    assert broken_attempts(harness, task_id) == [1]
    harness.drain()
    assert_all_done_once(harness)


def test_zombie_holder_is_judged_dead(harness: Harness) -> None:
    """A holder killed but not yet reaped (a zombie) is judged dead; its PID still exists."""
    (task_id,) = harness.enqueue(1)
    proc = harness.spawn("zombie", "hold")
    assert read_line(proc) == f"claimed {task_id} 1"
    os.kill(proc.pid, signal.SIGKILL)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # wait for the exit without reaping it
    assert psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
    lock = harness.queue.lock_info(task_id)
    assert lock is not None and lock.verdict == "dead" and lock.lease_left > FRESH_LEASE
    assert harness.queue.clear(dead=True) == [(task_id, "requeued", "dead")]
    assert proc.wait(timeout=WAIT) == -signal.SIGKILL
    harness.drain()
    assert_all_done_once(harness)


def _edit_lock_owner(path: Path, **owner: object) -> None:
    """Rewrite the lock's owner fields in place, keeping its inode (the owner index link) and its expiry."""
    st = os.stat(path)
    record = json.loads(path.read_bytes())
    record["owner"].update(owner)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, json.dumps(record).encode() + b"\n")
    finally:
        os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize(
    ("change", "verdict"),
    [
        pytest.param("start_ticks", "dead", id="pid-reused-by-unrelated-process"),
        pytest.param("boot_id", "dead", id="same-machine-rebooted"),
        pytest.param("machine_id", "foreign", id="other-machine"),
        pytest.param("pidns", "foreign", id="other-pid-namespace"),
    ],
)
def test_owner_identity_decides_dead_or_foreign(harness: Harness, change: str, verdict: str) -> None:
    """A live PID with another start time is dead (reused); another machine or namespace is foreign."""
    (task_id,) = harness.enqueue(1)
    bystander = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    harness.procs.append(bystander)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid with no process behind it (reaped)
    claim = harness.queue.claim("w", owner_pid=bystander.pid)
    assert claim is not None
    lock_path = harness.root / "tasks" / f"{task_id}.lock"
    owner = json.loads(lock_path.read_bytes())["owner"]
    assert harness.queue.lock_info(task_id).verdict == "alive"  # type: ignore[union-attr]
    if change == "start_ticks":
        _edit_lock_owner(lock_path, start_ticks=owner["start_ticks"] + 1)  # the recorded pid is alive
    elif change == "boot_id":
        _edit_lock_owner(lock_path, boot_id="00000000-0000-4000-8000-000000000000")
    else:  # even with a pid that is gone here, another host's or namespace's pid proves nothing
        _edit_lock_owner(
            lock_path, **{change: "0" * 32 if change == "machine_id" else owner["pidns"] + 1}, pid=gone.pid
        )
    lock = harness.queue.lock_info(task_id)
    assert lock is not None and lock.verdict == verdict and lock.lease_left > FRESH_LEASE
    if verdict == "dead":
        assert harness.queue.clear(dead=True) == [(task_id, "requeued", "dead")]
        assert bystander.poll() is None  # the unrelated process was never touched
    else:
        assert harness.queue.clear(dead=True) == []  # only its lease can free it
        expired = harness.queue.clock.now() - 1
        os.utime(lock_path, (expired, expired))  # its 30 minutes ran out
        assert harness.queue.clear(dead=True, expired=True) == [(task_id, "requeued", "expired")]
    with pytest.raises(LeaseLost):
        claim.complete("too late")
    assert broken_attempts(harness, task_id) == [1]
    harness.drain()
    assert_all_done_once(harness)
