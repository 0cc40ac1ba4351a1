"""The collector: sealed segments into daily archives and rollups, each line exactly once, across crashes.

A crash is a real process exit: a subprocess replaces the collector's ``_reached`` seam with one that calls
``os._exit`` at the k-th arrival at a named step (for ``appending`` it first appends half a line to the
archive, as a write cut short by SIGKILL would). A rerun must then leave every line archived exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from spoolcheck import DAY, DYING_WRITER, archived, assert_exactly_once, hand_segment, record, sealed_segments

from fsqueue import CorruptRecord
from fsqueue._collect import collect, read_rollups
from fsqueue._config import SpoolSettings
from fsqueue._guard import guarded
from fsqueue._layout import create_root
from fsqueue._spool import Spool

ONE_DAY = SpoolSettings(retention=DAY)

CRASHING_COLLECTOR = """
import os, sys
from fsqueue import _collect
from fsqueue._config import SpoolSettings
step, nth, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calls = 0

def crash(name, path=""):
    global calls
    if name != step:
        return
    calls += 1
    if calls == nth:
        if name == "appending":
            with open(path, "ab") as archive:
                archive.write(b'{"ts":1795600000.0,"agent":"torn","ho')
        os._exit(137)

_collect._reached = crash
_collect.collect(root, settings=SpoolSettings(retention=86400), batch_segments=2)
sys.exit(3)  # the step was never reached
"""


@pytest.fixture
def qroot(tmp_path: Path) -> Path:
    """An initialised queue root."""
    create_root(str(tmp_path / "queue"))
    return tmp_path / "queue"


def dying_writer(root: Path, tag: str, count: int) -> set[tuple[str, int]]:
    """Run a writer that dies mid-line with its segment open; return the ids of its whole lines."""
    subprocess.run([sys.executable, "-c", DYING_WRITER, str(root), tag, str(count)], check=True)
    return {(tag, n) for n in range(count)}


def old_archive(root: Path) -> None:
    """An archive ten days old (collected back then), for retention to remove."""
    ts = time.time() - 10 * DAY
    hand_segment(root, "old.jsonl", [record(ts, "old", n) for n in range(3)])
    assert collect(root, now=ts + 60).lines == 3


def test_collect_archives_each_line_once_and_a_rerun_does_nothing(qroot: Path) -> None:
    """Sealed segments go to the day's archive; a second run finds nothing to do."""
    ids = sealed_segments(qroot, "s", segments=4, lines=25)
    report = collect(qroot)
    assert (report.segments, report.lines, report.batches) == (4, 100, 1)
    assert_exactly_once(qroot, ids)
    again = collect(qroot)
    assert (again.segments, again.lines, again.summary()) == (0, 0, "")
    assert_exactly_once(qroot, ids)


def test_rollups_count_events_errors_and_the_last_event(qroot: Path) -> None:
    """Per agent: events by kind, errors (named error, or level error), first and last event."""
    with Spool(qroot) as spool:
        spool.emit("scraper", "fetched", n=1)
        spool.emit("scraper", "error", message="timeout after 30s")
        spool.emit("scraper", "fetched", n=2)
        spool.emit("writer", "posted", level="ERROR", error="HTTP 500")
        spool.emit("writer", "posted", level="info")
    collect(qroot)
    rollups = read_rollups(qroot)
    scraper, writer = rollups["scraper"], rollups["writer"]
    assert (scraper.total, scraper.errors, dict(scraper.events)) == (3, 1, {"error": 1, "fetched": 2})
    assert (scraper.last_event, scraper.last_error) == ("fetched", "timeout after 30s")
    assert scraper.first_at <= scraper.last_error_at <= scraper.last_at  # type: ignore[operator]
    assert (writer.total, writer.errors, writer.last_error) == (2, 1, "HTTP 500")
    assert json.loads(json.dumps(writer.to_json()))["events"] == {"posted": 2}


def test_a_dead_writers_open_segment_is_sealed_and_its_partial_line_dropped(qroot: Path) -> None:
    """A writer killed mid-line: its whole lines are archived, the torn tail is counted and dropped."""
    ids = dying_writer(qroot, "dead", 30)
    report = collect(qroot)
    assert (report.sealed, report.lines, report.partial, report.corrupt) == (1, 30, 1, 0)
    assert_exactly_once(qroot, ids)
    assert os.listdir(qroot / "spool" / "open") == []


