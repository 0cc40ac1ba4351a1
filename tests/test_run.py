"""``fsqueue run`` with real processes: the command's contract, exit codes, signals, timeouts and leases.

Commands signal the test through FIFOs (``started``) and wait for it on FIFOs (``release``); the test never
sleeps to wait for a condition. Lease renewals are observed with inotify on the lock file, whose mtime is
the lease expiry.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import pytest

from fsqueue import Queue

WAIT = 30.0  # upper bound for any blocking wait below; reached only when something is broken
IN_ATTRIB = 0x00000004

#: The command most tests run: announce the start on FIFO argv[1] (kept open until exit), wait for
#: a release on FIFO argv[2], then print a result. SIGTERM is recorded in the file argv[3].
BLOCKING_COMMAND = """
import json, os, signal, sys

def on_term(signum, frame):
    with open(sys.argv[3], "w") as note:
        note.write("SIGTERM")
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
payload = json.load(sys.stdin)
started = open(sys.argv[1], "w")
started.write(os.environ["FSQUEUE_TASK_ID"] + "\\n")
started.flush()
with open(sys.argv[2]) as release:
    release.read()
print(json.dumps({"released": payload}))
"""


@pytest.fixture
def initialized(queue: Queue, root: Path) -> Path:
    """A created queue root (tasks are enqueued through :func:`enqueue`, with the real clock)."""
    return root


def enqueue(
    root: Path, payload: object = None, *, priority: int = 0, delay: float = 0, max_attempts: int | None = None
) -> str:
    """Enqueue with the system clock, as any other process would."""
    return Queue(root).enqueue(payload, priority=priority, delay=delay, max_attempts=max_attempts)


def python(tmp_path: Path, body: str, name: str = "cmd.py") -> list[str]:
    """argv that runs ``body`` as a Python script."""
    script = tmp_path / name
    script.write_text(body, encoding="utf-8")
    return [sys.executable, str(script)]


def run_argv(fsqueue_cmd: list[str], *options: str, command: list[str]) -> list[str]:
    """``fsqueue run --agent worker-1 OPTIONS -- COMMAND``."""
    return [*fsqueue_cmd, "run", "--agent", "worker-1", *options, "--", *command]


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``fsqueue run`` to the end."""
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


