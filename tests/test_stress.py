"""Many real processes on one queue: Python API workers and `fsqueue run` loops, behind a start barrier.

Every task is recorded in an independent history (``tests/history.py``). A tenth of the tasks carry a
5 ms lease that a concurrent sweeper breaks as soon as it expires, so commits race lease breaks and the
fence is exercised for real; the checker then demands no double commit, no lost task, every task done.
"""

from __future__ import annotations

import os
import random
import select
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from history import Report, append, check, open_history, parse_history, read_finals

from fsqueue import Config, LeaseLost, Queue

TESTS_DIR = str(Path(__file__).parent)
DEADLINE = 150.0  # seconds for the whole run, far above the ~15 s it takes
WAIT = 60.0  # upper bound on a single wait for a real event
#: What `fsqueue run` prints when its claim was broken under it (on renewal or at the commit).
LEASE_LOST_TEXT = "fsqueue run: lease on task"

# A Python worker: claim -> `start` line -> tiny work -> complete -> `commit` line, until nothing is ready.
API_WORKER = """
import os, sys
from fsqueue import LeaseLost, Queue, load_config
import history

root, config, path, agent, ready, go = sys.argv[1:7]
queue = Queue(root, config=load_config(config))
fd = history.open_history(path)
pid = os.getpid()
os.write(int(ready), b"r")
os.close(int(ready))
os.read(int(go), 1)  # the start barrier: returns at EOF, when the test closes the write end
while (claim := queue.claim(agent)) is not None:
    history.append(fd, "start", claim.id, pid, claim.token)
    sum(range(claim.payload["work"]))
    try:
        claim.complete({"pid": pid, "token": claim.token})
    except LeaseLost:
        history.append(fd, "fenced", claim.id, pid, claim.token)
        continue
    history.append(fd, "commit", claim.id, pid, claim.token)
"""

# Waits at the start barrier, then becomes the real `fsqueue run` process (same pid).
BARRIER_EXEC = """
import os, sys
os.write(int(sys.argv[1]), b"r")
os.close(int(sys.argv[1]))
os.read(int(sys.argv[2]), 1)
os.close(int(sys.argv[2]))
os.execv(sys.argv[3], sys.argv[3:])
"""

# The command `fsqueue run` runs per task: one `start` line (printf writes it in one write), then a JSON
# result naming this claim's token and the command's pid.
RUN_COMMAND = (
    'printf "start %s %s %s\\n" "$FSQUEUE_TASK_ID" "$$" "$FSQUEUE_TOKEN" >>"$STRESS_HISTORY" && '
    'printf "{\\"pid\\": %s, \\"token\\": \\"%s\\"}\\n" "$$" "$FSQUEUE_TOKEN"'
)

# Breaks every expired lease, over and over, until its stop pipe reaches EOF; prints how many it broke.
SWEEPER = """
import select, sys
from fsqueue import Queue, load_config

root, config, stop = sys.argv[1], sys.argv[2], int(sys.argv[3])
queue = Queue(root, config=load_config(config))
broken = 0
while not select.select([stop], [], [], 0.005)[0]:
    broken += len(queue.clear(expired=True))
print(broken)
"""


@dataclass(frozen=True)
class Size:
    """One stress configuration."""

    tasks: int
    api_workers: int
    run_workers: int
    run_max_tasks: int
    durability: Literal["fsync", "none"]


def _config_file(tmp_path: Path, durability: str) -> Path:
    path = tmp_path / "fsqueue.yaml"
    # Broken leases come back at once (1 ms back-off) so the run does not wait on retry delays.
    path.write_text(f"durability: {durability}\nretry:\n  base: 1ms\n  max: 1ms\n")
    return path


def _enqueue(queue: Queue, count: int, rng: random.Random) -> set[str]:
    ids = set()
    for n in range(count):
        short = n % 10 == 0  # a lease so short that many expire before the commit
        ids.add(
            queue.enqueue(
                {"n": n, "work": rng.randrange(20_000)},
                ttl=0.005 if short else None,
                max_attempts=1000 if short else None,
            )
        )
    return ids


