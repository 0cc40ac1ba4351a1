"""``make demo``: a small agent farm on one fsqueue, with a crash in the middle.

It builds a fresh farm in ``./demo-farm`` (or ``$FSQUEUE_DEMO_DIR``), enqueues a few hundred tasks, starts
several ``fsqueue run`` agents in parallel, ``kill -9``s one of them while it is provably mid-task, shows
the dead owner in ``fsqueue locks``, recovers the task with ``fsqueue clear --dead``, kills a second agent
and lets one watchdog sweep (``fsqueue watchdog --once``) recover its task, lets the agents drain the
queue the way cron would relaunch them, and ends with ``fsqueue status``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fsqueue import Queue

HERE = Path(__file__).resolve().parent
FARM = Path(os.environ.get("FSQUEUE_DEMO_DIR") or HERE.parent / "demo-farm").resolve()
MARKER = ".fsqueue-demo-farm"  # only a directory carrying this is ever wiped
ROOT = FARM / "queue"
FSQ = [sys.executable, "-m", "fsqueue"]
STARTED: list[subprocess.Popen[bytes]] = []  # every agent, so none outlives a demo that stops early

BULK_TASKS = 290
FLAKY_TASKS = 3
DELAYED_TASKS = 5
AGENTS = 4
MAX_TASKS = 100
DEADLINE = 50.0  # seconds; the demo normally needs a fraction of this

CONFIG = """\
# Demo settings: short back-off so retried tasks come back within the demo.
ttl: 10m
max_attempts: 5
retry:
  base: 0.2s
  max: 1s
"""

TASK = """\
#!/bin/sh
# One demo task: the payload (JSON) arrives on stdin; print a JSON result on stdout.
payload=$(cat)
n=${payload#*'"n": '}
n=${n%%[!0-9]*}
here=$(dirname "$0")
case "$payload" in
*'"kind": "slow"'*)
    if [ "$FSQUEUE_ATTEMPT" = 1 ]; then
        echo "$FSQUEUE_TASK_ID $FSQUEUE_AGENT" > "$here/slow-started.fifo"  # tell the demo we are mid-task
        read -r _ < "$here/slow-release.fifo"              # then wait for a release that never comes
    fi ;;
*'"kind": "flaky"'*)
    if [ "$FSQUEUE_ATTEMPT" = 1 ]; then
        echo "upstream answered 503; giving up on this attempt" >&2
        exit 75
    fi ;;
esac
printf '{"n": %s, "square": %s, "by": "%s", "attempt": %s}\\n' "$n" "$((n * n))" "$FSQUEUE_AGENT" "$FSQUEUE_ATTEMPT"
"""


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def show(text: str) -> None:
    for line in text.rstrip("\n").splitlines():
        print(f"    {line}", flush=True)


def env() -> dict[str, str]:
    out = dict(os.environ, FSQUEUE_ROOT=str(ROOT), FSQUEUE_CONFIG=str(FARM / "fsqueue.yaml"))
    out.pop("FSQUEUE_DEBUG", None)
    return out


def fsq(*args: str) -> str:
    """Run one ``fsqueue`` command and return its stdout; stop the demo if it fails."""
    proc = subprocess.run([*FSQ, *args], env=env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"demo: `fsqueue {' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def fresh_farm() -> None:
    if FARM.exists():
        if not (FARM / MARKER).exists() and any(FARM.iterdir()):
            sys.exit(f"demo: {FARM} exists and is not a demo farm; remove it or set FSQUEUE_DEMO_DIR")
        shutil.rmtree(FARM)
    (FARM / "logs").mkdir(parents=True)
    (FARM / MARKER).touch()
    (FARM / "fsqueue.yaml").write_text(CONFIG, encoding="utf-8")
    (FARM / "task.sh").write_text(TASK, encoding="utf-8")
    (FARM / "task.sh").chmod(0o755)
    os.mkfifo(FARM / "slow-started.fifo")
    os.mkfifo(FARM / "slow-release.fifo")


def enqueue_tasks() -> int:
    """The special tasks through the CLI; the bulk through the Python API (one process, not 291 start-ups)."""
    fsq("enqueue", "--id", "slow-report", "--priority", "10", "--agent", "planner", '{"kind": "slow", "n": 0}')
    fsq("enqueue", "--id", "slow-digest", "--priority", "10", "--agent", "planner", '{"kind": "slow", "n": 1}')
    for i in range(FLAKY_TASKS):
        fsq(
            "enqueue",
            "--id",
            f"flaky-{i}",
            "--priority",
            "5",
            "--agent",
            "planner",
            json.dumps({"kind": "flaky", "n": i}),
        )
    for i in range(DELAYED_TASKS):
        fsq(
            "enqueue",
            "--id",
            f"later-{i}",
            "--delay",
            f"{1.0 + i * 0.25:g}",
            "--agent",
            "planner",
            json.dumps({"n": i}),
        )
    queue = Queue(ROOT)
    for n in range(BULK_TASKS):
        queue.enqueue({"n": n}, priority=n % 3, agent="producer")
    return 2 + FLAKY_TASKS + DELAYED_TASKS + BULK_TASKS


def start_agents(tick: int) -> dict[str, subprocess.Popen[bytes]]:
    agents = {}
    for i in range(1, AGENTS + 1):
        name = f"agent-{i}"
        log = (FARM / "logs" / f"{name}.log").open("ab")
        log.write(f"--- tick {tick}\n".encode())
        log.flush()
        agents[name] = subprocess.Popen(
            [*FSQ, "run", "--agent", name, "--max-tasks", str(MAX_TASKS), "--", str(FARM / "task.sh")],
            env=env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        STARTED.append(agents[name])
        log.close()
    return agents


def wait_for_slow_tasks(fd: int, deadline: float) -> dict[str, str]:
    """Block until both slow tasks' commands say they started; return task id -> agent running it."""
    text = ""
    while text.count("\n") < 2:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        data = os.read(fd, 256) if ready else b""
        if not data and not ready:
            sys.exit("demo: the slow tasks never started")
        text += data.decode()
    return dict(line.split() for line in text.splitlines())


