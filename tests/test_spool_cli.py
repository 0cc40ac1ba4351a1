"""`fsqueue emit` and `fsqueue spool collect|export|status` end to end; export filters; bad input refused."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from spoolcheck import DAY, hand_segment, record

from fsqueue import ConfigError
from fsqueue._collect import collect
from fsqueue._config import SpoolSettings, spool_settings_from_mapping
from fsqueue._export import CSV_HEADER, Filter, parse_time, read_archived, write_csv, write_jsonl
from fsqueue._layout import create_root

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def qroot(tmp_path: Path) -> Path:
    """An initialised queue root."""
    create_root(str(tmp_path / "queue"))
    return tmp_path / "queue"


@pytest.fixture
def fsq(qroot: Path, cli_env: dict[str, str]) -> Run:
    """Run the real `fsqueue` command on the test queue."""
    cli_env["FSQUEUE_ROOT"] = str(qroot)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fsqueue", *args], env=cli_env, capture_output=True, text=True, check=False
        )

    return run


def test_collect_reports_routine_work_only_when_asked(fsq: Run) -> None:
    """`spool collect -v` says what it archived; with nothing to do it says nothing even then."""
    assert fsq("emit", "scraper", "fetched").returncode == 0
    assert fsq("spool", "collect", "-v").stdout.startswith("archived 1 lines from 1 segments")
    assert fsq("spool", "collect", "-v").stdout == ""


def test_emit_collect_export_round_trip(fsq: Run) -> None:
    """Two CLI emits, one collect, and export gives both lines back in JSONL and in CSV."""
    assert fsq("emit", "scraper", "fetched", "--field", "url=https://x.org/a,b", "--json", '{"n": 3}').returncode == 0
    assert fsq("emit", "scraper", "error", "--field", 'message=said "no"\nthen left').returncode == 0
    collected = fsq("spool", "collect")
    assert (collected.returncode, collected.stdout, collected.stderr) == (0, "", "")  # routine work: silent for cron
    lines = [json.loads(x) for x in fsq("spool", "export").stdout.splitlines()]
    assert [(x["event"], x["fields"]) for x in lines] == [
        ("fetched", {"n": 3, "url": "https://x.org/a,b"}),
        ("error", {"message": 'said "no"\nthen left'}),
    ]
    rows = list(csv.reader(io.StringIO(fsq("spool", "export", "--format", "csv").stdout)))
    assert tuple(rows[0]) == CSV_HEADER
    for row, line in zip(rows[1:], lines, strict=True):
        assert float(row[0]) == line["ts"] and int(row[3]) == line["pid"]
        assert (row[1], row[2], row[4], json.loads(row[5])) == (
            line["agent"],
            line["host"],
            line["event"],
            line["fields"],
        )


def test_spool_status_shows_waiting_segments_and_rollups(fsq: Run) -> None:
    """status --json: segments by directory, totals, and one rollup per agent."""
    fsq("emit", "writer", "posted")
    fsq("emit", "writer", "error", "--field", "message=HTTP 500")
    before = json.loads(fsq("spool", "status", "--json").stdout)
    assert before["segments"]["ready"] == 2 and before["rollups"] == []
    fsq("spool", "collect")
    after = json.loads(fsq("spool", "status", "--json").stdout)
    assert after["totals"]["lines"] == 2 and after["segments"]["ready"] == 0
    [writer] = after["rollups"]
    assert (writer["agent"], writer["total"], writer["errors"], writer["last_error"]) == ("writer", 2, 1, "HTTP 500")
    table = fsq("spool", "status").stdout
    assert "AGENT" in table and "writer" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["emit", "bad/agent", "e"], "agent name 'bad/agent' is refused"),
        (["emit", "a", "two words"], "event name 'two words' is refused"),
        (["emit", "a", "e", "--json", "{bad"], "--json is not valid JSON"),
        (["emit", "a", "e", "--json", "[1, 2]"], "--json must be a JSON object"),
        (["emit", "a", "e", "--json", '{"x": NaN}'], "not JSON-serializable"),
        (["emit", "a", "e", "--field", "noequals"], "--field 'noequals' is not KEY=VALUE"),
        (["emit", "a", "e", "--field", "=value"], "--field '=value' is not KEY=VALUE"),
        (["emit", "a", "e", "--field", "big=" + "x" * 70000], "the limit is 65536"),
        (["spool", "export", "--since", "last tuesday"], "time 'last tuesday' is not understood"),
    ],
)
def test_bad_input_gets_one_line_and_exit_1(fsq: Run, qroot: Path, args: list[str], message: str) -> None:
    """Each bad input: exit 1, one line on stderr naming the problem, no traceback, nothing written."""
    result = fsq(*args)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("fsqueue: error: ")
    assert message in result.stderr
    assert not (qroot / "spool" / "ready").exists() or not list((qroot / "spool" / "ready").iterdir())


def test_usage_errors_exit_2(fsq: Run) -> None:
    """A format that does not exist is a usage error (exit 2), as everywhere in the CLI."""
    assert fsq("spool", "export", "--format", "xml").returncode == 2
    assert fsq("emit", "only-agent").returncode == 2


def test_emit_into_a_missing_queue_says_how_to_create_it(fsq: Run, tmp_path: Path) -> None:
    """Emitting to a directory that is not a queue exits 1 naming `fsqueue init`."""
    result = fsq("--root", str(tmp_path / "nowhere"), "emit", "a", "e")
    assert result.returncode == 1 and "fsqueue init" in result.stderr


def test_a_corrupt_ledger_is_a_one_line_error(fsq: Run, qroot: Path) -> None:
    """`spool collect` over a garbage ledger: exit 1, one line naming the file, no traceback."""
    fsq("emit", "a", "e")
    fsq("spool", "collect")
    (qroot / "spool" / "ledger.json").write_text("[]")
    result = fsq("spool", "collect")
    assert result.returncode == 1 and "ledger.json" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------- filters (Python API)


def _archive_days(root: Path) -> float:
    """Lines over three days: agents a and b, events x and y; returns the start of the first day."""
    start = (time.time() // DAY - 3) * DAY
    lines: list[bytes | dict[str, Any]] = [
        record(start + day * DAY + hour * 3600, f"d{day}", hour, agent="ab"[hour % 2], event="xy"[hour % 3 == 0])
        for day in range(3)
        for hour in range(24)
    ]
    hand_segment(root, "days.jsonl", lines)
    assert collect(root).lines == 72
    return start


def _ids(root: Path, flt: Filter) -> list[tuple[str, int]]:
    return [(obj["fields"]["s"], obj["fields"]["n"]) for _, obj in read_archived(root, flt)]


def test_export_filters_by_time_agent_and_event(qroot: Path) -> None:
    """since is inclusive, until exclusive, across day archives; agents and events combine."""
    start = _archive_days(qroot)
    assert len(_ids(qroot, Filter())) == 72
    window = _ids(qroot, Filter(since=start + DAY + 22 * 3600, until=start + 2 * DAY + 2 * 3600))
    assert window == [("d1", 22), ("d1", 23), ("d2", 0), ("d2", 1)]
    only_a = _ids(qroot, Filter(agents=["a"]))
    assert len(only_a) == 36 and all(n % 2 == 0 for _, n in only_a)
    a_and_y = _ids(qroot, Filter(agents=["a"], events=["y"]))
    assert a_and_y and all(n % 2 == 0 and n % 3 == 0 for _, n in a_and_y)
    assert _ids(qroot, Filter(agents=["nobody"])) == []


def test_csv_export_round_trips_through_the_csv_module(qroot: Path) -> None:
    """Commas, quotes, newlines and unicode in fields survive CSV writing and reading."""
    hand_segment(
        qroot,
        "odd.jsonl",
        [{**record(time.time(), "odd", 0), "fields": {"s": "odd", "n": 0, "text": 'a,b "c"\nd \u00e9\u2603'}}],
    )
    collect(qroot)
    out = io.StringIO()
    assert write_csv(read_archived(qroot), out) == 1
    [row] = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert json.loads(row["fields"])["text"] == 'a,b "c"\nd \u00e9\u2603'
    binary = io.BytesIO()
    assert write_jsonl(read_archived(qroot), binary) == 1
    assert json.loads(binary.getvalue())["fields"]["text"] == 'a,b "c"\nd \u00e9\u2603'


def test_export_reads_only_what_the_ledger_committed(qroot: Path) -> None:
    """Bytes past an archive's committed size (an append not yet committed) are not exported."""
    hand_segment(qroot, "one.jsonl", [record(time.time(), "ok", 0)])
    collect(qroot)
    [archive] = (qroot / "spool" / "archive").iterdir()
    with archive.open("ab") as handle:
        handle.write(json.dumps(record(time.time(), "uncommitted", 0)).encode() + b"\n")
    assert _ids(qroot, Filter()) == [("ok", 0)]


