"""Found by the chaos harness: a process stopped inside a task's transition stalls the whole watchdog sweep.

A holder SIGSTOPped (or hung in the kernel, or suspended with Ctrl-Z) while it holds a task's guard --
in the middle of a claim, a renewal or a commit -- keeps that guard's flock. The watchdog breaks locks
with a blocking ``flock`` on the guard (``break_lock`` -> ``guarded(..., blocking=True)``), so its
sweep waits for as long as the process stays stopped, and no other dead holder's task is recovered
meanwhile (P4). In chaos runs this showed as sweeps stalled for 1.5-4 s, each one ending the moment the
stopped holder got SIGCONT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from fsqueue import Config, Queue
from fsqueue._layout import guard_shard

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
