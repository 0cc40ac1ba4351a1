"""The targets fsqueue is held to, each checked against the figure measured in this run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aggregate import Cell

Cells = dict[tuple[str, str, int], Cell]
FSQUEUE = ("fsqueue-api", "fsqueue-api-fsync", "fsqueue-run", "fsqueue-run-fsync")


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    outcome: str  # "pass", "miss" or "not measured: <why>"


def _rate(cells: Cells, fs: str, system: str, workers: int) -> float | None:
    cell = cells.get((fs, system, workers))
    return cell.rate if cell is not None else None


def _ratio_target(
    name: str, mine: float | None, theirs: float | None, what: str, test: Callable[[float], bool]
) -> Verdict:
    if mine is None or theirs is None or theirs == 0:
        return Verdict(name, "-", f"not measured: {what} missing in this run")
    ratio = mine / theirs
    return Verdict(name, f"{mine:,.0f} vs {theirs:,.0f} tasks/s = {ratio:.2f}x", "pass" if test(ratio) else "miss")


def throughput_targets(cells: Cells, fs: str, workers: list[int]) -> list[Verdict]:
    api, api_fsync = "fsqueue-api", "fsqueue-api-fsync"
    out = [
        _ratio_target(
            "durability off, W=8: >= 50% of the floor",
            _rate(cells, fs, api, 8),
            _rate(cells, fs, "floor", 8),
            "W=8 or the floor",
            lambda r: r >= 0.5,
        )
    ]
    for huey, label in (("huey-sqlite", "default, no fsync"), ("huey-sqlite-fsync", "fsync=True")):
        out.append(
            _ratio_target(
                f"durability off, W=8: >= 5x huey SqliteStorage ({label})",
                _rate(cells, fs, api, 8),
                _rate(cells, fs, huey, 8),
                f"W=8 or {huey}",
                lambda r: r >= 5,
            )
        )
    out.append(
        _ratio_target(
            "durability off, W=145: ahead of python-dirq",
            _rate(cells, fs, api, 145),
            _rate(cells, fs, "dirq", 145),
            "W=145 or dirq",
            lambda r: r > 1,
        )
    )
    out.append(
        _ratio_target(
            "durability off, W=145: >= 70% of fsqueue's own W=8",
            _rate(cells, fs, api, 145),
            _rate(cells, fs, api, 8),
            "W=145 or W=8",
            lambda r: r >= 0.7,
        )
    )
    for huey, label in (("huey-sqlite", "default, no fsync"), ("huey-sqlite-fsync", "fsync=True")):
        parts, ok, missing = [], True, False
        for w in workers:
            mine, theirs = _rate(cells, fs, api_fsync, w), _rate(cells, fs, huey, w)
            if mine is None or theirs is None:
                missing = True
                continue
            parts.append(f"W={w}: {mine / theirs:.2f}x")
            ok = ok and mine > theirs
        name = f"durability on: ahead of huey SqliteStorage ({label}) at every W"
        outcome = "not measured: a W is missing" if missing and not parts else ("pass" if ok else "miss")
        out.append(Verdict(name, ", ".join(parts) or "-", outcome))
    return out


def correctness_target(cells: Cells) -> Verdict:
    mine = [c for c in cells.values() if c.system in FSQUEUE]
    if not mine:
        return Verdict("fsqueue: zero double deliveries, lost tasks, errors at every W", "-", "not measured")
    double = sum(c.double for c in mine)
    lost = sum(c.lost for c in mine)
    errors = sum(c.errors + c.unexpected for c in mine)
    failed = sum(len(c.failures) for c in mine)
    runs = sum(c.runs for c in mine)
    measured = f"{double} double, {lost} lost, {errors} errors, {failed} failed runs in {runs} runs"
    clean = not (double or lost or errors or failed)
    return Verdict(
        "fsqueue: zero double deliveries, lost tasks, errors at every W", measured, "pass" if clean else "miss"
    )


def depth_target(depth: list[dict[str, Any]]) -> Verdict:
    name = "claim at 100,000 pending <= 1.5x the claim at 100"
    rows = {row["depth"]: row for row in depth}
    if 100 not in rows or 100000 not in rows:
        return Verdict(name, "-", "not measured: needs depths 100 and 100,000 (full profile)")
    ratio = rows[100000]["p50_us"] / rows[100]["p50_us"]
    measured = f"p50 {rows[100000]['p50_us']:.0f} us vs {rows[100]['p50_us']:.0f} us = {ratio:.2f}x"
    return Verdict(name, measured, "pass" if ratio <= 1.5 else "miss")


def sweep_targets(sweep: list[dict[str, Any]]) -> list[Verdict]:
    row = next((r for r in sweep if r["locks"] == 100000), None)
    names = ("sweep of 100,000 locks, warm cache <= 0.5 s", "... cold cache <= 1.5 s", "... peak RSS < 40 MB")
    if row is None:
        return [Verdict(n, "-", "not measured: needs 100,000 locks (full profile)") for n in names]
    cold = row["cold_s"]
    return [
        Verdict(names[0], f"{row['warm_s']:.3f} s", "pass" if row["warm_s"] <= 0.5 else "miss"),
        Verdict(names[1], "-", "not measured: dropping the page cache needs root")
        if cold is None
        else Verdict(names[1], f"{cold:.3f} s", "pass" if cold <= 1.5 else "miss"),
        Verdict(names[2], f"{row['peak_rss_mb']:.1f} MB", "pass" if row["peak_rss_mb"] < 40 else "miss"),
    ]


def startup_targets(startup: list[dict[str, Any]]) -> list[Verdict]:
    rows = {row["command"]: row for row in startup}
    imp, run = rows.get("python -c 'import fsqueue'"), rows.get("fsqueue run (empty queue)")
    out = []
    name = "import fsqueue <= 15 ms over bare python"
    if imp is None:
        out.append(Verdict(name, "-", "not measured"))
    else:
        out.append(Verdict(name, f"+{imp['over_ms']:.1f} ms", "pass" if imp["over_ms"] <= 15 else "miss"))
    name = "fsqueue run on an empty queue <= 4x bare python"
    if run is None:
        out.append(Verdict(name, "-", "not measured"))
    else:
        out.append(Verdict(name, f"{run['ratio']:.2f}x ({run['ms']:.0f} ms)", "pass" if run["ratio"] <= 4 else "miss"))
    return out


def all_targets(
    cells: Cells,
    fs: str,
    workers: list[int],
    depth: list[dict[str, Any]],
    sweep: list[dict[str, Any]],
    startup: list[dict[str, Any]],
) -> list[Verdict]:
    primary = {k: v for k, v in cells.items() if k[0] == fs}
    return [
        *throughput_targets(primary, fs, workers),
        correctness_target(cells),
        depth_target(depth),
        *sweep_targets(sweep),
        *startup_targets(startup),
    ]
