"""The ``fsqueue`` command line end to end, each command in a real subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fsqueue import Queue

Run = Callable[..., subprocess.CompletedProcess[str]]

TASK_KEYS = {
    "id",
    "state",
    "priority",
    "attempts",
    "max_attempts",
    "enqueued_at",
    "ready_at",
    "finished_at",
    "agent",
    "payload",
    "result",
    "reason",
    "lock",
}
LOCK_KEYS = {
    "task",
    "verdict",
    "agent",
    "pid",
    "host",
    "mode",
    "attempt",
    "claimed_at",
    "expires_at",
    "age",
    "lease_left",
    "error",
}
CLAIM_KEYS = {"id", "token", "attempt", "fence", "agent", "payload", "ttl", "expires_at", "max_attempts"}


@pytest.fixture
def fsq(fsqueue_cmd: list[str], cli_env: dict[str, str]) -> Run:
    """Run ``fsqueue ARGS`` against the test queue and return the finished process."""

    def run(
        *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*fsqueue_cmd, *args],
            input=input,
            capture_output=True,
            text=True,
            env=env or cli_env,
            timeout=60,
            check=False,
        )

    return run


@pytest.fixture
def ok(fsq: Run) -> Callable[..., str]:
    """Run ``fsqueue ARGS``, insist on exit 0 and return its stdout."""

    def run(*args: str, input: str | None = None) -> str:
        proc = fsq(*args, input=input)
        assert proc.returncode == 0, (args, proc.returncode, proc.stderr)
        return proc.stdout

    return run


@pytest.fixture
def initialized(ok: Callable[..., str], root: Path) -> Path:
    """A queue root created with ``fsqueue init``."""
    ok("init")
    return root


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``fsqueue: error:`` line of a failed command (asserting there is nothing else)."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fsqueue: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def claim(ok: Callable[..., str], *args: str) -> dict[str, Any]:
    """``fsqueue claim`` parsed."""
    got: dict[str, Any] = json.loads(ok("claim", "--agent", "shell", *args))
    return got


def table(text: str) -> list[list[str]]:
    """A table printed by the CLI, split into cells (columns are separated by two or more spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]


# --- init, help, version, root selection -------------------------------------------------------


def test_help_works_via_python_m(fsq: Run) -> None:
    """``python -m fsqueue --help`` lists the commands and exits 0."""
    proc = fsq("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage: ")
    for command in ("init", "enqueue", "claim", "renew", "complete", "fail", "run", "locks", "clear", "status"):
        assert command in proc.stdout


def test_version_option_prints_version(fsq: Run) -> None:
    """``--version`` names the installed version."""
    proc = fsq("--version")
    assert proc.returncode == 0 and "0.1.0" in proc.stdout


def test_init_creates_queue_and_is_idempotent(ok: Callable[..., str], root: Path) -> None:
    """``init`` creates the root with its marker, and a second ``init`` is harmless."""
    assert ok("init") == ""
    assert (root / "fsqueue.json").is_file()
    task_id = ok("enqueue", "1").strip()
    assert ok("init") == ""
    assert Queue(root).task(task_id).state == "pending"


def test_command_on_missing_root_says_how_to_init(fsq: Run, root: Path) -> None:
    """Using a queue that was never created fails with one line pointing at ``fsqueue init``."""
    proc = fsq("status")
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert str(root) in line and "fsqueue init" in line


def test_env_root_selects_the_queue(ok: Callable[..., str], initialized: Path) -> None:
    """FSQUEUE_ROOT alone points every command at the queue."""
    task_id = ok("enqueue", '"via env"').strip()
    assert Queue(initialized).task(task_id).payload == "via env"


def test_root_option_overrides_env(fsq: Run, initialized: Path, tmp_path: Path) -> None:
    """``--root`` wins over FSQUEUE_ROOT."""
    other = tmp_path / "other"
    assert fsq("--root", str(other), "init").returncode == 0
    proc = fsq("--root", str(other), "enqueue", "--id", "here", "1")
    assert proc.returncode == 0 and proc.stdout.strip() == "here"
    assert Queue(other).task("here").state == "pending"
    assert Queue(initialized).tasks() == []


# --- enqueue --------------------------------------------------------------------------------


