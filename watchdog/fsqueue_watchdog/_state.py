"""What a sweep must remember for the next one, kept in ``<root>/watchdog.state.json``.

A one-shot watchdog (cron, systemd timer) is a new process every run; without this file it would
never see a lease expired "on two consecutive sweeps", and it would redo the slow repair pass every
minute. The file is replaced atomically; a missing or corrupt one only costs one extra sweep.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from fsqueue._fsio import publish_replace, read_nofollow
from fsqueue._identity import boot_id

STATE_FILE = "watchdog.state.json"


@dataclass
class SweepState:
    """The two-sweep memory, when the slow passes last ran, and the boot they ran in."""

    expired: dict[str, tuple[int, int]] = field(default_factory=dict)
    repaired_at: float | None = None
    boot_id: str = ""
    verdicts: dict[str, str] = field(default_factory=dict)


def load_state(root: str) -> SweepState:
    """The saved state, or a fresh one (first run, another boot, or an unreadable file)."""
    try:
        data = json.loads(read_nofollow(os.path.join(root, STATE_FILE))[0])
        expired = {str(k): (int(v[0]), int(v[1])) for k, v in data["expired"].items()}
        repaired = data["repaired_at"]
        verdicts = {str(k): str(v) for k, v in data.get("verdicts", {}).items()}
        state = SweepState(expired, None if repaired is None else float(repaired), str(data["boot_id"]), verdicts)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return SweepState()
    if state.boot_id != boot_id():
        return SweepState()  # after a reboot every judgement starts over, including the unindexed locks
    return state


def save_state(root: str, staging: str, state: SweepState) -> None:
    data = {
        "format": "fsqueue/1",
        "kind": "watchdog-state",
        "boot_id": boot_id(),
        "repaired_at": state.repaired_at,
        "expired": {k: list(v) for k, v in state.expired.items()},
        "verdicts": state.verdicts,
    }
    publish_replace(staging, (json.dumps(data) + "\n").encode(), os.path.join(root, STATE_FILE), durable=False)
