"""Bad input is refused, not obeyed (P11): task ids, payloads, planted symlinks, broken, read-only and full roots.

Every case ends by checking that the queue is not wedged: a fresh task still goes through enqueue, claim
and complete, and the task that met the bad input is recovered or clearly reported.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fault_injection import (
    NOBODY,
    assert_one_line_error,
    assert_queue_works,
    drop_dac_capabilities,
    need_root,
    python_runs,
    run_cli,
    skip_or_fail,
    snapshot,
)

from fsqueue import (
    Claim,
    Config,
    CorruptRecord,
    InvalidPayload,
    InvalidTaskId,
    LeaseLost,
    ManualClock,
    Queue,
    QueueRootError,
    StorageError,
    TaskNotFound,
)
from fsqueue._index import entry_for
from fsqueue._layout import SUBDIRS
from fsqueue.cli import cli

TOKEN = "0" * 32
#: Owner of a locked-down tree: neither the test user nor nobody, so neither may write to it.
OTHER_UID = 4242
#: A start time for queues whose tasks CLI subprocesses (on the real clock) must see as ready.
PAST = 1_600_000_000.0

# ---------------------------------------------------------------------------------------------- helpers


def markers(queue: Queue) -> list[str]:
    """Names of the regular marker files under ``ready/``."""
    found = []
    for dirpath, _, filenames in os.walk(queue.layout.ready):
        found += [name for name in filenames if os.path.isfile(os.path.join(dirpath, name))]
    return found


def quarantined(queue: Queue) -> list[str]:
    """Names in ``quarantine/`` without their ``.why`` notes."""
    return sorted(name for name in os.listdir(queue.layout.quarantine) if not name.endswith(".why"))


def why_note(queue: Queue, name: str) -> dict[str, Any]:
    """The parsed ``.why`` note beside a quarantined entry."""
    note: dict[str, Any] = json.loads(Path(queue.layout.quarantine, name + ".why").read_text())
    return note


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        skip_or_fail(f"`mount {' '.join(args)}` failed: {result.stderr.strip()}")


def umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, text=True, check=True)


@contextmanager
def read_only_bind(path: Path) -> Iterator[None]:
    """Make ``path`` a read-only bind mount of itself (EROFS even for root) for the ``with`` body."""
    need_root("a read-only bind mount")
    mount("--bind", str(path), str(path))
    try:
        mount("-o", "remount,ro,bind", str(path))
        yield
    finally:
        umount(path)


# ----------------------------------------------------------------------------------------------- task ids

#: (bad id, what the refusal must say, test id)
BAD_IDS: list[tuple[object, str, str]] = [
    ("a/b", "must start with a letter or digit", "slash"),
    ("../escape", "must start with a letter or digit", "dotdot-slash"),
    ("..", "must start with a letter or digit", "dotdot"),
    ("a\x00b", "must start with a letter or digit", "nul"),
    (".hidden", "must start with a letter or digit", "leading-dot"),
    ("x" * 300, "the limit is 128", "300-chars"),
    ("", "use letters, digits", "empty"),
    ("has space", "must start with a letter or digit", "space"),
    (42, "must be a string", "int"),
    (b"bytes", "must be a string", "bytes"),
]
#: What exec's argv can carry: strings without NUL.
CLI_BAD_IDS = [(bad, hint) for bad, hint, _ in BAD_IDS if isinstance(bad, str) and "\x00" not in bad]

API_OPERATIONS: dict[str, Callable[[Queue, Any], object]] = {
    "enqueue": lambda q, task_id: q.enqueue({"x": 1}, id=task_id),
    "show": lambda q, task_id: q.task(task_id),
    "clear": lambda q, task_id: q.clear([task_id]),
    "requeue": lambda q, task_id: q.requeue(task_id),
    "renew": lambda q, task_id: q.renew(task_id, TOKEN),
    "complete": lambda q, task_id: q.complete(task_id, TOKEN, {"r": 1}),
    "fail": lambda q, task_id: q.fail(task_id, TOKEN, "boom"),
}

CLI_OPERATIONS: dict[str, Callable[[str], list[str]]] = {
    "enqueue": lambda task_id: ["enqueue", "--id", task_id, "{}"],
    "show": lambda task_id: ["show", task_id],
    "clear": lambda task_id: ["clear", task_id],
    "requeue": lambda task_id: ["requeue", task_id],
    "renew": lambda task_id: ["renew", task_id, "--token", TOKEN],
    "complete": lambda task_id: ["complete", task_id, "--token", TOKEN],
    "fail": lambda task_id: ["fail", task_id, "--token", TOKEN],
}


@pytest.mark.parametrize("operation", sorted(API_OPERATIONS))
@pytest.mark.parametrize(("bad_id", "hint"), [pytest.param(bad, hint, id=name) for bad, hint, name in BAD_IDS])
def test_api_refuses_bad_task_id(queue: Queue, tmp_path: Path, operation: str, bad_id: object, hint: str) -> None:
    """Every id-taking API call raises InvalidTaskId that says what is allowed, and writes nothing."""
    queue.enqueue("bystander", id="bystander")
    before = snapshot(tmp_path)
    with pytest.raises(InvalidTaskId) as caught:
        API_OPERATIONS[operation](queue, bad_id)
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert hint in message
    if isinstance(bad_id, str) and 0 < len(bad_id) <= 128:
        assert repr(bad_id) in message  # the refused id is named
    assert snapshot(tmp_path) == before  # nothing created inside or outside the root
    assert_queue_works(queue)


@pytest.mark.parametrize("operation", sorted(CLI_OPERATIONS))
def test_cli_refuses_bad_task_id(
    queue: Queue, tmp_path: Path, fsqueue_cmd: list[str], cli_env: dict[str, str], operation: str
) -> None:
    """Every id-taking command exits 1 with one ``fsqueue: error:`` line per bad id, and writes nothing."""
    queue.enqueue("bystander", id="bystander")
    before = snapshot(tmp_path)
    # The invocations are independent, so they run side by side.
    running = [
        (bad_id, hint, subprocess.Popen([*fsqueue_cmd, *CLI_OPERATIONS[operation](bad_id)], env=cli_env, **_PIPES))
        for bad_id, hint in CLI_BAD_IDS
    ]
    for bad_id, hint, process in running:
        stdout, stderr = process.communicate(timeout=120)
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        line = assert_one_line_error(result, hint)
        assert stdout == "", bad_id
        if 0 < len(bad_id) <= 128:
            assert repr(bad_id) in line
    assert snapshot(tmp_path) == before
    assert_queue_works(queue)


_PIPES: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}


@pytest.mark.parametrize("operation", sorted(CLI_OPERATIONS))
def test_cli_refuses_task_id_with_nul(queue: Queue, tmp_path: Path, root: Path, operation: str) -> None:
    """A NUL cannot pass through exec's argv, so the click command itself gets one: still exit 1, one line."""
    before = snapshot(tmp_path)
    result = CliRunner().invoke(
        cli, CLI_OPERATIONS[operation]("a\x00b"), env={"FSQUEUE_ROOT": str(root)}, catch_exceptions=False
    )
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fsqueue: error: task id 'a\\x00b' is refused"), result.stderr
    assert snapshot(tmp_path) == before
    assert_queue_works(queue)


