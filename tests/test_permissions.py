"""Permission denied: directories another user owns, and files another user wrote with a private umask.

Tests run as root, which permission bits do not stop, so every command under test runs as an unprivileged
*actor*: the user ``nobody`` when it can start this interpreter, else uid 0 stripped of the capabilities that
bypass permission bits (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER). The queue root belongs to the
actor; single directories or files are then given to another uid with a mode that shuts the actor out.

Each refusal must be one line naming the path and the remedy (``check the owner and mode``), must change
nothing, and must never pass for a lost lease; once ownership is fixed the same command succeeds and every
task is still there. ``test_bad_input.py`` already covers a root that is read-only as a whole.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fault_injection import (
    NOBODY,
    assert_clean_exit,
    assert_one_line_error,
    drop_dac_capabilities,
    markers,
    python_runs,
    skip_or_fail,
    snapshot,
)

from fsqueue import Claim, ManualClock, Queue

#: A start time in the past, so that the actor's commands (on the real clock) see every task as ready.
PAST = 1_600_000_000.0
#: The other user: owns what the actor may not touch.
OTHER_UID = 4242
DENIED = "permission denied"
REMEDY = "check the owner and mode"
#: What an actor must be able to import to run every command under test.
IMPORTS = "import fsqueue.cli, fsqueue_watchdog"


@dataclass(frozen=True)
class Actor:
    """How the commands under test are started: as ``nobody``, or as uid 0 without the bypass capabilities."""

    uid: int
    how: str

    def run(self, *args: str, root: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``fsqueue ARGS`` against ``root`` as the actor."""
        return self.run_argv([sys.executable, "-m", "fsqueue", *args], root=root, stdin=stdin)

    def run_argv(
        self, argv: list[str], *, root: str | Path, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, FSQUEUE_ROOT=str(root))
        env.pop("FSQUEUE_CONFIG", None)
        options: dict[str, Any] = (
            {"user": NOBODY, "group": NOBODY, "extra_groups": []}
            if self.uid == NOBODY
            else {"preexec_fn": drop_dac_capabilities}
        )
        return subprocess.run(
            argv, env=env, input=stdin, capture_output=True, text=True, timeout=120, check=False, cwd="/", **options
        )

    def own(self, top: str | Path) -> None:
        """Give ``top`` and everything below to the actor, writable by its owner."""
        paths = [str(top)]
        for dirpath, dirnames, filenames in os.walk(top):
            paths += [os.path.join(dirpath, name) for name in dirnames + filenames]
        for path in paths:
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode):
                os.chown(path, self.uid, self.uid)
                os.chmod(path, 0o755 if stat.S_ISDIR(st.st_mode) else 0o644)


@pytest.fixture(scope="module")
def actor() -> Actor:
    """The unprivileged actor this machine allows (skipped without root, except in CI)."""
    if os.geteuid() != 0:
        skip_or_fail("these tests need root: to give files to another user and start an unprivileged actor")
    if python_runs(IMPORTS, user=NOBODY, group=NOBODY, extra_groups=[]):
        return Actor(NOBODY, "user nobody")
    if python_runs(IMPORTS, preexec_fn=drop_dac_capabilities):
        return Actor(0, "uid 0 without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER")
    skip_or_fail("cannot start a process that obeys permission bits (neither nobody nor a capability drop works)")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's temporary directories are private), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="fsqueue-permissions-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def clock() -> ManualClock:
    """The in-process clock, in the past: the actor's real clock sees every task as ready."""
    return ManualClock(start=PAST)


def foreign(path: str | Path, mode: int) -> None:
    """Give ``path`` to another user with ``mode``: the actor is then only "other"."""
    os.chown(path, OTHER_UID, OTHER_UID)
    os.chmod(path, mode)


def foreign_tree(top: str | Path) -> None:
    """Give ``top`` and every directory below it to another user, readable but not writable by the actor."""
    for dirpath, _, _ in os.walk(top):
        foreign(dirpath, 0o755)


def assert_denied(result: subprocess.CompletedProcess[str], path: str) -> None:
    """Exit 1 (not 5: nothing says the lease is lost) and one line naming the path and the remedy."""
    assert_one_line_error(result, DENIED, path, REMEDY)


def make_queue(shared_dir: Path, clock: ManualClock) -> Queue:
    return Queue(shared_dir / "queue", create=True, clock=clock)


def claimed(queue: Queue, **options: Any) -> Claim:
    claim = queue.claim("w", ttl=10**6, **options)
    assert claim is not None
    return claim


# -- one directory belongs to another user -----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A directory the actor may not write, a command that must write there, and the path it must name."""

    directory: str
    args: Callable[[Claim], list[str]]
    path: Callable[[Queue], str]


