"""Empty, truncated, garbage and foreign-format records (P11): reported or quarantined, never a crash or a wedge.

Each record kind -- lock (``tasks/<id>.lock``), task record (``records/<id>.json``), done and dead records --
is cut at every byte offset of a real record and replaced by assorted garbage. Afterwards the queue still
enqueues, claims and completes, and the damaged task is recovered or clearly reported.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from fault_injection import assert_queue_works

from fsqueue import Claim, Config, CorruptRecord, LeaseLost, LockHeld, ManualClock, Queue, TaskExists

#: A start time for queues whose tasks CLI subprocesses (on the real clock) must see as ready.
PAST = 1_600_000_000.0
RETRY_MAX = Config().retry_max

#: Damaged contents; ``{kind}`` is replaced by the record kind the file should hold.
GARBAGE: dict[str, bytes] = {
    "empty": b"",
    "binary": random.Random(11).randbytes(300),
    "nul-bytes": b"\0" * 64,
    "text": b"this is not json\n",
    "json-array": b"[1, 2, 3]\n",
    "json-null": b"null\n",
    "wrong-kind": b'{"format": "fsqueue/1", "kind": "owner"}\n',
    "fields-missing": b'{"format": "fsqueue/1", "kind": "{kind}"}\n',
}
#: Every kind of damage: the fixed garbage above, and a real record with a field of the wrong type.
DAMAGES = sorted([*GARBAGE, "field-wrong-type"])

# ---------------------------------------------------------------------------------------------- helpers


def run_cli(cmd: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``fsqueue`` command in a subprocess."""
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def assert_cli_ok(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 0 and a clean stderr; returns stdout."""
    assert result.returncode == 0, (result.args, result.returncode, result.stderr)
    assert result.stderr == "", result.stderr
    return result.stdout


def assert_cli_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 1, exactly one ``fsqueue: error:`` line on stderr, no traceback; returns that line."""
    assert result.returncode == 1, (result.args, result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fsqueue: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def quarantined(queue: Queue) -> list[str]:
    """Base names of what was moved into ``quarantine/``, each checked to have a note saying why."""
    moved = []
    for entry in sorted(Path(queue.layout.quarantine).iterdir()):
        if entry.name.endswith(".why"):
            continue
        note = entry.with_name(entry.name + ".why")
        assert note.exists(), f"{entry.name} was quarantined without a note saying why"
        original = os.path.basename(json.loads(note.read_text())["from"])
        assert entry.name.endswith(original), (entry.name, original)
        moved.append(original)
    return sorted(moved)


def why_notes(queue: Queue) -> list[dict[str, Any]]:
    """The parsed ``.why`` notes in ``quarantine/``."""
    directory = Path(queue.layout.quarantine)
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.why"))]


def corrupt_field(data: bytes) -> bytes:
    """A well-formed record whose first numeric field holds a string."""
    record = json.loads(data)
    for key in ("attempt", "attempts", "finished_at"):
        if key in record:
            record[key] = "three"
            return json.dumps(record).encode()
    raise AssertionError("no numeric field to damage")


def damaged(name: str, kind: str, real: bytes) -> bytes:
    """The bytes of garbage ``name`` for a record of ``kind`` whose intact form is ``real``."""
    if name == "field-wrong-type":
        return corrupt_field(real)
    return GARBAGE[name].replace(b"{kind}", kind.encode())


def finish(queue: Queue, task_id: str, state: str) -> None:
    """Claim ``task_id`` (the only ready task) and take it to done or dead."""
    claim = queue.claim("w")
    assert claim is not None and claim.id == task_id
    if state == "done":
        claim.complete({"result": 1})
    else:
        assert claim.fail("boom", retry=False) == "dead"


def final_path(queue: Queue, task_id: str, state: str) -> Path:
    return Path(queue.layout.done(task_id) if state == "done" else queue.layout.dead(task_id))


@pytest.fixture
def bulk_queue(root: Path, clock: ManualClock) -> Queue:
    """A queue without fsync, for tests that make hundreds of tasks."""
    return Queue(root, create=True, clock=clock, config=Config(durability="none"), rng=random.Random(7))


@pytest.fixture
def past_clock() -> ManualClock:
    """A clock in the past, so CLI subprocesses on the real clock see the tasks as ready."""
    return ManualClock(start=PAST)


@pytest.fixture
def cli_queue(root: Path, past_clock: ManualClock) -> Queue:
    """A queue on :func:`past_clock`, for tests that mix the API and the CLI."""
    return Queue(root, create=True, clock=past_clock, rng=random.Random(7))


# ------------------------------------------------------------------------------------------- task records


def test_task_record_truncated_at_every_offset_is_quarantined_by_claim(bulk_queue: Queue) -> None:
    """Every prefix of a task record is CorruptRecord for show; claim quarantines each and claims the next task."""
    queue = bulk_queue
    queue.enqueue("payload", id="c0000")
    length = len(Path(queue.layout.record("c0000")).read_bytes())
    # The last byte is the newline; dropping only it leaves a complete record, so cut before it.
    ids = ["c0000", *(queue.enqueue("payload", id=f"c{k:04d}") for k in range(1, length - 1))]
    for offset, task_id in enumerate(ids):
        path = Path(queue.layout.record(task_id))
        path.write_bytes(path.read_bytes()[:offset])
    queue.enqueue("good", id="good")

    for task_id in ids:
        with pytest.raises(CorruptRecord) as caught:
            queue.task(task_id)
        assert caught.value.path == queue.layout.record(task_id)
        assert queue.layout.record(task_id) in str(caught.value)
    assert [info.id for info in queue.tasks()] == ["good"]
    assert queue.status()["tasks"]["pending"] == len(ids) + 1

    claim = queue.claim("w")
    assert claim is not None and claim.id == "good"
    assert quarantined(queue) == sorted(f"{task_id}.json" for task_id in ids)
    assert sorted(note["from"] for note in why_notes(queue)) == sorted(queue.layout.record(i) for i in ids)
    assert all(note["reason"] for note in why_notes(queue))
    assert queue.status()["tasks"]["pending"] == 0  # no marker is left to trip the next claimer
    claim.complete()
    assert_queue_works(queue)


@pytest.mark.parametrize("garbage", DAMAGES)
def test_garbage_task_record_is_quarantined_by_claim(
    cli_queue: Queue, past_clock: ManualClock, fsqueue_cmd: list[str], cli_env: dict[str, str], garbage: str
) -> None:
    """A damaged task record: show exits 1 naming it, claim quarantines it with a note and claims the next task."""
    queue = cli_queue
    queue.enqueue("victim", id="victim")
    past_clock.advance(0.001)
    queue.enqueue("next", id="next")
    path = Path(queue.layout.record("victim"))
    path.write_bytes(damaged(garbage, "task", path.read_bytes()))

    with pytest.raises(CorruptRecord, match=re.escape(str(path))):
        queue.task("victim")
    assert_cli_error(run_cli(fsqueue_cmd, cli_env, "show", "victim"), str(path))
    assert [row["id"] for row in json.loads(assert_cli_ok(run_cli(fsqueue_cmd, cli_env, "tasks", "--json")))] == [
        "next"
    ]
    claimed = json.loads(assert_cli_ok(run_cli(fsqueue_cmd, cli_env, "claim", "--agent", "w")))
    assert claimed["id"] == "next"
    assert quarantined(queue) == ["victim.json"]
    (note,) = why_notes(queue)
    assert note["from"] == str(path) and str(path) in note["reason"]
    assert queue.status()["tasks"]["pending"] == 0
    queue.complete("next", claimed["token"], {"ok": True})
    assert_queue_works(queue)


# ----------------------------------------------------------------------------------------------------- locks


def test_lock_truncated_at_every_offset_is_reported_then_cleared_with_the_attempt_counted(
    bulk_queue: Queue, clock: ManualClock
) -> None:
    """Every prefix of a lock is verdict corrupt; clear --dead quarantines it and the task retries as attempt 2."""
    queue = bulk_queue
    queue.enqueue("payload", id="c0000")
    first = queue.claim("w")
    assert first is not None
    length = len(Path(queue.layout.lock("c0000")).read_bytes())
    claims: dict[str, Claim] = {"c0000": first}
    for offset in range(1, length - 1):
        task_id = queue.enqueue("payload", id=f"c{offset:04d}")
        claim = queue.claim("w")
        assert claim is not None and claim.id == task_id
        claims[task_id] = claim
    for offset, task_id in enumerate(sorted(claims)):
        os.truncate(queue.layout.lock(task_id), offset)

    infos = {info.task: info for info in queue.locks()}
    assert set(infos) == set(claims)
    for task_id, info in infos.items():
        assert info.verdict == "corrupt" and queue.layout.lock(task_id) in info.error
        assert queue.task(task_id).lock == info
    assert queue.status()["locks"] == {"corrupt": len(claims)}
    assert {info.id for info in queue.tasks("running")} == set(claims)
    with pytest.raises(LeaseLost):
        first.renew()
    with pytest.raises(LeaseLost):
        first.complete({"late": True})  # a holder whose lock is unreadable cannot commit

    cleared = queue.clear(dead=True)
    assert sorted(cleared) == sorted((task_id, "requeued", "corrupt") for task_id in claims)
    assert quarantined(queue) == sorted(f"{task_id}.lock" for task_id in claims)
    for task_id in claims:
        info = queue.task(task_id)
        assert (info.attempts, info.history[-1]["event"]) == (1, "broken")
        assert not os.path.lexists(queue.layout.lock(task_id))
    clock.advance(RETRY_MAX + 1)
    retried = {}
    while (claim := queue.claim("w")) is not None:
        retried[claim.id] = claim.attempt
        claim.complete()
    assert retried == dict.fromkeys(claims, 2)
    assert_queue_works(queue)


@pytest.mark.parametrize("garbage", DAMAGES)
def test_garbage_lock_is_quarantined_by_cli_clear(
    cli_queue: Queue, past_clock: ManualClock, fsqueue_cmd: list[str], cli_env: dict[str, str], garbage: str
) -> None:
    """A damaged lock shows as corrupt; ``clear <id>`` and ``clear --dead`` quarantine it and requeue the task."""
    queue = cli_queue
    paths = {}
    for task_id in ("by-id", "by-sweep"):
        queue.enqueue(task_id, id=task_id)
        claim = queue.claim("w")
        assert claim is not None and claim.id == task_id
        path = Path(queue.layout.lock(task_id))
        path.write_bytes(damaged(garbage, "lock", path.read_bytes()))
        paths[task_id] = path

    shown = assert_cli_ok(run_cli(fsqueue_cmd, cli_env, "show", "by-id"))
    assert "state     running" in shown and "lock      corrupt" in shown
    cleared = assert_cli_ok(run_cli(fsqueue_cmd, cli_env, "clear", "by-id"))
    assert cleared.strip() == "cleared by-id: owner corrupt, task requeued"
    swept = assert_cli_ok(run_cli(fsqueue_cmd, cli_env, "clear", "--dead"))
    assert swept.strip() == "cleared by-sweep: owner corrupt, task requeued"

    assert quarantined(queue) == ["by-id.lock", "by-sweep.lock"]
    assert sorted(note["from"] for note in why_notes(queue)) == sorted(str(p) for p in paths.values())
    past_clock.set(time.time() + RETRY_MAX + 1)  # beyond the back-off the CLI set on the real clock
    retried = {}
    while (claim := queue.claim("w")) is not None:
        retried[claim.id] = claim.attempt
        claim.complete()
    assert retried == {"by-id": 2, "by-sweep": 2}
    assert_queue_works(queue)


@pytest.mark.parametrize("variant", ["full-record", "minimal"])
def test_unknown_format_lock_is_listed_and_left_alone(
    cli_queue: Queue, fsqueue_cmd: list[str], cli_env: dict[str, str], variant: str
) -> None:
    """A lock in format fsqueue/99 is a live foreign owner: listed as unknown-format, never swept, only forced."""
    queue = cli_queue
    aged = PAST - 86400.0  # by its mtime, the lease ran out a day ago
    for task_id in ("foreign", "control"):
        queue.enqueue(task_id, id=task_id)
        claim = queue.claim("w")
        assert claim is not None and claim.id == task_id
        os.utime(queue.layout.lock(task_id), (aged, aged))
    path = Path(queue.layout.lock("foreign"))
    record = json.loads(path.read_bytes()) if variant == "full-record" else {"kind": "lock"}
    path.write_text(json.dumps({**record, "format": "fsqueue/99"}) + "\n")
    os.utime(path, (aged, aged))
    before = path.read_bytes(), path.stat().st_mtime

    infos = {info.task: info for info in queue.locks()}
    assert infos["foreign"].verdict == "unknown-format" and "fsqueue/99" in infos["foreign"].error
    assert infos["control"].verdict == "expired"  # the same age gets an ordinary lock swept
    assert queue.clear(dead=True, expired=True) == [("control", "requeued", "expired")]
    assert assert_cli_ok(run_cli(fsqueue_cmd, cli_env, "clear", "--dead", "--expired")) == ""
    assert (path.read_bytes(), path.stat().st_mtime) == before
    listed = json.loads(assert_cli_ok(run_cli(fsqueue_cmd, cli_env, "locks", "--json")))
    assert [(row["task"], row["verdict"]) for row in listed] == [("foreign", "unknown-format")]
    assert "lock      unknown-format" in assert_cli_ok(run_cli(fsqueue_cmd, cli_env, "show", "foreign"))

    with pytest.raises(LockHeld, match="use --force") as caught:
        queue.clear(["foreign"])
    assert "foreign" in str(caught.value) and "unknown-format" in str(caught.value)
    assert_cli_error(run_cli(fsqueue_cmd, cli_env, "clear", "foreign"), "foreign", "use --force")
    assert (path.read_bytes(), path.stat().st_mtime) == before

    assert queue.clear(["foreign"], force=True) == [("foreign", "requeued", "unknown-format")]
    assert quarantined(queue) == ["foreign.lock"]
    assert queue.task("foreign").attempts == 1
    assert_queue_works(queue)


# ------------------------------------------------------------------------------------- done and dead records


@pytest.mark.parametrize("state", ["done", "dead"])
def test_final_record_truncated_at_every_offset_is_reported_and_never_rerun(bulk_queue: Queue, state: str) -> None:
    """Every prefix of a done or dead record is CorruptRecord naming it; the task is not run or enqueued again."""
    queue = bulk_queue
    queue.enqueue("payload", id="c0000", max_attempts=1)
    finish(queue, "c0000", state)
    length = len(final_path(queue, "c0000", state).read_bytes())
    ids = ["c0000"]
    for offset in range(1, length - 1):
        ids.append(queue.enqueue("payload", id=f"c{offset:04d}", max_attempts=1))
        finish(queue, ids[-1], state)
    for offset, task_id in enumerate(ids):
        path = final_path(queue, task_id, state)
        path.write_bytes(path.read_bytes()[:offset])

    for task_id in ids:
        path = str(final_path(queue, task_id, state))
        with pytest.raises(CorruptRecord, match=re.escape(path)):
            queue.task(task_id)
        if state == "dead":
            with pytest.raises(CorruptRecord, match=re.escape(path)):
                queue.requeue(task_id)
        with pytest.raises(TaskExists, match=state):
            queue.enqueue("again", id=task_id)  # the commit point still wins
        assert queue.enqueue("again", id=task_id, if_absent=True) == task_id
    assert queue.tasks() == []
    assert queue.status()["tasks"][state] == len(ids)
    assert queue.claim("w") is None  # nothing is run a second time
    assert_queue_works(queue)


@pytest.mark.parametrize("state", ["done", "dead"])
@pytest.mark.parametrize("garbage", DAMAGES)
def test_garbage_final_record_is_reported_and_never_rerun(queue: Queue, garbage: str, state: str) -> None:
    """A damaged done or dead record is CorruptRecord naming it for show and requeue; nothing is re-run."""
    queue.enqueue("payload", id="victim", max_attempts=1)
    finish(queue, "victim", state)
    path = final_path(queue, "victim", state)
    path.write_bytes(damaged(garbage, state, path.read_bytes()))

    with pytest.raises(CorruptRecord, match=re.escape(str(path))):
        queue.task("victim")
    if state == "dead":
        with pytest.raises(CorruptRecord, match=re.escape(str(path))):
            queue.requeue("victim")
    with pytest.raises(TaskExists):
        queue.enqueue("again", id="victim")
    assert queue.tasks() == [] and queue.status()["tasks"][state] == 1
    assert queue.claim("w") is None
    assert_queue_works(queue)


# -------------------------------------------------------------------------------- inspection of a damaged queue


@pytest.fixture
def messy_queue(cli_queue: Queue) -> Queue:
    """One of every kind of damage beside a healthy pending task."""
    queue = cli_queue
    for task_id, state in (("empty-lock", "running"), ("foreign-lock", "running"), ("torn-done", "done")):
        queue.enqueue(task_id, id=task_id)
        if state == "running":
            assert queue.claim("w") is not None
        else:
            finish(queue, task_id, state)
    queue.enqueue("garbage-dead", id="garbage-dead", max_attempts=1)
    finish(queue, "garbage-dead", "dead")
    queue.enqueue("linked-lock", id="linked-lock")
    queue.enqueue("bad-record", id="bad-record")
    queue.enqueue("healthy", id="healthy")

    Path(queue.layout.lock("empty-lock")).write_bytes(b"")
    Path(queue.layout.lock("foreign-lock")).write_text('{"format": "fsqueue/99", "kind": "lock"}\n')
    done = Path(queue.layout.done("torn-done"))
    done.write_bytes(done.read_bytes()[:40])
    Path(queue.layout.dead("garbage-dead")).write_bytes(GARBAGE["binary"])
    Path(queue.layout.lock("linked-lock")).symlink_to(Path(queue.root).parent / "nowhere")
    Path(queue.layout.record("bad-record")).write_bytes(b"{not json")
    return queue


def test_cli_inspection_never_crashes_on_corrupt_files(
    messy_queue: Queue, fsqueue_cmd: list[str], cli_env: dict[str, str]
) -> None:
    """``tasks``, ``status`` and ``locks`` succeed on a damaged queue; ``show`` errors in one line or reports it."""
    commands = [
        ["tasks"],
        ["tasks", "--json"],
        ["tasks", "--state", "running"],
        ["tasks", "--state", "done"],
        ["status"],
        ["status", "--json"],
        ["locks"],
        ["locks", "--json"],
        *(["show", task_id] for task_id in ("empty-lock", "foreign-lock", "linked-lock", "healthy")),
    ]
    pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": cli_env}
    running = [subprocess.Popen([*fsqueue_cmd, *args], **pipes) for args in commands]  # independent: side by side
    outputs = {}
    for args, process in zip(commands, running, strict=True):
        stdout, stderr = process.communicate(timeout=120)
        outputs[" ".join(args)] = assert_cli_ok(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))

    verdicts = {row["task"]: row["verdict"] for row in json.loads(outputs["locks --json"])}
    assert verdicts == {"empty-lock": "corrupt", "foreign-lock": "unknown-format", "linked-lock": "corrupt"}
    status = json.loads(outputs["status --json"])
    assert status["locks"] == {"corrupt": 2, "unknown-format": 1}
    assert status["tasks"]["done"] == 1 and status["tasks"]["dead"] == 1
    states = {row["id"]: row["state"] for row in json.loads(outputs["tasks --json"])}
    assert states == {
        "empty-lock": "running",
        "foreign-lock": "running",
        "linked-lock": "running",
        "healthy": "pending",
    }
    assert "lock      corrupt" in outputs["show empty-lock"]
    assert "lock      unknown-format" in outputs["show foreign-lock"]
    assert "lock      corrupt" in outputs["show linked-lock"]

    layout = messy_queue.layout
    for task_id, path in (
        ("bad-record", layout.record("bad-record")),
        ("torn-done", layout.done("torn-done")),
        ("garbage-dead", layout.dead("garbage-dead")),
    ):
        assert_cli_error(run_cli(fsqueue_cmd, cli_env, "show", task_id), path)

    # The damage is repairable without a wedge: sweep corrupt locks, then the queue runs as usual.
    swept = assert_cli_ok(run_cli(fsqueue_cmd, cli_env, "clear", "--dead")).splitlines()
    assert sorted(swept) == [
        "cleared empty-lock: owner corrupt, task requeued",
        "cleared linked-lock: owner corrupt, task requeued",
    ]
    assert_queue_works(messy_queue)


# ----------------------------------------------------------------------------------- pathological but parsable


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"[" * 100_000, id="deeply-nested"),
        pytest.param(b"1" + b"0" * 400, id="integer-too-big-for-a-float"),
        pytest.param(b"NaN", id="nan-ttl"),
        pytest.param(b"Infinity", id="infinite-ttl"),
    ],
)
def test_pathological_task_record_is_quarantined_by_claim(queue: Queue, clock: ManualClock, content: bytes) -> None:
    """A task record that is deeply nested or holds an out-of-range number is quarantined like any corrupt one."""
    queue.enqueue("victim", id="victim")
    clock.advance(0.001)
    queue.enqueue("next", id="next")
    path = Path(queue.layout.record("victim"))
    real = path.read_bytes()
    if content.startswith(b"["):
        path.write_bytes(content)
    elif content.isdigit():
        path.write_bytes(real.replace(b'"enqueued_at":', b'"enqueued_at":' + content + b',"_":'))
    else:
        path.write_bytes(real.replace(b'"ttl":null', b'"ttl":' + content))
    with pytest.raises(CorruptRecord, match=re.escape(str(path))):
        queue.task("victim")
    assert [info.id for info in queue.tasks()] == ["next"]
    claim = queue.claim("w")
    assert claim is not None and claim.id == "next"
    assert quarantined(queue) == ["victim.json"]
    claim.complete()
    assert_queue_works(queue)


