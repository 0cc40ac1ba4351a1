"""Damaged auxiliary records (P11): every byte offset of a truncation, empty files, garbage, unknown versions.

``test_corrupt_files.py`` covers the task, lock, done and dead records. This file covers every other record
fsqueue writes and reads back (docs/protocol.md): heartbeats, ``halt.json``, alert records, the watchdog's
state, the owner index's ``owner.json``, degraded-mode memory (``.modes``) and breaker windows -- plus task,
done and dead records in an unknown format version. For each, what the documentation promises is checked
at every cut of a real record, in process; the command line is checked on a sample: a clear message (or
the documented fallback), never a traceback, and the queue keeps serving the other tasks.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_injection import assert_clean_exit, assert_one_line_error, assert_queue_works, run_cli

from fsqueue import Alerts, Config, CorruptRecord, ManualClock, PipelineHalted, Queue, Rule, TaskExists
from fsqueue._alerts import deliver
from fsqueue_watchdog import ActionLog, Sweeper, WatchdogSettings

#: Garbage of every shape; each record kind also gets every truncation of a real record of its own.
GARBAGE: dict[str, bytes] = {
    "empty": b"",
    "binary": random.Random(5).randbytes(200),
    "nul-bytes": b"\0" * 64,
    "text": b"not json at all\n",
    "json-array": b"[1, 2, 3]\n",
    "json-null": b"null\n",
    "wrong-kind": b'{"format": "fsqueue/1", "kind": "owner"}\n',
}
SETTINGS = WatchdogSettings(retention_done=None, retention_dead=None)


def damages(real: bytes) -> Iterator[tuple[str, bytes]]:
    """Every strict prefix of ``real`` (a trailing newline alone does not count) and every garbage."""
    body = real.rstrip(b"\n")
    for offset in range(len(body)):
        yield f"cut-{offset}", body[:offset]
    yield from GARBAGE.items()


def foreign_version(real: bytes) -> bytes:
    """``real`` as a future fsqueue would write it: the same fields, format ``fsqueue/2``."""
    return (json.dumps({**json.loads(real), "format": "fsqueue/2"}) + "\n").encode()


def sweeper_log() -> ActionLog:
    return ActionLog("text", io.StringIO())


def logged(log: ActionLog) -> str:
    assert isinstance(log.stream, io.StringIO)
    return log.stream.getvalue()


def manual(queue: Queue) -> ManualClock:
    """The queue's injected clock."""
    assert isinstance(queue.clock, ManualClock)
    return queue.clock


def heartbeat_file(queue: Queue, agent: str) -> Path:
    return Path(queue.layout.sub("status"), f"{agent}.heartbeat")


@pytest.fixture
def cli_env(root: Path) -> dict[str, str]:
    """Environment for CLI subprocesses pointing at the test queue."""
    env = dict(os.environ, FSQUEUE_ROOT=str(root))
    env.pop("FSQUEUE_CONFIG", None)
    return env


@pytest.fixture
def real_time_queue(root: Path) -> Queue:
    """A queue on a manual clock that starts at the real time: the CLI then agrees on every age."""
    return Queue(root, create=True, clock=ManualClock(), config=Config(durability="none"), rng=random.Random(7))


# -- heartbeats ---------------------------------------------------------------------------------------------


def test_heartbeat_damaged_at_every_offset_is_reported_and_never_fresh(real_time_queue: Queue) -> None:
    """A damaged heartbeat: last_beat raises naming it, agents says corrupt, upstream is degraded, sweeps go on."""
    queue = real_time_queue
    queue.beat("up")
    queue.beat("other")
    path = heartbeat_file(queue, "up")
    log = sweeper_log()
    sweeper = Sweeper(queue, SETTINGS, log, persist=False)
    for name, data in damages(path.read_bytes()):
        path.write_bytes(data)
        with pytest.raises(CorruptRecord, match=re.escape(str(path))):
            queue.last_beat("up")
        rows = {info.agent: info for info in queue.agents()}
        assert (rows["up"].verdict, rows["other"].verdict) == ("corrupt", "ok"), name
        assert str(path) in rows["up"].error
        mode = queue.upstream("up")
        assert mode.degraded and "unreadable" in mode.reason, (name, mode)
        sweeper.sweep()
        assert path.read_bytes() == data, "a reader or the watchdog changed the damaged heartbeat"
    assert "pass failed" not in logged(log)
    queue.beat("up")  # the agent's next beat replaces the damage
    assert queue.upstream("up").full