# ---------------------------------------------------------------------------------------------- payloads


def _circular() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


BAD_PAYLOADS = [
    pytest.param(object(), id="object"),
    pytest.param(float("nan"), id="nan"),
    pytest.param({"x": float("inf")}, id="inf-inside"),
    pytest.param({"s": {1, 2}}, id="set"),
    pytest.param(b"raw bytes", id="bytes"),
    pytest.param({(1, 2): "tuple key"}, id="tuple-key"),
    pytest.param(_circular(), id="circular"),
]


@pytest.mark.parametrize("payload", BAD_PAYLOADS)
def test_api_refuses_payload_that_is_not_json(queue: Queue, root: Path, payload: object) -> None:
    """A payload that JSON cannot represent is InvalidPayload, and no task is created."""
    before = snapshot(root)
    with pytest.raises(InvalidPayload, match="payload is not JSON-serializable"):
        queue.enqueue(payload, id="refused")
    assert snapshot(root) == before
    with pytest.raises(TaskNotFound):
        queue.task("refused")
    assert_queue_works(queue)


@pytest.mark.parametrize("result", BAD_PAYLOADS)
def test_api_refuses_result_that_is_not_json_and_keeps_the_claim(queue: Queue, result: object) -> None:
    """A bad result is InvalidPayload; the claim stays held and can still commit a good result."""
    queue.enqueue("work", id="work")
    claim = queue.claim("w")
    assert claim is not None
    with pytest.raises(InvalidPayload, match="result is not JSON-serializable"):
        claim.complete(result)
    with pytest.raises(InvalidPayload, match="result is not JSON-serializable"):
        queue.complete("work", claim.token, result)
    assert queue.task("work").state == "running"
    claim.complete({"ok": True})
    assert queue.task("work").result == {"ok": True}
    assert_queue_works(queue)


