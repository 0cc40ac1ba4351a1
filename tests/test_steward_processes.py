"""Real processes around one steward: readers during publication, racing conditional updates, one steward per root."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from fsqueue import Queue
from fsqueue._state import SharedState
from fsqueue._steward import Steward, StewardSettings, steward_step

# Re-reads the document until the stop file appears. Every update sets "a" and "b" to the same value
# (and a large filler), so a half-applied or torn snapshot shows as a != b, a parse error, or a version
# going back.
READER = """
import json, os, sys
from fsqueue._state import SharedState
root, stop = sys.argv[1], sys.argv[2]
shared = SharedState(root)
current = shared.paths.current("doc")
reads, bad, last, versions = 0, [], 0, set()
print("ready", flush=True)
while not os.path.exists(stop):
    try:
        snap = shared.read("doc")
        if snap.version:  # and the file itself, without read()'s fallback to history/
            with open(current, "rb") as handle:
                json.loads(handle.read())
    except Exception as exc:
        bad.append(f"{type(exc).__name__}: {exc}"[:200])
        continue
    reads += 1
    versions.add(snap.version)
    if snap.version < last or snap.document.get("a") != snap.document.get("b"):
        bad.append(f"v{snap.version} after v{last}: a={snap.document.get('a')} b={snap.document.get('b')}")
    last = snap.version
print(json.dumps({"reads": reads, "bad": bad[:10], "versions": len(versions)}))
"""

RACER = """
import os, sys
from fsqueue._state import SharedState
root, ready, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shared = SharedState(root)
version = shared.read("doc").version
os.write(ready, b"r"); os.close(ready)
os.read(go, 1)
print(shared.submit("doc", {"winner": os.getpid()}, if_version=version))
"""


def test_readers_never_see_a_torn_or_half_applied_snapshot(queue: Queue, tmp_path: Path) -> None:
    """A reader process hammering read() while 300 updates of a 200 KB document are published sees none torn."""
    shared = SharedState(queue.root)
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, queue.root, str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        steward = Steward(queue.root, settings=StewardSettings(batch=1, history=2))
        for i in range(300):
            shared.submit("doc", {"a": i, "b": i, f"fill{i % 10}": "x" * 20_000})
            steward.round()
    finally:
        stop.touch()
        out = reader.communicate(timeout=60)[0]
    seen = json.loads(out)
    assert seen["bad"] == []
    assert seen["reads"] > 0
    assert shared.read("doc").version == 300


def test_racing_conditional_updates_one_wins(queue: Queue) -> None:
    """Two processes submit an update conditional on the version they both read: one applied, one rejected."""
    go_read, go_write = os.pipe()
    racers = []
    SharedState(queue.root).submit("doc", {"winner": None})
    steward_step(queue.root)
    try:
        for _ in range(2):
            ready_read, ready_write = os.pipe()
            racers.append(
                subprocess.Popen(
                    [sys.executable, "-c", RACER, queue.root, str(ready_write), str(go_read)],
                    pass_fds=(ready_write, go_read),
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            os.close(ready_write)
            assert os.read(ready_read, 1) == b"r"
            os.close(ready_read)
    finally:
        os.close(go_read)
        os.close(go_write)
    tickets = [r.communicate(timeout=60)[0].strip() for r in racers]
    steward_step(queue.root)
    shared = SharedState(queue.root)
    states = sorted(shared.outcome(t).state for t in tickets)
    assert states == ["applied", "rejected"]
    assert shared.read("doc").version == 2


def test_second_steward_exits_9_and_a_waiter_takes_over(
    root: Path, cli_env: dict[str, str], fsqueue_cmd: list[str]
) -> None:
    """A second steward exits 9 with one line naming the holder; with --wait it takes over when the first stops."""
    Queue(root, create=True)
    first = subprocess.Popen(
        [*fsqueue_cmd, "steward", "--interval", "0.01"], env=cli_env, stderr=subprocess.PIPE, text=True
    )
    waiter = None
    try:
        assert first.stderr is not None
        started = first.stderr.readline()
        assert f"pid {first.pid} holds" in started
        second = subprocess.run(
            [*fsqueue_cmd, "steward", "--once"], env=cli_env, capture_output=True, text=True, timeout=60, check=False
        )
        assert second.returncode == 9
        assert second.stderr.count("\n") == 1
        assert "another steward already applies updates" in second.stderr
        assert f"by pid {first.pid}" in second.stderr
        assert steward_step(root) is None
        waiter = subprocess.Popen(
            [*fsqueue_cmd, "steward", "--once", "--wait"], env=cli_env, stderr=subprocess.PIPE, text=True
        )
        ticket = SharedState(root).submit("doc", {"a": 1})
        assert SharedState(root).wait(ticket, timeout=60).state == "applied"  # the first one still works
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0  # graceful: the round in flight finishes
        assert waiter.wait(timeout=60) == 0
    finally:
        for proc in (first, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc is not None and proc.stderr is not None:
                proc.stderr.close()
