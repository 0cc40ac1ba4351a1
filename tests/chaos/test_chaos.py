"""The chaos harness's ``short`` profile inside the suite: a real farm, real faults, and the checker's counts.

The harness runs as a subprocess in its own session (it installs its own SIGTERM handler and threads);
its report is read back from ``--json``. The seed is random unless ``CHAOS_SEED`` is set, and it is printed
in the harness output that every assertion message carries, so a failing run can be replayed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HARNESS = Path(__file__).parent / "harness.py"
DEADLINE = 150.0  # seconds: the short profile takes about 40 s on a 2-core VM; this bounds a hang


def run_short_profile(tmp_path: Path) -> tuple[dict[str, Any], str]:
    """Run the harness to its end; return its report and its output."""
    report_path = tmp_path / "report.json"
    argv = [sys.executable, str(HARNESS), "--profile", "short", "--workdir", str(tmp_path / "work")]
    argv += ["--json", str(report_path)]
    if os.environ.get("CHAOS_SEED"):
        argv += ["--seed", os.environ["CHAOS_SEED"]]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the harness reaps its farm on SIGTERM
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its children die with it (PR_SET_PDEATHSIG)
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    text = out.decode(errors="replace")
    assert report_path.exists(), f"the harness wrote no report (exit {proc.returncode}):\n{text}"
    return json.loads(report_path.read_text()), text


@pytest.mark.stress
def test_short_chaos_run_commits_each_task_once_and_dead_letters_only_poison(tmp_path: Path) -> None:
    """Workers SIGKILLed and SIGSTOPped, the watchdog killed mid-sweep, poison: 0 double, 0 lost, dead == poison."""
    report, out = run_short_profile(tmp_path)
    tasks, fence, faults = report["tasks"], report["fencing"], report["faults"]
    assert report["ok"], out
    assert (tasks["committed_twice"], tasks["lost"], tasks["unexpected"], tasks["mismatched"]) == (0, 0, 0, 0), out
    assert tasks["enqueued"] > 500, out
    assert tasks["committed_exactly_once"] + tasks["dead"] == tasks["enqueued"], out
    # Dead-letter holds exactly the poison tasks, each after all of its attempts.
    assert tasks["poison"] > 0 and tasks["dead"] == tasks["poison"], out
    assert not tasks["dead_not_poison"] and not tasks["poison_not_dead"] and not tasks["poison_dead_early"], out
    assert not tasks["runs_over_max_attempts"], out
    # The faults really happened, each kind at least once.
    assert faults.get("sigkill_worker_api", 0) + faults.get("sigkill_worker_run", 0) > 0, out
    assert faults.get("sigkill_watchdog_mid_sweep", 0) > 0, out
    assert faults.get("sigkill_producer", 0) > 0, out
    assert faults["poison_runs"] > faults["poison_tasks"], out  # each poison task ran more than once
    stops = faults.get("sigstop_holder_api", 0) + faults.get("sigstop_holder_run", 0)
    assert stops > 0, out
    # A holder whose lease was broken while it was stopped was refused, never committed (fencing).
    assert fence["refused_total"] > 0, out
    assert not fence["broken_then_committed"], out
    assert report["recovery"]["kill_to_break"]["count"] > 0, out
    assert report["leftovers"]["locks"] == report["leftovers"]["records"] == 0, out
