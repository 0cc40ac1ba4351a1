"""Edges of recovery: retries after a crash, races with the repair pass, formats, bounds, slow alerts.

Each test pins one rule at the seam where it was once broken. Waits are bounded by an event, a pipe
or a thread join with a timeout, so a regression fails the test instead of hanging it.
"""

from __future__ import annotations

import errno
import io
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from blocking import TIMEOUT, finishes

import fsqueue_watchdog._repair as repair_module
from fsqueue import Alerts, Claim, Config, InvalidPayload, LeaseLost, ManualClock, Queue
from fsqueue import _transitions as transitions
from fsqueue._alerts import create_alert, deliver
from fsqueue._guard import guarded
from fsqueue._layout import GUARD_SHARDS, guard_shard
from fsqueue._queue import MAX_ATTEMPTS, MAX_JSON_DEPTH, MAX_SECONDS
from fsqueue_watchdog import ActionLog, Sweeper, WatchdogSettings

DAY = 86400.0


class Crash(BaseException):
    """The process dies here: raised by a patched seam, caught by nothing in fsqueue."""


def claimed(queue: Queue, **options: Any) -> Claim:
    claim = queue.claim("w", **options)
    assert claim is not None
    return claim


def action_log() -> ActionLog:
    return ActionLog("text", io.StringIO())


def logged(log: ActionLog) -> str:
    assert isinstance(log.stream, io.StringIO)
    return log.stream.getvalue()


def events(queue: Queue, task_id: str) -> list[str]:
    return [str(event["event"]) for event in queue.task(task_id).history]


def nested(depth: int) -> object:
    """A list nested ``depth`` levels deep, built without recursion."""
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


# -- complete retried after a crash past its commit point -----------------------------------------