def test_heartbeat_in_an_unknown_format_is_reported_and_left_alone(
    real_time_queue: Queue, fsqueue_cmd: list[str], cli_env: dict[str, str]
) -> None:
    """A heartbeat in format fsqueue/2 is not fresh, is listed corrupt naming the format, and is not removed."""
    queue = real_time_queue
    queue.beat("up")
    path = heartbeat_file(queue, "up")
    data = foreign_version(path.read_bytes())
    path.write_bytes(data)
    with pytest.raises(CorruptRecord, match="fsqueue/2"):
        queue.last_beat("up")
    assert queue.upstream("up", agent="down").degraded
    rows = json.loads(assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "agents", "--json")))
    up = next(row for row in rows if row["agent"] == "up")
    assert up["verdict"] == "corrupt" and "fsqueue/2" in up["error"]
    assert run_cli(fsqueue_cmd, cli_env, "check", "up").returncode == 6
    assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "watchdog", "--once"))
    assert path.read_bytes() == data


@pytest.mark.parametrize("cut", [0, 1, 40, 150])
def test_cli_reports_a_truncated_heartbeat_without_a_traceback(
    real_time_queue: Queue, fsqueue_cmd: list[str], cli_env: dict[str, str], cut: int
) -> None:
    """`fsqueue agents` lists the truncated heartbeat as corrupt; `fsqueue check` says stale (exit 6)."""
    queue = real_time_queue
    queue.beat("up")
    queue.beat("other")
    path = heartbeat_file(queue, "up")
    path.write_bytes(path.read_bytes()[:cut])
    table = assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "agents"))
    assert re.search(r"^up\s+corrupt", table, re.MULTILINE) and re.search(r"^other\s+ok", table, re.MULTILINE)
    rows = json.loads(assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "agents", "--json")))
    assert {row["agent"]: row["verdict"] for row in rows} == {"up": "corrupt", "other": "ok"}
    stale = run_cli(fsqueue_cmd, cli_env, "check", "up")
    assert (stale.returncode, stale.stderr) == (6, "")


# -- halt.json ---------------------------------------------------------------------------------------------


def test_halt_file_damaged_at_every_offset_still_halts_and_resumes(queue: Queue) -> None:
    """A damaged halt.json halts claims and enqueues (fail closed) with a clear reason; resume lifts it."""
    queue.enqueue("waiting", id="waiting")
    queue.halt("maintenance")
    path = Path(queue.root, "halt.json")
    real = path.read_bytes()
    for name, data in [*damages(real), ("unknown-format", foreign_version(real))]:
        path.write_bytes(data)
        with pytest.raises(PipelineHalted) as caught:
            queue.claim("w")
        assert str(path) in str(caught.value) or name == "unknown-format", str(caught.value)
        with pytest.raises(PipelineHalted):
            queue.enqueue("refused")
        halted = queue.status()["halted"]
        assert halted is not None and (halted["id"] == "unreadable") == (name != "unknown-format"), name
        lifted = queue.resume()
        assert lifted is not None and queue.halted() is None
    assert queue.tasks() and [info.id for info in queue.tasks()] == ["waiting"]
    assert_queue_works(queue)


def test_cli_on_a_damaged_halt_file_halts_in_one_line_and_resumes(
    real_time_queue: Queue, fsqueue_cmd: list[str], cli_env: dict[str, str]
) -> None:
    """claim and enqueue exit 4 in one line; status shows HALTED; resume exits 0 and work goes on."""
    queue = real_time_queue
    queue.enqueue("waiting", id="waiting")
    queue.halt("maintenance")
    path = Path(queue.root, "halt.json")
    path.write_bytes(path.read_bytes()[:33])
    for args in (["claim", "--agent", "w"], ["enqueue", "{}"]):
        assert_one_line_error(run_cli(fsqueue_cmd, cli_env, *args), "not a valid halt record", str(path), code=4)
    assert "HALTED" in assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "status"))
    assert json.loads(assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "status", "--json")))["halted"]["id"] == (
        "unreadable"
    )
    assert "resumed" in assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "resume"))
    claimed = json.loads(assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "claim", "--agent", "w")))
    assert claimed["id"] == "waiting"


@pytest.mark.parametrize("when", ["1e300", "NaN"])
def test_halt_file_with_an_impossible_time_is_a_clear_halt(queue: Queue, when: str) -> None:
    """A halt.json whose time is out of range still halts with PipelineHalted, not a crash."""
    Path(queue.root, "halt.json").write_text(f'{{"id": "x", "at": {when}, "reason": "by hand"}}\n')
    with pytest.raises(PipelineHalted):
        queue.claim("w")


