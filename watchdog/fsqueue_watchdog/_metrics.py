"""Prometheus text exposition for node_exporter's textfile collector, replaced atomically."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections import Counter

    from ._sweep import SweepReport


def render(report: SweepReport, census: dict[str, int], breaks_total: Counter[str], root: str) -> str:
    """The metrics text for one sweep."""
    label = f'root="{_escape(root)}"'
    lines = [
        "# HELP fsqueue_tasks Tasks by state, counted on the repair cadence.",
        "# TYPE fsqueue_tasks gauge",
        *(f'fsqueue_tasks{{{label},state="{s}"}} {n}' for s, n in sorted(census.items())),
        "# HELP fsqueue_locks Locks by owner: alive, foreign, lease (lease-only), corrupt.",
        "# TYPE fsqueue_locks gauge",
        *(f'fsqueue_locks{{{label},owner="{o}"}} {n}' for o, n in sorted(report.locks_by_owner.items())),
        f"fsqueue_locks_total{{{label}}} {report.locks}",
        "# HELP fsqueue_locks_expired Locks whose lease had expired at the last sweep.",
        "# TYPE fsqueue_locks_expired gauge",
        f"fsqueue_locks_expired{{{label}}} {report.locks_expired}",
        "# HELP fsqueue_agents Agents by heartbeat verdict at the last sweep.",
        "# TYPE fsqueue_agents gauge",
        *(f'fsqueue_agents{{{label},verdict="{v}"}} {n}' for v, n in sorted(report.agents.items())),
        "# HELP fsqueue_oldest_pending_age_seconds Age of the longest-waiting ready task.",
        "# TYPE fsqueue_oldest_pending_age_seconds gauge",
        f"fsqueue_oldest_pending_age_seconds{{{label}}} {report.oldest_pending_age or 0:.3f}",
        "# HELP fsqueue_lock_breaks_total Locks broken since the watchdog started, by reason.",
        "# TYPE fsqueue_lock_breaks_total counter",
        *(f'fsqueue_lock_breaks_total{{{label},reason="{r}"}} {n}' for r, n in sorted(breaks_total.items())),
        "# HELP fsqueue_watchdog_sweep_duration_seconds Duration of the last sweep.",
        "# TYPE fsqueue_watchdog_sweep_duration_seconds gauge",
        f"fsqueue_watchdog_sweep_duration_seconds{{{label}}} {report.duration:.6f}",
        "# HELP fsqueue_watchdog_last_sweep_timestamp_seconds When the last sweep ran (unix time).",
        "# TYPE fsqueue_watchdog_last_sweep_timestamp_seconds gauge",
        f"fsqueue_watchdog_last_sweep_timestamp_seconds{{{label}}} {time.time():.3f}",
    ]
    return "\n".join(lines) + "\n"


def write_metrics(path: str, text: str) -> None:
    """Replace ``path`` atomically (temp file in the same directory, fsync, rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