@pytest.mark.parametrize(
    ("args", "stdin", "hint"),
    [
        pytest.param(["{bad"], None, "payload is not valid JSON", id="argument"),
        pytest.param(["-"], "{bad", "payload is not valid JSON", id="stdin"),
        pytest.param(["-"], "", "payload is not valid JSON", id="empty-stdin"),
        pytest.param(["NaN"], None, "payload is not JSON-serializable", id="nan"),
    ],
)
def test_cli_refuses_malformed_payload(
    queue: Queue,
    root: Path,
    fsqueue_cmd: list[str],
    cli_env: dict[str, str],
    args: list[str],
    stdin: str | None,
    hint: str,
) -> None:
    """``fsqueue enqueue`` with malformed JSON exits 1 with one clear line and enqueues nothing."""
    before = snapshot(root)
    result = run_cli(fsqueue_cmd, cli_env, "enqueue", *args, stdin=stdin)
    assert_one_line_error(result, hint)
    assert result.stdout == ""
    assert snapshot(root) == before
    assert_queue_works(queue)


def test_cli_refuses_malformed_result_and_keeps_the_claim(
    queue: Queue, fsqueue_cmd: list[str], cli_env: dict[str, str]
) -> None:
    """``fsqueue complete`` with malformed JSON exits 1; the claim can still complete afterwards."""
    queue.enqueue("work", id="work")
    claim = queue.claim("w")
    assert claim is not None
    assert_one_line_error(run_cli(fsqueue_cmd, cli_env, "complete", "work", "{bad", "--token", claim.token), "result")
    assert queue.task("work").state == "running"
    ok = run_cli(fsqueue_cmd, cli_env, "complete", "work", '{"ok": true}', "--token", claim.token)
    assert ok.returncode == 0, ok.stderr
    assert queue.task("work").result == {"ok": True}
    assert_queue_works(queue)


# --------------------------------------------------------------------------------------------- symlinks


def _foreign_lock_bytes(tmp_path: Path, clock: ManualClock, task_id: str) -> tuple[bytes, str]:
    """A genuine-looking lock record for ``task_id`` (and its token), made in another queue."""
    other = Queue(tmp_path / "elsewhere", create=True, clock=clock)
    other.enqueue("theirs", id=task_id)
    claim = other.claim("intruder", lease_only=True)
    assert claim is not None
    return Path(other.layout.lock(task_id)).read_bytes(), claim.token