CASES = {
    "records": Case("records", lambda held: ["enqueue", "--id", "fresh", "{}"], lambda q: q.layout.record("fresh")),
    "ready": Case("ready", lambda held: ["enqueue", "--id", "fresh", "{}"], lambda q: q.layout.ready),
    "tasks": Case("tasks", lambda held: ["claim", "--agent", "w"], lambda q: q.layout.lock("waiting")),
    "done": Case(
        "done", lambda held: ["complete", held.id, "--token", held.token, '"ok"'], lambda q: q.layout.done("held")
    ),
    "dead": Case(
        "dead",
        lambda held: ["fail", held.id, "--token", held.token, "--no-retry"],
        lambda q: q.layout.dead("held"),
    ),
    "status": Case(
        "status", lambda held: ["beat", "scraper"], lambda q: os.path.join(q.layout.sub("status"), "scraper.heartbeat")
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_directory_owned_by_another_user_refuses_the_write_and_keeps_everything(
    actor: Actor, shared_dir: Path, clock: ManualClock, case: Case
) -> None:
    """A write into a directory the actor may not write fails in one clear line, changes nothing, then works."""
    queue = make_queue(shared_dir, clock)
    queue.enqueue("held", id="held", priority=5)
    held = claimed(queue)
    queue.enqueue("waiting", id="waiting")
    queue.beat("scraper", message="before")
    actor.own(queue.root)
    directory = Path(queue.layout.sub(case.directory))
    foreign_tree(directory)  # ready/ holds the buckets a write needs; the other directories are flat
    queue.status()  # walks ready/, which removes the bucket the claim emptied: the snapshot sees the index settled
    before = snapshot(queue.root, skip=("guards",))

    # The exact path is pinned where fsqueue names it right (test_refused_write_names_the_refused_path).
    path = case.path(queue) if case.directory in ("records", "tasks") else queue.root
    assert_denied(actor.run(*case.args(held), root=queue.root), path)
    assert snapshot(queue.root, skip=("guards",)) == before
    assert queue.lock_info("held").verdict == "alive"  # type: ignore[union-attr]  # the claim is still held
    assert markers(queue) == ["waiting"]
    assert queue.last_beat("scraper").message == "before"  # type: ignore[union-attr]

    actor.own(directory)  # what the message asks for
    assert_clean_exit(actor.run(*case.args(held), root=queue.root))
    expected = {"held", "waiting", *(["fresh"] if case.directory in ("records", "ready") else [])}
    assert {info.id for info in queue.tasks()} == expected  # every task is still there


@pytest.mark.parametrize(
    "case", [CASES[name] for name in ("done", "dead", "status", "ready")], ids=lambda c: c.directory
)
def test_refused_write_names_the_refused_path(actor: Actor, shared_dir: Path, clock: ManualClock, case: Case) -> None:
    """A write refused in done/, dead/, status/ or ready/ names a path there, not a staging temporary."""
    queue = make_queue(shared_dir, clock)
    queue.enqueue("held", id="held")
    held = claimed(queue)
    actor.own(queue.root)
    foreign_tree(queue.layout.sub(case.directory))
    line = assert_one_line_error(actor.run(*case.args(held), root=queue.root), DENIED, REMEDY)
    assert case.path(queue) in line and queue.layout.staging not in line, line


# -- files another user wrote with umask 077 -------------------------------------------------------------


@pytest.fixture
def private_files(actor: Actor, shared_dir: Path, clock: ManualClock) -> tuple[Queue, Claim]:
    """A queue owned by the actor, but for a head task record and a held lock that another user made private."""
    queue = make_queue(shared_dir, clock)
    queue.enqueue("private", id="private")
    clock.advance(1)
    queue.enqueue("open", id="open")
    queue.enqueue("held", id="held", priority=5)
    held = claimed(queue, lease_only=True)
    actor.own(queue.root)
    foreign(queue.layout.record("private"), 0o600)
    foreign(queue.layout.lock("held"), 0o600)
    aged = PAST - 86400.0
    os.utime(queue.layout.lock("held"), (aged, aged))  # expired: the watchdog and clear will want to judge it
    queue.status()  # walks ready/, which removes the bucket the claim emptied
    return queue, held


def test_unreadable_task_record_is_a_clear_error_and_nothing_is_lost(
    actor: Actor, private_files: tuple[Queue, Claim]
) -> None:
    """show and claim name the unreadable record and the remedy; the task is kept and served once it is fixed."""
    queue, _ = private_files
    record = queue.layout.record("private")
    before = snapshot(queue.root, skip=("guards",))
    assert_denied(actor.run("show", "private", root=queue.root), record)
    assert_denied(actor.run("claim", "--agent", "w", root=queue.root), record)
    assert snapshot(queue.root, skip=("guards",)) == before  # neither quarantined nor dropped: it is not corrupt
    assert sorted(markers(queue)) == ["open", "private"]

    actor.own(record)
    got = json.loads(assert_clean_exit(actor.run("claim", "--agent", "w", root=queue.root)))
    assert got["id"] == "private" and got["payload"] == "private"


def test_unreadable_lock_is_never_taken_for_a_lost_lease_nor_broken(
    actor: Actor, private_files: tuple[Queue, Claim]
) -> None:
    """renew and complete fail with exit 1 naming the lock; clear and the watchdog leave the lock in place."""
    queue, held = private_files
    lock = queue.layout.lock("held")
    before = snapshot(queue.root, skip=("guards", "staging"))
    assert_denied(actor.run("renew", "held", "--token", held.token, root=queue.root), lock)
    assert_denied(actor.run("complete", "held", "--token", held.token, '"r"', root=queue.root), lock)
    assert_denied(actor.run("clear", "held", root=queue.root), lock)
    watchdog = [sys.executable, "-m", "fsqueue_watchdog", "--once"]
    for _ in range(2):  # two one-shot sweeps: the two-sweep rule would break an expired lease it could read
        result = actor.run_argv(watchdog, root=queue.root)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot read {lock}: {DENIED}; {REMEDY}" in result.stderr
    after = snapshot(queue.root, skip=("guards", "staging"))
    assert {k: v for k, v in after.items() if not k.startswith("watchdog.")} == before  # the lock is untouched

    actor.own(lock)
    assert_clean_exit(actor.run("complete", "held", "--token", held.token, '"r"', root=queue.root))
    assert queue.task("held").result == "r"


def test_unreadable_lock_does_not_stop_the_watchdog_breaking_other_leases(
    actor: Actor, shared_dir: Path, clock: ManualClock
) -> None:
    """One lock the watchdog cannot read is reported; every other expired lease is still broken."""
    queue = make_queue(shared_dir, clock)
    for task_id in ("a-private", "b", "c", "d"):
        queue.enqueue(task_id, id=task_id)
        claimed(queue, lease_only=True)
        aged = PAST - 86400.0
        os.utime(queue.layout.lock(task_id), (aged, aged))
    actor.own(queue.root)
    foreign(queue.layout.lock("a-private"), 0o600)
    logs = [actor.run_argv([sys.executable, "-m", "fsqueue_watchdog", "--once"], root=queue.root).stderr for _ in "12"]
    assert "pass failed" not in "".join(logs), logs  # reported per lock, not by giving up on all of them
    assert "task=a-private" in logs[1] and DENIED in logs[1], logs
    assert sorted(os.listdir(queue.layout.sub("tasks"))) == ["a-private.lock"]


def test_unreadable_heartbeat_is_listed_as_corrupt(actor: Actor, shared_dir: Path, clock: ManualClock) -> None:
    """`fsqueue agents` lists a heartbeat it cannot read as corrupt (heartbeats.md) beside the readable ones."""
    queue = make_queue(shared_dir, clock)
    queue.beat("private")
    queue.beat("open")
    actor.own(queue.root)
    foreign(os.path.join(queue.layout.sub("status"), "private.heartbeat"), 0o600)
    rows = json.loads(assert_clean_exit(actor.run("agents", "--json", root=queue.root)))
    assert {row["agent"]: row["verdict"] for row in rows}["private"] == "corrupt"


# -- the root itself ---------------------------------------------------------------------------------


def test_init_under_a_parent_owned_by_another_user_names_the_path(actor: Actor, shared_dir: Path) -> None:
    """`fsqueue init` where the actor may not create the root fails in one line naming it and the remedy."""
    parent = shared_dir / "theirs"
    parent.mkdir()
    foreign(parent, 0o755)
    target = parent / "queue"
    assert_denied(actor.run("init", root=target), str(target))
    assert not target.exists()


def test_watchdog_on_a_root_it_may_not_write_says_permission_denied(
    actor: Actor, shared_dir: Path, clock: ManualClock
) -> None:
    """`fsqueue-watchdog --once` on a root it may not write exits 1 in one line naming the path and the remedy."""
    queue = make_queue(shared_dir, clock)
    actor.own(queue.root)
    foreign(queue.root, 0o755)
    result = actor.run_argv([sys.executable, "-m", "fsqueue_watchdog", "--once"], root=queue.root)
    assert_one_line_error(result, DENIED, queue.root, REMEDY, prefix="fsqueue-watchdog: error:")
