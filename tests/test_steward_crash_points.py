"""A steward killed before every filesystem call of its work, then restarted: every update applied exactly once.

Each run forks a child that arms the syscall seams (``os.link``, ``rename``, ``unlink``, ``fsync``,
``write``, ``pwrite``, ``mkdir``, ``rmdir``) and calls ``os._exit`` -- no ``finally``, no cleanup,
flocks dropped by the kernel, as with SIGKILL -- just before the k-th call. For every k the test crashes
one fresh copy of the same queue at k, crashes the recovery once more at a second point, lets a third
steward finish, and compares the tree with an uncrashed run: same documents and versions (a version
counts applications, so a double apply shows), same outcome for every ticket, an empty inbox.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fsqueue import Queue
from fsqueue._state import SharedState
from fsqueue._steward import Steward, StewardSettings

SEAMS = ("link", "rename", "unlink", "fsync", "write", "pwrite", "mkdir", "rmdir")
SETTINGS = StewardSettings(batch=3, history=3)
CRASHED = 77


def build_template(root: Path) -> list[str]:
    """A queue with one published document and eight pending submissions of every kind; returns the tickets."""
    Queue(root, create=True)
    shared = SharedState(root)
    shared.submit("a", {"x": 0})
    shared.submit("a", {"y": 0})
    Steward(root, settings=SETTINGS).drain()
    tickets = [
        shared.submit("a", {"x": 1}),
        shared.submit("b", {"y": 1}, if_version=0),  # creates b
        shared.submit("a", {"z": [1, 2]}, if_version=3),  # applied: a is at 3 by then
        shared.submit("a", {"w": 1}, if_version=2),  # rejected
        shared.submit("c", {"only": "rejected"}, if_version=5),  # a document that only sees a rejection
        shared.submit("b", {"y": None, "q": 1}),
        shared.submit("a", {"x": None}),
        shared.submit("d", {"garbage": True}),
    ]
    Path(shared.paths.submission(tickets[-1])).write_bytes(b'{"format":"fsqueue/1","kind":"subm')
    return tickets


CrashRule = Callable[[int, str, tuple[Any, ...]], bool]


def at_call(k: int | None) -> CrashRule:
    """Die before the k-th seam call (never, for None)."""
    return lambda calls, name, args: calls == k


def run_child(root: Path, crash_at: int | CrashRule | None, settings: StewardSettings = SETTINGS) -> tuple[int, int]:
    """Run a steward drain in a forked child that dies before its ``crash_at``-th seam call (or when a rule says).

    Returns the child's exit code (CRASHED, or 0 when it finished) and how many seam calls it made.
    """
    rule = crash_at if callable(crash_at) else at_call(crash_at)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            calls = 0

            def armed(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
                def seam(*args: Any, **kwargs: Any) -> Any:
                    nonlocal calls
                    calls += 1
                    if rule(calls, name, args):
                        os._exit(CRASHED)
                    return real(*args, **kwargs)

                return seam

            real_write = os.write
            for name in SEAMS:
                setattr(os, name, armed(name, getattr(os, name)))
            Steward(root, settings=settings).drain()
            real_write(write_end, str(calls).encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        reported = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), int(reported or b"0")


def observe(root: Path, tickets: list[str]) -> dict[str, Any]:
    """Everything the steward is responsible for, with the root's path taken out of messages."""
    shared = SharedState(root)
    docs = {}
    for name in shared.names():
        snap = shared.read(name)
        history = sorted(os.listdir(shared.paths.history(name)))
        assert os.path.samefile(shared.paths.current(name), shared.paths.history(name, snap.version))
        docs[name] = (snap.version, snap.document, history)
    outcomes = {}
    for ticket in tickets:
        got = shared.outcome(ticket)
        outcomes[ticket] = (got.state, got.name, got.version, got.reason.replace(str(root), "<root>"))
    quarantine = [n for n in os.listdir(root / "quarantine") if not n.endswith(".why")]
    return {
        "docs": docs,
        "outcomes": outcomes,
        "inbox": os.listdir(shared.paths.inbox),
        "quarantined": len(quarantine),
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, Any], int]:
    """The template queue, its tickets, the state an uncrashed steward leaves, and its seam-call count."""
    base = tmp_path_factory.mktemp("crash")
    tickets = build_template(base / "template")
    shutil.copytree(base / "template", base / "clean", symlinks=True)
    code, calls = run_child(base / "clean", None)
    assert code == 0
    return base / "template", tickets, observe(base / "clean", tickets), calls


def test_uncrashed_run_decides_every_kind(template: tuple[Path, list[str], dict[str, Any], int]) -> None:
    """The reference run applies, rejects, quarantines and keeps bounded history as designed."""
    _, tickets, expected, calls = template
    assert calls > 50
    states = [expected["outcomes"][t][0] for t in tickets]
    assert states == ["applied", "applied", "applied", "rejected", "rejected", "applied", "applied", "rejected"]
    assert expected["docs"]["a"][:2] == (5, {"y": 0, "z": [1, 2]})
    assert expected["docs"]["b"][:2] == (2, {"q": 1})
    assert "c" not in expected["docs"]
    assert expected["inbox"] == []
    assert expected["quarantined"] == 1


def test_crash_before_every_call_then_restart(
    template: tuple[Path, list[str], dict[str, Any], int], tmp_path: Path
) -> None:
    """For every k: die before call k, die again during recovery, restart: the same tree as without crashes."""
    source, tickets, expected, calls = template
    rng = random.Random(1)
    for k in range(1, calls + 1):
        root = tmp_path / f"k{k}"
        shutil.copytree(source, root, symlinks=True)
        assert run_child(root, k)[0] == CRASHED, f"crash point {k} was not reached"
        run_child(root, rng.randint(1, calls))  # a second death, somewhere in the recovery
        assert run_child(root, None)[0] == 0
        got = observe(root, tickets)
        assert got == expected, f"after a crash before seam call {k}: {json.dumps(got, default=str)[:600]}"
        shutil.rmtree(root)


def test_decisions_survive_two_crashes_with_new_submissions_between(tmp_path: Path) -> None:
    """Died after publishing, twice, with new updates in between and one snapshot kept: none lost or redone.

    The second publication must carry the first one's decisions (their outcomes are not written yet);
    with ``history=1`` no older snapshot is left to find them in.
    """
    root = tmp_path / "q"
    Queue(root, create=True)
    shared = SharedState(root)
    one = StewardSettings(history=1)

    def before_outcomes(calls: int, name: str, args: tuple[Any, ...]) -> bool:
        return name == "link" and f"{os.sep}outcomes{os.sep}" in os.fspath(args[1])

    first = shared.submit("a", {"n": 1})
    assert run_child(root, before_outcomes, one)[0] == CRASHED
    second = shared.submit("a", {"m": 2})
    assert run_child(root, before_outcomes, one)[0] == CRASHED
    assert shared.read("a").version == 2
    assert run_child(root, None, one)[0] == 0
    assert [shared.outcome(t).describe() for t in (first, second)] == ["applied v=1", "applied v=2"]
    assert shared.read("a").document == {"n": 1, "m": 2}
    assert os.listdir(shared.paths.history("a")) == ["000000000002.json"]
