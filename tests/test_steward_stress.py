"""50 submitters x 20 updates, racing conditional updaters and a reader, while the steward is SIGKILLed over and over.

The steward runs as a real process that the test kills with SIGKILL at a random moment after it has
taken the singleton lock, then restarts, until every submitter is done; a last ``fsqueue steward
--once`` drains the rest. Durability is on. The checks read only what the steward published and
answered: every one of the 1,000 tickets applied, each at its own version, the versions 1..1000 with
no gap (a second application would add a version), each submitter's updates in its ticket order in
every kept snapshot, every conditional increment counted once, and no reader ever saw a snapshot
that breaks those invariants or goes back in version.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsqueue import Queue
from fsqueue._state import SharedState

SUBMITTERS = 50
UPDATES = 20
CAS_WORKERS = 3
CAS_INCREMENTS = 6
DEADLINE = 180.0  # seconds for any one wait, far above the 10-30 s the whole run takes on 2 busy cores
MAX_KILLS = 40

# Submitter k: its i-th update sets s<k>.n = i and adds s<k>.seen.i<i>, so "seen == {i0..in}" holds in
# every snapshot exactly when its updates were applied in its own order.
SUBMITTER = """
import json, os, random, sys, time
from fsqueue._state import SharedState
root, k, n, ready, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
shared = SharedState(root)
os.write(ready, b"r"); os.close(ready)
os.read(go, 1)  # the start barrier: EOF when the test closes the write end
rng = random.Random(k)
tickets = []
for i in range(n):
    tickets.append(shared.submit("shared", {f"s{k:02d}": {"n": i, "seen": {f"i{i}": True}}}))
    time.sleep(rng.uniform(0, 0.4))  # spread the load over the steward's lives and deaths
print(json.dumps(tickets))
"""

# Read-modify-write with if_version: retried until applied, so every increment lands exactly once.
CAS = """
import json, os, sys
from fsqueue._state import SharedState
root, k, n, ready, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
shared = SharedState(root)
os.write(ready, b"r"); os.close(ready)
os.read(go, 1)
applied = rejected = 0
while applied < n:
    snap = shared.read("counter")
    count = snap.document.get("count", 0)
    ticket = shared.submit("counter", {"count": count + 1, "by": k}, if_version=snap.version)
    outcome = shared.wait(ticket)
    if outcome.state == "applied":
        applied += 1
    else:
        assert "if_version" in outcome.reason, outcome.reason
        rejected += 1
print(json.dumps({"applied": applied, "rejected": rejected}))
"""

# Reads both documents until the stop file appears; reports every invariant it saw broken.
READER = """
import json, os, sys
from fsqueue._state import SharedState
root, stop = sys.argv[1], sys.argv[2]
shared = SharedState(root)
last = {"shared": 0, "counter": 0}
reads, bad = 0, []
while not os.path.exists(stop):
    for name in ("shared", "counter"):
        snap = shared.read(name)
        reads += 1
        if snap.version < last[name]:
            bad.append(f"{name} went back from v{last[name]} to v{snap.version}")
        last[name] = snap.version
        if name == "counter" and snap.document.get("count", 0) > snap.version:
            bad.append(f"counter {snap.document['count']} above its version {snap.version}")
        for key, value in snap.document.items() if name == "shared" else ():
            if set(value["seen"]) != {f"i{i}" for i in range(value["n"] + 1)}:
                bad.append(f"v{snap.version}: {key} n={value['n']} seen={sorted(value['seen'])}")
