"""What one `fsqueue run` launch settled, read from its slot's launch log.

The task command appends ``task-start <task> <token> <pid>`` to the log as it begins (run_task.sh);
`fsqueue run` writes its own stderr to the same ``O_APPEND`` file, one line per task that did not
complete (docs/cli.md, "Messages on stderr"). `fsqueue run` settles its tasks one after another and
prints a task's message before it claims the next, so reading the log in order tells, for each claim:
refused at the commit or at a renewal (fenced), failed, or -- with no message -- committed. Only the
last claim of a launch that was SIGKILLed (or that ended on an ``fsqueue: error:``) is unknown; the
checker then asks ``done/`` whether that token committed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

Outcome = Literal["commit", "fenced-commit", "fenced-renew", "failed", "unknown"]

LOST: Final = re.compile(r"^fsqueue run: lease on task (\S+) was lost (while the command ran|before the commit)")
FAILED: Final = re.compile(r"^fsqueue run: task ([^\s:]+)")
ERROR_MARKS: Final = ("fsqueue: error:", "Traceback", "fsqueue run: error")


@dataclass(frozen=True)
class Settled:
    """One claim a launch ran, and how it ended."""

    task: str
    token: str
    pid: int  # the task command's pid, as in its ``start`` line
    outcome: Outcome


@dataclass(frozen=True)
class Launch:
    """The claims of one launch, and the lines that reported an error of the queue itself."""

    settled: list[Settled]
    errors: list[str]


def settle_launch(text: str, *, exited: bool) -> Launch:
    """Read one launch's part of its slot log; ``exited`` is False when the launch died by a signal."""
    order: list[list[str]] = []  # [task, token, pid, outcome or ""], in start order
    errors: list[str] = []
    errored_after_last_start = False
    for line in text.splitlines():
        if line.startswith("task-start "):
            _, task, token, pid = line.split()
            order.append([task, token, pid, ""])
            errored_after_last_start = False
        elif match := LOST.match(line):
            _settle_latest(order, match[1], "fenced-renew" if match[2].startswith("while") else "fenced-commit")
        elif match := FAILED.match(line):
            _settle_latest(order, match[1], "failed")
        elif line.startswith(ERROR_MARKS):
            errors.append(line)
            errored_after_last_start = True
    settled = []
    for i, (task, token, pid, outcome) in enumerate(order):
        if not outcome:
            in_flight = i == len(order) - 1 and (not exited or errored_after_last_start)
            outcome = "unknown" if in_flight else "commit"
        settled.append(Settled(task, token, int(pid), outcome))  # type: ignore[arg-type]  # a literal above
    return Launch(settled, errors)


def _settle_latest(order: list[list[str]], task: str, outcome: Outcome) -> None:
    for entry in reversed(order):
        if entry[0] == task and not entry[3]:
            entry[3] = outcome
            return