# -- alert records -----------------------------------------------------------------------------------------


@pytest.fixture
def alerting_queue(root: Path) -> Queue:
    """A queue whose breaker trips on a second output and whose alert command always fails (so it waits)."""
    config = Config(rules=(Rule("poster", 1, 600),), alerts=Alerts(command="exit 1"), durability="none")
    queue = Queue(root, create=True, clock=ManualClock(), config=config, rng=random.Random(7))
    queue.record_output("poster")
    assert queue.record_output("poster") is not None
    return queue


def only_alert(queue: Queue) -> Path:
    (name,) = [n for n in os.listdir(queue.layout.sub("alerts")) if n.endswith(".json")]
    return Path(queue.layout.sub("alerts"), name)


def test_alert_record_damaged_at_every_offset_is_left_for_a_human(alerting_queue: Queue) -> None:
    """A damaged alert record is neither sent, nor deleted, nor a crash of the sweep; once repaired it is retried."""
    queue = alerting_queue
    path = only_alert(queue)
    alert_id = path.name[: -len(".json")]
    real = path.read_bytes()
    log = sweeper_log()
    sweeper = Sweeper(queue, SETTINGS, log, persist=False)
    for _name, data in damages(real):
        path.write_bytes(data)
        assert deliver(queue, alert_id) is None  # unreadable: left alone
        sweeper.sweep()
        assert path.read_bytes() == data
    assert "pass failed" not in logged(log) and f"id={alert_id}" not in logged(log)
    path.write_bytes(real)
    manual(queue).advance(3600)  # past the retry back-off
    sweeper.sweep()
    assert f"alert id={alert_id} transport=command outcome=failed" in logged(log)  # retried: it is still wanted


def test_alert_record_in_an_unknown_format_is_not_deleted(alerting_queue: Queue) -> None:
    """An alert record in format fsqueue/2 survives the sweep: it stays pending or moves whole to alerts/sent/."""
    queue = alerting_queue
    path = only_alert(queue)
    path.write_bytes(foreign_version(path.read_bytes()))
    log = sweeper_log()
    Sweeper(queue, SETTINGS, log, persist=False).sweep()
    assert "pass failed" not in logged(log)
    assert path.exists() or Path(queue.layout.sub("alerts"), "sent", path.name).exists()


def test_pending_halt_alert_survives_a_damaged_halt_file(alerting_queue: Queue) -> None:
    """While halt.json is damaged the pipeline stays halted, and the trip's pending alert is kept for a retry."""
    queue = alerting_queue
    path = only_alert(queue)
    halt = Path(queue.root, "halt.json")
    halt.write_bytes(halt.read_bytes()[:20])
    Sweeper(queue, SETTINGS, sweeper_log(), persist=False).sweep()
    assert path.exists()


# -- the watchdog's state ----------------------------------------------------------------------------------


def test_watchdog_state_damaged_at_every_offset_is_replaced(queue: Queue, clock: ManualClock) -> None:
    """A damaged watchdog.state.json is read as no memory and rewritten whole by the next sweep."""
    queue.enqueue("t", id="t")
    assert queue.claim("w", lease_only=True) is not None
    Sweeper(queue, SETTINGS, sweeper_log()).sweep()
    path = Path(queue.root, "watchdog.state.json")
    real = path.read_bytes()
    for name, data in [*damages(real), ("unknown-format", foreign_version(real))]:
        path.write_bytes(data)
        log = sweeper_log()
        report = Sweeper(queue, SETTINGS, log).sweep()  # a one-shot watchdog: a new process every run
        assert report.breaks == {} and "error" not in logged(log), (name, logged(log))
        state = json.loads(path.read_bytes())
        assert state["kind"] == "watchdog-state" and state["format"] == "fsqueue/1"
    assert queue.task("t").state == "running"


def test_damaged_watchdog_state_costs_one_extra_sweep_and_no_more(
    queue: Queue, clock: ManualClock, fsqueue_cmd: list[str], cli_env: dict[str, str]
) -> None:
    """An expired lease is broken one one-shot sweep later than usual after its state was truncated; none crash."""
    queue.enqueue("t", id="t")
    assert queue.claim("w", lease_only=True) is not None
    clock.advance(3600)
    assert Sweeper(queue, SETTINGS, sweeper_log()).sweep().breaks == {}  # first sight of the expired lease
    path = Path(queue.root, "watchdog.state.json")
    path.write_bytes(path.read_bytes()[:25])
    assert Sweeper(queue, SETTINGS, sweeper_log()).sweep().breaks == {}  # the memory is gone: seen once more
    assert dict(Sweeper(queue, SETTINGS, sweeper_log()).sweep().breaks) == {"expired": 1}
    path.write_bytes(GARBAGE["binary"])
    assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "watchdog", "--once"))
    assert json.loads(path.read_bytes())["kind"] == "watchdog-state"


