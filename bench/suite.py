"""The benchmark suite: every system on the same workload and filesystem in one run, then docs/benchmarks.md.

Usage: python bench/suite.py [--profile quick|full] [--dir DIR] [--filesystems] [--out FILE]
                             [--tasks N] [--workers 1,8] [--repeats R] [--systems all|floor,fsqueue-api,...]
                             [--sections throughput,depth,sweep,startup] [--timeout SECONDS] [--settle]
       python bench/suite.py --render docs/bench/results.json   (rewrite the report, measure nothing)

Throughput runs are interleaved: for each repeat, every W, every filesystem, every system. With
--filesystems (root only) a journaled ext4 loop image and a tmpfs are measured beside --dir. Claim
depth, watchdog sweeps and start-up are measured on --dir only. `make bench-quick` / `make bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import extras
import machine
import report
import systems
import throughput

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("throughput", "depth", "sweep", "startup")


@dataclasses.dataclass(frozen=True)
class Profile:
    tasks: int
    workers: tuple[int, ...]
    repeats: int
    timeout: float  # per run: a system that has not drained by then is killed and reported as a timeout
    depths: tuple[int, ...]
    depth_claims: int  # per depth and round
    depth_rounds: int
    sweep_locks: tuple[int, ...]
    sweep_repeats: int
    startup_runs: int


PROFILES = {
    "quick": Profile(300, (1, 8, 32), 1, 30, (100, 10_000), 150, 2, (1_000, 5_000), 3, 10),
    "full": Profile(2_000, (1, 8, 32, 145), 3, 180, (100, 10_000, 100_000), 400, 3, (1_000, 10_000, 100_000), 5, 20),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--dir", help="where the queues are built (default: a temp dir under the cwd)")
    parser.add_argument("--filesystems", action="store_true", help="also a journaled ext4 loop image and a tmpfs")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="the Markdown report")
    parser.add_argument("--tasks", type=int, help="tasks per throughput run (profile default)")
    parser.add_argument("--workers", help="comma list of W (profile default)")
    parser.add_argument("--repeats", type=int, help="repeats of every throughput run (profile default)")
    parser.add_argument("--timeout", type=float, help="seconds before a run is killed (profile default)")
    parser.add_argument("--systems", default="all", help=f"comma list of: all, {', '.join(systems.BY_KEY)}")
    parser.add_argument(
        "--settle",
        action="store_true",
        help="sync after the enqueue, so the drain removes tasks already written back (a queue whose tasks waited)",
    )
    parser.add_argument("--render", metavar="RESULTS_JSON", help="only rewrite the report from a saved results.json")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of: {', '.join(SECTIONS)}")
    return parser.parse_args(argv)


def command_line() -> str:
    """The command as typed from the checkout, with paths made relative where they can be."""

    def rel(path: str) -> str:
        with contextlib.suppress(ValueError):
            return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else path
        return path

    return shlex.join([rel(sys.executable), rel(sys.argv[0]), *sys.argv[1:]])


def log(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:7.1f}s] {text}", flush=True)


def throughput_runs(
    chosen: list[systems.System],
    filesystems: list[machine.Filesystem],
    profile: Profile,
    started: float,
    *,
    settle: bool,
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    missing = {s.key: why for s in chosen if (why := s.unavailable())}
    for repeat in range(profile.repeats):
        for workers in profile.workers:
            for fs in filesystems:
                for system in chosen:
                    if system.key in missing:
                        skipped = throughput.Run(system.key, fs.label, workers, profile.tasks, repeat, "skipped")
                        skipped.reason = missing[system.key]
                        runs.append(skipped.to_json())
                        continue
                    root = fs.path / f"{system.key}-w{workers}-r{repeat}"
                    try:
                        run = throughput.run_once(
                            system, root, fs.label, workers, profile.tasks, repeat, profile.timeout, settle=settle
                        )
                    except Exception as exc:  # a bug in an adapter must not sink the whole suite
                        run = throughput.Run(system.key, fs.label, workers, profile.tasks, repeat, "failed")
                        run.reason = f"{type(exc).__name__}: {exc}"
                    finally:
                        systems.remove_tree(root)
                        systems.remove_tree(root.parent / f"{root.name}.out")
                    runs.append(run.to_json())
                    log(
                        started,
                        f"r{repeat} W={workers:<3} {fs.label[:28]:28} {system.key:18} {run.status:7} "
                        f"{run.rate:9,.0f}/s  double {run.double} lost {run.lost} errors {run.errors}"
                        + (f"  ({run.reason})" if run.reason else ""),
                    )
    return runs


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _compile_packages() -> None:
    """Byte-compile fsqueue and fsqueue_watchdog first, as an install does.

    Start-up is measured in fresh interpreters: with stale or missing ``.pyc`` files (a checkout just
    edited, or PYTHONDONTWRITEBYTECODE set) every one of them would compile the package again.
    """
    import compileall

    import fsqueue
    import fsqueue_watchdog

    for package in (fsqueue, fsqueue_watchdog):
        compileall.compile_dir(os.path.dirname(package.__file__ or ""), quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:  # the report from an earlier run's numbers, e.g. after changing how it is laid out
        report.render(json.loads(Path(args.render).read_text()), Path(args.out))
        return 0
    # SIGTERM (or SIGINT in a background job, where the shell ignores it) still unmounts and cleans up.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    overrides: dict[str, Any] = {"tasks": args.tasks, "repeats": args.repeats, "timeout": args.timeout}
    if args.workers:
        overrides["workers"] = tuple(int(w) for w in args.workers.split(","))
    profile = dataclasses.replace(PROFILES[args.profile], **{k: v for k, v in overrides.items() if v})
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if sections - set(SECTIONS):
        raise SystemExit(f"unknown sections {sorted(sections - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")
    chosen = systems.select(args.systems)
    _compile_packages()
    started = time.monotonic()
    facts: dict[str, Any] = machine.machine_facts()
    facts["load_start"] = facts.pop("load")
    base = machine.bench_base(args.dir)
    results: dict[str, Any] = {"command": command_line(), "profile": args.profile, "repeats": profile.repeats}
    results["settle"] = args.settle
    results.update(runs=[], depth=[], sweep=[], startup=[], errors=[])
    try:
        primary = machine.describe_dir("bench dir", base)
        mounts: contextlib.AbstractContextManager[list[machine.Filesystem]] = (
            machine.extra_filesystems(base, 2048) if args.filesystems else contextlib.nullcontext([])
        )
        with mounts as extra:
            filesystems = [primary, *extra]
            results["filesystems"] = [
                {"label": f.label, "describe": f.describe(), "options": f.options, "journal": f.journal}
                for f in filesystems
            ]
            log(started, "bench on " + "; ".join(f"{f.label} at {f.path}" for f in filesystems))
            if "throughput" in sections:
                results["runs"] = throughput_runs(chosen, filesystems, profile, started, settle=args.settle)
        measurements: dict[str, tuple[str, Callable[[], list[dict[str, Any]]]]] = {
            "depth": (
                f"claim cost at depths {profile.depths}",
                lambda: extras.claim_cost(base, list(profile.depths), profile.depth_claims, profile.depth_rounds),
            ),
            "sweep": (
                f"watchdog sweeps at {profile.sweep_locks} locks",
                lambda: extras.sweeps(base, list(profile.sweep_locks), profile.sweep_repeats),
            ),
            "startup": (
                f"start-up, {profile.startup_runs} runs each",
                lambda: extras.startup(base, profile.startup_runs),
            ),
        }
        for section, (what, measure) in measurements.items():
            if section not in sections:
                continue
            log(started, what)
            try:
                results[section] = measure()
            except Exception as exc:  # keep the throughput results of the last half hour
                results["errors"].append(f"{section}: {type(exc).__name__}: {exc}")
                log(started, f"{section} failed: {type(exc).__name__}: {exc}")
    finally:
        systems.remove_tree(base)
    facts["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results["machine"] = facts
    results["wall_s"] = time.monotonic() - started
    out = Path(args.out)
    report.render(results, out)
    log(started, f"wrote {out} and {out.parent / 'bench'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
