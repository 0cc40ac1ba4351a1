"""The telemetry writer: one whole line per event in the process's own segment, sealed by size, age and exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from fsqueue import InvalidPayload, QueueRootError
from fsqueue import _spool as spool_module
from fsqueue._config import SpoolSettings
from fsqueue._identity import owner_state
from fsqueue._layout import create_root
from fsqueue._spool import MAX_LINE_BYTES, Spool, segment_writer

LINE_KEYS = ["ts", "agent", "host", "pid", "event", "fields"]


@pytest.fixture
def qroot(tmp_path: Path) -> Path:
    """An initialised queue root."""
    create_root(str(tmp_path / "queue"))
    return tmp_path / "queue"


def segments(root: Path, where: str) -> list[Path]:
    directory = root / "spool" / where
    return sorted(directory.iterdir()) if directory.exists() else []


def lines_of(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for p in paths for line in p.read_bytes().splitlines()]


def test_emit_appends_one_line_with_the_documented_keys(qroot: Path) -> None:
    """Each emit is one JSON line: ts, agent, host, pid, event, fields, in that order."""
    with Spool(qroot) as spool:
        spool.emit("scraper", "fetched", url="https://example.org", status=200)
        spool.emit("scraper", "idle")
        [open_segment] = segments(qroot, "open")
        data = open_segment.read_bytes()
    assert data.count(b"\n") == 2 and data.endswith(b"\n")
    first, second = (json.loads(line) for line in data.splitlines())
    assert list(first) == LINE_KEYS
    assert first["fields"] == {"url": "https://example.org", "status": 200}
    assert (first["agent"], first["event"], first["pid"]) == ("scraper", "fetched", os.getpid())
    assert second["fields"] == {}
    assert first["ts"] <= second["ts"]


def test_close_seals_the_open_segment_into_ready(qroot: Path) -> None:
    """close() renames the open segment into ready/ under the same name."""
    spool = Spool(qroot)
    spool.emit("a", "e")
    [name] = [p.name for p in segments(qroot, "open")]
    spool.close()
    assert segments(qroot, "open") == []
    assert [p.name for p in segments(qroot, "ready")] == [name]


def test_segment_is_sealed_once_it_reaches_its_size_bound(qroot: Path) -> None:
    """A segment at segment_bytes is sealed at once; the next line starts a new one."""
    spool = Spool(qroot, settings=SpoolSettings(segment_bytes=1024))
    for n in range(100):
        spool.emit("a", "e", n=n)
    ready = segments(qroot, "ready")
    assert len(ready) >= 5
    assert all(1024 <= p.stat().st_size < 1024 + 200 for p in ready)
    spool.close()
    assert [line["fields"] for line in lines_of(segments(qroot, "ready"))] == [{"n": n} for n in range(100)]


def test_segment_older_than_its_age_bound_is_sealed_at_the_next_emit(
    qroot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old open segment is sealed by the next emit, which starts a fresh one (the clock is injected)."""
    now = [1000.0]
    monkeypatch.setattr(spool_module, "_monotonic", lambda: now[0])
    spool = Spool(qroot, settings=SpoolSettings(segment_age=60))
    spool.emit("a", "one")
    now[0] += 59
    spool.emit("a", "two")
    assert segments(qroot, "ready") == []
    now[0] += 2
    spool.emit("a", "three")
    [sealed] = segments(qroot, "ready")
    assert [line["event"] for line in lines_of([sealed])] == ["one", "two"]
    assert [line["event"] for line in lines_of(segments(qroot, "open"))] == ["three"]
    spool.close()


EXIT_NORMALLY = """
import sys
from fsqueue._spool import configure
configure(sys.argv[1]).emit("a", "e", n=1)
"""

FORK_CHILD = """
import os, sys
from fsqueue._spool import configure, emit
configure(sys.argv[1])
emit("parent", "before")
pid = os.fork()
if pid == 0:
    emit("child", "hello")
    sys.exit(0)          # runs the child's atexit hooks: they must not seal the parent's segment
os.waitpid(pid, 0)
emit("parent", "after")  # still appended to the parent's own, still open, segment
print(len(os.listdir(os.path.join(sys.argv[1], "spool", "open"))))
os._exit(0)              # no atexit: the parent's segment stays open, as after a SIGKILL
"""


def test_a_normal_exit_seals_the_segment(qroot: Path) -> None:
    """A process that emits and exits leaves its segment in ready/, not open/."""
    subprocess.run([sys.executable, "-c", EXIT_NORMALLY, str(qroot)], check=True)
    assert segments(qroot, "open") == []
    assert [line["fields"] for line in lines_of(segments(qroot, "ready"))] == [{"n": 1}]


