"""``make demo`` (demo/farm.py) runs end to end: every task done despite kill -9, and a writer gone degraded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsqueue import Queue

FARM_SCRIPT = Path(__file__).resolve().parent.parent / "demo" / "farm.py"


def run_demo(farm: Path) -> subprocess.CompletedProcess[str]:
    """Run the demo with its farm in ``farm``."""
    env = dict(os.environ, FSQUEUE_DEMO_DIR=str(farm))
    for name in ("FSQUEUE_ROOT", "FSQUEUE_CONFIG", "FSQUEUE_DEBUG"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, str(FARM_SCRIPT)], env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One run of the whole demo, shared by the tests that read its output (it takes several seconds)."""
    farm = tmp_path_factory.mktemp("demo") / "farm"
    proc = run_demo(farm)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return farm, proc


def test_demo_drains_the_farm_after_a_kill_9(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """The demo exits 0 with all tasks done, none dead, no lock left, and both killed agents' tasks recovered."""
    farm, proc = demo
    queue = Queue(farm / "queue")
    status = queue.status()
    assert status["tasks"]["done"] == 300
    assert {k: v for k, v in status["tasks"].items() if k != "done"} == {
        "pending": 0,
        "delayed": 0,
        "running": 0,
        "dead": 0,
    }
    assert status["locks"] == {}
    out = proc.stdout
    assert all(line.startswith(("==> ", "    ")) for line in out.splitlines()), out
    assert "cleared slow-report: owner dead, task requeued" in out
    assert "fsqueue-watchdog break task=slow-digest" in out and "outcome=requeued" in out
    assert any(line.split()[-1:] == ["dead"] and "slow-report" in line for line in out.splitlines())
    assert any(line.startswith("==> 300/300 tasks done, 0 dead") for line in out.splitlines()), out
    assert out.splitlines()[-1].startswith("==> demo finished in ")
    for task_id in ("slow-report", "slow-digest"):
        slow = queue.task(task_id)
        assert [e["event"] for e in slow.history] == ["enqueued", "broken", "completed"]


def test_demo_shows_a_writer_going_degraded_when_its_upstream_is_killed(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """After kill -9 of the beating scraper, `fsqueue check scraper` exits 6 and the writer beats `degraded`."""
    farm, proc = demo
    out = proc.stdout
    lines = out.splitlines()
    full = lines.index("    writer: fsqueue check scraper exited 0: full mode, digest from the fresh feed")
    degraded = lines.index("    writer: fsqueue check scraper exited 6: degraded mode, digest from the last good feed")
    assert any(line.startswith("==> kill -9 scraper") for line in lines[full:degraded]), out
    # The `fsqueue agents` table that follows: AGENT VERDICT STATE DATE TIME AGE PID ALIVE MESSAGE...
    rows = {fields[0]: fields for fields in (line.split() for line in lines[degraded + 1 :]) if fields}
    assert rows["writer"][:3] == ["writer", "ok", "degraded"], out
    assert rows["scraper"][1] in ("late", "down") and rows["scraper"][7] == "no", out
    assert "fsqueue-watchdog heartbeat agent=scraper" in out
    queue = Queue(farm / "queue")
    writer = queue.last_beat("writer")
    assert writer is not None and writer.state == "degraded"
    scraper = queue.last_beat("scraper")
    assert scraper is not None and scraper.state == "running"  # killed inside its with block: no exit beat


def test_demo_refuses_to_wipe_a_directory_it_did_not_make(tmp_path: Path) -> None:
    """FSQUEUE_DEMO_DIR pointing at someone's files stops the demo before it deletes anything."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me", encoding="utf-8")
    proc = run_demo(precious)
    assert proc.returncode == 1
    assert "is not a demo farm" in proc.stderr
    assert (precious / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_demo_status_shows_the_telemetry_rollups(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """The agents' telemetry is collected: status has per-agent rollups, export tells the degraded story."""
    _, proc = demo
    out = proc.stdout
    assert "    telemetry  collected " in out
    assert any(line.split()[:1] == ["AGENT"] and "ERRORS" in line.split() for line in out.splitlines())
    assert '"agent":"scraper"' in out and '"event":"feed.published"' in out
    assert '"event":"digest","fields":{"mode":"degraded"}' in out
    errors = sum(int(line.split()[2]) for line in out.splitlines() if line.startswith("    agent-") and "ago" in line)
    assert errors == 3  # one error event per flaky task's failed first attempt