def test_enqueue_prints_the_new_id(ok: Callable[..., str], initialized: Path) -> None:
    """``enqueue`` prints exactly one line: the id of a task holding the payload."""
    out = ok("enqueue", '{"url": "https://example.org"}')
    assert out.count("\n") == 1
    info = Queue(initialized).task(out.strip())
    assert (info.state, info.payload, info.attempts) == ("pending", {"url": "https://example.org"}, 0)


def test_enqueue_reads_payload_from_stdin(ok: Callable[..., str], initialized: Path) -> None:
    """A payload of ``-`` is read from standard input."""
    task_id = ok("enqueue", "-", input='{"from": "stdin", "n": [1, 2]}\n').strip()
    assert Queue(initialized).task(task_id).payload == {"from": "stdin", "n": [1, 2]}


def test_enqueue_without_payload_stores_null(ok: Callable[..., str], initialized: Path) -> None:
    """A task may carry no payload at all."""
    task_id = ok("enqueue").strip()
    assert Queue(initialized).task(task_id).payload is None


def test_enqueue_rejects_payload_that_is_not_json(fsq: Run, initialized: Path) -> None:
    """A payload that does not parse is refused with one line, and nothing is enqueued."""
    proc = fsq("enqueue", "{not json")
    assert proc.returncode == 1
    assert "payload is not valid JSON" in one_line_error(proc)
    assert Queue(initialized).tasks() == []


def test_enqueue_explicit_id_and_if_absent(fsq: Run, ok: Callable[..., str], initialized: Path) -> None:
    """``--id`` names the task; a repeat fails unless ``--if-absent`` makes it a no-op."""
    assert ok("enqueue", "--id", "job-1", '"first"') == "job-1\n"
    proc = fsq("enqueue", "--id", "job-1", '"second"')
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "already exists" in line and "--if-absent" in line
    assert ok("enqueue", "--id", "job-1", "--if-absent", '"third"') == "job-1\n"
    assert Queue(initialized).task("job-1").payload == "first"


@pytest.mark.parametrize("bad", ["../escape", "a/b", ".hidden", "x" * 300])
def test_enqueue_refuses_ids_that_escape_the_queue(fsq: Run, initialized: Path, bad: str) -> None:
    """Task ids that are not safe file names are refused (exit 1, one line)."""
    proc = fsq("enqueue", "--id", bad, "1")
    assert proc.returncode == 1
    assert "task id" in one_line_error(proc)
    assert Queue(initialized).tasks() == []


def test_enqueue_priority_orders_claims(ok: Callable[..., str], initialized: Path) -> None:
    """A higher ``--priority`` is claimed first, whatever the enqueue order."""
    ok("enqueue", "--id", "low", "--priority", "-3", "1")
    ok("enqueue", "--id", "mid", "1")
    ok("enqueue", "--id", "high", "--priority", "7", "1")
    assert [claim(ok)["id"] for _ in range(3)] == ["high", "mid", "low"]
    assert Queue(initialized).task("high").priority == 7


def test_enqueue_delay_hides_task_until_due(fsq: Run, ok: Callable[..., str], initialized: Path) -> None:
    """A ``--delay`` task is listed as delayed and is not claimable yet."""
    ok("enqueue", "--id", "later", "--delay", "3600", "1")
    proc = fsq("claim", "--agent", "a")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", "")
    info = Queue(initialized).task("later")
    assert info.state == "delayed"
    assert info.ready_at - info.enqueued_at == pytest.approx(3600)
    assert json.loads(ok("status", "--json"))["tasks"]["delayed"] == 1


def test_enqueue_max_attempts_and_ttl_reach_the_claim(ok: Callable[..., str], initialized: Path) -> None:
    """``--max-attempts`` and ``--ttl`` are kept with the task and show up in its claim."""
    ok("enqueue", "--id", "t", "--max-attempts", "2", "--ttl", "42", "1")
    got = claim(ok)
    assert (got["max_attempts"], got["ttl"]) == (2, 42.0)
    assert got["expires_at"] - time.time() == pytest.approx(42, abs=10)
    assert os.stat(initialized / "tasks" / "t.lock").st_mtime == pytest.approx(got["expires_at"])


