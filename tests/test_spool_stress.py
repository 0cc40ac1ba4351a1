"""Real processes on one spool: many writers, collectors SIGKILLed at random points, writers killed mid-line.

Each writer reports what it wrote on its own -- a count file it writes after its last emit, or one byte on
its own pipe after each emit returns -- so the check does not trust the spool to count itself.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from spoolcheck import archived, assert_exactly_once

from fsqueue._collect import collect
from fsqueue._layout import create_root

pytestmark = pytest.mark.stress

WRITERS = 50
EVENTS = 2000
DEADLINE = 300.0  # a hang guard: the run takes about 7 s on an idle 2-core VM
MIN_KILLS = 30  # collectors killed at least, even if the writers finish first

# Waits at the start barrier, emits EVENTS lines tagged (w<i>, n) through 8 KiB segments, then writes
# its own count. A normal exit: atexit seals the last segment.
WRITER = """
import os, sys
from fsqueue._config import SpoolSettings
from fsqueue._spool import configure
root, counts, idx, events, ready, go = sys.argv[1:7]
spool = configure(root, settings=SpoolSettings(segment_bytes=8192))
os.write(int(ready), b"r")
os.close(int(ready))
os.read(int(go), 1)  # returns at EOF, when the test closes the write end
written = 0
for n in range(int(events)):
    spool.emit(f"agent{int(idx) % 5}", "step", s=f"w{idx}", n=n)
    written += 1
with open(os.path.join(counts, f"w{idx}"), "w") as out:
    out.write(str(written))
"""

# Collects one batch at a time until killed; after each run that repaired a killed one, prints what it did.
COLLECTOR = """
import sys
from fsqueue._collect import collect
root, wait = sys.argv[1], sys.argv[2] == "wait"
print("up", flush=True)
while True:
    report = collect(root, wait=wait, batch_segments=4, max_batches=1)
    if report.recovered_bytes or report.recovered_segments:
        print(report.recovered_bytes, report.recovered_segments, flush=True)
"""

# Emits lines of ~60 KiB until killed; one byte on stdout after each emit has returned.
BIG_WRITER = """
import os, sys
from fsqueue._spool import configure
spool = configure(sys.argv[1])
pad = "x" * 60000
n = 0
while True:
    spool.emit("big", "blob", s=sys.argv[2], n=n, pad=pad)
    os.write(1, b".")
    n += 1