def crash_past_commit(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> Claim:
    """Claim job-1 and die right after its done record is published (lock and record left behind)."""
    queue.enqueue("x", id="job-1")
    claim = claimed(queue)

    def die(path: str) -> bool:
        raise Crash(path)

    with monkeypatch.context() as patch:
        patch.setattr(transitions, "unlink_quietly", die)
        with pytest.raises(Crash):
            claim.complete({"by": "first"})
    assert os.path.exists(queue.layout.done("job-1"))
    assert os.path.exists(queue.layout.lock("job-1"))
    return claim


def test_complete_retried_after_crash_past_commit_is_a_no_op(
    queue: Queue, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same token's retried complete succeeds, cleans up, and keeps the first result, counted once."""
    claim = crash_past_commit(queue, monkeypatch)
    retry = Queue(queue.root, clock=clock)
    retry.complete("job-1", claim.token, {"by": "retry"})
    assert not os.path.lexists(queue.layout.lock("job-1"))
    assert not os.path.lexists(queue.layout.record("job-1"))
    info = queue.task("job-1")
    assert (info.state, info.result, info.attempts) == ("done", {"by": "first"}, 1)
    assert events(queue, "job-1") == ["enqueued", "completed"]


def test_fail_after_crash_past_commit_is_refused(
    queue: Queue, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fail with the token of a claim that already committed raises LeaseLost; the task stays done."""
    claim = crash_past_commit(queue, monkeypatch)
    with pytest.raises(LeaseLost):
        Queue(queue.root, clock=clock).fail("job-1", claim.token, "boom")
    info = queue.task("job-1")
    assert (info.state, info.result, info.attempts) == ("done", {"by": "first"}, 1)
    assert not os.path.lexists(queue.layout.lock("job-1"))
    clock.advance(DAY)
    assert queue.claim("w") is None


KILLED_AFTER_COMMIT = """
import os, signal, sys
import fsqueue._transitions as transitions
def die(path):  # the first cleanup step after the done record is published
    os.kill(os.getpid(), signal.SIGKILL)
transitions.unlink_quietly = die
from fsqueue.cli import main
sys.argv = ["fsqueue", *sys.argv[1:]]
main()
"""


def test_cli_complete_killed_past_commit_then_retried(
    queue: Queue, fsqueue_cmd: list[str], cli_env: dict[str, str]
) -> None:
    """`fsqueue complete` SIGKILLed past its commit: the retry exits 0, a later fail exits 5 (lease lost)."""
    queue.enqueue("x", id="job-1")
    token = claimed(queue, lease_only=True).token

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=cli_env, capture_output=True, text=True, timeout=30)

    complete = ("complete", "job-1", '{"ok": 1}', "--token", token)
    killed = run(sys.executable, "-c", KILLED_AFTER_COMMIT, *complete)
    assert killed.returncode == -signal.SIGKILL
    assert os.path.exists(queue.layout.done("job-1")) and os.path.exists(queue.layout.lock("job-1"))
    retried = run(*fsqueue_cmd, *complete)
    assert retried.returncode == 0, retried.stderr
    refused = run(*fsqueue_cmd, "fail", "job-1", "--token", token)
    assert refused.returncode == 5
    assert "lost" in refused.stderr and "Traceback" not in refused.stderr
    info = queue.task("job-1")
    assert (info.state, info.result, info.attempts) == ("done", {"ok": 1}, 1)


# -- prune of an old dead letter racing an operator's requeue --------------------------------------


def _requeue(queue: Queue) -> None:
    queue.requeue("job-1")


def _requeue_and_bury_again(queue: Queue) -> None:
    queue.requeue("job-1")
    assert claimed(queue).fail("boom again") == "dead"


@pytest.mark.parametrize(
    ("late", "state"), [(_requeue, "pending"), (_requeue_and_bury_again, "dead")], ids=["requeued", "buried-again"]
)
def test_prune_racing_a_requeue_keeps_the_requeued_task(
    queue: Queue, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, late: Callable[[Queue], None], state: str
) -> None:
    """A requeue landing between the prune's age scan and its guard wins: the task is not deleted."""
    queue.enqueue({"n": 1}, id="job-1", max_attempts=1)
    assert claimed(queue).fail("boom") == "dead"
    old = clock.now() - 31 * DAY
    os.utime(queue.layout.dead("job-1"), (old, old))
    fired: list[str] = []

    def guarded_after_late_action(path: str, **kwargs: Any) -> AbstractContextManager[bool]:
        if path == queue.layout.guard("job-1") and not fired:
            fired.append(path)
            late(queue)  # the operator acts after the prune judged the dead letter old, before it locks
        return guarded(path, **kwargs)

    monkeypatch.setattr(repair_module, "guarded", guarded_after_late_action)
    log = action_log()
    Sweeper(queue, WatchdogSettings(retention_dead=30 * DAY), log, persist=False).sweep()
    assert fired
    assert "prune" not in logged(log)
    assert queue.task("job-1").state == state
    if state == "pending":
        assert claimed(queue).id == "job-1"
    else:
        assert os.path.exists(queue.layout.dead("job-1"))


# -- record formats: foreign is left alone, no format at all is corrupt -----------------------------


@pytest.mark.parametrize("fmt", ["fsqueue/2", "fsqueue/99"])
def test_repair_pass_leaves_foreign_format_records_alone(queue: Queue, fmt: str) -> None:
    """A task record written by another fsqueue version is neither quarantined nor re-indexed."""
    record = Path(queue.layout.record("v2-job"))
    data = json.dumps({"format": fmt, "kind": "task", "id": "v2-job", "payload": 1}).encode()
    record.write_bytes(data)
    log = action_log()
    for _ in range(2):
        Sweeper(queue, WatchdogSettings(), log).sweep()
    assert record.read_bytes() == data
    assert os.listdir(queue.layout.quarantine) == []
    assert logged(log) == ""
    assert queue.claim("w") is None


MISSING = object()


@pytest.mark.parametrize(
    "fmt",
    [MISSING, None, 1, ["fsqueue/1"], "", "filelock/2"],
    ids=["missing", "null", "number", "list", "empty", "other-tool"],
)
def test_lock_without_a_format_string_is_corrupt_not_foreign(queue: Queue, clock: ManualClock, fmt: object) -> None:
    """A lock lacking a string "fsqueue/..." format is corrupt: broken once expired, its task retried."""
    queue.enqueue("x", id="job-1")
    claimed(queue, lease_only=True, ttl=10)
    lock = Path(queue.layout.lock("job-1"))
    lock.unlink()
    fields: dict[str, object] = {"token": "x"} if fmt is MISSING else {"format": fmt, "token": "x"}
    lock.write_text(json.dumps(fields))
    os.utime(lock, (clock.now() - 1, clock.now() - 1))
    info = queue.lock_info("job-1")
    assert info is not None and info.verdict == "corrupt"
    sweeper = Sweeper(queue, WatchdogSettings(), action_log(), persist=False)
    assert [dict(sweeper.sweep().breaks) for _ in range(2)] == [{}, {"corrupt": 1}]
    assert not lock.exists()
    clock.advance(3600)
    claim = claimed(queue)
    assert (claim.id, claim.attempt) == ("job-1", 2)


# -- the renewer can be stopped and started again ---------------------------------------------------


def test_renewer_restarted_after_stop_renews_again(
    queue: Queue, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim.stop_renewing() then start_renewing() runs a new renewer that extends the lease."""
    queue.enqueue("x", id="job-1")
    claim = claimed(queue, ttl=60)
    renewed = threading.Event()
    real_renew = claim.renew

    def renew(ttl: float | None = None) -> float:
        expires = real_renew(ttl)
        renewed.set()
        return expires

    monkeypatch.setattr(claim, "renew", renew)
    claim.start_renewing(interval=0.01)
    try:
        assert renewed.wait(TIMEOUT)
        claim.stop_renewing()
        renewed.clear()
        clock.advance(30)
        claim.start_renewing(interval=0.01)
        assert renewed.wait(TIMEOUT), "no renewal after start_renewing() following stop_renewing()"
    finally:
        claim.stop_renewing()
    assert claim.expires_at == clock.now() + 60
    assert os.stat(queue.layout.lock("job-1")).st_mtime == claim.expires_at


# -- bounds checked at enqueue and claim ------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"ttl": 1e18}, id="ttl-huge"),
        pytest.param({"ttl": MAX_SECONDS * 1.001}, id="ttl-past-bound"),
        pytest.param({"delay": 1e18}, id="delay-huge"),
        pytest.param({"delay": MAX_SECONDS * 1.001}, id="delay-past-bound"),
        pytest.param({"max_attempts": 10**18}, id="attempts-huge"),
        pytest.param({"max_attempts": MAX_ATTEMPTS + 1}, id="attempts-past-bound"),
    ],
)
def test_enqueue_refuses_numbers_beyond_their_bounds(queue: Queue, options: dict[str, Any]) -> None:
    """A ttl, delay or max_attempts its own reader would reject is refused up front; nothing is written."""
    with pytest.raises(InvalidPayload, match=next(iter(options))):
        queue.enqueue("x", id="job-1", **options)
    assert os.listdir(queue.layout.records) == []
    assert queue.claim("w") is None


def test_claim_refuses_ttl_beyond_its_bound(queue: Queue) -> None:
    """A claim ttl beyond the bound is refused before any lock is written; the task stays claimable."""
    queue.enqueue("x", id="job-1")
    with pytest.raises(InvalidPayload, match="ttl"):
        queue.claim("w", ttl=1e18)
    assert queue.task("job-1").state == "pending"
    assert claimed(queue).id == "job-1"


def test_numbers_at_their_bounds_round_trip(queue: Queue) -> None:
    """Values exactly at the bounds are stored, read back, claimed, renewed and committed."""
    queue.enqueue("x", id="job-1", ttl=MAX_SECONDS, max_attempts=MAX_ATTEMPTS)
    queue.enqueue("x", id="later", delay=MAX_SECONDS)
    assert (queue.task("job-1").state, queue.task("later").state) == ("pending", "delayed")
    claim = claimed(queue)
    info = queue.lock_info("job-1")
    assert info is not None and info.verdict == "alive"
    claim.renew()
    claim.complete("ok")
    assert queue.task("job-1").state == "done"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_enqueue_refuses_payloads_nested_too_deep(queue: Queue, depth: int) -> None:
    """A payload nested deeper than the bound is InvalidPayload (never RecursionError); nothing is written."""
    with pytest.raises(InvalidPayload, match="nested"):
        queue.enqueue(nested(depth), id="deep")
    assert os.listdir(queue.layout.records) == []
    assert queue.claim("w") is None


def test_enqueue_refuses_circular_payload(queue: Queue) -> None:
    """A list that contains itself is InvalidPayload, not RecursionError."""
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(InvalidPayload):
        queue.enqueue(loop)


def test_payload_and_result_at_the_depth_bound_round_trip(queue: Queue) -> None:
    """A payload and result nested exactly to the bound are claimed, committed and shown back intact."""
    deepest = nested(MAX_JSON_DEPTH)
    queue.enqueue(deepest, id="deep")
    claim = claimed(queue)
    assert claim.payload == deepest
    with pytest.raises(InvalidPayload):
        claim.complete(nested(MAX_JSON_DEPTH + 1))
    claim.complete(deepest)
    info = queue.task("deep")
    assert (info.state, info.result) == ("done", deepest)


@pytest.mark.parametrize("depth", [300, 100_000])
def test_cli_enqueue_refuses_payloads_nested_too_deep(
    queue: Queue, fsqueue_cmd: list[str], cli_env: dict[str, str], depth: int
) -> None:
    """`fsqueue enqueue -` with a deeply nested payload exits 1 with a one-line error, never a traceback."""
    result = subprocess.run(
        [*fsqueue_cmd, "enqueue", "-"],
        input="[" * depth + "]" * depth,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "payload" in result.stderr
    assert os.listdir(queue.layout.records) == []


# -- alert delivery never holds a task guard --------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """An alert command that reports its start on a FIFO, then blocks until released."""

    command: str
    started: int
    """A descriptor that becomes readable once the command runs."""
    release: Callable[[], None]


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    """A gated alert command; released at teardown whatever the test did."""
    started, gate_fifo = tmp_path / "started.fifo", tmp_path / "gate.fifo"
    os.mkfifo(started)
    os.mkfifo(gate_fifo)
    # Held open read-write: the command's opens never block, and it sees EOF on the gate once we close it.
    started_fd = os.open(started, os.O_RDWR | os.O_NONBLOCK)
    gate_fd = os.open(gate_fifo, os.O_RDWR | os.O_NONBLOCK)
    released: list[bool] = []

    def release() -> None:
        if not released:
            released.append(True)
            os.close(gate_fd)
            # A command not yet past its open of the gate would now wait forever for a writer: be one, briefly.
            try:
                os.close(os.open(gate_fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as exc:  # ENXIO: no reader at all, nobody to wake
                if exc.errno != errno.ENXIO:
                    raise

    # The gate is opened before the start is announced: a release that follows the announcement always
    # reaches a command already holding the gate open, so it sees EOF (opening it afterwards would block).
    command = f"exec 3< {shlex.quote(str(gate_fifo))}; printf x > {shlex.quote(str(started))}; cat <&3 > /dev/null"
    try:
        yield Gate(command, started_fd, release)
    finally:
        release()
        os.close(started_fd)


def test_slow_alert_delivery_never_blocks_a_task_in_its_old_guard_shard(
    queue: Queue, clock: ManualClock, gate: Gate
) -> None:
    """While an alert command runs, renew of a task sharing its old guard shard, and every shard, stays free."""
    alert_id = "down-scraper-1800000000000000"
    # Delivery once locked guards/<md5("alert:<id>")[:2]>: the task most likely to wait is one in that shard.
    task_id = next(f"job-{i}" for i in range(100_000) if guard_shard(f"job-{i}") == guard_shard(f"alert:{alert_id}"))
    queue.enqueue("x", id=task_id)
    claim = claimed(queue, ttl=60)
    alerting = Queue(queue.root, clock=clock, config=Config(alerts=Alerts(command=gate.command)))
    assert create_alert(alerting, alert_id, kind="heartbeat-down", text="scraper is down", fields={})
    delivery: list[dict[str, str] | None] = []
    deliverer = threading.Thread(target=lambda: delivery.append(deliver(alerting, alert_id)), daemon=True)
    deliverer.start()
    try:
        ready, _, _ = select.select([gate.started], [], [], TIMEOUT)
        assert ready, "the alert command never started"
        clock.advance(10)
        assert finishes(lambda: queue.renew(task_id, claim.token), unblock=gate.release) == clock.now() + 60
        for shard in range(GUARD_SHARDS):
            with guarded(os.path.join(queue.root, "guards", f"{shard:02x}"), blocking=False) as held:
                assert held, f"guard shard {shard:02x} is held during alert delivery"
    finally:
        gate.release()
        deliverer.join(TIMEOUT)
    assert not deliverer.is_alive()
    assert delivery == [{"command": "sent"}]