@pytest.mark.parametrize("args", [["--max-attempts", "0"], ["--ttl", "0"], ["--priority", "high"], ["--delay", "soon"]])
def test_enqueue_bad_option_values_are_usage_errors(fsq: Run, initialized: Path, args: list[str]) -> None:
    """Out-of-range or mistyped option values exit 2 before anything is written."""
    proc = fsq("enqueue", *args, "1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert Queue(initialized).tasks() == []


# --- claim, renew, complete, fail -----------------------------------------------------------


def test_claim_prints_the_claim_as_json(ok: Callable[..., str], initialized: Path) -> None:
    """``claim`` prints id, token, attempt and payload (and the rest of the lease) as JSON."""
    task_id = ok("enqueue", '{"n": 1}').strip()
    got = claim(ok)
    assert set(got) == CLAIM_KEYS
    assert (got["id"], got["attempt"], got["payload"], got["agent"]) == (task_id, 1, {"n": 1}, "shell")
    assert len(got["token"]) == 32 and int(got["token"], 16) >= 0
    assert Queue(initialized).task(task_id).state == "running"


def test_claim_on_empty_queue_exits_3_silently(fsq: Run, initialized: Path) -> None:
    """Nothing to claim is exit 3 with no output at all."""
    proc = fsq("claim", "--agent", "a")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", "")


def test_claim_requires_an_agent(fsq: Run, initialized: Path) -> None:
    """``--agent`` is mandatory: usage error, exit 2."""
    assert fsq("claim").returncode == 2


def test_renew_extends_the_lease(ok: Callable[..., str], initialized: Path) -> None:
    """``renew --token`` moves the lock's mtime (the lease expiry) forward."""
    ok("enqueue", "--id", "t", "1")
    got = claim(ok, "--ttl", "5")
    lock = initialized / "tasks" / "t.lock"
    before = os.stat(lock).st_mtime
    assert ok("renew", "t", "--token", got["token"], "--ttl", "600") == ""
    after = os.stat(lock).st_mtime
    assert after > before + 500
    assert after - time.time() == pytest.approx(600, abs=30)


def test_complete_commits_result(ok: Callable[..., str], initialized: Path) -> None:
    """``complete --token`` stores the JSON result and the task is done."""
    ok("enqueue", "--id", "t", "1")
    got = claim(ok)
    assert ok("complete", "t", '{"answer": 42}', "--token", got["token"]) == ""
    info = Queue(initialized).task("t")
    assert (info.state, info.result, info.attempts) == ("done", {"answer": 42}, 1)
    assert not (initialized / "tasks" / "t.lock").exists()


def test_complete_reads_result_from_stdin(ok: Callable[..., str], initialized: Path) -> None:
    """A result of ``-`` is read from standard input."""
    ok("enqueue", "--id", "t", "1")
    got = claim(ok)
    ok("complete", "t", "-", "--token", got["token"], input='["a", "b"]')
    assert Queue(initialized).task("t").result == ["a", "b"]


def test_second_complete_is_fenced(fsq: Run, ok: Callable[..., str], initialized: Path) -> None:
    """A claim commits once: the same token cannot commit again (exit 5)."""
    ok("enqueue", "--id", "t", "1")
    got = claim(ok)
    ok("complete", "t", '"first"', "--token", got["token"])
    proc = fsq("complete", "t", '"second"', "--token", got["token"])
    assert proc.returncode == 5
    assert Queue(initialized).task("t").result == "first"


@pytest.mark.parametrize(
    "command", [["renew", "t"], ["complete", "t", '"x"'], ["fail", "t", "--error", "nope"]], ids=lambda c: c[0]
)
def test_wrong_token_is_refused_with_exit_5(
    fsq: Run, ok: Callable[..., str], initialized: Path, command: list[str]
) -> None:
    """renew/complete/fail with a token that is not the lease's exit 5 with a "lease ... lost" line."""
    ok("enqueue", "--id", "t", "1")
    claim(ok)
    proc = fsq(*command, "--token", "0" * 32)
    assert proc.returncode == 5
    line = one_line_error(proc)
    assert "lease on task t" in line and "lost" in line
    info = Queue(initialized).task("t")
    assert info.state == "running" and [e["event"] for e in info.history] == ["enqueued"]


def test_fail_records_error_and_retries_later(ok: Callable[..., str], initialized: Path) -> None:
    """``fail --error`` keeps the message in the history and backs the task off."""
    ok("enqueue", "--id", "t", "1")
    got = claim(ok)
    assert ok("fail", "t", "--token", got["token"], "--error", "upstream 503") == ""
    info = Queue(initialized).task("t")
    assert info.state in ("pending", "delayed") and info.attempts == 1
    assert info.history[-1]["event"] == "failed" and info.history[-1]["error"] == "upstream 503"
    assert info.ready_at > info.history[-1]["at"]


def test_fail_no_retry_dead_letters_and_requeue_restores(fsq: Run, ok: Callable[..., str], initialized: Path) -> None:
    """``fail --no-retry`` dead-letters at once; ``requeue`` brings it back with a fresh budget."""
    ok("enqueue", "--id", "t", "--max-attempts", "3", "1")
    got = claim(ok)
    ok("fail", "t", "--token", got["token"], "--no-retry", "--error", "poison")
    queue = Queue(initialized)
    dead = queue.task("t")
    assert (dead.state, dead.reason) == ("dead", "poison")
    assert ok("requeue", "t") == ""
    back = queue.task("t")
    assert (back.state, back.attempts) == ("pending", 0)
    again = claim(ok)
    assert (again["id"], again["attempt"]) == ("t", 1)


def test_requeue_refuses_a_task_that_is_not_dead(fsq: Run, ok: Callable[..., str], initialized: Path) -> None:
    """Only dead letters can be requeued; anything else is one error line, exit 1."""
    ok("enqueue", "--id", "t", "1")
    got = claim(ok)
    ok("complete", "t", "--token", got["token"])
    for task_id in ("t", "missing"):
        proc = fsq("requeue", task_id)
        assert proc.returncode == 1
        assert f"cannot requeue task {task_id}" in one_line_error(proc)


def test_max_attempts_dead_letters_after_last_failure(ok: Callable[..., str], initialized: Path) -> None:
    """With ``--max-attempts 1`` the first failure is final."""
    ok("enqueue", "--id", "t", "--max-attempts", "1", "1")
    got = claim(ok)
    ok("fail", "t", "--token", got["token"], "--error", "boom")
    info = Queue(initialized).task("t")
    assert info.state == "dead" and "attempts exhausted (1/1)" in info.reason


# --- inspection: tasks, show, locks, status ---------------------------------------------------


def test_tasks_table_and_json(ok: Callable[..., str], initialized: Path) -> None:
    """``tasks`` prints a headed table; ``--json`` a list with the documented keys; ``--state`` filters."""
    ok("enqueue", "--id", "a", "--priority", "2", '{"k": 1}')
    ok("enqueue", "--id", "b", "--delay", "600", "1")
    rows = table(ok("tasks"))
    assert rows[0] == ["ID", "STATE", "PRIO", "ATTEMPTS", "AGE", "AGENT"]
    assert [r[:4] for r in rows[1:]] == [["a", "pending", "2", "0/5"], ["b", "delayed", "0", "0/5"]]
    data = json.loads(ok("tasks", "--json"))
    assert [d["id"] for d in data] == ["a", "b"]
    assert all(set(d) == TASK_KEYS for d in data)
    assert data[0]["payload"] == {"k": 1}
    assert [d["id"] for d in json.loads(ok("tasks", "--state", "delayed", "--json"))] == ["b"]
    assert json.loads(ok("tasks", "--state", "done", "--json")) == []


def test_tasks_on_empty_queue_prints_header_only(ok: Callable[..., str], initialized: Path) -> None:
    """An empty queue is a table with its header and no rows, or an empty JSON list."""
    assert table(ok("tasks")) == [["ID", "STATE", "PRIO", "ATTEMPTS", "AGE", "AGENT"]]
    assert json.loads(ok("tasks", "--json")) == []


def test_show_text_and_json(ok: Callable[..., str], initialized: Path) -> None:
    """``show`` prints the task in full; ``--json`` adds the history and the lock record."""
    ok("enqueue", "--id", "t", "--agent", "planner", '{"url": "u"}')
    got = claim(ok)
    text = ok("show", "t")
    assert text.startswith("task      t\nstate     running\n")
    assert 'payload   {"url": "u"}' in text and "lock      lease: agent shell" in text
    data = json.loads(ok("show", "t", "--json"))
    assert set(data) == TASK_KEYS | {"history"}
    assert data["state"] == "running" and data["agent"] == "planner"
    assert set(data["lock"]) == LOCK_KEYS and data["lock"]["attempt"] == 1
    assert [e["event"] for e in data["history"]] == ["enqueued"]
    ok("complete", "t", '"fine"', "--token", got["token"])
    assert 'result    "fine"' in ok("show", "t")


def test_show_unknown_task_is_one_line_error(fsq: Run, initialized: Path) -> None:
    """``show`` of a task that does not exist exits 1 with one line."""
    proc = fsq("show", "nope")
    assert proc.returncode == 1
    assert "no task nope" in one_line_error(proc)


def test_locks_table_and_json(ok: Callable[..., str], initialized: Path) -> None:
    """``locks`` prints a headed table; ``--json`` a list of lock records with the documented keys."""
    assert table(ok("locks")) == [["TASK", "AGENT", "PID", "HOST", "AGE", "LEASE LEFT", "OWNER"]]
    assert json.loads(ok("locks", "--json")) == []
    ok("enqueue", "--id", "t", "1")
    claim(ok, "--ttl", "120")
    rows = table(ok("locks"))
    assert len(rows) == 2 and rows[1][:3] == ["t", "shell", "-"]
    data = json.loads(ok("locks", "--json"))
    assert len(data) == 1 and set(data[0]) == LOCK_KEYS
    assert data[0]["lease_left"] == pytest.approx(120, abs=30)


def test_status_text_and_json(ok: Callable[..., str], initialized: Path) -> None:
    """``status`` counts tasks by state and locks by verdict, as text or JSON."""
    for i in range(3):
        ok("enqueue", "--id", f"t{i}", "1")
    ok("enqueue", "--id", "later", "--delay", "600", "1")
    got = claim(ok)
    ok("complete", got["id"], "--token", got["token"])
    claim(ok)
    data = json.loads(ok("status", "--json"))
    assert set(data) == {"root", "halted", "tasks", "oldest_pending_age", "locks"}
    assert data["halted"] is None
    assert data["root"] == str(initialized)
    assert data["tasks"] == {"pending": 1, "delayed": 1, "running": 1, "done": 1, "dead": 0}
    assert data["locks"] == {"lease": 1}
    assert data["oldest_pending_age"] >= 0
    text = ok("status")
    assert f"queue   {initialized}" in text
    assert "tasks   pending 1  delayed 1  running 1  done 1  dead 0" in text
    assert "locks   lease 1" in text


# --- clear and claim ownership --------------------------------------------------------------


def test_clear_without_ids_or_flags_is_usage_error(fsq: Run, initialized: Path) -> None:
    """``clear`` alone does nothing and exits 2."""
    proc = fsq("clear")
    assert proc.returncode == 2 and "--dead" in proc.stderr


def test_clear_force_without_ids_is_usage_error(fsq: Run, initialized: Path) -> None:
    """``--force`` only applies to named locks."""
    assert fsq("clear", "--dead", "--force").returncode == 2


def test_clear_live_lease_needs_force(fsq: Run, ok: Callable[..., str], initialized: Path) -> None:
    """A live lease-only claim is not broken by ``clear ID``; ``--force`` breaks it and fences its holder."""
    ok("enqueue", "--id", "t", "1")
    got = claim(ok)
    proc = fsq("clear", "t")
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "lock on task t was not broken" in line and "--force" in line
    assert Queue(initialized).task("t").state == "running"
    assert ok("clear", "t", "--force") == "cleared t: owner lease, task requeued\n"
    info = Queue(initialized).task("t")
    assert info.state in ("pending", "delayed") and info.history[-1]["event"] == "broken"
    assert fsq("complete", "t", "--token", got["token"]).returncode == 5


def test_clear_names_a_task_without_lock(fsq: Run, ok: Callable[..., str], initialized: Path) -> None:
    """Clearing a task that holds no lock is one error line, exit 1."""
    ok("enqueue", "--id", "t", "1")
    proc = fsq("clear", "t")
    assert proc.returncode == 1
    assert "holds no lock" in one_line_error(proc)


def test_clear_expired_breaks_only_lapsed_leases(ok: Callable[..., str], initialized: Path) -> None:
    """``clear --expired`` breaks a lock whose mtime (its lease expiry) is in the past, and no other."""
    ok("enqueue", "--id", "old", "--priority", "1", "1")
    ok("enqueue", "--id", "fresh", "1")
    claim(ok)
    claim(ok)
    past = time.time() - 3600
    os.utime(initialized / "tasks" / "old.lock", (past, past))
    verdicts = {d["task"]: d["verdict"] for d in json.loads(ok("locks", "--json"))}
    assert verdicts == {"old": "expired", "fresh": "lease"}
    assert ok("clear", "--expired") == "cleared old: owner expired, task requeued\n"
    assert [d["task"] for d in json.loads(ok("locks", "--json"))] == ["fresh"]
    queue = Queue(initialized)
    assert queue.task("old").history[-1]["event"] == "broken"
    assert queue.task("fresh").state == "running"
    assert ok("clear", "--expired") == ""


def test_clear_json_reports_what_was_broken(ok: Callable[..., str], initialized: Path) -> None:
    """``clear --json`` lists task, outcome and verdict per broken lock."""
    ok("enqueue", "--id", "t", "--max-attempts", "1", "1")
    claim(ok)
    past = time.time() - 60
    os.utime(initialized / "tasks" / "t.lock", (past, past))
    assert json.loads(ok("clear", "--expired", "--json")) == [{"task": "t", "outcome": "dead", "verdict": "expired"}]
    assert Queue(initialized).task("t").state == "dead"


def test_claim_without_owner_pid_is_lease_only(ok: Callable[..., str], initialized: Path) -> None:
    """A shell script's plain ``claim`` belongs to no process: owner "lease", pid "-"."""
    ok("enqueue", "--id", "t", "1")
    claim(ok)
    row = table(ok("locks"))[1]
    assert row[0] == "t" and row[2] == "-" and row[-1] == "lease"
    data = json.loads(ok("locks", "--json"))[0]
    assert (data["mode"], data["pid"], data["verdict"]) == ("lease", 0, "lease")
    assert ok("clear", "--dead") == ""


def test_claim_with_owner_pid_is_recovered_when_that_process_dies(ok: Callable[..., str], initialized: Path) -> None:
    """``--owner-pid`` binds the claim to a process; once it is killed and reaped the lock is dead."""
    ok("enqueue", "--id", "t", "1")
    owner = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert claim(ok, "--owner-pid", str(owner.pid))["id"] == "t"
        data = json.loads(ok("locks", "--json"))[0]
        assert (data["mode"], data["pid"], data["verdict"]) == ("process", owner.pid, "alive")
        row = table(ok("locks"))[1]
        assert row[2] == str(owner.pid) and row[-1] == "alive"
        assert ok("clear", "--dead") == ""
    finally:
        owner.kill()
        owner.wait()
    assert json.loads(ok("locks", "--json"))[0]["verdict"] == "dead"
    assert ok("clear", "--dead") == "cleared t: owner dead, task requeued\n"
    info = Queue(initialized).task("t")
    assert info.state in ("pending", "delayed") and info.attempts == 1
    assert info.history[-1]["event"] == "broken" and "owner dead" in info.history[-1]["error"]
    assert json.loads(ok("locks", "--json")) == []


def test_claim_owner_pid_must_be_running(fsq: Run, ok: Callable[..., str], initialized: Path) -> None:
    """``--owner-pid`` of a process that is gone is refused and nothing is claimed."""
    ok("enqueue", "--id", "t", "1")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    proc = fsq("claim", "--agent", "a", "--owner-pid", str(gone.pid))
    assert proc.returncode == 1
    assert f"owner pid {gone.pid} is not a running process" in one_line_error(proc)
    assert Queue(initialized).task("t").state == "pending"


# --- usage and error conventions ------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [["--bogus"], ["tasks", "--bogus"], ["no-such-command"], ["show"], ["clear", "--dead", "--nope"]]
)
def test_unknown_options_and_missing_arguments_exit_2(fsq: Run, initialized: Path, args: list[str]) -> None:
    """Usage mistakes exit 2 and never print a traceback."""
    proc = fsq(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_debug_flag_shows_traceback(fsq: Run, cli_env: dict[str, str], initialized: Path) -> None:
    """``--debug`` (or FSQUEUE_DEBUG) lets the traceback through; without it the error is one line."""
    assert "Traceback" not in fsq("show", "nope").stderr
    proc = fsq("--debug", "show", "nope")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "TaskNotFound" in proc.stderr
    proc = fsq("show", "nope", env=dict(cli_env, FSQUEUE_DEBUG="1"))
    assert "Traceback" in proc.stderr


# --- --config -------------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    """A YAML config file with ``text``."""
    path = tmp_path / "fsqueue.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_config_valid_keys_take_effect(fsq: Run, initialized: Path, tmp_path: Path) -> None:
    """ttl, max_attempts, retry.base/max and durability from ``--config`` shape new tasks and retries."""
    config = write_config(
        tmp_path,
        "ttl: 10m\nmax_attempts: 2\nretry:\n  base: 2s\n  max: 3\ndurability: none\nwatchdog: {}\n",
    )
    assert fsq("--config", str(config), "enqueue", "--id", "t", "1").returncode == 0
    proc = fsq("--config", str(config), "claim", "--agent", "a")
    got = json.loads(proc.stdout)
    assert (got["ttl"], got["max_attempts"]) == (600.0, 2)
    assert fsq("--config", str(config), "fail", "t", "--token", got["token"]).returncode == 0
    info = Queue(initialized).task("t")
    backoff = info.ready_at - info.history[-1]["at"]
    assert 1.0 <= backoff <= 2.0  # base 2 s times a jitter factor in [0.5, 1)


def test_config_from_env_var(fsq: Run, cli_env: dict[str, str], initialized: Path, tmp_path: Path) -> None:
    """FSQUEUE_CONFIG names the config file like ``--config``."""
    config = write_config(tmp_path, "max_attempts: 9\n")
    fsq("enqueue", "--id", "t", "1")
    proc = fsq("claim", "--agent", "a", env=dict(cli_env, FSQUEUE_CONFIG=str(config)))
    assert json.loads(proc.stdout)["max_attempts"] == 5  # fixed when the task was enqueued
    fsq("enqueue", "--id", "u", "1", env=dict(cli_env, FSQUEUE_CONFIG=str(config)))
    assert Queue(initialized).task("u").max_attempts == 9


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("bogus: 1\n", "'bogus'"),
        ("ttl: 60\nretries: 3\n", "'retries'"),
        ("retry:\n  base: 1\n  maximum: 2\n", "retry.maximum"),
    ],
)
def test_config_unknown_keys_are_rejected(fsq: Run, initialized: Path, tmp_path: Path, text: str, named: str) -> None:
    """An unknown key is refused with exit 1, naming the key and the file."""
    config = write_config(tmp_path, text)
    proc = fsq("--config", str(config), "status")
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert named in line and str(config) in line and "unknown key" in line


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("ttl: soon\n", "ttl"),
        ("ttl: -5\n", "ttl"),
        ("ttl: true\n", "ttl"),
        ("max_attempts: three\n", "max_attempts"),
        ("max_attempts: 0\n", "max_attempts"),
        ("max_attempts: 2.5\n", "max_attempts"),
        ("retry: 5\n", "retry"),
        ("retry:\n  base: [1]\n", "retry.base"),
        ("durability: sometimes\n", "durability"),
        ("- a\n- b\n", "top level"),
    ],
)
def test_config_bad_types_are_rejected(fsq: Run, initialized: Path, tmp_path: Path, text: str, named: str) -> None:
    """A value of the wrong type or range is refused with exit 1, naming the key."""
    config = write_config(tmp_path, text)
    proc = fsq("--config", str(config), "enqueue", "1")
    assert proc.returncode == 1
    assert named in one_line_error(proc)
    assert Queue(initialized).tasks() == []


def test_config_missing_file_is_one_line_error(fsq: Run, initialized: Path, tmp_path: Path) -> None:
    """A ``--config`` that does not exist is named in a one-line error."""
    proc = fsq("--config", str(tmp_path / "absent.yaml"), "status")
    assert proc.returncode == 1
    assert "absent.yaml does not exist" in one_line_error(proc)


def test_config_invalid_yaml_is_one_line_error(fsq: Run, initialized: Path, tmp_path: Path) -> None:
    """A config file that is not valid YAML is a one-line error naming the file."""
    config = write_config(tmp_path, "ttl: [\n")
    proc = fsq("--config", str(config), "status")
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert str(config) in line and "not valid YAML" in line


@pytest.mark.parametrize(
    ("text", "named"), [("retry:\n  max: -1\n", "retry.max"), ("retry:\n  base: 0\n", "retry.base")]
)
def test_config_bad_retry_values_name_the_yaml_key(
    fsq: Run, initialized: Path, tmp_path: Path, text: str, named: str
) -> None:
    """A bad retry value is refused naming the key as the file spells it (retry.max, not retry_max)."""
    config = write_config(tmp_path, text)
    proc = fsq("--config", str(config), "status")
    assert proc.returncode == 1
    assert named in one_line_error(proc)
