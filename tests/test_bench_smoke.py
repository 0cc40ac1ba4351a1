"""The benchmark suite's smallest configuration: fsqueue and the floor drain 200 tasks with two workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parent.parent / "bench" / "suite.py"


def run_suite(tmp_path: Path) -> tuple[dict, Path]:
    out = tmp_path / "report" / "benchmarks.md"
    argv = [sys.executable, str(SUITE), "--tasks", "200", "--workers", "2", "--repeats", "1", "--timeout", "60"]
    argv += ["--systems", "floor,fsqueue-api,fsqueue-run", "--sections", "throughput"]
    argv += ["--dir", str(tmp_path / "work"), "--out", str(out)]
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300)
    return json.loads((out.parent / "bench" / "results.json").read_text()), out


def test_fsqueue_and_the_floor_drain_without_double_lost_or_errors(tmp_path: Path) -> None:
    """Every run drains all 200 tasks: no double delivery, nothing lost, no error, and a report is written."""
    results, out = run_suite(tmp_path)
    runs = {run["system"]: run for run in results["runs"]}
    assert set(runs) == {"floor", "fsqueue-api", "fsqueue-run"}
    for run in runs.values():
        assert run["status"] == "ok", run
        assert (run["delivered"], run["double"], run["lost"], run["unexpected"], run["errors"]) == (200, 0, 0, 0, 0)
        assert run["rate"] > 0
    text = out.read_text()
    assert "## Targets" in text
    assert "fsqueue: zero double deliveries, lost tasks, errors at every W" in text
    assert not list((tmp_path / "work").iterdir()), "the suite left its bench directory behind"
