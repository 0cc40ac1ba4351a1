"""Files shared by the harness and its processes: the run description and the producers' enqueue ledgers.

A ledger is one append-only file per producer. Before each enqueue the producer appends
``offer <n> <id or *> <pid> <time>``; after the enqueue returned (or `fsqueue enqueue` exited 0 and
printed the id) it appends ``ack <n> <id> <pid> <time>``. Each line is one ``os.write`` on an
``O_APPEND`` descriptor. An acknowledged id is a task the queue promised to keep (P2); an offer without
an ack is an enqueue cut short by a SIGKILL, which the restarted producer repeats with ``if_absent``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chaos.profiles import Profile


@dataclass(frozen=True)
class RunInfo:
    """What every process of the farm needs to know, written once to ``<workdir>/run.json``."""

    seed: int
    profile: Profile
    root: str
    config: str
    history: str
    deadline: float  # wall-clock end of the fault phase: producers stop offering new tasks then

    @property
    def producers(self) -> int:
        return self.profile.api_producers + self.profile.cli_producers

    def is_cli_producer(self, index: int) -> bool:
        return index >= self.profile.api_producers

    def save(self, workdir: Path) -> None:
        (workdir / "run.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> RunInfo:
        data: dict[str, Any] = json.loads((workdir / "run.json").read_text())
        profile = data.pop("profile")
        profile["work"] = tuple(profile["work"])
        return cls(profile=Profile(**profile), **data)


@dataclass
class Ledger:
    """The offers and acknowledgements of one producer, by spec number."""

    offered: dict[int, str]  # n -> id ("*" when fsqueue generates it)
    acked: dict[int, str]

    @classmethod
    def read(cls, path: Path) -> Ledger:
        ledger = cls({}, {})
        if not path.exists():
            return ledger
        with path.open(encoding="utf-8") as handle:
            for number, text in enumerate(handle, 1):
                parts = text.split()
                if not text.endswith("\n") or len(parts) != 5 or parts[0] not in ("offer", "ack"):
                    raise ValueError(f"{path}:{number}: malformed ledger line {text!r}")
                (ledger.offered if parts[0] == "offer" else ledger.acked)[int(parts[1])] = parts[2]
        return ledger


def ledger_dir(workdir: Path) -> Path:
    return workdir / "ledger"


def append_line(fd: int, *fields: object) -> None:
    """One line, one write: concurrent appenders never interleave."""
    data = (" ".join(str(f) for f in fields) + f" {time.time():.6f}\n").encode()
    if os.write(fd, data) != len(data):
        raise OSError(f"short append of {data!r}")


def open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