"""


def _start_writers(root: Path, counts: Path) -> list[subprocess.Popen[bytes]]:
    go_read, go_write = os.pipe()
    procs, readies = [], []
    try:
        for idx in range(WRITERS):
            ready_read, ready_write = os.pipe()
            args = [str(root), str(counts), str(idx), str(EVENTS), str(ready_write), str(go_read)]
            procs.append(
                subprocess.Popen([sys.executable, "-c", WRITER, *args], pass_fds=(ready_write, go_read), cwd=root)
            )
            os.close(ready_write)
            readies.append(ready_read)
        for fd in readies:
            assert os.read(fd, 1) == b"r"  # every writer is up and waiting at the barrier
    finally:
        for fd in readies:
            os.close(fd)
        os.close(go_read)
        os.close(go_write)  # EOF on the barrier: every writer starts at once
    return procs


def _waiting(root: Path) -> bool:
    """Whether sealed or claimed segments are still waiting to be archived."""
    return any(
        os.listdir(root / "spool" / where) for where in ("ready", "collecting") if (root / "spool" / where).exists()
    )


def _collector(root: Path, wait: bool) -> subprocess.Popen[bytes]:
    """A collector, returned once it is imported and about to collect (so a kill lands inside collect)."""
    argv = [sys.executable, "-c", COLLECTOR, str(root), "wait" if wait else "nowait"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    return proc


def _reap(proc: subprocess.Popen[bytes], stats: Counter[str]) -> None:
    proc.kill()
    out, _ = proc.communicate()
    for line in out.decode().splitlines():
        rolled_back, removed = line.split()
        stats["runs that repaired a killed collector"] += 1
        stats["bytes rolled back"] += int(rolled_back)
        stats["archived segments removed"] += int(removed)


def test_50_writers_x_2000_events_with_collectors_killed_at_random_archive_each_line_once(tmp_path: Path) -> None:
    """100,000 lines from 50 writers, two collectors SIGKILLed and restarted at random: each line once."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    root, counts = tmp_path / "queue", tmp_path / "counts"
    create_root(str(root))
    counts.mkdir()
    stats: Counter[str] = Counter()
    started = time.monotonic()
    writers = _start_writers(root, counts)
    collectors = [_collector(root, wait=True), _collector(root, wait=False)]
    try:
        # Kill until the writers are done and the collectors have drained the spool between kills.
        while any(w.poll() is None for w in writers) or _waiting(root) or stats["collectors killed"] < MIN_KILLS:
            assert time.monotonic() - started < DEADLINE, f"writers still running (seed {seed})"
            time.sleep(rng.uniform(0.0, 0.1))  # a random kill point, not a wait for a condition
            victim = rng.randrange(len(collectors))
            _reap(collectors[victim], stats)
            stats["collectors killed"] += 1
            collectors[victim] = _collector(root, wait=victim == 0)
    finally:
        for proc in collectors:
            _reap(proc, stats)
        for proc in writers:
            proc.kill()
            proc.wait()
    assert [w.returncode for w in writers] == [0] * WRITERS
    final = collect(root)
    reported = {p.name: int(p.read_text()) for p in counts.iterdir()}
    assert reported == {f"w{i}": EVENTS for i in range(WRITERS)}
    expected = {(f"w{i}", n) for i in range(WRITERS) for n in range(EVENTS)}
    assert_exactly_once(root, expected)
    assert sum(archived(root).values()) == WRITERS * EVENTS == sum(reported.values())
    assert final.partial == final.corrupt == 0
    assert stats["runs that repaired a killed collector"] > 0, f"no kill landed inside a batch (seed {seed})"
    print(f"\nseed {seed}: {dict(stats)}; {time.monotonic() - started:.1f} s")


def _torn(root: Path, pid: int) -> bool:
    """Whether the killed writer ``pid`` left its open segment ending in the middle of a line."""
    for path in (root / "spool" / "open").iterdir():
        if path.name.split(".")[4] == str(pid):
            data = path.read_bytes()
            return bool(data) and not data.endswith(b"\n")
    return False


def test_writers_killed_mid_line_leave_no_partial_line_in_the_archive(tmp_path: Path) -> None:
    """SIGKILL writers of 60 KiB lines at random: whole lines archived once, each torn tail dropped and counted."""
    rng = random.Random()
    root = tmp_path / "queue"
    create_root(str(root))
    returned, torn = {}, 0
    # One writer at a time (one left running would fill the disk), until a kill has cut a line.
    while len(returned) < 10 or (torn == 0 and len(returned) < 60):
        tag = f"b{len(returned)}"
        proc = subprocess.Popen([sys.executable, "-c", BIG_WRITER, str(root), tag], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            target, got = rng.randrange(3, 20), 0
            while got < target:  # blocks until this many emits have returned
                got += len(proc.stdout.read1(target - got))
            time.sleep(rng.uniform(0, 0.002))  # a random kill point within the next lines' encode and write
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            returned[tag] = got + len(proc.stdout.read())
            torn += _torn(root, proc.pid)
        finally:
            proc.kill()
            proc.wait()
    report = collect(root)
    seen = Counter(s for s, _ in archived(root))
    assert report.corrupt == 0 and report.sealed <= len(returned)  # one killed right after a size seal has none open
    for tag, count in returned.items():
        # The emit in flight when the kill came may have been written whole (archived) or cut (dropped).
        assert seen[tag] in (count, count + 1), (tag, seen[tag], count)
    assert report.lines == sum(seen.values())
    assert report.partial == torn
    assert max(archived(root).values()) == 1
    print(f"\n{torn} torn lines dropped of {len(returned)} killed writers")
