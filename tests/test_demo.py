"""``make demo`` (demo/farm.py) runs end to end and leaves every task done, with a kill -9 survived."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_demo_drains_the_farm_after_a_kill_9(tmp_path: Path) -> None:
    """The demo exits 0 with all tasks done, none dead, no lock left, and both killed agents' tasks recovered."""
    farm = tmp_path / "farm"
    proc = run_demo(farm)
    assert proc.returncode == 0, proc.stdout + proc.stderr
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
    assert out.splitlines()[-1].startswith("==> 300/300 tasks done, 0 dead")
    for task_id in ("slow-report", "slow-digest"):
        slow = queue.task(task_id)
        assert [e["event"] for e in slow.history] == ["enqueued", "broken", "completed"]


def test_demo_refuses_to_wipe_a_directory_it_did_not_make(tmp_path: Path) -> None:
    """FSQUEUE_DEMO_DIR pointing at someone's files stops the demo before it deletes anything."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me", encoding="utf-8")
    proc = run_demo(precious)
    assert proc.returncode == 1
    assert "is not a demo farm" in proc.stderr
    assert (precious / "notes.txt").read_text(encoding="utf-8") == "keep me"