def status() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fsq("status", "--json"))
    return data


def drain(start: float, agents: dict[str, subprocess.Popen[bytes]]) -> None:
    """Wait for this round of agents, then relaunch rounds (as cron would) until no work is left."""
    tick = 1
    while True:
        for proc in agents.values():
            proc.wait(timeout=max(1.0, start + DEADLINE - time.monotonic()))
        counts = status()["tasks"]
        left = counts["pending"] + counts["delayed"] + counts["running"]
        if left == 0:
            return
        if time.monotonic() - start > DEADLINE:
            sys.exit(f"demo: work still left after {DEADLINE:.0f}s: {counts}")
        if counts["pending"] == 0 and counts["running"] == 0:
            # Only delayed (or backing-off) tasks: cron would simply fire again later.
            ready = [t["ready_at"] for t in json.loads(fsq("tasks", "--state", "delayed", "--json"))]
            time.sleep(max(0.05, min(ready, default=time.time()) - time.time()))
        tick += 1
        say(f"cron tick {tick}: {counts['pending']} pending, {counts['delayed']} delayed; relaunch the agents")
        agents = start_agents(tick)


def stop_leftovers() -> None:
    """Kill agents still running (only when the demo stops early) and free a command stuck on the FIFO."""
    for proc in STARTED:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        fd = os.open(FARM / "slow-release.fifo", os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # ENXIO: nobody is waiting on it, as it should be
    os.close(fd)


def main() -> None:
    try:
        farm()
    finally:
        stop_leftovers()


def recover_by_hand(agents: dict[str, subprocess.Popen[bytes]], victim: str) -> None:
    """Kill the agent running slow-report, show its dead lock, and clear it with ``fsqueue clear --dead``."""
    proc = agents[victim]
    say(f"{victim} is mid-task on slow-report (its command said so); kill -9 {victim} (pid {proc.pid})")
    proc.kill()
    proc.wait()
    say("fsqueue locks: the dead owner is spotted at once, not after the 30-minute lease")
    show(fsq("locks"))
    say("recover it by hand: fsqueue clear --dead")
    show(fsq("clear", "--dead") or "(nothing to clear)")


def recover_by_watchdog(agents: dict[str, subprocess.Popen[bytes]], victim: str) -> None:
    """Kill the agent running slow-digest and let one watchdog sweep recover its task."""
    proc = agents[victim]
    say(f"{victim} is mid-task on slow-digest; kill -9 {victim} (pid {proc.pid}), and this time let the watchdog")
    proc.kill()
    proc.wait()
    say("fsqueue watchdog --once: one sweep, as the cron line or the systemd timer would run it")
    sweep = subprocess.run([*FSQ, "watchdog", "--once"], env=env(), capture_output=True, text=True, check=False)
    if sweep.returncode != 0:
        sys.exit(f"demo: the watchdog sweep failed: {sweep.stderr.strip()}")
    show(sweep.stderr.strip() or "(the watchdog logged nothing)")


def farm() -> None:
    start = time.monotonic()
    say(f"fresh farm in {FARM}")
    fresh_farm()
    say("fsqueue init")
    fsq("init")
    total = enqueue_tasks()
    say(
        f"enqueued {total} tasks: 2 slow (priority 10), {FLAKY_TASKS} flaky (fail once), "
        f"{DELAYED_TASKS} delayed by 1-2 s, {BULK_TASKS} quick ones at priorities 0-2"
    )
    show(fsq("status"))

    started = os.open(FARM / "slow-started.fifo", os.O_RDONLY | os.O_NONBLOCK)
    keep_open = os.open(FARM / "slow-started.fifo", os.O_WRONLY)  # so a reader never sees EOF early
    say(f"start {AGENTS} agents: fsqueue run --agent agent-N --max-tasks {MAX_TASKS} -- ./task.sh")
    agents = start_agents(1)
    running = wait_for_slow_tasks(started, start + DEADLINE)
    os.close(keep_open)
    os.close(started)

    recover_by_hand(agents, running["slow-report"])
    recover_by_watchdog(agents, running["slow-digest"])

    say("the other agents drain the queue")
    drain(start, agents)

    said = [
        line
        for log in sorted((FARM / "logs").glob("agent-*.log"))
        for line in log.read_text(encoding="utf-8").splitlines()
        if line.startswith("fsqueue run:")
    ]
    say(f"what the agents reported ({len(said)} failed attempts, each retried):")
    show("\n".join(said) or "(nothing)")
    say("fsqueue show slow-report")
    show(fsq("show", "slow-report"))
    say("fsqueue show slow-digest")
    show(fsq("show", "slow-digest"))
    say("fsqueue status")
    show(fsq("status"))
    final = status()
    counts = final["tasks"]
    ok = counts["done"] == total and counts["dead"] == 0 and not final["locks"]
    say(f"{counts['done']}/{total} tasks done, {counts['dead']} dead, in {time.monotonic() - start:.1f}s")
    if not ok:
        sys.exit("demo: the farm did not end with every task done")


if __name__ == "__main__":
    main()
