"""The single-process measurements: claim cost against queue depth, watchdog sweeps, and start-up time.

Depth and sweep reuse bench/claim_depth.py and bench/watchdog_sweep.py; this module only interleaves
their rounds and returns numbers instead of printing them.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import claim_depth
import watchdog_sweep
from systems import fsqueue_argv


@dataclass
class DepthRow:
    depth: int
    claims: int
    p50_us: float
    p99_us: float
    ratio: float = 1.0  # p50 against the shallowest depth, same run


def claim_cost(base: Path, depths: list[int], claims: int, rounds: int) -> list[dict[str, Any]]:
    """p50/p99 of one claim at each depth (durability none), rounds interleaved across the depths."""
    queues = {depth: claim_depth.fill(base / f"depth-{depth}", depth, "none") for depth in depths}
    samples: dict[int, list[float]] = {depth: [] for depth in depths}
    try:
        for _ in range(rounds):
            for depth, queue in queues.items():
                samples[depth].extend(claim_depth.measure(queue, claims))
    finally:
        for depth in depths:
            shutil.rmtree(base / f"depth-{depth}", ignore_errors=True)
    rows = []
    for depth in depths:
        ordered = sorted(samples[depth])
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        rows.append(DepthRow(depth, len(ordered), statistics.median(ordered) * 1e6, p99 * 1e6))
    for row in rows:
        row.ratio = row.p50_us / rows[0].p50_us
    return [asdict(row) for row in rows]


@dataclass
class SweepRow:
    locks: int
    stat_pass_s: float  # scandir + stat of tasks/: the floor any sweep pays
    warm_s: float
    cold_s: float | None  # after dropping the page cache (root only)
    cold_stat_pass_s: float | None
    peak_rss_mb: float  # a separate `fsqueue-watchdog --once` process


def sweeps(base: Path, counts: list[int], repeats: int) -> list[dict[str, Any]]:
    """Steady-state sweep time (warm, cold) and one-shot peak RSS with N live locks."""
    from fsqueue_watchdog import ActionLog, Sweeper, WatchdogSettings

    rows = []
    for n in counts:
        root = base / f"sweep-{n}"
        try:
            queue = watchdog_sweep.build(root, n)
            sweeper = Sweeper(queue, WatchdogSettings(), ActionLog("text", io.StringIO()), persist=False)
            sweeper.sweep()  # the start-up sweep includes the repair pass
            stat = statistics.median(watchdog_sweep.stat_pass(queue.layout.tasks) for _ in range(repeats))
            warm = statistics.median(watchdog_sweep.timed_sweep(sweeper) for _ in range(repeats))
            cold: list[float] = []
            cold_stat: list[float] = []
            for _ in range(max(1, repeats // 2)):
                if not watchdog_sweep.drop_caches():
                    break
                cold_stat.append(watchdog_sweep.stat_pass(queue.layout.tasks))
                watchdog_sweep.drop_caches()
                cold.append(watchdog_sweep.timed_sweep(sweeper))
            rss = watchdog_sweep.peak_rss_kib(root) / 1024
            rows.append(
                SweepRow(
                    n,
                    stat,
                    warm,
                    statistics.median(cold) if cold else None,
                    statistics.median(cold_stat) if cold_stat else None,
                    rss,
                )
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return [asdict(row) for row in rows]


def startup(base: Path, runs: int) -> list[dict[str, Any]]:
    """Median wall time of each command over ``runs`` interleaved runs, against bare `python -c pass`."""
    empty = base / "startup-queue"
    fsqueue = fsqueue_argv()
    subprocess.run([*fsqueue, "--root", str(empty), "init"], check=True)
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import fsqueue'": [sys.executable, "-c", "import fsqueue"],
        "fsqueue --help": [*fsqueue, "--help"],
        "fsqueue run (empty queue)": [*fsqueue, "--root", str(empty), "run", "--agent", "bench", "--", "true"],
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSQUEUE_")}
    times: dict[str, list[float]] = {name: [] for name in commands}
    try:
        for _ in range(runs):
            for name, argv in commands.items():
                start = time.perf_counter()
                subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
                times[name].append(time.perf_counter() - start)
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    bare = statistics.median(times["python -c pass"])
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        rows.append({"command": name, "runs": runs, "ms": median * 1e3, "over_ms": (median - bare) * 1e3})
        rows[-1]["ratio"] = median / bare
    return rows