print(json.dumps({"reads": reads, "bad": bad[:20], "versions": last}))
"""

STEWARD = """
import sys
from fsqueue._steward import StewardSettings, run_steward
sys.exit(run_steward(sys.argv[1], settings=StewardSettings(batch=7, interval=0.002, history=1_000_000)))
"""


def start_steward(root: Path) -> subprocess.Popen[str]:
    """A steward process that has taken the singleton lock (its start line read, not waited for)."""
    steward = subprocess.Popen([sys.executable, "-c", STEWARD, str(root)], stderr=subprocess.PIPE, text=True)
    assert steward.stderr is not None
    assert "holds" in steward.stderr.readline()
    return steward


def start_behind_barrier(script: str, argv: list[str], go_read: int) -> tuple[subprocess.Popen[str], int]:
    """Start a worker that waits at the barrier; returns it and the pipe it reports ready on."""
    ready_read, ready_write = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *argv, str(ready_write), str(go_read)],
        pass_fds=(ready_write, go_read),
        stdout=subprocess.PIPE,
        text=True,
    )
    os.close(ready_write)
    return proc, ready_read


def await_ready(ready_read: int) -> None:
    """Block until a worker is at the barrier."""
    assert os.read(ready_read, 1) == b"r"
    os.close(ready_read)


@pytest.mark.stress
def test_every_update_applied_exactly_once_in_order_across_steward_kills(tmp_path: Path) -> None:
    """1,000 updates from 50 processes and 18 conditional increments survive repeated SIGKILLs of the steward."""
    root = tmp_path / "q"
    Queue(root, create=True)
    stop_file = tmp_path / "stop"
    go_read, go_write = os.pipe()
    barrier = [go_read, go_write]
    workers: list[subprocess.Popen[str]] = []
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(root), str(stop_file)], stdout=subprocess.PIPE, text=True
    )
    steward: subprocess.Popen[str] | None = None
    rng = random.Random(20)
    kills = 0
    started = time.monotonic()
    try:
        ready = []
        for script, count, n in ((SUBMITTER, SUBMITTERS, UPDATES), (CAS, CAS_WORKERS, CAS_INCREMENTS)):
            for k in range(count):
                proc, ready_read = start_behind_barrier(script, [str(root), str(k), str(n)], go_read)
                workers.append(proc)
                ready.append(ready_read)
        for ready_read in ready:
            await_ready(ready_read)
        barrier.clear()
        os.close(go_read)
        os.close(go_write)  # go
        while any(w.poll() is None for w in workers) and kills < MAX_KILLS:
            steward = start_steward(root)
            time.sleep(rng.uniform(0.005, 0.1))  # the moment of death, not a wait for a condition
            steward.send_signal(signal.SIGKILL)
            steward.communicate()
            kills += 1
        # On a slow machine the work outlasts MAX_KILLS lives: one more steward sees it through.
        steward = start_steward(root)
        results = [w.communicate(timeout=DEADLINE)[0] for w in workers]
        steward.send_signal(signal.SIGTERM)
        steward.communicate(timeout=60)
        assert steward.returncode == 0
        final = subprocess.run(
            [sys.executable, "-m", "fsqueue", "--root", str(root), "steward", "--once", "--history", "1000000"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert final.returncode == 0, final.stderr
    finally:
        stop_file.touch()
        for proc in [*workers, *([steward] if steward else [])]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader_out = reader.communicate(timeout=60)[0]
        for fd in barrier:  # still open only when the start failed
            os.close(fd)
    elapsed = time.monotonic() - started

    shared = SharedState(root)
    tickets = [json.loads(out) for out in results[:SUBMITTERS]]
    cas = [json.loads(out) for out in results[SUBMITTERS:]]
    outcomes = {t: shared.outcome(t) for mine in tickets for t in mine}
    assert all(o.state == "applied" for o in outcomes.values())
    versions = sorted(o.version or 0 for o in outcomes.values())
    assert versions == list(range(1, SUBMITTERS * UPDATES + 1)), "an update was applied twice or not at all"
    for mine in tickets:
        assert mine == sorted(mine)
        assert [outcomes[t].version for t in mine] == sorted(outcomes[t].version or 0 for t in mine)
    snap = shared.read("shared")
    assert snap.version == SUBMITTERS * UPDATES
    assert all(v["n"] == UPDATES - 1 and len(v["seen"]) == UPDATES for v in snap.document.values())
    assert len(snap.document) == SUBMITTERS
    decided = check_history(shared)
    assert decided == {t: o.version for t, o in outcomes.items()}

    counter = shared.read("counter")
    increments = sum(c["applied"] for c in cas)
    assert increments == CAS_WORKERS * CAS_INCREMENTS
    assert counter.document["count"] == counter.version == increments
    seen_by_reader = json.loads(reader_out)
    assert seen_by_reader["bad"] == []
    assert os.listdir(shared.paths.inbox) == []
    assert kills >= 15
    print(
        f"\n{SUBMITTERS * UPDATES} updates applied exactly once in ticket order; {increments} conditional "
        f"increments with {sum(c['rejected'] for c in cas)} rejections; {kills} steward SIGKILLs; "
        f"{seen_by_reader['reads']} reads, none torn; {elapsed:.1f}s"
    )


def check_history(shared: SharedState) -> dict[str, int | None]:
    """Every kept snapshot of ``shared`` satisfies the per-submitter order; returns ticket -> version decided."""
    decided: dict[str, int | None] = {}
    for version in sorted(int(n[:12]) for n in os.listdir(shared.paths.history("shared"))):
        snap = json.loads(Path(shared.paths.history("shared", version)).read_bytes())
        for key, value in snap["document"].items():
            assert set(value["seen"]) == {f"i{i}" for i in range(value["n"] + 1)}, (version, key)
        for entry in snap["tickets"]:
            assert decided.setdefault(entry["ticket"], entry["version"]) == entry["version"]
    return decided