def test_a_forked_child_writes_its_own_segment_and_never_seals_its_parents(qroot: Path) -> None:
    """After fork the child opens its own segment; its exit seals only that one."""
    out = subprocess.run([sys.executable, "-c", FORK_CHILD, str(qroot)], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "1"  # the parent's segment, still open when the parent looked
    [parent_segment] = segments(qroot, "open")
    assert [line["event"] for line in lines_of([parent_segment])] == ["before", "after"]
    [child_segment] = segments(qroot, "ready")
    assert [(line["agent"], line["event"]) for line in lines_of([child_segment])] == [("child", "hello")]


def test_threads_sharing_one_spool_never_tear_or_lose_a_line(qroot: Path) -> None:
    """8 threads x 500 emits through one spool with tiny segments: every line whole, each once."""
    spool = Spool(qroot, settings=SpoolSettings(segment_bytes=2048))
    start = threading.Barrier(8)

    def work(t: int) -> None:
        start.wait()
        for n in range(500):
            spool.emit("a", "e", t=t, n=n, pad="x" * (n % 50))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spool.close()
    seen = sorted((line["fields"]["t"], line["fields"]["n"]) for line in lines_of(segments(qroot, "ready")))
    assert seen == [(t, n) for t in range(8) for n in range(500)]


@pytest.mark.parametrize(
    ("agent", "event"),
    [("", "e"), ("a/b", "e"), ("../x", "e"), (".hidden", "e"), ("a", "x y"), ("a", "e\x00"), ("a" * 129, "e")],
)
def test_invalid_agent_or_event_names_are_refused(qroot: Path, agent: str, event: str) -> None:
    """Names follow the task-id rules; a bad one is refused and nothing is written."""
    with pytest.raises(InvalidPayload, match=r"name .* is refused"):
        Spool(qroot).emit(agent, event)
    assert segments(qroot, "open") == []


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"x": float("nan")}, "not JSON-serializable"),
        ({"x": object()}, "not JSON-serializable"),
        ({"x": "y" * MAX_LINE_BYTES}, "the limit is 65536"),
    ],
)
def test_bad_fields_are_refused_and_nothing_is_written(qroot: Path, fields: dict[str, object], match: str) -> None:
    """NaN, unserializable values and over-long lines are refused with the reason."""
    spool = Spool(qroot)
    with pytest.raises(InvalidPayload, match=match):
        spool.emit_event("a", "e", fields)
    spool.emit("a", "ok")
    spool.close()
    assert [line["event"] for line in lines_of(segments(qroot, "ready"))] == ["ok"]


def test_emit_into_a_directory_that_is_not_a_queue_says_how_to_make_one(tmp_path: Path) -> None:
    """No fsqueue.json: the error names the directory and `fsqueue init`."""
    with pytest.raises(QueueRootError, match="fsqueue init"):
        Spool(tmp_path).emit("a", "e")


def test_a_symlink_planted_at_the_spool_directory_is_not_followed(qroot: Path, tmp_path: Path) -> None:
    """spool/ as a symlink is refused; nothing is written through it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (qroot / "spool").symlink_to(elsewhere)
    with pytest.raises(QueueRootError, match="symlink"):
        Spool(qroot).emit("a", "e")
    assert list(elsewhere.iterdir()) == []


def test_segment_names_prove_their_writer(qroot: Path) -> None:
    """The name of this process's segment judges as alive; a made-up pid of this boot as dead."""
    spool = Spool(qroot)
    spool.emit("a", "e")
    [name] = [p.name for p in segments(qroot, "open")]
    owner = segment_writer(name)
    assert owner is not None and owner.pid == os.getpid()
    assert owner_state(owner) == "alive"
    host, machine, boot, ns, _pid, ticks, seq = name.removesuffix(".jsonl").split(".")
    gone = segment_writer(f"{host}.{machine}.{boot}.{ns}.{2**22 + 7}.{ticks}.{seq}.jsonl")
    assert gone is not None and owner_state(gone) == "dead"
    other_boot = segment_writer(f"{host}.{machine}.{'f' * 8 if boot != 'f' * 8 else '0' * 8}.{ns}.1.1.0.jsonl")
    assert other_boot is not None and owner_state(other_boot) == "dead"
    assert segment_writer(f"elsewhere.{machine}.{boot}.{ns}.1.1.0.jsonl") is None
    assert segment_writer("notes.txt") is None
    spool.close()
