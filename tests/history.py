"""An independent history of task runs, and a checker that compares it with the queue's final state.

Task commands append one line per event to a file the queue does not manage::

    start  <task> <pid> <token> [<time>]    the command began working on a claim
    commit <task> <pid> <token> [<time>]    complete() returned for that claim (written only after it returned)
    fenced <task> <pid> <token> [<time>]    complete() raised LeaseLost: the claim was refused

The optional fifth field is the wall-clock time of the event in seconds (``time.time()``, or bash's
``$EPOCHREALTIME``); the chaos harness (``tests/chaos/``) uses it to measure recovery latency.

Each line is a single ``os.write`` on an ``O_APPEND`` descriptor, so lines from concurrent writers never
interleave (a short write to a regular file opened for append is atomic). The checker then reads
``done/`` and ``dead/`` directly -- not through fsqueue -- and sorts every enqueued id into the outcomes
of Jepsen's queue checker: lost, duplicated (two commits), unexpected.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Kind = Literal["start", "commit", "fenced"]
KINDS: Final = frozenset({"start", "commit", "fenced"})


@dataclass(frozen=True)
class Line:
    """One parsed history line."""

    kind: Kind
    task: str
    pid: int
    token: str
    at: float | None = None


def open_history(path: str | os.PathLike[str]) -> int:
    """An append-only descriptor on the history file (created if missing)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def append(fd: int, kind: Kind, task: str, pid: int, token: str, at: float | None = None) -> None:
    """Append one line in one write; a short write would tear the history, so it is an error."""
    stamp = "" if at is None else f" {at:.6f}"
    data = f"{kind} {task} {pid} {token}{stamp}\n".encode()
    written = os.write(fd, data)
    if written != len(data):
        raise OSError(f"short append to the history: {written} of {len(data)} bytes")


def parse_history(path: str | os.PathLike[str]) -> list[Line]:
    """Every line of the history; ValueError names the first line that is torn or malformed."""
    lines: list[Line] = []
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, 1):
            parts = text.split()
            if not text.endswith("\n") or len(parts) not in (4, 5) or parts[0] not in KINDS or not parts[2].isdigit():
                raise ValueError(f"{path}:{number}: malformed history line {text!r}")
            kind: Kind = parts[0]  # type: ignore[assignment]  # checked against KINDS above
            lines.append(Line(kind, parts[1], int(parts[2]), parts[3], _stamp(parts[4:], path, number)))
    return lines


def _stamp(rest: list[str], path: str | os.PathLike[str], number: int) -> float | None:
    """The optional time field; a torn or garbled one is an error like any malformed line."""
    if not rest:
        return None
    try:
        return float(rest[0])
    except ValueError:
        raise ValueError(f"{path}:{number}: malformed time {rest[0]!r} in the history") from None


def read_finals(root: str | os.PathLike[str], state: Literal["done", "dead"]) -> dict[str, dict[str, Any]]:
    """The ``done/`` or ``dead/`` records of a queue root by task id, read as plain JSON."""
    directory = os.path.join(root, state)
    out: dict[str, dict[str, Any]] = {}
    for name in os.listdir(directory):
        if name.endswith(".json"):
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                out[name[: -len(".json")]] = json.load(handle)
    return out


@dataclass(frozen=True)
class Report:
    """Counts of each outcome; ``ids`` holds the task ids behind every count for error messages."""

    enqueued: int
    started: int
    committed_once: int
    double_commits: int
    fenced: int
    lost: int
    unexpected: int
    done: int
    dead: int
    mismatched: int
    ids: dict[str, list[str]] = field(default_factory=dict, repr=False, compare=False)

    def problems(self) -> dict[str, list[str]]:
        """The categories that must be empty in any correct run, with their first few ids."""
        bad = ("double_commits", "lost", "unexpected", "mismatched")
        return {name: self.ids[name][:10] for name in bad if self.ids.get(name)}


def check(history: list[Line], root: str | os.PathLike[str], enqueued: set[str]) -> Report:
    """Compare the history with the queue's final directory state and the ids that were enqueued."""
    done = read_finals(root, "done")
    dead = read_finals(root, "dead")
    commits: Counter[str] = Counter(line.task for line in history if line.kind == "commit")
    ids = {
        "committed_once": sorted(t for t, n in commits.items() if n == 1),
        "double_commits": sorted(t for t, n in commits.items() if n > 1),
        "lost": sorted(enqueued - done.keys() - dead.keys()),
        "unexpected": sorted((commits.keys() | done.keys() | dead.keys()) - enqueued),
        "mismatched": sorted(_mismatched(history, done, dead)),
    }
    return Report(
        enqueued=len(enqueued),
        started=len({line.task for line in history if line.kind == "start"}),
        committed_once=len(ids["committed_once"]),
        double_commits=len(ids["double_commits"]),
        fenced=sum(1 for line in history if line.kind == "fenced"),
        lost=len(ids["lost"]),
        unexpected=len(ids["unexpected"]),
        done=len(done.keys() & enqueued),
        dead=len(dead.keys() & enqueued),
        mismatched=len(ids["mismatched"]),
        ids=ids,
    )


def _mismatched(history: list[Line], done: dict[str, dict[str, Any]], dead: dict[str, dict[str, Any]]) -> set[str]:
    """Tasks on which the history and the queue disagree.

    That is: a task both done and dead; a commit line for a task that is not done, or whose done record
    carries another claim's token; a refused (``fenced``) claim whose token is the one that committed; a
    done record whose token no ``start`` line carries; a result naming another claim's token, or a pid
    that never started the task with that token.
    """
    started: dict[tuple[str, str], set[int]] = defaultdict(set)
    for line in history:
        if line.kind == "start":
            started[(line.task, line.token)].add(line.pid)
    bad = set(done.keys() & dead.keys())
    for line in history:
        committed = done.get(line.task, {}).get("token")
        if (line.kind == "commit" and line.token != committed) or (line.kind == "fenced" and line.token == committed):
            bad.add(line.task)
    for task, record in done.items():
        token = record.get("token", "")
        if (task, token) not in started or _result_disagrees(record.get("result"), token, started[(task, token)]):
            bad.add(task)
    return bad


def _result_disagrees(result: object, token: str, pids: set[int]) -> bool:
    """A ``{"pid", "token"}`` result that names another claim, or a process that never started this one."""
    if not isinstance(result, dict) or "token" not in result:
        return False
    return bool(result["token"] != token or result.get("pid") not in pids)
