"""Telemetry spool costs: emit vs a bare O_APPEND write, the `fsqueue emit` CLI, collect throughput.

    python bench/spool.py [--events 100000] [--cli-runs 20] [--dir DIR]

Each emit and each bare write is timed on its own with perf_counter_ns (the timer's own cost is in both
columns, so the difference is the emit's overhead); the medians are printed with the means. The bare
write appends the very line emit builds, to a file opened O_APPEND, in the same run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from fsqueue._collect import collect
from fsqueue._config import SpoolSettings
from fsqueue._layout import create_root
from fsqueue._spool import Spool

FIELDS = {"url": "https://example.org/feed/42", "status": 200, "bytes": 18234}


def time_rounds(root: str, bare_path: str, line: bytes, n: int, rounds: int = 20) -> tuple[list[int], list[int]]:
    """Alternate rounds of bare writes and emits, so a load change on the machine hits both alike."""
    spool = Spool(root, settings=SpoolSettings())
    emit = spool.emit_event
    fd = os.open(bare_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    write = os.write
    clock = time.perf_counter_ns
    bare: list[int] = []
    emits: list[int] = []
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        for _ in range(per_round):
            t0 = clock()
            write(fd, line)
            bare.append(clock() - t0)
        for _ in range(per_round):
            t0 = clock()
            emit("scraper", "fetched", FIELDS)
            emits.append(clock() - t0)
    os.close(fd)
    spool.close()
    return bare, emits


def time_cli(root: str, runs: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(wall, CPU) medians of `fsqueue emit`, and of `python -c pass` for scale."""
    env = dict(os.environ, FSQUEUE_ROOT=root)
    fsqueue = [sys.executable, "-m", "fsqueue"]

    def median_of(argv: list[str]) -> tuple[float, float]:
        walls, cpus = [], []
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(argv, env=env, check=True)
            walls.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        return statistics.median(walls), statistics.median(cpus)

    emit = median_of([*fsqueue, "emit", "scraper", "fetched", "--field", "url=https://x.org", "--json", '{"n": 1}'])
    bare = median_of([sys.executable, "-c", "pass"])
    return emit, bare


def time_collect(root: str, n: int) -> tuple[float, float, int]:
    spool = Spool(root, settings=SpoolSettings())
    for i in range(n):
        spool.emit_event(f"agent-{i % 20}", "fetched" if i % 50 else "error", FIELDS)
    spool.close()
    t0, c0 = time.perf_counter(), time.process_time()
    report = collect(root)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert report.lines == n, report
    return elapsed, cpu, report.segments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--cli-runs", type=int, default=20)
    parser.add_argument("--dir", default=None, help="where to make the scratch queue (default: a temp dir)")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="fsqueue-bench-spool-", dir=args.dir)
    try:
        root = os.path.join(scratch, "queue")
        create_root(root)
        line = (
            b'{"ts":1795600000.123456,"agent":"scraper","host":"vm","pid":12345,"event":"fetched",'
            b'"fields":{"url":"https://example.org/feed/42","status":200,"bytes":18234}}\n'
        )
        bare, emits = time_rounds(root, os.path.join(scratch, "bare.jsonl"), line, args.events)
        print(f"filesystem: {scratch}")
        print(f"{'':24}{'median ns':>12}{'mean ns':>12}")
        print(f"{'bare os.write':24}{statistics.median(bare):>12.0f}{statistics.fmean(bare):>12.0f}")
        print(f"{'emit':24}{statistics.median(emits):>12.0f}{statistics.fmean(emits):>12.0f}")
        overhead = statistics.median(emits) - statistics.median(bare)
        print(f"emit overhead over a bare write: {overhead:.0f} ns median ({len(line)}-byte line)")
        (cli, cli_cpu), (python, python_cpu) = time_cli(root, args.cli_runs)
        print(
            f"`fsqueue emit` CLI: {cli * 1000:.1f} ms wall, {cli_cpu * 1000:.1f} ms CPU, median "
            f"(python -c pass: {python * 1000:.1f} ms wall, {python_cpu * 1000:.1f} ms CPU)"
        )
        collect_root = os.path.join(scratch, "collect")
        create_root(collect_root)
        elapsed, cpu, segments = time_collect(collect_root, args.events)
        print(
            f"collect: {args.events} lines from {segments} segments in {elapsed:.3f} s wall "
            f"= {args.events / elapsed:,.0f} lines/s ({cpu:.3f} s CPU = {args.events / cpu:,.0f} lines/CPU-s)"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