def test_a_live_writers_open_segment_is_left_alone(qroot: Path) -> None:
    """This process's open segment is neither sealed nor read; after close() it is collected."""
    spool = Spool(qroot)
    spool.emit("me", "step", s="live", n=0)
    report = collect(qroot)
    assert (report.sealed, report.open_live, report.lines) == (0, 1, 0)
    spool.emit("me", "step", s="live", n=1)  # still appending to the same segment
    spool.close()
    assert collect(qroot).lines == 2
    assert_exactly_once(qroot, {("live", 0), ("live", 1)})


def test_segments_of_another_host_or_unknown_naming_are_left_open(qroot: Path) -> None:
    """An open segment whose name proves no local writer is never sealed by the collector."""
    hand_segment(qroot, "elsewhere.00000000.00000000.1.2.3.000000.jsonl", [record(time.time(), "x", 0)], "open")
    hand_segment(qroot, "shell-writer.jsonl", [record(time.time(), "x", 1)], "open")
    report = collect(qroot)
    assert (report.sealed, report.open_live, report.lines) == (0, 2, 0)
    assert len(os.listdir(qroot / "spool" / "open")) == 2


def test_lines_that_are_not_telemetry_records_are_dropped_and_counted(qroot: Path) -> None:
    """Garbage, non-objects, missing or mistyped fields, bad names, NaN and over-long lines are refused."""
    now = time.time()
    good = record(now, "ok", 0)
    bad: list[bytes | dict[str, object]] = [
        b"not json\n",
        b"[1, 2]\n",
        b'{"ts": NaN, "agent": "a", "host": "h", "pid": 1, "event": "e", "fields": {}}\n',
        b"\xff\xfe\n",
        b"\n",
        {**good, "agent": "../etc"},
        {**good, "event": 7},
        {**good, "ts": "yesterday"},
        {**good, "ts": -5},
        {**good, "fields": [1]},
        {k: v for k, v in good.items() if k != "host"},
        {**good, "fields": {"pad": "x" * 70000}},
    ]
    hand_segment(qroot, "mixed.jsonl", [good, *bad, record(now, "ok", 1)])
    report = collect(qroot)
    assert (report.lines, report.corrupt, report.partial) == (2, len(bad), 0)
    assert_exactly_once(qroot, {("ok", 0), ("ok", 1)})


def test_a_second_collector_returns_at_once_while_one_runs(qroot: Path) -> None:
    """While the collector lock is held, collect() reports busy and touches nothing."""
    sealed_segments(qroot, "s", segments=1, lines=5)
    (qroot / "spool").mkdir(exist_ok=True)
    with guarded(str(qroot / "spool" / "collect.lock")) as held:
        assert held
        report = collect(qroot)
    assert report.busy and report.lines == 0
    assert len(os.listdir(qroot / "spool" / "ready")) == 1
    assert collect(qroot).lines == 5


def test_retention_removes_old_archives_and_skips_lines_past_it(qroot: Path) -> None:
    """Archives of days older than the retention go; lines that old are counted but not archived."""
    old_archive(qroot)
    assert len(os.listdir(qroot / "spool" / "archive")) == 1
    hand_segment(qroot, "late.jsonl", [record(time.time() - 5 * DAY, "late", 0), record(time.time(), "new", 0)])
    report = collect(qroot, settings=ONE_DAY)
    assert (report.lines, report.expired, len(report.removed_archives)) == (1, 1, 1)
    assert archived(qroot) == {("new", 0): 1}
    assert read_rollups(qroot)["hand"].total == 5  # expired lines still count in the rollups


