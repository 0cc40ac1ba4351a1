"""Shared state: the cost of a submit and of a read, and how many updates per second the steward applies.

Usage: python bench/steward.py [--submits 1000] [--updates 5000] [--docs 1,20] [--batch 500]
                               [--durability fsync|none] [--dir DIR]

submit: one process submits small patches (``{"k<i % 50>": i}``) to one document through
``SharedState.submit``; the median and p99 of the calls. read: ``SharedState.read`` of that 50-member
document, right after a full round (its snapshot lists ``--batch`` tickets) and after a round of one.
apply: ``--updates`` submissions spread over each ``--docs`` count of documents, then one
``Steward.drain()`` in ``--batch`` rounds, timed from the first round to the last outcome.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from fsqueue import Config, Queue
from fsqueue._state import SharedState
from fsqueue._steward import Steward, StewardSettings


def fresh(base: Path, name: str, durability: str) -> tuple[str, Config]:
    root = base / name
    if root.exists():
        shutil.rmtree(root)
    config = Config(durability=durability)  # type: ignore[arg-type]
    Queue(root, create=True, config=config)
    return str(root), config


def timed(call: object, count: int) -> list[float]:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        call(i)  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return samples


def p(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(len(samples) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=5000)
    parser.add_argument("--docs", default="1,20")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--durability", default="fsync", choices=["none", "fsync"])
    parser.add_argument("--dir", default=None, help="where to build the queues (default: a temp dir under .)")
    args = parser.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="bench-steward-", dir="."))
    print(f"durability={args.durability} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")

    root, config = fresh(base, "submit", args.durability)
    shared = SharedState(root, config=config)
    samples = timed(lambda i: shared.submit("doc", {f"k{i % 50}": i}), args.submits)
    print(f"submit  p50 {statistics.median(samples) * 1e6:7.0f}us  p99 {p(samples, 0.99) * 1e6:7.0f}us")
    Steward(root, config=config, settings=StewardSettings(batch=args.batch)).drain()
    decided = len(shared.read("doc").tickets)
    samples = timed(lambda i: shared.read("doc"), args.submits)
    print(f"read    p50 {statistics.median(samples) * 1e6:7.0f}us  p99 {p(samples, 0.99) * 1e6:7.0f}us  ", end="")
    print(f"(the snapshot lists the {decided} tickets of its round)")
    shared.submit("doc", {"k0": -1})
    Steward(root, config=config).drain()
    samples = timed(lambda i: shared.read("doc"), args.submits)
    print(f"read    p50 {statistics.median(samples) * 1e6:7.0f}us  p99 {p(samples, 0.99) * 1e6:7.0f}us  ", end="")
    print("(the snapshot lists 1 ticket)")

    for docs in (int(d) for d in args.docs.split(",")):
        root, config = fresh(base, f"apply{docs}", args.durability)
        shared = SharedState(root, config=config)
        for i in range(args.updates):
            shared.submit(f"doc{i % docs}", {f"k{i % 50}": i})
        steward = Steward(root, config=config, settings=StewardSettings(batch=args.batch))
        start = time.perf_counter()
        report = steward.drain()
        elapsed = time.perf_counter() - start
        assert report.applied == args.updates, report.summary()
        print(
            f"apply   {args.updates} updates over {docs:>2} document(s), batch {args.batch}: "
            f"{args.updates / elapsed:8.0f} updates/s ({elapsed:.2f}s)"
        )
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