def _wait_ready(fd: int, count: int, procs: list[subprocess.Popen[bytes]]) -> None:
    got = 0
    while got < count:
        readable, _, _ = select.select([fd], [], [], WAIT)
        data = os.read(fd, 4096) if readable else b""
        if not data:
            dead = [p.args for p in procs if p.poll() is not None]
            raise AssertionError(f"{got}/{count} workers reached the start barrier; exited early: {dead[:3]}")
        got += len(data)


def _drain(queue: Queue, history_path: Path) -> int:
    """Finish what was requeued after the workers left (a broken lease may return after they quit)."""
    fd = open_history(history_path)
    pid, count = os.getpid(), 0
    try:
        while (claim := queue.claim("drain")) is not None:
            append(fd, "start", claim.id, pid, claim.token)
            claim.complete({"pid": pid, "token": claim.token})
            append(fd, "commit", claim.id, pid, claim.token)
            count += 1
    finally:
        os.close(fd)
    return count


def _leftovers(root: Path) -> dict[str, list[str]]:
    found = {name: sorted(os.listdir(root / name)) for name in ("tasks", "records", "staging")}
    found["ready"] = [f for _, _, files in os.walk(root / "ready") for f in files]
    found["owner links"] = [f for _, _, files in os.walk(root / "owners") for f in files if f.endswith(".lock")]
    return {name: files[:5] for name, files in found.items() if files}


def _tail(path: Path, size: int | None = 1500) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text if size is None else text[-size:]


@dataclass(frozen=True)
class Observed:
    """What a stress run saw besides the checker's report."""

    broken: int  # leases the sweeper broke
    run_lease_lost: int  # claims `fsqueue run` reported lost (on renewal or at the commit)
    drained: int  # tasks requeued after every worker had left, finished by the drain
    leftovers: dict[str, list[str]]


def _spawn_workers(
    size: Size,
    root: Path,
    config_path: Path,
    history_path: Path,
    logs: Path,
    fds: tuple[int, int],
    procs: list[subprocess.Popen[bytes]],
) -> dict[str, subprocess.Popen[bytes]]:
    """Start every worker (each also goes into ``procs`` at once, so a failure part-way still reaps it)."""
    env = dict(
        os.environ,
        FSQUEUE_ROOT=str(root),
        FSQUEUE_CONFIG=str(config_path),
        STRESS_HISTORY=str(history_path),
        PYTHONPATH=os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])),
    )
    barrier = [str(fd) for fd in fds]
    workers = {}
    for n in range(size.api_workers + size.run_workers):
        if n < size.api_workers:
            agent = f"api-{n}"
            argv = [sys.executable, "-c", API_WORKER, str(root), str(config_path), str(history_path), agent, *barrier]
        else:
            agent = f"run-{n}"
            run = [sys.executable, "-m", "fsqueue", "run", "--agent", agent, "--max-tasks", str(size.run_max_tasks)]
            argv = [sys.executable, "-c", BARRIER_EXEC, *barrier, *run, "--", "sh", "-c", RUN_COMMAND]
        with (logs / f"{agent}.log").open("wb") as log:
            workers[agent] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=fds)
        procs.append(workers[agent])
    return workers


