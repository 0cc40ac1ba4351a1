"""Medians over repeats, and each system's ratio to the floor measured in the same run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from systems import BY_KEY


@dataclass
class Cell:
    """One system at one W on one filesystem, over all repeats."""

    system: str
    filesystem: str
    workers: int
    runs: int = 0
    rate: float | None = None  # median tasks/s over the runs that drained
    p50_ms: float | None = None
    p99_ms: float | None = None
    double: int = 0
    lost: int = 0
    unexpected: int = 0
    errors: int = 0
    failures: list[str] = field(default_factory=list)  # "timeout: ..." / "failed: ..." / "skipped: ..."
    samples: list[str] = field(default_factory=list)
    floor: float | None = None  # this cell's rate / the matching floor's rate

    @property
    def clean(self) -> bool:
        return not (self.double or self.lost or self.unexpected or self.errors or self.failures)

    @property
    def measured(self) -> bool:
        return self.rate is not None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def cells(runs: list[dict[str, Any]]) -> dict[tuple[str, str, int], Cell]:
    """Group runs by (filesystem, system, W); medians over the repeats that drained."""
    grouped: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault((run["filesystem"], run["system"], run["workers"]), []).append(run)
    out: dict[tuple[str, str, int], Cell] = {}
    for key, group in grouped.items():
        cell = Cell(key[1], key[0], key[2], runs=len(group))
        drained = [r for r in group if r["status"] == "ok"]
        cell.rate = _median([r["rate"] for r in drained])
        cell.p50_ms = _median([r["p50_ms"] for r in drained])
        cell.p99_ms = _median([r["p99_ms"] for r in drained])
        for run in group:
            cell.double += run["double"]
            cell.unexpected += run["unexpected"]
            cell.errors += run["errors"]
            if run["status"] == "ok":
                cell.lost += run["lost"]
            else:
                reason = f"{run['status']}: {run['reason']}"
                if reason not in cell.failures:
                    cell.failures.append(reason)
            for sample in run["error_samples"]:
                if sample not in cell.samples and len(cell.samples) < 3:
                    cell.samples.append(sample)
        out[key] = cell
    for (fs, system, workers), cell in out.items():
        floor_key = "floor-fsync" if system in BY_KEY and BY_KEY[system].durable else "floor"
        floor = out.get((fs, floor_key, workers))
        if cell.rate is not None and floor is not None and floor.rate:
            cell.floor = cell.rate / floor.rate
    return out


def filesystems(runs: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(run["filesystem"] for run in runs))


def worker_counts(runs: list[dict[str, Any]]) -> list[int]:
    return sorted({run["workers"] for run in runs})


def system_keys(runs: list[dict[str, Any]]) -> list[str]:
    present = {run["system"] for run in runs}
    return [key for key in BY_KEY if key in present]
