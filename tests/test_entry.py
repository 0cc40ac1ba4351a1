"""``fsqueue run`` without click: the plain form is parsed by the standard library, everything else by click.

The fast path must be indistinguishable from the click CLI except in start-up time, so the equivalence
tests run each argv both ways (``fsqueue._entry`` and ``fsqueue.cli`` directly) and compare exit
codes, output and the queue's final state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsqueue import Queue
from fsqueue._entry import RunArgs, parse_run

ENTRY = [sys.executable, "-m", "fsqueue"]
CLICK = [sys.executable, "-c", "from fsqueue.cli import main; main()"]


def test_plain_run_is_parsed_with_every_option_form() -> None:
    """Values after a space or '=', global options before `run`, `--` before the command."""
    argv = ["--root", "/q", "--debug", "run", "--agent=a", "--ttl", "5", "--max-tasks=3", "--timeout", "2.5"]
    got = parse_run([*argv, "--", "sh", "-c", "exit 0"], {})
    assert got == RunArgs(
        root="/q",
        config_path=None,
        debug=True,
        agent="a",
        ttl=5.0,
        max_tasks=3,
        timeout=2.5,
        command=("sh", "-c", "exit 0"),
    )


def test_environment_supplies_root_config_and_debug() -> None:
    """FSQUEUE_ROOT, FSQUEUE_CONFIG and FSQUEUE_DEBUG are read as click reads them; options win."""
    env = {"FSQUEUE_ROOT": "/env-q", "FSQUEUE_CONFIG": "/etc/fsq.yaml", "FSQUEUE_DEBUG": "yes"}
    got = parse_run(["run", "--agent", "a", "true"], env)
    assert got is not None
    assert (got.root, got.config_path, got.debug, got.command) == ("/env-q", "/etc/fsq.yaml", True, ("true",))
    got = parse_run(["--root", "/opt-q", "run", "--agent", "a", "--agent", "b", "true"], env)
    assert got is not None
    assert (got.root, got.agent) == ("/opt-q", "b")


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--help"],
        ["-h"],
        ["--version"],
        ["run", "--agent", "a"],  # no command
        ["run", "true"],  # no agent
        ["run", "--agent", "a", "--ttl", "0", "true"],  # below click's FloatRange
        ["run", "--agent", "a", "--ttl", "nan", "true"],
        ["run", "--agent", "a", "--max-tasks", "0", "true"],
        ["run", "--agent", "a", "--max-tasks", "1.5", "true"],
        ["run", "--agent", "a", "--timeout", "soon", "true"],
        ["run", "--agent", "a", "--bogus", "true"],
        ["run", "--agent", "a", "ls", "-l"],  # click would read options among the command's words
        ["run", "--agent", "a", "ls", "--timeout", "3"],
        ["run", "--agent"],  # option without its value
        ["--root", "", "run", "--agent", "a", "true"],
        ["--quiet", "run", "--agent", "a", "true"],
        ["enqueue", "{}"],
    ],
)
def test_anything_not_plain_goes_to_click(argv: list[str]) -> None:
    """Help, usage errors, unknown options and other commands are left to click, which reports them."""
    assert parse_run(argv, {}) is None


def test_unparseable_debug_variable_goes_to_click() -> None:
    """A FSQUEUE_DEBUG value click would refuse is not silently read as false."""
    assert parse_run(["run", "--agent", "a", "true"], {"FSQUEUE_DEBUG": "maybe"}) is None


def _both(argv: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], ...]:
    return tuple(subprocess.run([*way, *argv], env=env, capture_output=True, text=True) for way in (ENTRY, CLICK))


def test_empty_queue_behaves_the_same_both_ways(root: Path, cli_env: dict[str, str]) -> None:
    """Nothing to do: exit 0 and silence, by either path, and both beat the agent idle."""
    Queue(root, create=True)
    fast, slow = _both(["run", "--agent", "cron", "--", "true"], cli_env)
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr) == (0, "", "")
    assert (root / "status" / "cron.heartbeat").exists()


def test_a_task_runs_and_commits_the_same_both_ways(root: Path, cli_env: dict[str, str]) -> None:
    """Each path claims one task, feeds the payload to the command and commits its stdout."""
    queue = Queue(root, create=True)
    first, second = queue.enqueue({"n": 1}), queue.enqueue({"n": 2})
    fast, slow = _both(["run", "--agent", "w", "--max-tasks", "1", "--", "cat"], cli_env)
    assert fast.returncode == slow.returncode == 0
    assert fast.stderr == slow.stderr == ""
    results = sorted((queue.task(t).result for t in (first, second)), key=json.dumps)
    assert results == [{"n": 1}, {"n": 2}]  # cat echoed each payload; stdout that is JSON is stored as JSON
    assert {queue.task(t).state for t in (first, second)} == {"done"}


def test_errors_read_the_same_both_ways(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """A queue root that does not exist is the same one-line error and exit code either way."""
    env = dict(cli_env, FSQUEUE_ROOT=str(tmp_path / "missing"))
    fast, slow = _both(["run", "--agent", "w", "--", "true"], env)
    assert fast.returncode == slow.returncode != 0
    assert fast.stderr == slow.stderr
    assert fast.stderr.startswith("fsqueue: error: ") and fast.stderr.count("\n") == 1


def test_usage_errors_still_come_from_click(cli_env: dict[str, str]) -> None:
    """A malformed run falls through to click's usage message and exit 2."""
    proc = subprocess.run(
        [*ENTRY, "run", "--agent", "w", "--max-tasks", "0", "true"], env=cli_env, text=True, capture_output=True
    )
    assert proc.returncode == 2
    assert "--max-tasks" in proc.stderr


def test_plain_run_does_not_import_click(root: Path) -> None:
    """The whole idle cron run happens without loading click (the ~30 ms it costs)."""
    Queue(root, create=True)
    code = (
        "import sys\n"
        "from fsqueue._entry import main\n"
        f"sys.argv = ['fsqueue', '--root', {str(root)!r}, 'run', '--agent', 'a', '--', 'true']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'yaml', 'psutil', 'filelock')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