def _start_sweeper(root: Path, config_path: Path, stop: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", SWEEPER, str(root), str(config_path), str(stop)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, pass_fds=(stop,))


def _run_workers(
    size: Size, root: Path, config_path: Path, history_path: Path, logs: Path
) -> tuple[dict[str, int], int]:
    """Start the workers and the sweeper, release them together, wait for all; return exit codes and breaks."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    stop_r, stop_w = os.pipe()
    procs: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + DEADLINE
    try:
        workers = _spawn_workers(size, root, config_path, history_path, logs, (ready_w, go_r), procs)
        sweeper = _start_sweeper(root, config_path, stop_r)
        procs.append(sweeper)
        os.close(ready_w)
        ready_w = -1
        _wait_ready(ready_r, len(workers), procs)
        os.close(go_w)  # every worker is past its imports and blocked on the pipe: release them at once
        go_w = -1
        codes = {a: p.wait(timeout=max(1.0, deadline - time.monotonic())) for a, p in workers.items()}
        os.close(stop_w)
        stop_w = -1
        out, _ = sweeper.communicate(timeout=WAIT)
        return codes, int(out)
    finally:
        for fd in (ready_r, ready_w, go_r, go_w, stop_r, stop_w):
            if fd >= 0:
                os.close(fd)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def run_stress(tmp_path: Path, size: Size, seed: int) -> tuple[Report, Observed]:
    """Run one stress configuration to the end; return the checker's report and what else was seen."""
    root, logs, history_path = tmp_path / "queue", tmp_path / "logs", tmp_path / "history.log"
    logs.mkdir()
    history_path.touch()
    config_path = _config_file(tmp_path, size.durability)
    queue = Queue(root, create=True, config=Config(durability=size.durability, retry_base=0.001, retry_max=0.001))
    enqueued = _enqueue(queue, size.tasks, random.Random(seed))
    codes, broken = _run_workers(size, root, config_path, history_path, logs)
    # An API worker always exits 0; `fsqueue run` exits 5 when one of its claims was broken under it.
    failed = {a: (c, _tail(logs / f"{a}.log")) for a, c in codes.items() if c != 0 and (a[:3], c) != ("run", 5)}
    assert not failed, f"workers failed: {failed}"
    drained = _drain(queue, history_path)
    run_logs = [_tail(logs / f"{a}.log", None) for a in codes if a.startswith("run")]
    observed = Observed(broken, sum(text.count(LEASE_LOST_TEXT) for text in run_logs), drained, _leftovers(root))
    return check(parse_history(history_path), root, enqueued), observed


def _assert_clean(report: Report, observed: Observed, root: Path, size: Size) -> None:
    assert report.problems() == {}, f"{report} {observed}"
    assert (report.double_commits, report.lost, report.unexpected, report.mismatched) == (0, 0, 0, 0)
    assert report.done == report.enqueued == size.tasks, f"{report} {observed}"
    assert report.dead == 0
    assert observed.leftovers == {}, observed
    # Every lease the sweeper broke refused exactly one holder: an API worker's commit or an `fsqueue run`.
    assert observed.broken == report.fenced + observed.run_lease_lost, f"{report} {observed}"
    done = read_finals(root, "done")
    by_run = Counter(rec["agent"] for rec in done.values() if rec["agent"].startswith("run-"))
    # Each `fsqueue run` committed the token its own command saw, and no more tasks than --max-tasks.
    for task, rec in done.items():
        if rec["agent"].startswith("run-"):
            assert rec["result"]["token"] == rec["token"], task
    assert by_run, "no task was committed through `fsqueue run`"
    assert max(by_run.values()) <= size.run_max_tasks
    # Every API or drain commit left exactly one `commit` line; `fsqueue run` commits are proven by done/.
    assert report.committed_once == sum(1 for rec in done.values() if not rec["agent"].startswith("run-"))


@pytest.mark.stress
@pytest.mark.parametrize(
    "size",
    [
        pytest.param(Size(4000, 24, 10, 400, "none"), id="4000-tasks-34-workers-no-fsync"),
        pytest.param(Size(800, 24, 8, 150, "fsync"), id="800-tasks-32-workers-fsync"),
    ],
)
def test_many_workers_commit_each_task_exactly_once(tmp_path: Path, size: Size) -> None:
    """API workers and `fsqueue run` processes racing lease breaks: no double commit, nothing lost, all done."""
    report, observed = run_stress(tmp_path, size, seed=size.tasks)
    _assert_clean(report, observed, tmp_path / "queue", size)


def test_history_checker_flags_double_commit_and_loss(tmp_path: Path) -> None:
    """The checker is not vacuous: a second commit, a lost task and a stranger are all reported."""
    queue = Queue(tmp_path / "queue", create=True, config=Config(durability="none"))
    ids = {queue.enqueue(n) for n in range(3)}
    history_path = tmp_path / "history.log"
    fd = open_history(history_path)
    try:
        first = queue.claim("w")
        assert first is not None
        append(fd, "start", first.id, 1, first.token)
        first.complete()
        append(fd, "commit", first.id, 1, first.token)
        append(fd, "commit", first.id, 2, first.token)  # a second commit the queue should have refused
        append(fd, "commit", "never-enqueued", 3, "t")
        with pytest.raises(LeaseLost):
            first.complete()
    finally:
        os.close(fd)
    report = check(parse_history(history_path), tmp_path / "queue", ids)
    assert (report.double_commits, report.lost, report.unexpected, report.done) == (1, 2, 1, 1)
    assert report.mismatched == 1  # the stranger's commit has no done record
