"""Watchdog sweep time and memory at N locks, warm and cold page cache.

Usage: python bench/watchdog_sweep.py [--locks 1000,10000,100000] [--dir DIR]

Builds a queue with N live claims (owned by this process, so none may be broken), then times
steady-state sweeps (the slow repair pass is not due) with a warm cache and, when run as root, after
dropping the page cache. Also reports the cost of a scandir + stat pass over tasks/ in the same run,
the floor any sweep must pay, and the peak RSS of a separate `fsqueue-watchdog --once` process.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fsqueue import Config, Queue
from fsqueue_watchdog import ActionLog, Sweeper, WatchdogSettings


def build(root: Path, locks: int) -> Queue:
    if root.exists():
        shutil.rmtree(root)
    queue = Queue(root, create=True, config=Config(durability="none"))
    for i in range(locks):
        queue.enqueue(i)
    for _ in range(locks):
        assert queue.claim("bench") is not None
    return queue


def drop_caches() -> bool:
    if os.geteuid() != 0:
        return False
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def stat_pass(tasks: str) -> float:
    start = time.perf_counter()
    with os.scandir(tasks) as entries:
        for entry in entries:
            entry.stat(follow_symlinks=False)
    return time.perf_counter() - start


def timed_sweep(sweeper: Sweeper) -> float:
    report = sweeper.sweep()
    assert not report.breaks, report.breaks
    return report.duration


def daemon_rss_kib(root: Path, sweeps: int = 4) -> int:
    """VmRSS of a running daemon after a few steady-state sweeps (the first one includes repairs)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsqueue_watchdog", "--root", str(root), "--interval", "0.5"],
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, NOTIFY_SOCKET=""),
    )
    try:
        status = Path(f"/proc/{proc.pid}/status")
        # Each sweep rewrites watchdog.state.json; wait for `sweeps` rewrites by watching its mtime.
        state = root / "watchdog.state.json"
        seen, last = 0, None
        while seen < sweeps:
            try:
                mtime = state.stat().st_mtime_ns
            except FileNotFoundError:
                mtime = None
            if mtime is not None and mtime != last:
                seen, last = seen + 1, mtime
            time.sleep(0.05)
        rss = next(line for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
        return int(rss.split()[1])
    finally:
        proc.terminate()
        proc.wait()


def peak_rss_kib(root: Path) -> int:
    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would report at least the RSS of the parent
    # that forked the child (a suite holding big queues shows 48 MB for a 27 MB watchdog).
    code = (
        "import sys; from fsqueue_watchdog.cli import main; sys.argv=['w','--root',sys.argv[1],'--once'];\n"
        "try:\n main()\nexcept SystemExit:\n pass\n"
        "print(next(ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locks", default="1000,10000,100000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="bench-sweep-", dir="."))
    print(
        f"{'locks':>7}  {'stat pass':>9}  {'sweep warm':>10}  {'ratio':>5}  {'stat cold':>9}  {'sweep cold':>10}  "
        f"{'one-shot peak RSS':>17}  {'daemon RSS':>10}"
    )
    try:
        for n in (int(x) for x in args.locks.split(",")):
            queue = build(base / f"q{n}", n)
            sweeper = Sweeper(queue, WatchdogSettings(), ActionLog("text", io.StringIO()), persist=False)
            sweeper.sweep()  # start-up sweep: includes the repair pass
            floor = statistics.median(stat_pass(queue.layout.tasks) for _ in range(args.repeats))
            warm = statistics.median(timed_sweep(sweeper) for _ in range(args.repeats))
            cold_stat = cold = float("nan")
            if drop_caches():
                cold_stat = stat_pass(queue.layout.tasks)
                drop_caches()
                cold = timed_sweep(sweeper)
            rss = peak_rss_kib(Path(queue.root))
            steady = daemon_rss_kib(Path(queue.root))
            print(
                f"{n:>7}  {floor:>8.3f}s  {warm:>9.3f}s  {warm / floor:>5.2f}  {cold_stat:>8.3f}s  {cold:>9.3f}s  "
                f"{rss / 1024:>15.1f}MB  {steady / 1024:>8.1f}MB"
            )
            shutil.rmtree(base / f"q{n}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
