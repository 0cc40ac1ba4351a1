"""One throughput run: enqueue N tasks, then W worker processes drain them behind a start barrier.

Workers are forked from this process after the system's module is imported, so interpreter start-up is
not timed (except for `fsqueue run`, whose processes exec the CLI after the barrier: its start-up is
part of what a cron line pays). The barrier is one pipe: every worker blocks reading it, and the parent
closes the write end once all W have said they are ready, which wakes them all at once.

Every worker writes the ids it got (and its claim latencies) to its own file; the parent compares the
union with the enqueued set: double deliveries, lost tasks, unexpected ids, and errors.
"""

from __future__ import annotations

import json
import os
import select
import signal
import statistics
import sys
import time
import traceback
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from systems import System

#: A worker gives up after this many errors (e.g. a storm of `database is locked`).
MAX_ERRORS = 200


@dataclass
class Run:
    """The outcome of one system at one W in one repeat."""

    system: str
    filesystem: str
    workers: int
    tasks: int
    repeat: int
    status: str = "ok"  # "ok", "timeout", "failed", "skipped"
    reason: str = ""
    seconds: float = 0.0
    delivered: int = 0  # distinct enqueued ids that some worker got
    double: int = 0  # deliveries beyond the first, summed over ids
    lost: int = 0
    unexpected: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    p50_ms: float | None = None
    p99_ms: float | None = None
    load: float = 0.0  # the 1-minute load average when the run started (the machine may be shared)

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate}


def task_ids(n: int) -> list[str]:
    return [f"t{i:07d}" for i in range(n)]


def run_once(
    system: System,
    root: Path,
    filesystem: str,
    workers: int,
    tasks: int,
    repeat: int,
    timeout: float,
    *,
    settle: bool = False,
) -> Run:
    """Prepare a fresh root, drain it with ``workers`` processes, and account for every id."""
    result = Run(system.key, filesystem, workers, tasks, repeat, load=os.getloadavg()[0])
    ids = task_ids(tasks)
    out = root.parent / f"{root.name}.out"
    out.mkdir()
    os.sync()  # the previous run's dirty pages must not be written back during this one
    try:
        system.prepare(root, ids)
    except Exception as exc:
        result.status, result.reason, result.lost = "failed", f"enqueue failed: {type(exc).__name__}: {exc}", tasks
        return result
    if settle:
        # Tasks that waited past the writeback delay are on disk: removing them frees real blocks (which
        # costs a synchronous discard on an ext4 without a journal mounted with `discard`).
        os.sync()
    pids, t0, exits, timed_out = _drain(system, root, out, workers, tasks, timeout)
    ends: list[float] = []
    got: Counter[str] = Counter()
    latencies: list[float] = []
    for index, pid in enumerate(pids):
        _collect(result, out, index, exits[pid], ends, got, latencies, cli=system.execs)
    if timed_out:
        result.status, result.reason = "timeout", f"not drained after {timeout:.0f} s; workers killed"
    result.seconds = (t0 + timeout if timed_out or not ends else max(ends)) - t0
    wanted = set(ids)
    result.delivered = len(wanted & got.keys())
    result.double = sum(count - 1 for count in got.values() if count > 1)
    result.lost = len(wanted - got.keys())
    result.unexpected = len(got.keys() - wanted)
    if latencies:
        latencies.sort()
        result.p50_ms = statistics.median(latencies) * 1e3
        result.p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3
    return result


Exit = tuple[float, int | None]  # when the parent saw it exit, and its exit code (None: killed at the deadline)


def _drain(
    system: System, root: Path, out: Path, workers: int, tasks: int, timeout: float
) -> tuple[list[int], float, dict[int, Exit], bool]:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pids: list[int] = []
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        for index in range(workers):
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                os.close(ready_r)
                os.close(go_w)
                _worker_main(system, root, out, index, workers, tasks, ready_w, go_r)
            pids.append(pid)
    finally:
        os.close(ready_w)
        os.close(go_r)
    ready = 0
    deadline = time.monotonic() + 60 + workers
    while ready + _exited(pids) < workers and time.monotonic() < deadline:
        if select.select([ready_r], [], [], 0.5)[0]:
            ready += len(os.read(ready_r, 4096))
    os.close(ready_r)
    t0 = time.monotonic()
    os.close(go_w)  # the barrier opens: every worker's read() returns EOF now
    try:
        exits, timed_out = _reap(pids, t0 + timeout)
    except BaseException:  # interrupted: leave no worker behind
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        raise
    return pids, t0, exits, timed_out