@pytest.mark.parametrize(
    "content", [pytest.param(b"[" * 100_000, id="deeply-nested"), pytest.param(b"1" + b"0" * 400, id="big-int")]
)
def test_pathological_lock_is_judged_corrupt_and_cleared(queue: Queue, content: bytes) -> None:
    """A lock that is deeply nested or holds an out-of-range number is verdict corrupt and clear --dead takes it."""
    queue.enqueue("victim", id="victim")
    assert queue.claim("w") is not None
    path = Path(queue.layout.lock("victim"))
    if content.startswith(b"["):
        path.write_bytes(content)
    else:
        path.write_bytes(path.read_bytes().replace(b'"claimed_at":', b'"claimed_at":' + content + b',"_":'))
    assert [(info.task, info.verdict) for info in queue.locks()] == [("victim", "corrupt")]
    assert queue.status()["locks"] == {"corrupt": 1}
    assert queue.clear(dead=True) == [("victim", "requeued", "corrupt")]
    assert_queue_works(queue)


@pytest.mark.parametrize(
    "content", [pytest.param(b"[" * 100_000, id="deeply-nested"), pytest.param(b"1" + b"0" * 400, id="big-int")]
)
def test_pathological_done_record_is_corrupt_record(queue: Queue, content: bytes) -> None:
    """A deeply nested or out-of-range done record is CorruptRecord for show and is skipped by tasks."""
    queue.enqueue("victim", id="victim")
    finish(queue, "victim", "done")
    path = final_path(queue, "victim", "done")
    if content.startswith(b"["):
        path.write_bytes(content)
    else:
        path.write_bytes(path.read_bytes().replace(b'"finished_at":', b'"finished_at":' + content + b',"_":'))
    assert queue.tasks() == []
    with pytest.raises(CorruptRecord, match=re.escape(str(path))):
        queue.task("victim")
    assert_queue_works(queue)