# -- the owner index -------------------------------------------------------------------------------------


@pytest.fixture
def dead_owner_claim(queue: Queue) -> Path:
    """A claim owned by a process that has exited; returns its owners/<key>/owner.json."""
    queue.enqueue("orphan", id="orphan")
    worker = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert queue.claim("w", owner_pid=worker.pid) is not None
    finally:
        worker.communicate(b"")  # it exits and is reaped: a dead owner, not a zombie
    (owner_json,) = Path(queue.layout.owners).glob("*/owner.json")
    return owner_json


def test_owner_record_damaged_at_every_offset_fails_closed(queue: Queue, dead_owner_claim: Path) -> None:
    """A damaged owner.json makes the sweep judge that owner foreign (its lease decides), never a crash."""
    path = dead_owner_claim
    real = path.read_bytes()
    log = sweeper_log()
    for name, data in [*damages(real), ("unknown-format", foreign_version(real))]:
        path.write_bytes(data)
        report = Sweeper(queue, SETTINGS, log, persist=False).sweep()
        assert report.breaks == {} and report.locks_by_owner["foreign"] == 1, (name, report)
    assert "error" not in logged(log)
    assert queue.lock_info("orphan").verdict == "dead"  # type: ignore[union-attr]  # the lock is the truth
    path.write_bytes(real)
    report = Sweeper(queue, SETTINGS, log, persist=False).sweep()
    assert dict(report.breaks) == {"dead": 1}
    assert queue.task("orphan").state == "delayed"


# -- degraded-mode memory and breaker windows ----------------------------------------------------------------


def test_modes_file_damaged_at_every_offset_starts_without_history(real_time_queue: Queue) -> None:
    """A damaged status/<agent>.modes is advisory: upstream() answers and rewrites it whole."""
    queue = real_time_queue
    assert queue.upstream("up", agent="down").degraded  # never beaten: degraded, remembered in down.modes
    path = Path(queue.layout.sub("status"), "down.modes")
    real = path.read_bytes()
    queue.beat("up")
    for name, data in damages(real):
        path.write_bytes(data)
        mode = queue.upstream("up", agent="down")
        assert mode.full, (name, mode)  # without the memory of being degraded, a fresh upstream is full at once
        assert json.loads(path.read_bytes())["format"] == "fsqueue/1"
    path.write_bytes(foreign_version(real))  # a newer version's memory: any answer, but an answer
    assert queue.upstream("up", agent="down") is not None
    assert json.loads(path.read_bytes())["format"] == "fsqueue/1"
    assert [info.verdict for info in queue.agents()] == ["ok", "ok"]  # .modes files are not heartbeats


@pytest.mark.parametrize("field", ["since", "fresh_since"])
def test_modes_file_with_a_field_of_the_wrong_type_starts_without_history(real_time_queue: Queue, field: str) -> None:
    """A .modes file whose remembered times are not numbers is treated like a damaged one: no history."""
    queue = real_time_queue
    queue.beat("up")
    entry = {"degraded": True, "since": 1.0, "fresh_since": 2.0, field: "yesterday"}
    record = {"format": "fsqueue/1", "kind": "modes", "agent": "down", "upstreams": {"up": entry}}
    Path(queue.layout.sub("status"), "down.modes").write_text(json.dumps(record) + "\n")
    assert queue.upstream("up", agent="down") is not None


def test_breaker_window_damaged_at_every_offset_counts_afresh(root: Path, clock: ManualClock) -> None:
    """A damaged breaker window is read as no outputs: counting goes on, nothing trips, the file is rewritten."""
    queue = Queue(root, create=True, clock=clock, config=Config(rules=(Rule("poster", 3, 600),)))
    queue.record_output("poster", 3)  # at the limit: one more in the window would trip
    (path,) = Path(queue.layout.sub("breaker")).glob("*.window")
    real = path.read_bytes()
    for name, data in damages(real):
        path.write_bytes(data)
        assert queue.record_output("poster") is None, name
        assert json.loads(path.read_bytes())["stamps"] == [clock.now()], name
    assert queue.halted() is None
    assert_queue_works(queue)


# -- task, done and dead records in an unknown format version -----------------------------------------------


