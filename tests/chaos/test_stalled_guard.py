"""Found by the chaos harness: a process stopped inside a task's transition stalls the whole watchdog sweep.

A holder SIGSTOPped (or hung in the kernel, or suspended with Ctrl-Z) while it holds a task's guard --
in the middle of a claim, a renewal or a commit -- keeps that guard's flock. The watchdog breaks locks
with a blocking ``flock`` on the guard (``break_lock`` -> ``guarded(..., blocking=True)``), so its
sweep waits for as long as the process stays stopped, and no other dead holder's task is recovered
meanwhile (P4). In chaos runs this showed as sweeps stalled for 1.5-4 s, each one ending the moment the
stopped holder got SIGCONT. The repair pass had the same wait, found later by the same harness: a
process stopped inside a claim or a commit leaves exactly the leftovers that pass repairs (a record with
neither marker nor lock; a record beside its done record), and it waited on their guard -- sweeps
stalled up to 6 s. It now skips a task whose guard is held and looks again at its next run.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from blocking import finishes

from fsqueue import Config, Queue
from fsqueue._layout import guard_shard
from fsqueue_watchdog import ActionLog, Sweeper, WatchdogSettings

WAIT = 10.0  # seconds: a one-shot sweep of ten locks takes well under one


class SweepStalled(AssertionError):
    """The one failure this regression test expects; any other failure is a broken test, not the bug."""


# Claims every task as a process-owned claim, says so, then waits to be SIGKILLed: a dead owner.
HOLDER = """
import os, sys
from fsqueue import Queue
queue = Queue(sys.argv[1])
while queue.claim("holder") is not None:
    pass
os.write(1, b"claimed\\n")
os.read(0, 1)
"""

# Takes the guard of one task exactly as a transition does, then stops itself while holding it.
STOPPED_IN_TRANSITION = """
import os, signal, sys
from fsqueue import Queue
from fsqueue._guard import guarded
queue = Queue(sys.argv[1])
with guarded(queue.layout.guard(sys.argv[2])):
    os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_sweep_ends_while_a_stopped_process_holds_a_guard(tmp_path: Path) -> None:
    """A sweep breaks the other dead holders' locks and ends although one task's guard is held by a stopped process."""
    root = str(tmp_path / "queue")
    queue = Queue(root, create=True, config=Config(durability="none"))
    stuck = "stuck"
    others = [f"t{i}" for i in range(200) if guard_shard(f"t{i}") != guard_shard(stuck)][:9]
    for task in [stuck, *others]:
        queue.enqueue(task, id=task)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, root], stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
        )
        procs.append(holder)
        assert holder.stdout is not None and holder.stdout.readline() == b"claimed\n"
        holder.kill()
        holder.wait()  # every lock now has a provably dead owner
        stopped = subprocess.Popen([sys.executable, "-c", STOPPED_IN_TRANSITION, root, stuck], start_new_session=True)
        procs.append(stopped)
        _, status = os.waitpid(stopped.pid, os.WUNTRACED)  # returns once it is stopped, holding the guard
        assert os.WIFSTOPPED(status)
        sweep = subprocess.Popen(
            [sys.executable, "-m", "fsqueue_watchdog", "--root", root, "--once"],
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(sweep)
        try:
            code = sweep.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            raise SweepStalled(f"the sweep did not end within {WAIT:.0f}s while a stopped process held one guard")
        assert code == 0
        assert not [task for task in others if os.path.exists(queue.layout.lock(task))]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                os.killpg(proc.pid, signal.SIGCONT)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            if proc.stdin is not None:
                proc.stdin.close()


def _claim_cut_short(queue: Queue) -> str:
    """A claimer stopped between removing the task's ready marker and linking its lock."""
    queue.enqueue("x", id="job")
    task = queue.read_task("job")
    assert task is not None
    os.unlink(os.path.join(queue.layout.ready, task.entry))
    return "orphan-record"


def _commit_cut_short(queue: Queue) -> str:
    """A committer stopped after publishing the done record, before removing the task record."""
    queue.enqueue("x", id="job")
    claim = queue.claim("worker")
    assert claim is not None
    record = Path(queue.layout.record("job")).read_bytes()
    claim.complete()
    Path(queue.layout.record("job")).write_bytes(record)
    return "record-of-finished-task"


def _old_dead_letter(queue: Queue) -> str:
    """A dead letter past its retention, whose requeue is in flight."""
    queue.enqueue("x", id="job", max_attempts=1)
    claim = queue.claim("worker")
    assert claim is not None and claim.fail("boom") == "dead"
    old = queue.clock.now() - 31 * 86400
    os.utime(queue.layout.dead("job"), (old, old))
    return "pruned-dead"


@pytest.mark.parametrize("leftover", [_claim_cut_short, _commit_cut_short, _old_dead_letter])
def test_repair_pass_skips_a_task_whose_guard_a_stopped_process_holds(
    tmp_path: Path, leftover: Callable[[Queue], str]
) -> None:
    """The repair pass ends at once when a stopped process holds a leftover's guard, and repairs it later."""
    queue = Queue(str(tmp_path / "queue"), create=True, config=Config(durability="none"))
    repair = leftover(queue)
    stopped = subprocess.Popen([sys.executable, "-c", STOPPED_IN_TRANSITION, queue.root, "job"], start_new_session=True)
    try:
        _, status = os.waitpid(stopped.pid, os.WUNTRACED)  # returns once it is stopped, holding the guard
        assert os.WIFSTOPPED(status)

        def release() -> None:
            os.killpg(stopped.pid, signal.SIGKILL)

        sweeper = Sweeper(queue, WatchdogSettings(), ActionLog("text", io.StringIO()), persist=False)
        report = finishes(sweeper.sweep, unblock=release)  # its first sweep runs the repair pass
        assert repair not in report.repairs  # the transition may still finish: not the sweep's to judge
    finally:
        if stopped.returncode is None:
            os.killpg(stopped.pid, signal.SIGKILL)
            os.killpg(stopped.pid, signal.SIGCONT)
        stopped.wait()
    report = Sweeper(queue, WatchdogSettings(), ActionLog("text", io.StringIO()), persist=False).sweep()
    assert report.repairs[repair] == 1