@pytest.mark.parametrize("target_kind", ["outside-file", "dangling"])
def test_planted_lock_symlink_is_not_followed_and_is_quarantined_by_clear(
    queue: Queue,
    clock: ManualClock,
    tmp_path: Path,
    fsqueue_cmd: list[str],
    cli_env: dict[str, str],
    target_kind: str,
) -> None:
    """A symlink at tasks/<id>.lock is never followed: claim skips it, locks says corrupt, clear moves the link."""
    outside = tmp_path / "outside" / "victim.lock"
    outside.parent.mkdir()
    planted_token = TOKEN
    if target_kind == "outside-file":
        data, planted_token = _foreign_lock_bytes(tmp_path, clock, "victim")
        outside.write_bytes(data)
        far = clock.now() + 86400
        os.utime(outside, (far, far))  # it would look like a live lease if it were followed
    queue.enqueue("victim", id="victim")
    clock.advance(0.001)
    queue.enqueue("next", id="next")
    lock_path = Path(queue.layout.lock("victim"))
    lock_path.symlink_to(outside)
    watched = snapshot(outside.parent)

    claim = queue.claim("w")
    assert claim is not None and claim.id == "next"  # the victim was skipped, not claimed through the link
    assert queue.claim("w") is None
    infos = {info.task: info for info in queue.locks()}
    assert infos["victim"].verdict == "corrupt"
    assert str(lock_path) in infos["victim"].error and "symlink" in infos["victim"].error
    with pytest.raises(LeaseLost):
        queue.complete("victim", planted_token, "stolen")
    with pytest.raises(LeaseLost):
        queue.renew("victim", planted_token)
    listed = run_cli(fsqueue_cmd, cli_env, "locks", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {row["task"]: row["verdict"] for row in json.loads(listed.stdout)}["victim"] == "corrupt"
    assert snapshot(outside.parent) == watched

    cleared = run_cli(fsqueue_cmd, cli_env, "clear", "victim")
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.strip() == "cleared victim: owner corrupt, task requeued"
    assert not os.path.lexists(lock_path)
    (moved,) = [name for name in quarantined(queue) if name.endswith("victim.lock")]
    moved_path = Path(queue.layout.quarantine, moved)
    assert moved_path.is_symlink() and os.readlink(moved_path) == str(outside)  # the link itself was moved
    assert why_note(queue, moved)["from"] == str(lock_path)
    assert snapshot(outside.parent) == watched  # the target is untouched (or still absent)

    victim = queue.task("victim")
    assert (victim.attempts, victim.history[-1]["event"]) == (1, "broken")
    clock.advance(Config().retry_max + 1)
    again = queue.claim("w")
    assert again is not None and (again.id, again.attempt) == ("victim", 2)
    again.complete({"ok": True})
    claim.complete({"ok": True})
    assert_queue_works(queue)


@pytest.mark.parametrize("target_kind", ["outside-file", "dangling"])
def test_planted_record_symlink_is_quarantined_by_claim(
    queue: Queue,
    clock: ManualClock,
    tmp_path: Path,
    fsqueue_cmd: list[str],
    cli_env: dict[str, str],
    target_kind: str,
) -> None:
    """A symlink at records/<id>.json is corrupt, not followed: show names it, claim quarantines it and moves on."""
    queue.enqueue({"real": True}, id="victim")
    clock.advance(0.001)
    queue.enqueue("next", id="next")
    record_path = Path(queue.layout.record("victim"))
    outside = tmp_path / "outside" / "victim.json"
    outside.parent.mkdir()
    if target_kind == "outside-file":
        outside.write_bytes(record_path.read_bytes())  # a perfectly valid record, elsewhere
    record_path.unlink()
    record_path.symlink_to(outside)
    watched = snapshot(outside.parent)

    with pytest.raises(CorruptRecord) as caught:
        queue.task("victim")
    assert str(record_path) in str(caught.value) and "symlink" in str(caught.value)
    assert_one_line_error(run_cli(fsqueue_cmd, cli_env, "show", "victim"), str(record_path), "symlink")
    assert [info.id for info in queue.tasks()] == ["next"]

    claim = queue.claim("w")
    assert claim is not None and claim.id == "next"
    (moved,) = quarantined(queue)
    moved_path = Path(queue.layout.quarantine, moved)
    assert moved.endswith("victim.json") and moved_path.is_symlink() and os.readlink(moved_path) == str(outside)
    assert why_note(queue, moved)["from"] == str(record_path)
    assert snapshot(outside.parent) == watched
    claim.complete()
    assert queue.status()["tasks"]["pending"] == 0  # no leftover marker keeps pointing at the victim
    assert_queue_works(queue)


@pytest.mark.parametrize("subdir", SUBDIRS)
def test_symlinked_queue_subdirectory_is_refused_on_open(
    queue: Queue, root: Path, tmp_path: Path, fsqueue_cmd: list[str], cli_env: dict[str, str], subdir: str
) -> None:
    """A symlink in place of a queue directory (e.g. ``done`` -> elsewhere) makes opening raise QueueRootError."""
    real = tmp_path / f"real-{subdir}"
    (root / subdir).rename(real)
    (root / subdir).symlink_to(real, target_is_directory=True)
    for create in (False, True):
        with pytest.raises(QueueRootError) as caught:
            Queue(root, create=create)
        assert str(root / subdir) in str(caught.value) and "symlink" in str(caught.value)
        assert caught.value.path == str(root / subdir)
    assert_one_line_error(run_cli(fsqueue_cmd, cli_env, "status"), str(root / subdir), "symlink")
    assert_one_line_error(run_cli(fsqueue_cmd, cli_env, "init"), str(root / subdir), "symlink")
    assert (root / subdir).is_symlink()  # refused, not "repaired" by following or deleting it

    (root / subdir).unlink()  # what the message asks for: a real directory
    real.rename(root / subdir)
    assert_queue_works(Queue(root, clock=queue.clock))


def test_regular_file_in_place_of_queue_subdirectory_is_refused(queue: Queue, root: Path) -> None:
    """A file where ``tasks/`` should be is a QueueRootError naming it, and the file is left alone."""
    shutil.rmtree(root / "tasks")
    (root / "tasks").write_text("not a directory\n")
    with pytest.raises(QueueRootError, match="is not a directory") as caught:
        Queue(root)
    assert str(root / "tasks") in str(caught.value)
    assert (root / "tasks").read_text() == "not a directory\n"
    (root / "tasks").unlink()
    assert_queue_works(Queue(root, clock=queue.clock))


def test_symlinks_planted_among_ready_markers_are_not_followed(
    queue: Queue, clock: ManualClock, tmp_path: Path
) -> None:
    """A symlinked priority level and a symlinked marker in ready/ are neither followed nor claimed."""
    real_id = queue.enqueue("real", id="real")
    rel = entry_for(0, clock.now(), real_id)
    decoy_dir = tmp_path / "outside-dir"
    decoy_rel = entry_for(7, clock.now(), "decoy")
    (decoy_dir / os.path.dirname(decoy_rel)).mkdir(parents=True)
    (decoy_dir / decoy_rel).touch()
    decoy_file = tmp_path / "outside-file"
    decoy_file.write_text("precious\n")
    Path(queue.layout.ready, "7").symlink_to(decoy_dir / "7", target_is_directory=True)
    bucket = Path(queue.layout.ready, os.path.dirname(rel))
    (bucket / f"{os.path.basename(rel).split('-')[0]}-decoy").symlink_to(decoy_file)
    watched = snapshot(tmp_path / "outside-dir"), decoy_file.read_bytes(), decoy_file.stat().st_mtime_ns

    assert queue.status()["tasks"]["pending"] == 1
    claim = queue.claim("w")
    assert claim is not None and claim.id == "real"
    assert queue.claim("w") is None
    claim.complete()
    assert (snapshot(tmp_path / "outside-dir"), decoy_file.read_bytes(), decoy_file.stat().st_mtime_ns) == watched
    assert_queue_works(queue)


@pytest.mark.parametrize(
    ("level", "target_kind"),
    [pytest.param("priority", "outside-dir", id="priority-dir"), pytest.param("bucket", "dangling", id="bucket")],
)
def test_symlinked_ready_bucket_does_not_divert_enqueue(
    queue: Queue, clock: ManualClock, tmp_path: Path, level: str, target_kind: str
) -> None:
    """A symlink planted where enqueue makes its bucket is not followed: the task stays claimable (no wedge)."""
    rel = entry_for(0, clock.now(), "victim")
    planted = Path(queue.layout.ready, "/".join(rel.split("/")[: 1 if level == "priority" else 2]))
    planted.parent.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside"
    if target_kind == "outside-dir":
        outside.mkdir()
    planted.symlink_to(outside, target_is_directory=True)
    try:
        queue.enqueue("victim", id="victim")
    except (StorageError, QueueRootError) as exc:
        assert str(planted) in str(exc)  # refused, naming the link an operator must remove
        planted.unlink()
        queue.enqueue("victim", id="victim")
    assert not outside.exists() or not any(outside.iterdir())  # nothing was written through the link
    claim = queue.claim("w")
    assert claim is not None and claim.id == "victim"
    claim.complete()
    assert_queue_works(queue)


def test_symlink_planted_at_a_guard_file_does_not_wedge_claims(
    queue: Queue, clock: ManualClock, tmp_path: Path
) -> None:
    """A symlink in place of the head task's guard file is not followed, and claims still get a task."""
    queue.enqueue("victim", id="victim")
    clock.advance(0.001)
    queue.enqueue("next", id="next")
    guard = Path(queue.layout.guard("victim"))
    outside = tmp_path / "outside-guard"
    outside.write_text("precious\n")
    guard.unlink()
    guard.symlink_to(outside)
    watched = outside.read_bytes(), outside.stat().st_mtime_ns

    claim = queue.claim("w")  # a clear error here would still leave every later claim failing the same way
    assert claim is not None
    claim.complete()
    assert (outside.read_bytes(), outside.stat().st_mtime_ns) == watched
    assert_queue_works(queue)


# ------------------------------------------------------------------------------------------ root problems


def test_missing_root_says_to_run_init(tmp_path: Path, fsqueue_cmd: list[str], clock: ManualClock) -> None:
    """A root that does not exist is QueueRootError suggesting ``fsqueue init``; it is not created by a read."""
    missing = tmp_path / "nope"
    with pytest.raises(QueueRootError) as caught:
        Queue(missing)
    assert f"fsqueue init --root {missing}" in str(caught.value) and caught.value.path == str(missing)
    env = dict(os.environ, FSQUEUE_ROOT=str(missing))
    for args in (["status"], ["enqueue", "{}"], ["claim", "--agent", "w"], ["show", "t1"], ["locks"]):
        assert_one_line_error(run_cli(fsqueue_cmd, env, *args), str(missing), "fsqueue init")
    assert not missing.exists()
    assert run_cli(fsqueue_cmd, env, "init").returncode == 0  # what the message says to do
    assert_queue_works(Queue(missing, clock=clock))


def test_root_that_is_a_regular_file_is_refused(tmp_path: Path, clock: ManualClock) -> None:
    """A root that is a file is QueueRootError naming it, for open and for create; the file is untouched."""
    path = tmp_path / "queue"
    path.write_text("my notes\n")
    for create in (False, True):
        with pytest.raises(QueueRootError, match="not a directory") as caught:
            Queue(path, create=create)
        assert str(path) in str(caught.value) and caught.value.path == str(path)
    assert path.read_text() == "my notes\n"
    path.unlink()
    assert_queue_works(Queue(path, create=True, clock=clock))


@pytest.mark.parametrize("args", [["init"], ["enqueue", "{}"], ["status"]])
def test_cli_root_that_is_a_regular_file_is_one_line_error(
    tmp_path: Path, fsqueue_cmd: list[str], args: list[str]
) -> None:
    """``FSQUEUE_ROOT`` naming a file gives exit 1 and one ``fsqueue: error:`` line naming it; the file is untouched."""
    path = tmp_path / "queue"
    path.write_text("my notes\n")
    env = dict(os.environ, FSQUEUE_ROOT=str(path))
    assert_one_line_error(run_cli(fsqueue_cmd, env, *args), str(path), "not a directory")
    assert path.read_text() == "my notes\n"


def test_directory_that_is_not_a_queue_is_refused_and_left_alone(
    tmp_path: Path, fsqueue_cmd: list[str], clock: ManualClock
) -> None:
    """A directory without fsqueue.json is not adopted: QueueRootError, and nothing is created in it."""
    path = tmp_path / "photos"
    path.mkdir()
    (path / "holiday.jpg").write_bytes(b"\xff\xd8 not really")
    before = snapshot(path)
    with pytest.raises(QueueRootError) as caught:
        Queue(path)
    assert str(path) in str(caught.value) and "fsqueue.json" in str(caught.value)
    assert "fsqueue init" in str(caught.value)
    env = dict(os.environ, FSQUEUE_ROOT=str(path))
    for args in (["enqueue", "{}"], ["claim", "--agent", "w"], ["status"], ["clear", "--dead"]):
        assert_one_line_error(run_cli(fsqueue_cmd, env, *args), str(path), "not an fsqueue root")
    assert snapshot(path) == before
    assert run_cli(fsqueue_cmd, env, "init").returncode == 0  # adopting it takes an explicit init
    assert_queue_works(Queue(path, clock=clock))


# ------------------------------------------------------------------------------------- read-only roots


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _traversable_by_anyone(path: str) -> bool:
    current = os.path.abspath(path)
    while True:
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return False
        if current == os.path.dirname(current):
            return True
        current = os.path.dirname(current)


@dataclass(frozen=True)
class Unprivileged:
    """Runs subprocesses that cannot write a tree passed through :func:`lock_down`."""

    preexec: Callable[[], None] | None
    how: str

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, env=env, preexec_fn=self.preexec, capture_output=True, text=True, timeout=120, check=False, cwd="/"
        )