def _exited(pids: list[int]) -> int:
    """How many workers have exited, without reaping them (a worker that failed before the barrier)."""
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    return sum(os.waitid(os.P_PID, pid, flags) is not None for pid in pids)


def _reap(pids: list[int], deadline: float) -> tuple[dict[int, Exit], bool]:
    """Wait for every worker, killing the rest at the deadline; exit time and code by pid."""
    exits: dict[int, Exit] = {}
    fds = {os.pidfd_open(pid): pid for pid in pids}
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    timed_out = False
    try:
        while len(exits) < len(pids):
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                for pid in pids:
                    if pid not in exits:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        exits[pid] = (time.monotonic(), None)
                break
            for fd, _ in poller.poll(left * 1000):
                now = time.monotonic()
                poller.unregister(fd)
                pid = fds[fd]
                _, status = os.waitpid(pid, 0)
                exits[pid] = (now, os.waitstatus_to_exitcode(status))
    finally:
        for fd in fds:
            os.close(fd)
    return exits, timed_out


def _collect(
    result: Run,
    out: Path,
    index: int,
    exit: Exit,
    ends: list[float],
    got: Counter[str],
    latencies: list[float],
    *,
    cli: bool,
) -> None:
    report, ids_file, errlog = out / f"w{index}.json", out / f"w{index}.ids", out / f"w{index}.err"
    lines = errlog.read_text(errors="replace").splitlines() if errlog.exists() else []
    if report.exists():  # an in-process worker that finished its loop
        data = json.loads(report.read_text())
        got.update(data["ids"])
        latencies.extend(data["latencies"])
        ends.append(data["end"])
        result.errors += data["errors"]
        _sample(result, data["samples"])
        return
    # An exec'd CLI worker (its ids come from the task's own log), or a worker that crashed.
    if ids_file.exists():
        got.update(ids_file.read_text().split())
    ends.append(exit[0])
    if exit[1] is None:
        return  # killed at the deadline: the run is reported as a timeout
    # `fsqueue run` prints one stderr line per task that did not complete; a crash prints a traceback.
    result.errors += len(lines) if cli and lines else 1 if exit[1] else 0
    _sample(result, lines[-3:] or ([f"worker exited with status {exit[1]}"] if exit[1] else []))


def _sample(result: Run, lines: list[str]) -> None:
    for line in lines:
        if len(result.error_samples) < 5 and line not in result.error_samples:
            result.error_samples.append(line[:300])


def _worker_main(
    system: System, root: Path, out: Path, index: int, workers: int, tasks: int, ready_w: int, go_r: int
) -> None:
    code = 1
    try:
        err = os.open(out / f"w{index}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(err, 2)
        command = system.command(root, index, tasks, out / f"w{index}.ids")
        worker = None if command else system.open_worker(root, index, workers)
        os.write(ready_w, b"r")
        os.close(ready_w)
        os.read(go_r, 1)  # blocks until the parent closes the barrier
        os.close(go_r)
        if command:
            argv, env = command
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.execve(argv[0], argv, env)  # the exit status reaches the parent through waitpid
        assert worker is not None
        _drain_loop(worker, out / f"w{index}.json")
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _drain_loop(worker: Any, report: Path) -> None:
    ids: list[str] = []
    latencies = array("d")
    errors = 0
    samples: list[str] = []
    clock = time.perf_counter
    while errors < MAX_ERRORS:
        start = clock()
        try:
            got = worker.claim()
        except Exception as exc:
            errors += 1
            samples.append(f"claim: {type(exc).__name__}: {exc}")
            continue
        elapsed = clock() - start
        if got is None:
            break
        ids.append(got[0])
        latencies.append(elapsed)
        try:
            worker.complete(got[1])
        except Exception as exc:
            errors += 1
            samples.append(f"complete: {type(exc).__name__}: {exc}")
    end = time.monotonic()
    unique = list(dict.fromkeys(samples))[:5]
    data = {"ids": ids, "latencies": latencies.tolist(), "errors": errors, "samples": unique, "end": end}
    report.write_text(json.dumps(data))