@contextmanager
def background(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """Start ``fsqueue run`` in the background; kill and reap it if the test leaves it running."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait for a background ``fsqueue run`` to exit; its code, stdout and stderr."""
    out, err = proc.communicate(timeout=WAIT)
    return proc.returncode, out, err


class Fifos:
    """The ``started``/``release`` FIFO pair of one blocking command, and its SIGTERM note."""

    def __init__(self, tmp_path: Path) -> None:
        self.started = tmp_path / "started.fifo"
        self.release_path = tmp_path / "release.fifo"
        self.note = tmp_path / "signal.txt"
        os.mkfifo(self.started)
        os.mkfifo(self.release_path)
        self._fd = os.open(self.started, os.O_RDONLY | os.O_NONBLOCK)

    def argv(self) -> list[str]:
        return [str(self.started), str(self.release_path), str(self.note)]

    def _read(self) -> bytes:
        ready, _, _ = select.select([self._fd], [], [], WAIT)
        assert ready, "the command never wrote to its started FIFO"
        return os.read(self._fd, 4096)

    def wait_started(self) -> str:
        """Block until the command announces its start; returns the task id it printed."""
        data = self._read()
        assert data, "the command exited without announcing its start"
        return data.decode().strip()

    def wait_exited(self) -> None:
        """Block until the command has exited (its write end of ``started`` closes)."""
        while self._read():
            pass

    def release(self) -> None:
        """Let the command finish: open ``release`` for writing (it waits for the reader), close it."""

        def write() -> None:
            with open(self.release_path, "wb") as handle:
                handle.write(b"go")

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        thread.join(WAIT)
        if thread.is_alive():  # nobody reads: unblock our own open, then fail
            fd = os.open(self.release_path, os.O_RDONLY | os.O_NONBLOCK)
            thread.join()
            os.close(fd)
            raise AssertionError("the command never opened its release FIFO")

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def fifos(tmp_path: Path) -> Iterator[Fifos]:
    """FIFOs for a blocking command."""
    pair = Fifos(tmp_path)
    yield pair
    pair.close()


class AttributeWatch:
    """Blocking waits for ``utime`` of one file (inotify IN_ATTRIB): each wake-up is a lease renewal."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, os.fsencode(path), IN_ATTRIB) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")

    def wait(self) -> None:
        ready, _, _ = select.select([self.fd], [], [], WAIT)
        assert ready, "the lock was not renewed"
        os.read(self.fd, 4096)

    def close(self) -> None:
        os.close(self.fd)


def history(root: Path, task_id: str) -> list[str]:
    """The event names in a task's history."""
    return [event["event"] for event in Queue(root).task(task_id).history]


def run_lines(stderr: str) -> list[str]:
    """The lines ``fsqueue run`` wrote itself (the command's stderr is passed through around them)."""
    return [line for line in stderr.splitlines() if line.startswith("fsqueue run:")]


# --- the command's contract -----------------------------------------------------------------


def test_command_gets_payload_on_stdin_and_task_environment(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path
) -> None:
    """The payload arrives as JSON on stdin; FSQUEUE_TASK_ID/TOKEN/ATTEMPT/AGENT/ROOT are set."""
    task_id = enqueue(initialized, {"url": "https://example.org", "n": [1, 2]})
    command = python(
        tmp_path,
        "import json, os, sys\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith('FSQUEUE_')}\n"
        "print(json.dumps({'stdin': json.load(sys.stdin), 'env': env}))\n",
    )
    env = {k: v for k, v in cli_env.items() if k != "FSQUEUE_ROOT"}
    proc = run([*fsqueue_cmd, "--root", str(initialized), *run_argv([], command=command)], env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    result = Queue(initialized).task(task_id).result
    assert result["stdin"] == {"url": "https://example.org", "n": [1, 2]}
    seen = result["env"]
    done = json.loads((initialized / "done" / f"{task_id}.json").read_text(encoding="utf-8"))
    assert seen["FSQUEUE_TASK_ID"] == task_id
    assert seen["FSQUEUE_TOKEN"] == done["token"] and len(seen["FSQUEUE_TOKEN"]) == 32
    assert seen["FSQUEUE_ATTEMPT"] == "1"
    assert seen["FSQUEUE_AGENT"] == "worker-1"
    assert seen["FSQUEUE_ROOT"] == str(initialized)


def test_exit_0_completes_with_json_stdout_as_result(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path
) -> None:
    """Exit 0 completes the task; stdout that parses as JSON is stored as that JSON."""
    task_id = enqueue(initialized, 6)
    command = python(tmp_path, "import json, sys\nprint(json.dumps({'square': json.load(sys.stdin) ** 2}))\n")
    proc = run(run_argv(fsqueue_cmd, command=command), cli_env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    info = Queue(initialized).task(task_id)
    assert (info.state, info.result, info.attempts) == ("done", {"square": 36}, 1)
    assert history(initialized, task_id) == ["enqueued", "completed"]
    assert json.loads((initialized / "done" / f"{task_id}.json").read_text(encoding="utf-8"))["agent"] == "worker-1"


def test_exit_0_with_plain_text_stdout_stores_text(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path
) -> None:
    """Stdout that is not JSON is stored as text."""
    task_id = enqueue(initialized)
    proc = run(run_argv(fsqueue_cmd, command=["echo", "all good: 3 pages"]), cli_env)
    assert proc.returncode == 0
    assert Queue(initialized).task(task_id).result.rstrip("\n") == "all good: 3 pages"


def test_nonzero_exit_fails_task_with_status_and_stderr_tail(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path
) -> None:
    """A non-zero exit fails the task with the status and stderr's tail; run exits 1 with one line."""
    task_id = enqueue(initialized, {"url": "u"})
    command = python(
        tmp_path,
        "import sys\nsys.stderr.write('x' * 5000 + '\\n')\nsys.stderr.write('upstream said 503\\n')\nsys.exit(7)\n",
    )
    proc = run(run_argv(fsqueue_cmd, command=command), cli_env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "upstream said 503" in proc.stderr  # the command's stderr is passed through
    lines = run_lines(proc.stderr)
    assert lines == [
        f"fsqueue run: task {task_id} (attempt 1/5) failed: command exited with status 7; it will be retried"
    ]
    info = Queue(initialized).task(task_id)
    assert info.state in ("pending", "delayed") and info.attempts == 1
    event = info.history[-1]
    assert event["event"] == "failed" and event["agent"] == "worker-1"
    assert event["error"].startswith("command exited with status 7; stderr: ")
    assert event["error"].endswith("upstream said 503")
    assert len(event["error"]) < 2100  # the tail, not all 5000 bytes


def test_failure_on_last_attempt_moves_task_to_dead_letter(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path
) -> None:
    """When the attempts are spent, run says the task moved to dead-letter."""
    task_id = enqueue(initialized, max_attempts=1)
    proc = run(run_argv(fsqueue_cmd, command=["false"]), cli_env)
    assert proc.returncode == 1
    assert run_lines(proc.stderr) == [
        f"fsqueue run: task {task_id} (attempt 1/1) failed: command exited with status 1; it moved to dead-letter"
    ]
    assert Queue(initialized).task(task_id).state == "dead"


def test_command_killed_by_signal_is_named(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path
) -> None:
    """A command that dies by a signal fails the task with the signal's name."""
    task_id = enqueue(initialized)
    command = python(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    proc = run(run_argv(fsqueue_cmd, command=command), cli_env)
    assert proc.returncode == 1
    assert "killed by signal SIGKILL" in Queue(initialized).task(task_id).history[-1]["error"]


def test_command_that_cannot_start_fails_the_task(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path
) -> None:
    """A missing executable is a failed attempt, reported in one line."""
    task_id = enqueue(initialized)
    missing = str(tmp_path / "no-such-program")
    proc = run(run_argv(fsqueue_cmd, command=[missing]), cli_env)
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"fsqueue run: task {task_id}: cannot start") and "(task is pending)" in line
    assert history(initialized, task_id) == ["enqueued", "failed"]


# --- how many tasks -------------------------------------------------------------------------


def test_max_tasks_runs_up_to_n(fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path) -> None:
    """``--max-tasks N`` runs N tasks and leaves the rest; a later run stops when the queue is empty."""
    ids = [enqueue(initialized, i) for i in range(5)]
    proc = run(run_argv(fsqueue_cmd, "--max-tasks", "3", command=["true"]), cli_env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    states = [Queue(initialized).task(i).state for i in ids]
    assert sorted(states) == ["done", "done", "done", "pending", "pending"]
    proc = run(run_argv(fsqueue_cmd, "--max-tasks", "10", command=["true"]), cli_env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert [Queue(initialized).task(i).state for i in ids] == ["done"] * 5


def test_failed_task_does_not_stop_the_next(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path
) -> None:
    """One failure is reported and run goes on; its exit code is the worst one (1)."""
    first = enqueue(initialized, "fail", priority=1)
    second = enqueue(initialized, "ok")
    command = python(tmp_path, "import json, sys\nsys.exit(3 if json.load(sys.stdin) == 'fail' else 0)\n")
    proc = run(run_argv(fsqueue_cmd, "--max-tasks", "2", command=command), cli_env)
    assert proc.returncode == 1
    assert len(run_lines(proc.stderr)) == 1 and first in run_lines(proc.stderr)[0]
    assert Queue(initialized).task(second).state == "done"


def test_empty_queue_run_is_silent(fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path) -> None:
    """Nothing to do: no output at all and exit 0 (cron mails nothing)."""
    enqueue(initialized, delay=3600)
    proc = run(run_argv(fsqueue_cmd, "--max-tasks", "5", command=["false"]), cli_env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_run_requires_a_command(fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path) -> None:
    """``run`` without a command is a usage error."""
    proc = run([*fsqueue_cmd, "run", "--agent", "a"], cli_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# --- timeouts and signals -------------------------------------------------------------------


def test_timeout_kills_command_and_fails_task(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path
) -> None:
    """``--timeout`` stops a command that runs too long; the task is failed as "timed out"."""
    task_id = enqueue(initialized)
    proc = run(run_argv(fsqueue_cmd, "--timeout", "0.5", command=["sleep", "infinity"]), cli_env)
    assert proc.returncode == 1
    (line,) = run_lines(proc.stderr)
    assert task_id in line and "timed out after 0.5s" in line
    info = Queue(initialized).task(task_id)
    assert info.state in ("pending", "delayed")
    assert info.history[-1]["error"] == "command timed out after 0.5s and was killed"


def test_sigterm_is_forwarded_and_task_retried(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path, fifos: Fifos
) -> None:
    """SIGTERM to run reaches the command; the task is failed (retried later) and run exits 143."""
    first = enqueue(initialized, 1, priority=1)
    second = enqueue(initialized, 2)
    argv = run_argv(fsqueue_cmd, "--max-tasks", "5", command=[*python(tmp_path, BLOCKING_COMMAND), *fifos.argv()])
    with background(argv, cli_env) as proc:
        assert fifos.wait_started() == first
        proc.send_signal(signal.SIGTERM)
        code, out, err = finish(proc)
    assert code == 143 and out == ""
    assert fifos.note.read_text(encoding="utf-8") == "SIGTERM"
    (line,) = run_lines(err)
    assert first in line and "interrupted by a signal" in line and "will be retried" in line
    info = Queue(initialized).task(first)
    assert info.state in ("pending", "delayed") and info.attempts == 1
    assert info.history[-1]["event"] == "failed"
    assert Queue(initialized).task(second).attempts == 0  # no new task after the signal


def test_kill_9_of_run_takes_command_down_and_leaves_a_dead_lock(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path, fifos: Fifos
) -> None:
    """``kill -9`` of run kills its command too; the lock is judged dead at once and can be cleared."""
    task_id = enqueue(initialized)
    argv = run_argv(fsqueue_cmd, command=[*python(tmp_path, BLOCKING_COMMAND), *fifos.argv()])
    with background(argv, cli_env) as proc:
        fifos.wait_started()
        proc.kill()
        proc.wait()
        fifos.wait_exited()
    queue = Queue(initialized)
    (lock,) = queue.locks()
    assert (lock.task, lock.verdict, lock.pid) == (task_id, "dead", proc.pid)
    assert queue.clear(dead=True) == [(task_id, "requeued", "dead")]
    assert queue.task(task_id).history[-1]["event"] == "broken"


# --- leases ---------------------------------------------------------------------------------


def test_lease_broken_while_running_is_not_committed(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path, fifos: Fifos
) -> None:
    """A claim broken under a running command cannot commit when the command finishes: exit 5."""
    task_id = enqueue(initialized, "payload")
    argv = run_argv(fsqueue_cmd, command=[*python(tmp_path, BLOCKING_COMMAND), *fifos.argv()])
    with background(argv, cli_env) as proc:
        fifos.wait_started()
        assert Queue(initialized).clear([task_id], force=True) == [(task_id, "requeued", "alive")]
        fifos.release()
        code, out, err = finish(proc)
    assert code == 5 and out == ""
    (line,) = run_lines(err)
    assert task_id in line and "lost" in line and "nothing was committed" in line
    info = Queue(initialized).task(task_id)
    assert info.state in ("pending", "delayed") and info.result is None
    assert history(initialized, task_id) == ["enqueued", "broken"]
    assert not (initialized / "done" / f"{task_id}.json").exists()


def test_lease_loss_found_by_renewal_stops_the_command(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path, fifos: Fifos
) -> None:
    """With a short TTL the next renewal notices the broken lease, stops the command and exits 5."""
    task_id = enqueue(initialized)
    argv = run_argv(fsqueue_cmd, "--ttl", "0.3", command=[*python(tmp_path, BLOCKING_COMMAND), *fifos.argv()])
    with background(argv, cli_env) as proc:
        fifos.wait_started()
        assert Queue(initialized).clear([task_id], force=True) == [(task_id, "requeued", "alive")]
        code, _, err = finish(proc)  # never released: only run can end the command
    assert code == 5
    (line,) = run_lines(err)
    assert task_id in line and "lost while the command ran" in line
    assert fifos.note.read_text(encoding="utf-8") == "SIGTERM"
    assert history(initialized, task_id) == ["enqueued", "broken"]


def watch_renewals(root: Path, task_id: str, ttl: float, count: int) -> list[float]:
    """Wait for ``count`` renewals of a running task's lease (and > 3 TTLs); the lock's mtimes seen."""
    queue = Queue(root)
    lock = root / "tasks" / f"{task_id}.lock"
    watch = AttributeWatch(lock)
    try:
        mtimes = [os.stat(lock).st_mtime]
        claimed_at = queue.lock_info(task_id).claimed_at  # type: ignore[union-attr]
        while len(mtimes) <= count or time.time() < claimed_at + 3 * ttl:
            watch.wait()
            mtimes.append(os.stat(lock).st_mtime)
            info = queue.lock_info(task_id)
            assert info is not None and info.verdict == "alive" and info.lease_left > 0, info
            assert queue.clear(dead=True, expired=True) == []  # the watchdog's sweep finds nothing to break
    finally:
        watch.close()
    return mtimes


def test_long_command_keeps_its_lease_renewed(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path, fifos: Fifos
) -> None:
    """A command running many TTLs long is renewed all along, never broken, and completes."""
    ttl = 0.3
    task_id = enqueue(initialized, "long")
    argv = run_argv(fsqueue_cmd, "--ttl", str(ttl), command=[*python(tmp_path, BLOCKING_COMMAND), *fifos.argv()])
    with background(argv, cli_env) as proc:
        fifos.wait_started()
        mtimes = watch_renewals(initialized, task_id, ttl, count=4)
        fifos.release()
        code, out, err = finish(proc)
    assert (code, out, err) == (0, "", "")
    assert mtimes == sorted(mtimes) and len(set(mtimes)) == len(mtimes)
    assert mtimes[-1] > mtimes[0] + ttl  # the first lease would have run out long ago
    info = Queue(initialized).task(task_id)
    assert (info.state, info.result, info.attempts) == ("done", {"released": "long"}, 1)
    assert history(initialized, task_id) == ["enqueued", "completed"]


def test_renewals_come_every_third_of_ttl(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path, fifos: Fifos
) -> None:
    """The lease is renewed every ttl/3, leaving two thirds of the TTL as margin."""
    ttl = 0.3
    task_id = enqueue(initialized)
    argv = run_argv(fsqueue_cmd, "--ttl", str(ttl), command=[*python(tmp_path, BLOCKING_COMMAND), *fifos.argv()])
    with background(argv, cli_env) as proc:
        fifos.wait_started()
        mtimes = watch_renewals(initialized, task_id, ttl, count=6)
        fifos.release()
        assert finish(proc)[0] == 0
    gaps = [b - a for a, b in pairwise(mtimes[1:])]  # renewal to renewal, by run's clock
    assert min(gaps) <= ttl / 3 + 0.05, gaps


def test_background_child_holding_stdout_does_not_stall_the_lease(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path, fifos: Fifos
) -> None:
    """A command that exits but leaves a background child holding stdout is settled, or its lease kept."""
    task_id = enqueue(initialized)
    child = python(
        tmp_path,
        "import sys\nstarted = open(sys.argv[1], 'w')\nstarted.write('child\\n')\nstarted.flush()\n"
        "with open(sys.argv[2]) as release:\n    release.read()\n",
        name="child.py",
    )
    command = ["sh", "-c", '"$0" "$1" "$2" "$3" & echo started a helper', *child, *fifos.argv()[:2]]
    with background(run_argv(fsqueue_cmd, "--ttl", "0.3", command=command), cli_env) as proc:
        fifos.wait_started()  # the helper runs; the shell that started it has exited
        lock = initialized / "tasks" / f"{task_id}.lock"
        try:
            watch = AttributeWatch(lock)
        except FileNotFoundError:
            handled = True  # already settled
        else:
            ready, _, _ = select.select([watch.fd], [], [], 3.0)  # ten TTLs: renewed or settled by now
            watch.close()
            handled = bool(ready)
        fifos.release()
        assert finish(proc)[0] == 0
    assert handled, "the lease was left to expire while fsqueue run was alive"


def test_oversized_stdout_settles_the_task_and_run_goes_on(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path
) -> None:
    """Stdout beyond the result limit still settles the claim, and run goes on to the next task."""
    big = enqueue(initialized, "big", priority=1)
    small = enqueue(initialized, "small")
    command = python(
        tmp_path, "import json, sys\nprint('x' * (5 * 1024 * 1024) if json.load(sys.stdin) == 'big' else 'ok')\n"
    )
    proc = run(run_argv(fsqueue_cmd, "--max-tasks", "2", command=command), cli_env)
    assert "fsqueue: error:" not in proc.stderr, proc.stderr
    queue = Queue(initialized)
    assert queue.locks() == []
    assert queue.task(big).state != "running"
    assert queue.task(small).state == "done"


def test_timeout_also_kills_the_commands_background_children(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path, tmp_path: Path
) -> None:
    """A timed-out command's background child dies with it (the command runs in its own process group)."""
    enqueue(initialized)
    pid_file = tmp_path / "child.pid"
    command = ["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait $!"]
    proc = run(run_argv(fsqueue_cmd, "--timeout", "0.5", command=command), cli_env)
    assert proc.returncode == 1 and "timed out" in proc.stderr
    child = int(pid_file.read_text())
    try:
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("Z", "X", "gone"), f"background child {child} still running (state {state})"


def test_output_is_kept_when_a_background_child_holds_stdout(
    fsqueue_cmd: list[str], cli_env: dict[str, str], initialized: Path
) -> None:
    """Output printed before the command exits is the result even if a background child keeps stdout open."""
    task_id = enqueue(initialized)
    command = ["sh", "-c", "sleep 5 & echo '{\"ok\": 1}'"]
    proc = run(run_argv(fsqueue_cmd, command=command), cli_env)
    assert proc.returncode == 0, proc.stderr
    info = Queue(initialized).task(task_id)
    assert (info.state, info.result) == ("done", {"ok": 1})
