"""The chaos harness: ``python tests/chaos/harness.py --profile short|chaos|soak [--seed N] [--json FILE]``.

A farm of real processes works one queue root -- long-running API workers, cron-like `fsqueue run`
slots, producers and a watchdog daemon -- while faults are injected for real (SIGKILL of workers,
producers and the watchdog mid-sweep, SIGSTOP of claim holders past their TTL, poison tasks). Then the
faults stop, the queue drains, and the checker compares the independent history and the enqueue ledgers
with the final directory. The exit status is 0 only if every invariant held. docs/reliability.md has the
figures of recent runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `chaos` and `history` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos.farm import Farm, write_config
from chaos.faults import Injector
from chaos.ledger import RunInfo
from chaos.profiles import PROFILES, Profile
from chaos.report import build_report, summary
from fsqueue import Queue, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--seed", type=int, default=None, help="seed of every random choice (printed)")
    parser.add_argument("--root", type=Path, default=None, help="queue root to create (default: WORKDIR/queue)")
    parser.add_argument("--workdir", type=Path, default=None, help="history, ledgers, logs (default: a mkdtemp)")
    parser.add_argument("--minutes", type=float, default=None, help="length of the fault phase")
    parser.add_argument("--workers", type=int, default=None, help="API workers + `fsqueue run` slots")
    parser.add_argument("--json", type=Path, default=None, help="write the report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory even when the run passes")
    return parser.parse_args(argv)


def choose_profile(args: argparse.Namespace) -> Profile:
    profile = PROFILES[args.profile]
    if args.minutes is not None:
        profile = profile.with_minutes(args.minutes)
    if args.workers is not None:
        profile = profile.with_workers(args.workers)
    return profile


def prepare(args: argparse.Namespace, seed: int, profile: Profile) -> tuple[Path, RunInfo, float]:
    """Create the work directory, the queue root and its config; return them and the startup allowance."""
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"fsqueue-chaos-{profile.name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    root = (args.root or workdir / "queue").resolve()
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"chaos: {root} is not empty; the checker needs a fresh queue root")
    config = workdir / "fsqueue.yaml"
    write_config(config, profile.ttl, profile.interval, profile.repair_every, workdir.resolve() / "watchdog.prom")
    Queue(str(root), create=True, config=load_config(str(config)))
    history = workdir / "history.log"
    history.touch()
    startup = 1.0 + 0.05 * profile.workers  # every process is past its imports before faults begin
    deadline = time.time() + startup + profile.seconds
    run = RunInfo(seed, profile, str(root), str(config), str(history), deadline)
    run.save(workdir)
    return workdir.resolve(), run, startup


def quiescent(farm: Farm) -> bool:
    """Producers finished, nothing stopped, and no lock or task record left: every task is final."""
    root = farm.run.root
    if any(m.role == "producer" and not m.done for m in farm.members) or any(m.stopped for m in farm.members):
        return False
    return not os.listdir(os.path.join(root, "tasks")) and not os.listdir(os.path.join(root, "records"))


def status(root: str, farm: Farm) -> Any:
    out = subprocess.run([*farm.fsqueue(), "--root", root, "status", "--json"], capture_output=True, check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.decode(errors="replace")}


def run_farm(farm: Farm, injector: Injector, startup: float) -> dict[str, float]:
    """Fault phase, then drain and shutdown; returns the phase durations in seconds."""
    begin = time.monotonic()
    farm.start_all()
    farm.supervise(begin + startup)
    injector.start()
    farm.supervise(time.monotonic() + farm.run.deadline - time.time())  # the deadline is wall-clock time
    injector.finish()
    faults_end = time.monotonic()
    farm.wait_for("the queue to drain", lambda: quiescent(farm), faults_end + farm.profile.drain_timeout)
    farm.shutdown(timeout=60.0)
    end = time.monotonic()
    return {"fault_seconds": round(faults_end - begin, 1), "drain_seconds": round(end - faults_end, 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    profile = choose_profile(args)
    command = shlex.join(["python", "tests/chaos/harness.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"chaos: profile {profile.name}, seed {seed}, {profile.workers} workers", flush=True)
    started = time.monotonic()
    workdir, run, startup = prepare(args, seed, profile)
    print(f"chaos: work directory {workdir}, queue root {run.root}", flush=True)
    farm = Farm(workdir, run, random.Random(f"{seed}:farm"))
    injector = Injector(farm, random.Random(f"{seed}:faults"), workdir / "faults.jsonl")
    # SIGTERM (a test's timeout, Ctrl-C from make) unwinds through the finally below, which reaps the farm.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        phases = run_farm(farm, injector, startup)
    finally:
        injector.halt.set()
        farm.kill_all()
        farm.save_timeline()
    checked = time.monotonic()
    meta = {
        "profile": profile.name,
        "seed": seed,
        "command": command if "--seed" in command else f"{command} --seed {seed}",
        "root": run.root,
        "workdir": str(workdir),
        "workers": {
            "total": profile.workers,
            "api": profile.api_workers,
            "run": profile.run_slots,
            "producers": run.producers,
        },
        "ttl": profile.ttl,
        "interval": profile.interval,
        "status": status(run.root, farm),
        **phases,
    }
    report = build_report(workdir, farm.stats, injector.counts, meta)
    report["check_seconds"] = round(time.monotonic() - checked, 1)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    print(summary(report), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    if report["ok"] and not args.keep and args.workdir is None and args.root is None:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not report["ok"]:
        print(f"chaos: evidence kept in {workdir}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