def test_parse_time_accepts_epoch_iso_and_ages() -> None:
    """Epoch seconds, ISO dates (UTC when no zone), ISO times with zones, and ages back from now."""
    assert parse_time("1718000000", 0) == 1718000000
    assert parse_time("2024-06-10", 0) == 1717977600
    assert parse_time("2024-06-10T02:00:00+02:00", 0) == 1717977600
    assert parse_time("2024-06-10T00:00:00Z", 0) == 1717977600
    assert parse_time("2h", 10000) == 10000 - 7200


def test_spool_config_section_is_parsed_and_checked() -> None:
    """retention, segment_bytes (with units) and segment_age are read; bad keys and values refused."""
    settings = spool_settings_from_mapping({"spool": {"retention": "7d", "segment_bytes": "64KiB", "segment_age": 30}})
    assert settings == SpoolSettings(retention=7 * DAY, segment_bytes=65536, segment_age=30.0)
    assert spool_settings_from_mapping({"spool": {"retention": None}}).retention is None
    assert spool_settings_from_mapping({}) == SpoolSettings()
    for bad, match in [
        ({"spool": {"bogus": 1}}, "unknown key 'spool.bogus'"),
        ({"spool": {"segment_bytes": "lots"}}, "spool.segment_bytes must be a size"),
        ({"spool": {"segment_bytes": 10}}, "from 1KiB to 1GiB"),
        ({"spool": {"retention": -1}}, "spool.retention must be a positive"),
        ({"spool": [1]}, "spool must be a mapping"),
    ]:
        with pytest.raises(ConfigError, match=match):
            spool_settings_from_mapping(bad)