def test_a_symlink_planted_in_ready_is_moved_aside_not_read(qroot: Path, tmp_path: Path) -> None:
    """A symlink named like a segment is rejected; its target is neither read nor removed."""
    secret = tmp_path / "secret.jsonl"
    secret.write_bytes(json.dumps(record(time.time(), "secret", 0)).encode() + b"\n")
    (qroot / "spool" / "ready").mkdir(parents=True)
    (qroot / "spool" / "ready" / "planted.jsonl").symlink_to(secret)
    report = collect(qroot)
    assert (report.rejected, report.lines) == (1, 0)
    assert secret.exists() and os.listdir(qroot / "spool" / "ready") == []
    assert os.path.islink(qroot / "spool" / "rejected" / os.listdir(qroot / "spool" / "rejected")[0])


def test_an_archive_cut_by_hand_is_reported_not_overwritten(qroot: Path) -> None:
    """An archive shorter than the ledger's committed size stops the collector with a clear error."""
    sealed_segments(qroot, "s", segments=1, lines=5)
    collect(qroot)
    [archive] = (qroot / "spool" / "archive").iterdir()
    archive.write_bytes(archive.read_bytes()[:10])
    with pytest.raises(CorruptRecord, match="Move the archive aside"):
        collect(qroot)
    archive.rename(qroot / "moved-aside.jsonl")
    sealed_segments(qroot, "t", segments=1, lines=2)
    assert collect(qroot).lines == 2


def test_a_corrupt_ledger_is_refused_not_guessed(qroot: Path) -> None:
    """A garbage ledger is a clear error: guessing could archive lines twice."""
    sealed_segments(qroot, "s", segments=1, lines=1)
    collect(qroot)
    (qroot / "spool" / "ledger.json").write_text("{garbage")
    with pytest.raises(CorruptRecord, match=r"ledger\.json is not valid JSON"):
        collect(qroot)


def test_a_segment_name_reused_after_archiving_is_archived_not_mistaken_for_the_old_one(qroot: Path) -> None:
    """Recovery removes only the very file the ledger archived, not a new one that reuses its name."""
    hand_segment(qroot, "reused.jsonl", [record(time.time(), "first", 0)])
    assert collect(qroot).lines == 1
    # A careless writer reuses the name; a collector claims it and dies before committing.
    hand_segment(qroot, "reused.jsonl", [record(time.time(), "second", n) for n in range(3)], "collecting")
    report = collect(qroot)
    assert (report.recovered_segments, report.lines) == (0, 3)
    assert archived(qroot) == {("first", 0): 1, ("second", 0): 1, ("second", 1): 1, ("second", 2): 1}


#: (step, k-th arrival, what the rerun must repair: "bytes" rolled back, "segments" removed, or nothing)
CRASH_STEPS = [
    ("sealed", 1, ""),
    ("claimed", 1, ""),
    ("claimed", 2, ""),
    ("read", 1, ""),
    ("registered", 1, ""),
    ("appending", 1, "bytes"),
    ("appended", 1, "bytes"),
    ("committed", 1, "segments"),
    ("unlinked", 1, "segments"),
    ("appending", 2, "bytes"),
    ("committed", 2, "segments"),
    ("unlinked", 3, "segments"),
    ("retention", 1, ""),
]


@pytest.mark.parametrize(("step", "nth", "repair"), CRASH_STEPS, ids=[f"{s}-{n}" for s, n, _ in CRASH_STEPS])
def test_a_crash_at_each_step_then_a_rerun_archives_each_line_exactly_once(
    qroot: Path, step: str, nth: int, repair: str
) -> None:
    """The collector dies (os._exit) at the k-th arrival at a step; the next run repairs and finishes."""
    old_archive(qroot)
    ids = sealed_segments(qroot, "s", segments=5, lines=20) | dying_writer(qroot, "dead", 20)
    crashed = subprocess.run([sys.executable, "-c", CRASHING_COLLECTOR, step, str(nth), str(qroot)], check=False)
    assert crashed.returncode == 137, f"the collector never reached {step} #{nth}"
    report = collect(qroot, settings=ONE_DAY)
    assert (report.recovered_bytes > 0, report.recovered_segments > 0) == (repair == "bytes", repair == "segments")
    assert_exactly_once(qroot, ids, removed=3)
    ledger = json.loads((qroot / "spool" / "ledger.json").read_text())
    assert ledger["totals"]["partial"] == 1
    assert len(ledger["archives"]) == 1  # today's; the old day's is gone from disk and ledger
    assert read_rollups(qroot)["worker"].total == 100
