"""The report of a chaos run: the checker's numbers, the invariants they must meet, and a readable summary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from chaos.checker import Evidence, fencing, leftovers, outcomes, recovery, sweep_gaps, wrongful_breaks
from chaos.farm import FarmStats


def build_report(workdir: Path, stats: FarmStats, faults: Counter[str], meta: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the run, as a JSON-ready mapping; ``invariants`` says which held."""
    ev = Evidence.load(workdir)
    poison_kinds = Counter(
        "poison_crash" if "crash" in str(rec["task"]["payload"].get("kind")) else "poison_fail"
        for task, rec in ev.dead.items()
        if task in ev.poison
    )
    runs = Counter(line.task for line in ev.lines if line.kind == "start")
    injected = dict(sorted((k, v) for k, v in faults.items() if k != "sigcont"))
    injected["poison_tasks"] = len(ev.poison)
    injected["poison_runs"] = sum(runs[t] for t in ev.poison)
    report: dict[str, Any] = {
        **meta,
        "tasks": outcomes(ev),
        "fencing": {
            **fencing(ev),
            "api_refused": sum(1 for line in ev.lines if line.kind == "fenced") - _run_refused(stats),
            "run_refused_at_commit": stats.counts["run_fenced-commit"],
            "run_refused_at_renewal": stats.counts["run_fenced-renew"],
        },
        "faults": injected,
        "poison_dead_by_kind": dict(poison_kinds),
        "recovery": recovery(ev),
        "watchdog": {
            "actions": dict(sorted(ev.watchdog_actions.items())),
            "breaks_by_verdict": dict(Counter(b.get("verdict", "?") for b in ev.breaks)),
            "breaks_by_outcome": dict(Counter(b.get("outcome", "?") for b in ev.breaks)),
            "wrongful_expired_breaks": wrongful_breaks(ev)[:10],
            **sweep_gaps(ev, stats.sweeps),
        },
        "leftovers": leftovers(ev.run.root),
        "process": {"counts": dict(sorted(stats.counts.items())), "errors": stats.errors[:20]},
    }
    report["invariants"] = invariants(report)
    report["ok"] = all(report["invariants"].values())
    return report


def _run_refused(stats: FarmStats) -> int:
    return stats.counts["run_fenced-commit"] + stats.counts["run_fenced-renew"]


def invariants(report: dict[str, Any]) -> dict[str, bool]:
    """Each property the run must show; any False makes the harness exit 1."""
    tasks, fence, left = report["tasks"], report["fencing"], report["leftovers"]
    stopped = fence["stopped"]
    broken_stopped = sum(v for k, v in stopped.items() if k.endswith("_after_break"))
    actions = report["watchdog"]["actions"]
    return {
        "P1 no task committed twice": tasks["committed_twice"] == 0,
        "P1 history agrees with done/ (tokens, results)": tasks["mismatched"] == 0,
        "P1 a holder broken while stopped never committed": not fence["broken_then_committed"],
        "P1 broken stopped holders were refused": broken_stopped == 0 or fence["refused_total"] > 0,
        "P2 no acknowledged task lost": tasks["lost"] == 0,
        "P2 nothing done or dead that was never enqueued": tasks["unexpected"] == 0,
        "P2 queue drained (no lock, no record left)": left["locks"] == 0 and left["records"] == 0,
        "P3 no expired break of a holder that was not stopped": not report["watchdog"]["wrongful_expired_breaks"],
        "P5 dead-letter is exactly the poison tasks": not tasks["dead_not_poison"] and not tasks["poison_not_dead"],
        "P5 no task ran more than max_attempts times": not tasks["runs_over_max_attempts"],
        "P5 poison tasks used all their attempts": not tasks["poison_dead_early"],
        "P6 nothing quarantined (no torn file)": left["quarantined"] == 0,
        "no process or watchdog error": not report["process"]["errors"]
        and not actions.get("error")
        and not actions.get("unparsed"),
    }


def summary(report: dict[str, Any]) -> str:
    """The report as a page of text."""
    t, f, r, w = report["tasks"], report["fencing"], report["recovery"], report["watchdog"]
    workers = report["workers"]
    out = [
        f"chaos run: profile {report['profile']}, seed {report['seed']}, root {report['root']}",
        f"  command        {report['command']}",
        f"  workers        {workers['total']} ({workers['api']} API workers, {workers['run']} `fsqueue run` slots), "
        f"{workers['producers']} producers, 1 watchdog (interval {report['interval']}s, ttl {report['ttl']}s)",
        f"  wall time      {report['wall_seconds']}s (faults {report['fault_seconds']}s, "
        f"drain {report['drain_seconds']}s, check {report['check_seconds']}s)",
        "",
        f"tasks enqueued           {t['enqueued']} ({t['offers']} enqueue calls)",
        f"committed exactly once   {t['committed_exactly_once']}  ({t['commit_unrecorded']} proven by done/ only)",
        f"committed twice          {t['committed_twice']}",
        f"lost                     {t['lost']}",
        f"unexpected / mismatched  {t['unexpected']} / {t['mismatched']}",
        f"dead-letter              {t['dead']} (poison tasks: {t['poison']})",
        f"attempts histogram       {_inline(t['attempts_histogram'])}",
        f"runs per task histogram  {_inline(t['runs_histogram'])}",
        f"fenced refusals          {f['refused_total']} (API commits {f['api_refused']}, `fsqueue run` commits "
        f"{f['run_refused_at_commit']}, renewals {f['run_refused_at_renewal']})",
        f"stopped holders' claims  {_inline(f['stopped'])}",
        f"faults injected          {_inline(report['faults'])}",
        f"recovery after SIGKILL   next start max {r['kill_to_next_start']['max']}s p95 "
        f"{r['kill_to_next_start']['p95']}s p50 {r['kill_to_next_start']['p50']}s "
        f"({r['kill_to_next_start']['count']} claims)",
        f"kill to watchdog break   max {r['kill_to_break']['max']}s p95 {r['kill_to_break']['p95']}s "
        f"p50 {r['kill_to_break']['p50']}s ({r['kill_to_break']['count']} claims); with the watchdog up "
        f"throughout: max {r['kill_to_break_watchdog_up']['max']}s p95 {r['kill_to_break_watchdog_up']['p95']}s "
        f"({r['kill_to_break_watchdog_up']['count']} claims)",
        f"watchdog                 {_inline(w['actions'])}; breaks {_inline(w['breaks_by_verdict'])}",
        f"watchdog sweeps          {w['sweeps']}; longest gap while it ran {w['max_gap_alive']}s; "
        f"{w['stalls_over_1s']} stalls over 1 s ({w['stall_seconds']}s in all)",
        f"leftovers                {_inline(report['leftovers'])}",
        "",
    ]
    for name, ok in report["invariants"].items():
        out.append(f"  [{'ok' if ok else 'FAIL'}] {name}")
    problems = {**t["problems"], "errors": report["process"]["errors"], "wrongful": w["wrongful_expired_breaks"]}
    out += [f"  {k}: {v}" for k, v in problems.items() if v]
    out.append(f"result: {'PASS' if report['ok'] else 'FAIL'}")
    return "\n".join(out)


def _inline(mapping: dict[Any, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in mapping.items()) or "-"