def test_task_record_in_an_unknown_format_is_skipped_and_left_alone(
    real_time_queue: Queue, fsqueue_cmd: list[str], cli_env: dict[str, str]
) -> None:
    """Claims skip a fsqueue/2 task record and keep it and its marker; show names the format; nothing crashes."""
    queue = real_time_queue
    queue.enqueue("theirs", id="theirs")
    manual(queue).advance(0.001)
    queue.enqueue("ours", id="ours")
    path = Path(queue.layout.record("theirs"))
    data = foreign_version(path.read_bytes())
    path.write_bytes(data)

    claim = queue.claim("w")
    assert claim is not None and claim.id == "ours"
    assert queue.claim("w") is None
    with pytest.raises(CorruptRecord, match="fsqueue/2"):
        queue.task("theirs")
    with pytest.raises(TaskExists):
        queue.enqueue("again", id="theirs")
    assert_one_line_error(run_cli(fsqueue_cmd, cli_env, "show", "theirs"), str(path), "fsqueue/2")
    listed = json.loads(assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "tasks", "--json")))
    assert [row["id"] for row in listed] == ["ours"]
    assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "watchdog", "--once"))
    assert path.read_bytes() == data and os.listdir(queue.layout.quarantine) == []
    assert queue.status()["tasks"]["pending"] == 1  # its marker is kept for the version that can read it
    claim.complete()


@pytest.mark.parametrize("state", ["done", "dead"])
def test_final_record_in_an_unknown_format_is_reported_and_never_rerun(
    real_time_queue: Queue, fsqueue_cmd: list[str], cli_env: dict[str, str], state: str
) -> None:
    """A fsqueue/2 done or dead record still wins: the id stays taken, show names the format, nothing reruns."""
    queue = real_time_queue
    queue.enqueue("t", id="t", max_attempts=1)
    claim = queue.claim("w")
    assert claim is not None
    if state == "done":
        claim.complete("r")
    else:
        claim.fail("boom")
    path = Path(queue.layout.done("t") if state == "done" else queue.layout.dead("t"))
    path.write_bytes(foreign_version(path.read_bytes()))
    assert_one_line_error(run_cli(fsqueue_cmd, cli_env, "show", "t"), str(path), "fsqueue/2")
    with pytest.raises(TaskExists):
        queue.enqueue("again", id="t")
    assert queue.claim("w") is None
    assert json.loads(assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "status", "--json")))["tasks"][state] == 1
    assert_queue_works(queue)


# -- the command line on a root where every auxiliary record is damaged ---------------------------------------


def test_cli_on_a_root_with_every_auxiliary_record_damaged(
    root: Path, fsqueue_cmd: list[str], cli_env: dict[str, str]
) -> None:
    """Inspection commands and one-shot sweeps exit 0, claim and enqueue refuse in one line, resume recovers."""
    config = Config(rules=(Rule("poster", 1, 600),), alerts=Alerts(command="exit 1"))
    queue = Queue(root, create=True, config=config)
    queue.enqueue("waiting", id="waiting")
    queue.enqueue("held", id="held", priority=5)
    assert queue.claim("w", lease_only=True) is not None
    queue.beat("up")
    queue.upstream("up", agent="down")
    queue.record_output("poster")
    assert queue.record_output("poster") is not None  # trips: halt.json and a pending alert
    assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "watchdog", "--once"))  # writes watchdog.state.json
    damaged = [
        heartbeat_file(queue, "up"),
        Path(queue.layout.sub("status"), "down.modes"),
        Path(root, "halt.json"),
        only_alert(queue),
        Path(root, "watchdog.state.json"),
        *Path(queue.layout.sub("breaker")).glob("*.window"),
    ]
    for path in damaged:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])

    for args in (
        ["tasks", "--json"],
        ["locks", "--json"],
        ["status"],
        ["status", "--json"],
        ["agents"],
        ["agents", "--json"],
        ["show", "held"],
        ["watchdog", "--once"],
        ["watchdog", "--once"],
    ):
        assert_clean_exit(run_cli(fsqueue_cmd, cli_env, *args))
    for args in (["claim", "--agent", "w"], ["enqueue", "{}"]):
        assert_one_line_error(run_cli(fsqueue_cmd, cli_env, *args), "pipeline halted", code=4)
    assert run_cli(fsqueue_cmd, cli_env, "check", "up").returncode == 6
    assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "resume"))
    claimed = json.loads(assert_clean_exit(run_cli(fsqueue_cmd, cli_env, "claim", "--agent", "w")))
    assert claimed["id"] == "waiting"
