"""Claim cost against queue depth: one process claims and completes tasks at 100 and at 100,000 pending.

Usage: python bench/claim_depth.py [--depths 100,100000] [--claims 2000] [--durability none|fsync] [--dir DIR]

Reports claims per second at each depth and the ratio to the shallowest depth, measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from fsqueue import Config, Queue


def fill(root: Path, depth: int, durability: str) -> Queue:
    if root.exists():
        shutil.rmtree(root)
    queue = Queue(root, create=True, config=Config(durability="none"))
    for i in range(depth):
        queue.enqueue({"n": i})
    return Queue(root, config=Config(durability=durability))  # type: ignore[arg-type]


def measure(queue: Queue, claims: int) -> list[float]:
    samples = []
    for _ in range(claims):
        start = time.perf_counter()
        claim = queue.claim("bench")
        samples.append(time.perf_counter() - start)
        assert claim is not None
        claim.complete()
        queue.enqueue({"refill": True})  # keep the depth constant
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="100,100000")
    parser.add_argument("--claims", type=int, default=2000)
    parser.add_argument("--durability", default="none", choices=["none", "fsync"])
    parser.add_argument("--dir", default=None, help="where to build the queues (default: a temp dir under .)")
    args = parser.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="bench-claim-", dir="."))
    results = []
    for depth in (int(d) for d in args.depths.split(",")):
        queue = fill(base / f"q{depth}", depth, args.durability)
        samples = measure(queue, args.claims)
        results.append((depth, statistics.median(samples), sorted(samples)[int(len(samples) * 0.99)]))
    shutil.rmtree(base, ignore_errors=True)
    floor = results[0][1]
    print(f"durability={args.durability} claims={args.claims}")
    print(f"{'pending':>9}  {'claims/s':>9}  {'p50 claim':>10}  {'p99 claim':>10}  {'p50 / first':>11}")
    for depth, p50, p99 in results:
        print(f"{depth:>9}  {1 / p50:>9.0f}  {p50 * 1e6:>8.0f}us  {p99 * 1e6:>8.0f}us  {p50 / floor:>11.2f}")


if __name__ == "__main__":
    main()