@pytest.fixture(scope="session")
def unprivileged() -> Unprivileged:
    """The best way this machine offers to run a process that permission bits stop."""
    if os.geteuid() != 0:
        return Unprivileged(None, "the test user: permission bits apply")
    if _traversable_by_anyone(tempfile.gettempdir()) and python_runs("import fsqueue", preexec_fn=_become_nobody):
        return Unprivileged(_become_nobody, f"uid/gid {NOBODY}")
    if python_runs("import fsqueue", preexec_fn=drop_dac_capabilities):
        # e.g. the interpreter lives under /root, which nobody may not read
        return Unprivileged(drop_dac_capabilities, "uid 0 without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER")
    skip_or_fail("cannot start a subprocess that obeys permission bits (neither setuid nor capability drop works)")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory any user can traverse (pytest's own temporary directories are 0700), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="fsqueue-bad-input-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        unlock(path)
        shutil.rmtree(path, ignore_errors=True)


def _entries(top: Path) -> list[str]:
    paths = [str(top)]
    for dirpath, dirnames, filenames in os.walk(top):
        paths += [os.path.join(dirpath, name) for name in dirnames + filenames]
    return paths


def lock_down(top: Path) -> None:
    """Make ``top`` read-only: directories 0555, files 0444, owned by another uid when we are root."""
    for path in _entries(top):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            continue
        if os.geteuid() == 0:
            os.chown(path, OTHER_UID, OTHER_UID)
        os.chmod(path, 0o555 if stat.S_ISDIR(st.st_mode) else 0o444)


def unlock(top: Path) -> None:
    """Undo :func:`lock_down`."""
    for path in _entries(top):
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            continue
        if os.geteuid() == 0:
            os.chown(path, os.geteuid(), os.getegid())
        os.chmod(path, 0o750 if stat.S_ISDIR(st.st_mode) else 0o644)


_API_PROBE = """
import json, sys
from fsqueue import Queue
root, operation, *args = sys.argv[1:]
queue = Queue(root)
try:
    if operation == "enqueue":
        queue.enqueue({"n": 1}, id="fresh")
    elif operation == "claim":
        queue.claim("w")
    elif operation == "status":
        queue.status()
        queue.tasks()
        queue.locks()
except Exception as exc:
    print(json.dumps({"type": type(exc).__name__, "message": str(exc), "errno": getattr(exc, "errno", None)}))
else:
    print(json.dumps({"type": None}))
"""


def _probe(unprivileged: Unprivileged, root: Path, operation: str) -> dict[str, Any]:
    result = unprivileged.run([sys.executable, "-c", _API_PROBE, str(root), operation])
    assert result.returncode == 0, result.stderr
    outcome: dict[str, Any] = json.loads(result.stdout)
    return outcome


def test_unwritable_root_refuses_writes_with_permission_denied(
    shared_dir: Path, unprivileged: Unprivileged, fsqueue_cmd: list[str]
) -> None:
    """On a root the caller may not write, enqueue and claim raise StorageError naming the path; nothing is left."""
    root = shared_dir / "queue"
    queue = Queue(root, create=True, clock=ManualClock(start=PAST))  # ready for subprocesses on the real clock
    queue.enqueue("held", id="held")
    held = queue.claim("w")
    assert held is not None
    queue.enqueue("waiting", id="waiting")
    env = dict(os.environ, FSQUEUE_ROOT=str(root))
    env.pop("FSQUEUE_CONFIG", None)
    lock_down(root)
    try:
        before = snapshot(root)
        for operation in ("enqueue", "claim"):
            outcome = _probe(unprivileged, root, operation)
            assert outcome["type"] == "StorageError", (unprivileged.how, outcome)
            assert outcome["errno"] == errno.EACCES
            assert "permission denied" in outcome["message"] and str(root) in outcome["message"]
        assert _probe(unprivileged, root, "status") == {"type": None}  # inspection still works
        assert_one_line_error(unprivileged.run([*fsqueue_cmd, "enqueue", "{}"], env), "permission denied", str(root))
        assert_one_line_error(unprivileged.run([*fsqueue_cmd, "claim", "--agent", "w"], env), "permission denied")
        assert_one_line_error(
            unprivileged.run([*fsqueue_cmd, "complete", "held", "--token", held.token], env),
            "permission denied",
            str(root),
        )
        assert snapshot(root) == before  # no half-written record, marker, staging file or lock
    finally:
        unlock(root)
    held.complete({"ok": True})
    waiting = queue.claim("w")
    assert waiting is not None and waiting.id == "waiting"
    waiting.complete()
    assert_queue_works(queue)


def test_read_only_filesystem_refuses_writes_with_clear_error(
    root: Path, fsqueue_cmd: list[str], cli_env: dict[str, str]
) -> None:
    """On a read-only mount, enqueue and claim raise StorageError saying so; inspection works; nothing changes."""
    queue = Queue(root, create=True, clock=ManualClock(start=PAST))  # ready for subprocesses on the real clock
    queue.enqueue("held", id="held")
    held = queue.claim("w")
    assert held is not None
    queue.enqueue("waiting", id="waiting")
    with read_only_bind(root):
        before = snapshot(root)
        reopened = Queue(root, clock=queue.clock)
        with pytest.raises(StorageError) as caught:
            reopened.enqueue("fresh", id="fresh", delay=1)  # a bucket of its own
        assert caught.value.errno == errno.EROFS
        assert "read-only" in str(caught.value) and str(root) in str(caught.value)
        with pytest.raises(StorageError, match="read-only"):
            reopened.claim("w")
        assert reopened.status()["tasks"]["pending"] == 1
        assert {info.id: info.state for info in reopened.tasks()} == {"held": "running", "waiting": "pending"}
        assert_one_line_error(run_cli(fsqueue_cmd, cli_env, "enqueue", "{}"), "read-only", str(root))
        assert_one_line_error(run_cli(fsqueue_cmd, cli_env, "claim", "--agent", "w"), "read-only", str(root))
        assert_one_line_error(run_cli(fsqueue_cmd, cli_env, "complete", "held", "--token", held.token), "read-only")
        assert snapshot(root) == before
    held.complete({"ok": True})
    waiting = queue.claim("w")
    assert waiting is not None and waiting.id == "waiting"
    waiting.complete()
    assert_queue_works(queue)


def test_enqueue_into_existing_bucket_on_read_only_filesystem_raises_storage_error(root: Path) -> None:
    """Enqueue beside a pending task (same ready bucket) on a read-only mount is StorageError, not a raw OSError."""
    queue = Queue(root, create=True, clock=ManualClock(start=PAST))
    queue.enqueue("waiting", id="waiting")
    with read_only_bind(root):
        before = snapshot(root)
        with pytest.raises(StorageError) as caught:
            queue.enqueue("fresh", id="fresh")
        assert caught.value.errno == errno.EROFS and "read-only" in str(caught.value)
        assert snapshot(root) == before
    assert_queue_works(queue)


@pytest.mark.parametrize("operation", ["complete", "fail", "renew"])
def test_token_operations_on_read_only_filesystem_raise_storage_error(queue: Queue, root: Path, operation: str) -> None:
    """complete, fail and renew on a read-only mount raise StorageError naming the path; the claim survives."""
    queue.enqueue("held", id="held")
    held = queue.claim("w")
    assert held is not None
    with read_only_bind(root):
        with pytest.raises(StorageError) as caught:
            if operation == "complete":
                held.complete({"ok": True})
            elif operation == "fail":
                held.fail("boom")
            else:
                held.renew()
        assert caught.value.errno == errno.EROFS
        assert "read-only" in str(caught.value) and str(root) in str(caught.value)
    held.complete({"ok": True})
    assert_queue_works(queue)


# ------------------------------------------------------------------------------------------- full disk


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, unmounted afterwards; skipped (locally only) when it cannot be mounted."""
    need_root("a tiny tmpfs for ENOSPC")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mount("-t", "tmpfs", "-o", "size=64k,mode=0750", "tmpfs", str(mount_point))
    try:
        yield mount_point
    finally:
        umount(mount_point)


def fill_with_enqueues(queue: Queue) -> tuple[list[str], StorageError]:
    """Enqueue until the disk is full; the ids accepted and the error that stopped it."""
    accepted: list[str] = []
    for n in range(10_000):
        try:
            accepted.append(queue.enqueue({"n": n}, id=f"t{n:05d}"))
        except StorageError as exc:
            return accepted, exc
    pytest.fail("the 64 KiB disk never filled up")


def _full_queue(tiny_disk: Path, clock: ManualClock) -> tuple[Queue, Claim, Path, list[str], StorageError]:
    ballast = tiny_disk / "ballast"
    ballast.write_bytes(b"\0" * 16384)  # space an operator can free later
    queue = Queue(tiny_disk / "queue", create=True, clock=clock, rng=random.Random(7))
    queue.enqueue("held", id="held")
    held = queue.claim("w")
    assert held is not None
    accepted, error = fill_with_enqueues(queue)
    return queue, held, ballast, accepted, error


def test_disk_full_refuses_enqueue_and_keeps_every_accepted_task(tiny_disk: Path, clock: ManualClock) -> None:
    """At ENOSPC enqueue and claim fail cleanly; every accepted task survives and runs once space is freed."""
    queue, held, ballast, accepted, error = _full_queue(tiny_disk, clock)
    assert len(accepted) >= 3
    assert error.errno == errno.ENOSPC
    assert "disk is full" in str(error) and str(queue.root) in str(error)
    refused = f"t{len(accepted):05d}"
    assert error.task_id == refused
    with pytest.raises(TaskNotFound):
        queue.task(refused)
    assert not any(name.endswith(refused) for name in markers(queue))
    assert os.listdir(queue.layout.staging) == []  # no half-written file left behind

    with pytest.raises(StorageError, match="disk is full"):
        queue.claim("w2")
    with pytest.raises(StorageError, match="disk is full"):
        held.complete({"ok": True})
    assert not held.finished and queue.task("held").state == "running"  # the claim is still held
    assert os.listdir(queue.layout.staging) == []
    assert queue.status()["tasks"]["pending"] == len(accepted)
    assert sorted(name.split("-", 1)[1] for name in markers(queue)) == accepted  # every marker is intact

    ballast.unlink()
    held.complete({"ok": True})
    assert queue.task("held").result == {"ok": True}
    ran = []
    while (claim := queue.claim("w")) is not None:
        ran.append(claim.id)
        claim.complete({"n": claim.payload["n"]})
    assert sorted(ran) == accepted
    assert {queue.task(task_id).state for task_id in accepted} == {"done"}
    assert_queue_works(queue)


@pytest.mark.parametrize("operation", ["complete", "fail"])
def test_commit_at_disk_full_raises_storage_error(tiny_disk: Path, clock: ManualClock, operation: str) -> None:
    """complete and fail at ENOSPC raise StorageError saying the disk is full and naming the path."""
    queue, held, ballast, _, _ = _full_queue(tiny_disk, clock)
    with pytest.raises(StorageError) as caught:
        if operation == "complete":
            held.complete({"ok": True})
        else:
            held.fail("boom")
    assert caught.value.errno == errno.ENOSPC
    assert "disk is full" in str(caught.value) and str(queue.root) in str(caught.value)
    ballast.unlink()
    held.complete({"ok": True})
    assert_queue_works(queue)
