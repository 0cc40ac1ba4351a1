"""The checker: the independent history, the ledgers, the fault log and the final directory, side by side.

Nothing here goes through fsqueue: ``done/``, ``dead/``, ``tasks/`` and ``records/`` are read as plain
files, and the core outcomes (lost, duplicated, unexpected, mismatched) come from ``tests/history.py``,
the checker the stress test uses. On top of it this module counts what only a chaos run has: claims
held by SIGKILLed and SIGSTOPped processes, and what became of each.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from history import Line, check, parse_history, read_finals

from chaos.ledger import Ledger, RunInfo, ledger_dir
from chaos.plan import spec


@dataclass
class Evidence:
    """Everything the run left behind, loaded once."""

    run: RunInfo
    lines: list[Line]
    done: dict[str, dict[str, Any]]
    dead: dict[str, dict[str, Any]]
    faults: list[dict[str, Any]]
    breaks: list[dict[str, Any]]  # watchdog `break` log lines, with the harness's arrival time ``t``
    watchdog_actions: Counter[str]
    enqueued: set[str] = field(default_factory=set)
    poison: set[str] = field(default_factory=set)
    offers: int = 0
    breaks_of: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task -> its breaks
    conts_of: dict[int, list[float]] = field(default_factory=dict)  # pid -> SIGCONT times

    def __post_init__(self) -> None:
        for b in self.breaks:
            self.breaks_of.setdefault(b["task"], []).append(b)
        for f in self.faults:
            if f["kind"] == "sigcont":
                self.conts_of.setdefault(f["pid"], []).append(f["t"])

    @classmethod
    def load(cls, workdir: Path) -> Evidence:
        run = RunInfo.load(workdir)
        breaks, actions = _watchdog_log(workdir / "watchdog.jsonl")
        evidence = cls(
            run=run,
            lines=parse_history(run.history),
            done=read_finals(run.root, "done"),
            dead=read_finals(run.root, "dead"),
            faults=_jsonl(workdir / "faults.jsonl"),
            breaks=breaks,
            watchdog_actions=actions,
        )
        evidence._read_ledgers(workdir)
        return evidence

    def _read_ledgers(self, workdir: Path) -> None:
        """Acknowledged ids are enqueued; an offer cut short counts only if its task exists."""
        offered: dict[str, int] = {}
        for path in sorted(ledger_dir(workdir).glob("producer-*.log")):
            ledger = Ledger.read(path)
            self.offers += len(ledger.offered)
            for n, task in ledger.acked.items():
                self.enqueued.add(task)
                offered[task] = n
            for n, task in ledger.offered.items():
                offered.setdefault(task, n)
        final = self.done.keys() | self.dead.keys()
        self.enqueued |= {task for task in offered if task in final}
        profile = self.run.profile
        self.poison = {t for t in self.enqueued if t in offered and spec(self.run.seed, offered[t], profile).poison}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _watchdog_log(path: Path) -> tuple[list[dict[str, Any]], Counter[str]]:
    breaks: list[dict[str, Any]] = []
    actions: Counter[str] = Counter()
    if not path.exists():
        return breaks, actions
    for text in path.read_text(errors="replace").splitlines():
        stamp, _pid, line = text.split(" ", 2)
        try:
            record = json.loads(line)
        except ValueError:
            actions["unparsed"] += 1  # e.g. a traceback: reported, and fails the run
            continue
        actions[record.get("action", "?")] += 1
        if record.get("action") == "break":
            breaks.append({**record, "t": float(stamp)})
    return breaks, actions


def _spread(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "max": None, "p50": None, "p95": None}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "max": round(ordered[-1], 3),
        "p50": round(statistics.median(ordered), 3),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
    }


def outcomes(ev: Evidence) -> dict[str, Any]:
    """Exactly-once, lost, unexpected, dead-letter, attempts: the task-level outcome of the run."""
    core = check(ev.lines, ev.run.root, ev.enqueued)
    commit_lines: Counter[str] = Counter()
    tokens: dict[str, set[str]] = defaultdict(set)
    starts: Counter[str] = Counter()
    for line in ev.lines:
        if line.kind == "commit":
            commit_lines[line.task] += 1
            tokens[line.task].add(line.token)
        elif line.kind == "start":
            starts[line.task] += 1
    for task, record in ev.done.items():
        tokens[task].add(record["token"])
    twice = sorted(t for t in tokens if len(tokens[t]) > 1 or commit_lines[t] > 1)
    finals = {**ev.dead, **ev.done}
    over = sorted(t for t, n in starts.items() if t in finals and n > finals[t]["task"]["max_attempts"])
    short = sorted(t for t in ev.poison & ev.dead.keys() if _attempts(ev.dead[t]) != ev.dead[t]["task"]["max_attempts"])
    dead = ev.dead.keys() & ev.enqueued
    return {
        "enqueued": len(ev.enqueued),
        "offers": ev.offers,
        "done": core.done,
        "committed_exactly_once": len(ev.done.keys() & ev.enqueued) - len(set(twice) & ev.done.keys()),
        "committed_twice": len(twice),
        "commit_unrecorded": sum(1 for t in ev.done if not commit_lines[t]),
        "lost": core.lost,
        "unexpected": core.unexpected,
        "mismatched": core.mismatched,
        "dead": len(dead),
        "poison": len(ev.poison),
        "dead_not_poison": sorted(dead - ev.poison)[:10],
        "poison_not_dead": sorted(ev.poison - dead)[:10],
        "attempts_histogram": dict(sorted(Counter(_attempts(r) for r in finals.values()).items())),
        "runs_histogram": dict(sorted(Counter(starts[t] for t in finals).items())),
        "runs_over_max_attempts": over[:10],
        "poison_dead_early": short[:10],
        "problems": {**core.problems(), **({"committed_twice": twice[:10]} if twice else {})},
    }


def _attempts(record: dict[str, Any]) -> int:
    return int(record["task"]["attempts"])


def fencing(ev: Evidence) -> dict[str, Any]:
    """What became of each claim held by a SIGSTOPped holder, and every refusal in the history."""
    fenced = {(line.task, line.token) for line in ev.lines if line.kind == "fenced"}
    committed = {(line.task, line.token) for line in ev.lines if line.kind == "commit"}
    committed |= {(task, record["token"]) for task, record in ev.done.items()}
    broken_stopped, counts = [], Counter[str]()
    for cont in (f for f in ev.faults if f["kind"] == "sigcont"):
        counts["continued_with_watchdog_waiting_on_its_guard"] += bool(cont.get("blocked_watchdog"))
    for stop in (f for f in ev.faults if f["kind"].startswith("sigstop_holder")):
        until = _continued(ev, stop)
        counts["stopped_inside_a_transition"] += bool(stop.get("in_transition"))
        for task, token in stop["held"]:
            counts["stopped_claims"] += 1
            # A break whose outcome is "cleaned" found the task already committed (the holder was stopped
            # inside its commit, after the done record): it removed leftovers and broke no live claim.
            broken = any(
                b["task"] == task
                and b.get("pid") == stop["pid"]
                and b.get("outcome") != "cleaned"
                and stop["t"] <= b["t"] <= until + ev.run.profile.ttl
                for b in ev.breaks_of.get(task, [])
            )
            outcome = "refused" if (task, token) in fenced else "committed" if (task, token) in committed else "other"
            counts[f"{outcome}{'_after_break' if broken else '_not_broken'}"] += 1
            if broken and outcome == "committed":
                broken_stopped.append(task)
    return {
        "refused_total": len(fenced),
        "stopped": dict(sorted(counts.items())),
        "broken_then_committed": broken_stopped[:10],
    }


def _continued(ev: Evidence, stop: dict[str, Any]) -> float:
    """When the process of a SIGSTOP record was continued (infinity if never)."""
    return min((t for t in ev.conts_of.get(stop["pid"], []) if t >= stop["t"]), default=float("inf"))


def recovery(ev: Evidence) -> dict[str, Any]:
    """Seconds from the SIGKILL of a holder to the watchdog's break and to the next start of its task.

    ``kill_to_break_watchdog_up`` leaves out the claims whose break waited for a watchdog restart (a
    SIGKILL of the watchdog within 3 s before the holder's kill, or between it and the break).
    """
    starts: dict[str, list[float]] = defaultdict(list)
    for line in ev.lines:
        if line.kind == "start" and line.at is not None:
            starts[line.task].append(line.at)
    watchdog_kills = [f["t"] for f in ev.faults if f["kind"].startswith("sigkill_watchdog")]
    to_claim, to_break, to_break_up, skipped = [], [], [], Counter[str]()
    for kill in (f for f in ev.faults if f["kind"].startswith("sigkill_worker")):
        for task, token in kill["held"]:
            if ev.done.get(task, {}).get("token") == token:
                skipped["committed_before_kill"] += 1
                continue
            later = [t for t in starts[task] if t > kill["t"]]
            broke = [b["t"] for b in ev.breaks_of.get(task, []) if b.get("pid") == kill["pid"]]
            if broke:
                to_break.append(min(broke) - kill["t"])
                if not any(kill["t"] - 3.0 <= k <= min(broke) for k in watchdog_kills):
                    to_break_up.append(min(broke) - kill["t"])
            if later:
                to_claim.append(min(later) - kill["t"])
            else:
                skipped["dead_lettered" if task in ev.dead else "never_reclaimed"] += 1
    return {
        "kill_to_next_start": _spread(to_claim),
        "kill_to_break": _spread(to_break),
        "kill_to_break_watchdog_up": _spread(to_break_up),
        "not_measured": skipped,
    }


def sweep_gaps(ev: Evidence, sweeps: list[float]) -> dict[str, Any]:
    """Gaps between consecutive watchdog sweeps, leaving out those that span a SIGKILL of the watchdog.

    A gap far above the interval while the watchdog ran means a sweep was stuck: no dead holder was
    recovered meanwhile (P4).
    """
    kills = [f["t"] for f in ev.faults if f["kind"].startswith("sigkill_watchdog")]
    gaps = [(b - a, a) for a, b in itertools.pairwise(sweeps) if not any(a <= k <= b for k in kills)]
    stalls = sorted((g for g in gaps if g[0] > 1.0), reverse=True)
    return {
        "sweeps": len(sweeps),
        "max_gap_alive": round(max((g for g, _ in gaps), default=0.0), 3),
        "stalls_over_1s": len(stalls),
        "stall_seconds": round(sum(g for g, _ in stalls), 1),
    }


def wrongful_breaks(ev: Evidence) -> list[str]:
    """Leases broken as expired whose holder was never SIGSTOPped around that time (P3)."""
    p = ev.run.profile
    slack = p.ttl + 4 * p.interval + 2.0
    stops = [(f["pid"], f["t"], _continued(ev, f)) for f in ev.faults if f["kind"].startswith("sigstop")]
    bad = []
    for b in ev.breaks:
        if b.get("verdict") != "expired":
            continue
        if not any(pid == b.get("pid") and t0 <= b["t"] <= t1 + slack for pid, t0, t1 in stops):
            bad.append(f"{b['task']} pid={b.get('pid')}")
    return bad


def leftovers(root: str) -> dict[str, int]:
    """Files that must not remain once the queue is drained (and staging files, which may)."""
    walk = os.walk
    return {
        "locks": len(os.listdir(os.path.join(root, "tasks"))),
        "records": len(os.listdir(os.path.join(root, "records"))),
        "ready_markers": sum(len(files) for _, _, files in walk(os.path.join(root, "ready"))),
        "owner_links": sum(1 for _, _, fs in walk(os.path.join(root, "owners")) for f in fs if f.endswith(".lock")),
        "staging_files": len(os.listdir(os.path.join(root, "staging"))),
        "quarantined": len(os.listdir(os.path.join(root, "quarantine"))),
    }
