"""Heartbeats, verdicts, degraded mode with hysteresis, and `fsqueue check` / `beat` / `agents`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fsqueue import Config, CorruptRecord, InvalidPayload, ManualClock, Queue

MIN = 60.0


@pytest.fixture
def hq(root: Path, clock: ManualClock) -> Queue:
    """A queue with a 5-minute heartbeat interval, 1 minute grace, down after 3 intervals."""
    config = Config(heartbeat_interval=5 * MIN, heartbeat_grace=MIN, heartbeat_down_after=3, recover_after=10 * MIN)
    return Queue(root, create=True, clock=clock, config=config)


def test_beat_writes_a_versioned_record(hq: Queue, clock: ManualClock) -> None:
    """A beat is a versioned JSON record with agent, pid, host, time, interval, state and message."""
    hq.beat("scraper", state="running", message="page 3")
    data = json.loads((Path(hq.root) / "status" / "scraper.heartbeat").read_text())
    assert data["format"] == "fsqueue/1" and data["kind"] == "heartbeat"
    assert (data["agent"], data["at"], data["interval"], data["state"], data["message"]) == (
        "scraper",
        clock.now(),
        300.0,
        "running",
        "page 3",
    )
    assert data["owner"]["pid"] == os.getpid()


@pytest.mark.parametrize(
    ("age", "verdict"), [(0, "ok"), (6 * MIN, "ok"), (6 * MIN + 1, "late"), (16 * MIN, "late"), (16 * MIN + 1, "down")]
)
def test_verdict_ok_late_down(hq: Queue, clock: ManualClock, age: float, verdict: str) -> None:
    """ok up to interval + grace, late up to 3 intervals + grace, then down."""
    hq.beat("scraper")
    clock.advance(age)
    (info,) = hq.agents()
    assert (info.agent, info.verdict, info.alive) == ("scraper", verdict, True)


def test_context_manager_beats_on_entry_and_exit(hq: Queue) -> None:
    """The context manager beats `running` on entry and `stopped` / `failed` on exit."""
    with hq.heartbeat("a", interval=3600):
        assert hq.last_beat("a").state == "running"  # type: ignore[union-attr]
    assert hq.last_beat("a").state == "stopped"  # type: ignore[union-attr]
    with pytest.raises(ValueError), hq.heartbeat("b", interval=3600):
        raise ValueError("bad page")
    hb = hq.last_beat("b")
    assert hb is not None and hb.state == "failed" and "bad page" in hb.message


def test_context_manager_beats_from_its_thread(hq: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between entry and exit the background thread beats every interval."""
    beats = threading.Semaphore(0)
    import fsqueue._heartbeat as heartbeat_module

    real = heartbeat_module.write_beat

    def counting(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        beats.release()
        return result

    monkeypatch.setattr(heartbeat_module, "write_beat", counting)
    with hq.heartbeat("fast", interval=0.01):
        for _ in range(4):  # entry + three thread beats, each awaited on the semaphore (bounded)
            assert beats.acquire(timeout=10)


def test_readers_never_see_a_torn_heartbeat(hq: Queue) -> None:
    """A reader racing a writer process that beats 2,000 times always parses a complete record."""
    code = (
        "import sys\nfrom fsqueue import Queue\nq = Queue(sys.argv[1])\n"
        "for i in range(2000):\n    q.beat('w', message='x' * (i % 400))\n"
    )
    hq.beat("w")
    writer = subprocess.Popen([sys.executable, "-c", code, hq.root])
    seen: list[str] = []
    try:
        while writer.poll() is None:
            hb = hq.last_beat("w")  # raises CorruptRecord on a torn file
            assert hb is not None
            seen.append(hb.message)
    finally:
        writer.wait()
    assert writer.returncode == 0
    assert len(seen) > 10 and all(set(m) <= {"x"} for m in seen)


def test_bad_agent_names_and_corrupt_heartbeats(hq: Queue) -> None:
    """An agent name that cannot name a file is refused; a corrupt heartbeat is reported, not a crash."""
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(InvalidPayload):
            hq.beat(bad)
    (Path(hq.root) / "status" / "broken.heartbeat").write_text("{garbage")
    with pytest.raises(CorruptRecord):
        hq.last_beat("broken")
    assert [(a.agent, a.verdict) for a in hq.agents()] == [("broken", "corrupt")]
    assert hq.upstream("broken").degraded


def test_upstream_missing_or_stale_is_degraded(hq: Queue, clock: ManualClock) -> None:
    """No heartbeat, or one older than max_age, means degraded; a fresh one means full."""
    assert hq.upstream("scraper").degraded
    hq.beat("scraper")
    assert hq.upstream("scraper").full
    clock.advance(7 * MIN)
    mode = hq.upstream("scraper")
    assert mode.degraded and "old" in mode.reason
    assert hq.upstream("scraper", max_age=8 * MIN).full


def test_hysteresis_leaves_degraded_only_after_recover_after(hq: Queue, clock: ManualClock) -> None:
    """Once degraded, the downstream stays degraded until the upstream has been fresh for recover_after."""
    hq.beat("scraper")
    assert hq.upstream("scraper", agent="writer").full
    clock.advance(10 * MIN)
    assert hq.upstream("scraper", agent="writer").degraded
    own = hq.last_beat("writer")
    assert own is not None and own.state == "degraded" and "upstream scraper" in own.message
    for _ in range(10):  # the upstream is back and beats every minute: still degraded for 10 minutes
        hq.beat("scraper")
        assert hq.upstream("scraper", agent="writer").degraded
        clock.advance(MIN)
    hq.beat("scraper")
    mode = hq.upstream("scraper", agent="writer")
    assert mode.full and "leaving degraded" in mode.reason
    assert hq.last_beat("writer").state == "ok"  # type: ignore[union-attr]


def test_flapping_upstream_does_not_flip_the_mode(hq: Queue, clock: ManualClock) -> None:
    """An upstream that is fresh one run and stale the next keeps the downstream degraded throughout."""
    assert hq.upstream("flappy", agent="down").degraded  # never beaten yet
    modes = []
    for i in range(12):
        if i % 2 == 0:
            hq.beat("flappy")
        clock.advance(7 * MIN if i % 2 else MIN)
        modes.append(hq.upstream("flappy", agent="down").degraded)
    assert all(modes)


def test_one_shot_runs_share_the_hysteresis(root: Path, clock: ManualClock) -> None:
    """Separate Queue objects (separate cron runs) see the same remembered mode."""
    config = Config(recover_after=10 * MIN)
    Queue(root, create=True, clock=clock, config=config)
    assert Queue(root, clock=clock, config=config).upstream("up", agent="me").degraded
    Queue(root, clock=clock, config=config).beat("up")
    assert Queue(root, clock=clock, config=config).upstream("up", agent="me").degraded


def cli(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, FSQUEUE_ROOT=str(root), **(env or {}))
    full_env.pop("FSQUEUE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "fsqueue", *args], env=full_env, capture_output=True, text=True, check=False
    )


def test_check_exit_codes(root: Path) -> None:
    """`fsqueue check` exits 0 when fresh, 6 when stale or missing, and prints nothing."""
    Queue(root, create=True)
    missing = cli(root, "check", "scraper")
    assert (missing.returncode, missing.stdout, missing.stderr) == (6, "", "")
    assert cli(root, "beat", "scraper", "--interval", "60").returncode == 0
    fresh = cli(root, "check", "scraper")
    assert (fresh.returncode, fresh.stdout, fresh.stderr) == (0, "", "")
    path = root / "status" / "scraper.heartbeat"
    data = json.loads(path.read_text())
    data["at"] -= 3600  # an hour-old beat, written as the writer would (rename into place)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.rename(path)
    assert cli(root, "check", "scraper").returncode == 6
    assert cli(root, "check", "scraper", "--max-age", "7200").returncode == 0
    bad = cli(root, "check", "../etc")
    assert bad.returncode == 1 and bad.stderr.startswith("fsqueue: error:")


def test_beat_and_agents_cli(root: Path) -> None:
    """`fsqueue beat` records the calling process; `fsqueue agents --json` lists verdict and liveness."""
    Queue(root, create=True)
    assert cli(root, "beat", "writer", "--state", "degraded", "--message", "using cached feed").returncode == 0
    rows = json.loads(cli(root, "agents", "--json").stdout)
    assert [(r["agent"], r["verdict"], r["state"], r["message"], r["pid"], r["alive"]) for r in rows] == [
        ("writer", "ok", "degraded", "using cached feed", os.getpid(), True)
    ]
    table = cli(root, "agents").stdout
    assert table.splitlines()[0].split()[:3] == ["AGENT", "VERDICT", "STATE"] and "writer" in table


def test_fsqueue_run_beats_for_its_agent(root: Path, tmp_path: Path) -> None:
    """`fsqueue run --agent A` beats for A while it runs a task and leaves it `idle` afterwards."""
    queue = Queue(root, create=True)
    queue.enqueue({"n": 1}, id="t1")
    seen = tmp_path / "seen.json"
    script = tmp_path / "task.py"
    script.write_text(
        f"import pathlib, sys, shutil\nshutil.copy({str(root / 'status' / 'runner.heartbeat')!r}, {str(seen)!r})\n"
    )
    proc = cli(root, "run", "--agent", "runner", "--", sys.executable, str(script))
    assert proc.returncode == 0, proc.stderr
    during = json.loads(seen.read_text())
    assert during["state"] == "running" and "t1" in during["message"]
    assert queue.last_beat("runner").state == "idle"  # type: ignore[union-attr]
