"""``make demo``: a small agent farm on one fsqueue, with a crash in the middle.

It builds a fresh farm in ``./demo-farm`` (or ``$FSQUEUE_DEMO_DIR``), enqueues a few hundred tasks, starts
several ``fsqueue run`` agents in parallel, ``kill -9``s one of them while it is provably mid-task, shows
the dead owner in ``fsqueue locks``, recovers the task with ``fsqueue clear --dead``, kills a second agent
and lets one watchdog sweep (``fsqueue watchdog --once``) recover its task, lets the agents drain the
queue the way cron would relaunch them, and shows ``fsqueue status``. A last act ``kill -9``s an upstream
agent that beats every second and shows its downstream agent switching to degraded standalone mode
(``fsqueue check`` exits 6, ``fsqueue agents`` shows the writer ``degraded``).
"""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fsqueue import Queue, load_config

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
# A short grace, so that the scraper, which promises a beat every second, is stale 1.5 s after its last one.
heartbeats:
  grace: 0.5s
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
        "$here/bin/fsqueue" emit "$FSQUEUE_AGENT" slow.started --field task="$FSQUEUE_TASK_ID"  # telemetry
        echo "$FSQUEUE_TASK_ID $FSQUEUE_AGENT" > "$here/slow-started.fifo"  # tell the demo we are mid-task
        read -r _ < "$here/slow-release.fifo"              # then wait for a release that never comes
    fi ;;
*'"kind": "flaky"'*)
    if [ "$FSQUEUE_ATTEMPT" = 1 ]; then
        "$here/bin/fsqueue" emit "$FSQUEUE_AGENT" error --field task="$FSQUEUE_TASK_ID" --field reason="upstream 503"
        echo "upstream answered 503; giving up on this attempt" >&2
        exit 75
    fi ;;
esac
printf '{"n": %s, "square": %s, "by": "%s", "attempt": %s}\\n' "$n" "$((n * n))" "$FSQUEUE_AGENT" "$FSQUEUE_ATTEMPT"
"""

SCRAPER = """\
\"\"\"The demo's upstream agent: publish a feed, then beat every second (from the heartbeat thread) until killed.\"\"\"

import json
import os
import threading
import time

from fsqueue import Queue, emit, load_config

queue = Queue(os.environ["FSQUEUE_ROOT"], config=load_config(os.environ["FSQUEUE_CONFIG"]))
with queue.heartbeat("scraper", interval=1.0, message="watching the feeds"):
    feed = os.path.join(os.path.dirname(os.path.abspath(__file__)), "feed.json")
    with open(feed + ".tmp", "w", encoding="utf-8") as out:
        json.dump({"at": time.time(), "headlines": ["fsqueue survives kill -9"]}, out)
    os.replace(feed + ".tmp", feed)
    emit("scraper", "feed.published", headlines=1)  # telemetry: one line, no lock; sealed when the writer is gone
    print("beating", flush=True)  # the first beat and the feed are on disk: the demo may go on
    threading.Event().wait()  # nothing else to do; the heartbeat thread beats until kill -9 ends the process
"""

WRITER = """\
#!/bin/sh
# The demo's downstream agent: a digest from the scraper's fresh feed while the scraper beats, and from
# the last good feed it kept when the scraper's heartbeat is stale (degraded standalone mode).
here=$(dirname "$0")
if fsqueue check scraper; then
    cp "$here/feed.json" "$here/last-good-feed.json"
    fsqueue beat writer --state ok --message "digest from the fresh feed"
    fsqueue emit writer digest --field mode=full
    echo "writer: fsqueue check scraper exited 0: full mode, digest from the fresh feed"
else
    status=$?
    [ "$status" -eq 6 ] || exit "$status"  # 6 is "stale"; anything else is an error, not a dead upstream
    fsqueue beat writer --state degraded --message "scraper is stale; digest from the last good feed"
    fsqueue emit writer digest --field mode=degraded
    echo "writer: fsqueue check scraper exited $status: degraded mode, digest from the last good feed"
fi
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
    (FARM / "scraper.py").write_text(SCRAPER, encoding="utf-8")
    (FARM / "writer.sh").write_text(WRITER, encoding="utf-8")
    (FARM / "writer.sh").chmod(0o755)
    # writer.sh calls `fsqueue` by name: give it the CLI of the Python that runs this demo.
    (FARM / "bin").mkdir()
    shim = FARM / "bin" / "fsqueue"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m fsqueue "$@"\n', encoding="utf-8")
    shim.chmod(0o755)


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


def run_writer() -> None:
    """Run writer.sh once, as its cron line would, and show what it printed."""
    agent_env = dict(env(), PATH=f"{FARM / 'bin'}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    proc = subprocess.run([str(FARM / "writer.sh")], env=agent_env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"demo: writer.sh exited {proc.returncode}: {proc.stderr.strip()}")
    show(proc.stdout + proc.stderr)


def degraded_mode(start: float) -> None:
    """Kill an upstream agent that beats, and show its downstream switching to degraded standalone mode."""
    say('degraded mode: "scraper" beats every second (queue.heartbeat, interval 1 s); "writer" uses its feed')
    scraper = subprocess.Popen([sys.executable, str(FARM / "scraper.py")], env=env(), stdout=subprocess.PIPE)
    STARTED.append(scraper)
    assert scraper.stdout is not None
    ready, _, _ = select.select([scraper.stdout], [], [], max(1.0, start + DEADLINE - time.monotonic()))
    if not ready or scraper.stdout.readline() != b"beating\n":
        sys.exit("demo: the scraper never started beating")
    say("writer.sh while the scraper beats: `if fsqueue check scraper; then ... else ... fi`")
    run_writer()

    queue = Queue(ROOT, config=load_config(str(FARM / "fsqueue.yaml")))
    say(f"kill -9 scraper (pid {scraper.pid}): nobody tells the writer, but the scraper's beats stop")
    scraper.kill()
    scraper.wait()
    last = queue.last_beat("scraper")
    if last is None:
        sys.exit("demo: the scraper left no heartbeat")
    # A dead process does not beat, so this heartbeat is final: it turns stale once it is older than its
    # interval plus the grace. Wait for that moment (under 2 s away), plus a margin so the age exceeds it.
    stale_at = last.at + last.interval + queue.config.heartbeat_grace
    time.sleep(min(2.0, max(0.0, stale_at - time.time())) + 0.1)
    say("writer.sh again, 1.5 s after the last beat: it does not hang waiting for a feed that is not coming")
    run_writer()
    say("fsqueue agents: fsqueue run beat for agent-N; the scraper is late, its process gone; the writer is degraded")
    fsq("spool", "collect")  # the killed scraper's open segment is sealed on proof of its death, then archived
    show(fsq("agents"))
    say("fsqueue spool export --agent scraper --agent writer: the same story, from the telemetry")
    show(fsq("spool", "export", "--agent", "scraper", "--agent", "writer"))
    say("fsqueue watchdog --once notices the silence too")
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
    say("fsqueue spool collect (the agents' telemetry, archived exactly once), then fsqueue status")
    fsq("spool", "collect")
    show(fsq("status"))
    final = status()
    counts = final["tasks"]
    ok = counts["done"] == total and counts["dead"] == 0 and not final["locks"]
    say(f"{counts['done']}/{total} tasks done, {counts['dead']} dead, in {time.monotonic() - start:.1f}s")
    if not ok:
        sys.exit("demo: the farm did not end with every task done")

    degraded_mode(start)
    say(f"demo finished in {time.monotonic() - start:.1f}s")


if __name__ == "__main__":
    main()
