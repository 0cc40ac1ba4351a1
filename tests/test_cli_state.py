"""``fsqueue state`` and ``fsqueue steward`` end to end, each command in a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fsqueue import Queue

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def fsq(fsqueue_cmd: list[str], cli_env: dict[str, str], root: Path) -> Run:
    """Run ``fsqueue ARGS`` against a fresh test queue and return the finished process."""
    Queue(root, create=True)

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*fsqueue_cmd, *args], env=cli_env, input=input, capture_output=True, text=True, timeout=60, check=False
        )

    return run


def test_round_trip(fsq: Run) -> None:
    """submit prints a ticket; wait reports pending (8) then applied (0); get shows the document."""
    first = fsq("state", "submit", "config", '{"model": "small", "limits": {"rps": 5}}')
    assert first.returncode == 0, first.stderr
    ticket = first.stdout.strip()
    pending = fsq("state", "wait", ticket, "--timeout", "0")
    assert (pending.returncode, pending.stdout) == (8, "pending\n")
    second = fsq("state", "submit", "config", "-", input='{"limits": {"rps": null, "burst": 9}}')
    assert fsq("steward", "--once").returncode == 0
    done = fsq("state", "wait", ticket)
    assert (done.returncode, done.stdout) == (0, "applied v=1\n")
    as_json = json.loads(fsq("state", "wait", second.stdout.strip(), "--json").stdout)
    assert (as_json["state"], as_json["version"], as_json["name"]) == ("applied", 2, "config")
    snap = json.loads(fsq("state", "get", "config", "--json").stdout)
    assert snap["version"] == 2
    assert snap["document"] == {"model": "small", "limits": {"burst": 9}}
    assert [t["ticket"] for t in snap["tickets"]] == [ticket, second.stdout.strip()]
    text = fsq("state", "get", "config").stdout
    assert text.startswith("document   config\nversion    2\n")
    assert '"burst": 9' in text
    listing = fsq("state", "list").stdout.splitlines()
    assert listing[0].split() == ["DOCUMENT", "VERSION", "PUBLISHED"]
    assert listing[1].split()[:2] == ["config", "2"]


def test_conditional_update_rejected_exits_7(fsq: Run) -> None:
    """A stale --if-version is rejected: wait prints the reason and exits 7."""
    fsq("state", "submit", "lease", '{"owner": "a"}', "--if-version", "0")
    stale = fsq("state", "submit", "lease", '{"owner": "b"}', "--if-version", "0").stdout.strip()
    fsq("steward", "--once")
    got = fsq("state", "wait", stale)
    assert got.returncode == 7
    assert got.stdout == "rejected: document lease is at version 1, not 0 (if_version)\n"


def test_never_written_document(fsq: Run) -> None:
    """get on a document nobody wrote is version 0 and {} (so --if-version 0 can create it)."""
    got = json.loads(fsq("state", "get", "fresh", "--json").stdout)
    assert (got["version"], got["document"], got["published_at"]) == (0, {}, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("state", "submit", "../etc", "{}"), "document name '../etc' is refused"),
        (("state", "submit", ".hidden", "{}"), "document name '.hidden' is refused"),
        (("state", "get", "a/b"), "document name 'a/b' is refused"),
        (("state", "submit", "cfg", "{not json"), "patch is not valid JSON"),
        (("state", "submit", "cfg", "[1, 2]"), "a patch must be a JSON object"),
        (("state", "submit", "cfg", '"text"'), "a patch must be a JSON object"),
        (("state", "submit", "cfg", "[" * 5000 + "]" * 5000), "nested too deep"),
        (("state", "wait", "../../etc/passwd"), "is not a ticket"),
        (("state", "wait", "01800000000000000000-0000001-000001"), "no submission and no outcome for ticket"),
    ],
)
def test_bad_input_is_one_line_exit_1(fsq: Run, args: tuple[str, ...], message: str) -> None:
    """Bad names, patches and tickets are one `fsqueue: error:` line, exit 1, no traceback."""
    got = fsq(*args)
    assert got.returncode == 1
    assert got.stderr.startswith("fsqueue: error: ")
    assert got.stderr.count("\n") == 1
    assert message in got.stderr
    assert "Traceback" not in got.stderr


def test_bad_options_are_usage_errors(fsq: Run) -> None:
    """A negative --if-version or a zero --batch is a usage error (exit 2)."""
    assert fsq("state", "submit", "cfg", "{}", "--if-version", "-1").returncode == 2
    assert fsq("steward", "--once", "--batch", "0").returncode == 2


def test_not_a_queue_root(fsqueue_cmd: list[str], cli_env: dict[str, str], tmp_path: Path) -> None:
    """Every state command on a directory that is not a queue says so in one line."""
    env = dict(cli_env, FSQUEUE_ROOT=str(tmp_path))
    for args in (("state", "get", "cfg"), ("state", "submit", "cfg", "{}"), ("steward", "--once")):
        got = subprocess.run([*fsqueue_cmd, *args], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert got.returncode == 1
        assert got.stderr.count("\n") == 1
        assert "is not an fsqueue root" in got.stderr


def test_steward_once_is_quiet_when_idle(fsq: Run) -> None:
    """From cron: nothing pending, nothing printed."""
    got = fsq("steward", "--once")
    assert (got.returncode, got.stdout, got.stderr) == (0, "", "")


def shell_functions() -> str:
    """The fsq_state.sh block of docs/protocol.md, as published."""
    text = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    section = text[text.index("## Shared state (steward)") :]
    return section[section.index("```sh\n#!/bin/sh") + 6 : section.index("\n```\n", section.index("```sh\n#!/bin/sh"))]


@pytest.mark.skipif(shutil.which("jq") is None or shutil.which("flock") is None, reason="needs jq and flock(1)")
def test_protocol_shell_functions_interoperate(fsq: Run, root: Path, tmp_path: Path) -> None:
    """The documented shell submitter and the Python one share one ticket order and one steward."""
    script = tmp_path / "fsq_state.sh"
    script.write_text(shell_functions())
    session = f"""
        set -e
        . {script}
        a=$(fsq_state_submit config '{{"model": "small"}}' 0)
        b=$({sys.executable} -m fsqueue state submit config '{{"limits": {{"rps": 5}}}}')
        c=$(fsq_state_submit config '{{"model": "large"}}' 0)
        [ "$a" \\< "$b" ] && [ "$b" \\< "$c" ]
        fsq_state_outcome "$a"
        {sys.executable} -m fsqueue steward --once 2>/dev/null
        fsq_state_outcome "$a"; fsq_state_outcome "$b"; fsq_state_outcome "$c"
        fsq_state_get config
        fsq_state_get never-written
        fsq_state_outcome 01800000000000000000-0000001-000001 2>/dev/null || echo unknown
        fsq_state_submit ../x '{{}}' 2>/dev/null || echo refused
    """
    got = subprocess.run(
        ["sh", "-c", session],
        env={**os.environ, "FSQUEUE_ROOT": str(root)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == [
        "pending",
        "applied v=1",
        "applied v=2",
        "rejected: document config is at version 2, not 0 (if_version)",
        '{"version":2,"document":{"model":"small","limits":{"rps":5}}}',
        '{"version":0,"document":{}}',
        "unknown",
        "refused",
    ]
