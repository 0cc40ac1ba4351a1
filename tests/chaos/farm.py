"""The farm: every process of a chaos run, started, supervised and restarted like cron and systemd would.

Members are API workers (restarted after they die, as ``Restart=always`` would), `fsqueue run` slots
(re-launched one launch after another with a random ``--max-tasks``, like a cron line), producers
(restarted until the fault phase ends) and one watchdog daemon (restarted after a planned downtime,
alternately as ``fsqueue watchdog`` and ``fsqueue-watchdog``). Each child leads its own session, so one
``killpg`` reaches everything it started. Every signal to a member is sent under ``Farm.lock``, the lock
under which members are reaped: a PID is never signalled after it was reaped and could be reused.

The supervisor never polls: it blocks on a pidfd per member (readable when that process exits), on
inotify of the work directory (the watchdog renames its metrics file there after every sweep) and, while
waiting for the queue to drain, on inotify of the queue's ``tasks/`` and ``records/``. Its only timeouts
are the planned restart times of members and the deadline of the phase it is in.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from history import append, open_history
from inotify import IN_MOVED_TO, Inotify

from chaos.launches import settle_launch
from chaos.ledger import RunInfo, ledger_dir, open_append

Role = Literal["api", "run", "producer", "watchdog"]
TESTS_DIR = str(Path(__file__).resolve().parent.parent)
RUN_TASK = str(Path(__file__).resolve().parent / "run_task.sh")
BIN = Path(sys.executable).parent


@functools.cache
def _prctl() -> Any:
    """libc's prctl, resolved in the parent: the forked child only calls it."""
    return ctypes.CDLL(None, use_errno=True).prctl


def _die_with_harness(prctl: Any) -> None:  # runs in the forked child, before exec
    # PR_SET_PDEATHSIG: if the harness dies, even by SIGKILL, so does the farm. The signal follows the
    # death of the *thread* that forked, so every member is started from the main thread (``tick``).
    prctl(1, signal.SIGKILL)


@dataclass
class Member:
    """One supervised place in the farm; ``proc`` is the current process in it, if any."""

    role: Role
    name: str
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float = 0.0  # monotonic time of the next (re)start
    starts: int = 0
    started: float = 0.0  # monotonic time of the last start
    stopped: bool = False  # SIGSTOPped by the fault injector, not yet continued
    killed: bool = False  # SIGKILLed on purpose: its death is not an error
    done: bool = False  # finished for good (a producer past the deadline)
    log: Path | None = None
    offset: int = 0  # a run slot: where the current launch's part of the log begins
    pidfd: int = -1  # readable once the current process exits (registered with the farm's selector)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class FarmStats:
    """Counts the farm itself sees; the checker adds them to its report."""

    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    sweeps: list[float] = field(default_factory=list)  # end times of watchdog sweeps (metrics file mtime)
    watchdog_starts: list[float] = field(default_factory=list)


class Farm:
    """Starts and supervises every member; ``tick()`` reaps, settles launches and restarts."""

    def __init__(self, workdir: Path, run: RunInfo, rng: random.Random) -> None:
        self.workdir = workdir
        self.run = run
        self.profile = run.profile
        self.rng = rng
        self.lock = threading.RLock()
        self.stats = FarmStats()
        self.draining = False
        self.history_fd = open_history(run.history)
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        ledger_dir(workdir).mkdir(exist_ok=True)
        self.env = dict(
            os.environ,
            FSQUEUE_ROOT=run.root,
            FSQUEUE_CONFIG=run.config,
            CHAOS_HISTORY=run.history,
            PYTHONPATH=os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])),
        )
        self.env.pop("FSQUEUE_DEBUG", None)
        p = self.profile
        self.members = [Member("watchdog", "watchdog", log=self.logs / "watchdog.log")]
        self.members += [Member("api", f"api-{n}", log=self.logs / f"api-{n}.log") for n in range(p.api_workers)]
        self.members += [Member("run", f"run-{n}", log=self.logs / f"run-{n}.log") for n in range(p.run_slots)]
        self.members += [
            Member("producer", f"producer-{n}", log=self.logs / f"producer-{n}.log") for n in range(run.producers)
        ]
        self.watchdog_log = open_append(workdir / "watchdog.jsonl")
        self.metrics = workdir / "watchdog.prom"
        self.watchdog_down_until = 0.0
        self.selector = selectors.DefaultSelector()
        self.sweep_ends = Inotify([workdir], IN_MOVED_TO)
        self.selector.register(self.sweep_ends, selectors.EVENT_READ, "sweep")

    # -- starting -------------------------------------------------------------------------------------

    def fsqueue(self, name: str = "fsqueue") -> list[str]:
        path = BIN / name
        if path.exists():
            return [str(path)]
        module = "fsqueue_watchdog" if name == "fsqueue-watchdog" else "fsqueue"
        return [sys.executable, "-m", module]

    def argv(self, member: Member) -> list[str]:
        python = [sys.executable, "-m"]
        if member.role == "api":
            style = "ctx" if int(member.name.split("-")[1]) % 2 == 0 else "manual"
            return [*python, "chaos.api_worker", str(self.workdir), member.name, style]
        if member.role == "producer":
            return [*python, "chaos.producer", str(self.workdir), member.name.split("-")[1]]
        if member.role == "run":
            tasks = str(self.rng.randint(1, 8))
            return [*self.fsqueue(), "run", "--agent", member.name, "--max-tasks", tasks, "--", "bash", RUN_TASK]
        # The watchdog: alternately through the main CLI and its own entry point (both are documented).
        prog = [*self.fsqueue(), "watchdog"] if member.starts % 2 == 0 else self.fsqueue("fsqueue-watchdog")
        return [*prog, "--interval", str(self.profile.interval), "--log-format", "json"]

    def start(self, member: Member) -> None:
        """Start the member's next process (the caller holds the lock)."""
        assert member.log is not None
        env = dict(self.env, CHAOS_LAUNCH_LOG=str(member.log))
        with member.log.open("ab") as log:
            member.offset = log.tell()
            stderr: int | IO[bytes] = subprocess.PIPE if member.role == "watchdog" else log
            member.proc = subprocess.Popen(
                self.argv(member),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log if member.role != "run" else subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=functools.partial(_die_with_harness, _prctl()),  # the child only calls prctl
            )
        # Under the lock, like every reap: the process cannot have been reaped yet, so its pid is its own.
        member.pidfd = os.pidfd_open(member.proc.pid)
        self.selector.register(member.pidfd, selectors.EVENT_READ, member)
        member.starts += 1
        member.started = time.monotonic()
        member.killed = member.stopped = False
        self.stats.counts[f"starts_{member.role}"] += 1
        if member.role == "watchdog":
            self.stats.watchdog_starts.append(time.time())
            threading.Thread(target=self._read_watchdog, args=(member.proc,), daemon=True).start()

    def _read_watchdog(self, proc: subprocess.Popen[bytes]) -> None:
        """Stamp each watchdog log line with its arrival time (the daemon flushes every line)."""
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            os.write(self.watchdog_log, f"{time.time():.6f} {proc.pid} {line}\n".encode())
        proc.stderr.close()

    def start_all(self) -> None:
        with self.lock:
            for member in self.members:
                self.start(member)

    # -- supervising ----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Reap what exited, settle finished launches, start what is due."""
        now = time.monotonic()
        self._note_sweep()
        with self.lock:
            for member in self.members:
                if member.proc is not None and member.proc.poll() is not None:
                    self._reaped(member, member.proc.returncode, now)
                    self._close_pidfd(member)
                    member.proc = None
                if self._due(member, now):
                    self.start(member)

    def _close_pidfd(self, member: Member) -> None:
        if member.pidfd >= 0:
            self.selector.unregister(member.pidfd)
            os.close(member.pidfd)
            member.pidfd = -1

    def _next_start(self, now: float) -> float:
        """The monotonic time at which the next member is due to (re)start; inf if none is."""
        due = []
        for member in self.members:
            if member.proc is not None or member.done or self.draining:
                continue
            at = member.restart_at
            if member.role == "watchdog":
                at = max(at, now + self.watchdog_down_until - time.time())
            due.append(at)
        return min(due, default=float("inf"))

    def wait(self, until: float) -> None:
        """Block until a member exits, a sweep ends, the watched queue changes, a restart is due, or ``until``."""
        now = time.monotonic()
        with self.lock:
            wake = min(until, self._next_start(now))
        for key, _ in self.selector.select(max(0.0, wake - now)):
            if isinstance(key.fileobj, Inotify):
                key.fileobj.drain()
            # A readable pidfd stays readable until tick() reaps its process and closes it.

    def supervise(self, until: float) -> None:
        """Reap, relaunch and note sweeps until the monotonic time ``until``."""
        while time.monotonic() < until:
            self.tick()
            self.wait(until)

    def _note_sweep(self) -> None:
        """The watchdog rewrites its metrics file after every sweep: its mtime is when that sweep ended."""
        try:
            ended = os.stat(self.metrics).st_mtime
        except FileNotFoundError:
            return
        if not self.stats.sweeps or ended != self.stats.sweeps[-1]:
            self.stats.sweeps.append(ended)

    def _due(self, member: Member, now: float) -> bool:
        if member.proc is not None or member.done or self.draining or now < member.restart_at:
            return False
        return member.role != "watchdog" or time.time() >= self.watchdog_down_until

    def _reaped(self, member: Member, code: int, now: float) -> None:
        if member.role == "run":
            ran = self._settle_run(member, exited=code >= 0)
            member.restart_at = now + (self.rng.uniform(0.0, 0.05) if ran else self.rng.uniform(0.3, 0.8))
            return
        if member.role == "producer" and code == 0:
            member.done = True
            return
        expected = (
            (member.killed and code == -signal.SIGKILL)
            or (self.draining and code in (0, -signal.SIGTERM))
            # An API worker SIGKILLs itself on a poison-crash task.
            or (member.role == "api" and code == -signal.SIGKILL)
        )
        if not expected:
            self.stats.errors.append(f"{member.name} exited {code}: {self.tail(member)}")
        member.restart_at = now + self.rng.uniform(0.1, 0.5)

    def _settle_run(self, member: Member, *, exited: bool) -> bool:
        """Append ``commit``/``fenced`` lines for what this launch settled; True if it ran a task."""
        assert member.log is not None
        with member.log.open("rb") as log:
            log.seek(member.offset)
            text = log.read().decode(errors="replace")
        launch = settle_launch(text, exited=exited)
        stamp = time.time()
        for claim in launch.settled:
            self.stats.counts[f"run_{claim.outcome}"] += 1
            if claim.outcome == "commit":
                append(self.history_fd, "commit", claim.task, claim.pid, claim.token, stamp)
            elif claim.outcome.startswith("fenced"):
                append(self.history_fd, "fenced", claim.task, claim.pid, claim.token, stamp)
        self.stats.errors += [f"{member.name}: {line}" for line in launch.errors]
        return bool(launch.settled)

    def tail(self, member: Member, size: int = 600) -> str:
        if member.log is None or not member.log.exists():
            return ""
        return member.log.read_bytes()[-size:].decode(errors="replace").replace("\n", " | ")

    def alive(self, role: Role | None = None) -> list[Member]:
        with self.lock:  # alive() may reap: never between a start and its pidfd_open
            return [m for m in self.members if m.alive() and (role is None or m.role == role)]

    def by_pid(self) -> dict[int, Member]:
        with self.lock:
            return {m.proc.pid: m for m in self.members if m.proc is not None and m.alive()}

    # -- signals --------------------------------------------------------------------------------------

    def signal(self, member: Member, sig: int) -> bool:
        """Send ``sig`` to the member's process if it still runs (the caller holds the lock)."""
        if not member.alive():
            return False
        assert member.proc is not None
        if sig == signal.SIGKILL:
            member.killed = True
        os.kill(member.proc.pid, sig)
        return True

    def wait_for(self, what: str, done: Callable[[], bool], deadline: float) -> bool:
        """Supervise until ``done()`` is true (checked after every exit, sweep and queue change) or the deadline."""
        root = self.run.root
        # Watched before the first check, so a change between a check and the next wait still wakes it.
        with Inotify([os.path.join(root, "tasks"), os.path.join(root, "records")]) as changes:
            self.selector.register(changes, selectors.EVENT_READ, "queue")
            try:
                while True:
                    self.tick()
                    if done():
                        return True
                    if time.monotonic() >= deadline:
                        break
                    self.wait(deadline)
            finally:
                self.selector.unregister(changes)
        self.stats.errors.append(f"timed out waiting for {what}")
        return False

    def shutdown(self, timeout: float) -> None:
        """Stop restarting; SIGTERM API workers and the watchdog; let `fsqueue run` launches finish."""
        with self.lock:
            self.draining = True
            for member in self.alive():
                if member.role in ("api", "watchdog"):
                    os.kill(member.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]  # alive() checked it
        self.wait_for("every process to exit", lambda: not self.alive(), time.monotonic() + timeout)
        self.tick()

    def save_timeline(self) -> None:
        """Watchdog starts and sweep ends, one time a line, for reading a run after the fact."""
        for name, times in (("watchdog-starts.txt", self.stats.watchdog_starts), ("sweeps.txt", self.stats.sweeps)):
            (self.workdir / name).write_text("".join(f"{t:.6f}\n" for t in times))

    def kill_all(self) -> None:
        """SIGCONT and SIGKILL every member's process group, then reap: nothing outlives the harness."""
        with self.lock:
            self.draining = True
            for member in self.members:
                if member.proc is None:
                    continue
                if member.proc.poll() is None:
                    for sig in (signal.SIGKILL, signal.SIGCONT):
                        try:
                            os.killpg(member.proc.pid, sig)
                        except ProcessLookupError:
                            pass
                member.proc.wait()  # a watchdog's stderr pipe is closed by its reader thread at EOF
                self._close_pidfd(member)
        self.selector.close()
        self.sweep_ends.close()
        os.close(self.history_fd)


def write_config(path: Path, run_ttl: float, interval: float, repair_every: float, metrics: Path) -> None:
    """The one config file every process reads (FSQUEUE_CONFIG): short leases, short back-off, fsync."""
    settings = {
        "ttl": f"{run_ttl}s",
        "max_attempts": 40,
        "durability": "fsync",
        # A broken or failed attempt is retried after 25-400 ms, so recovery is measured, not back-off.
        "retry": {"base": "50ms", "max": "400ms"},
        "watchdog": {
            "interval": f"{interval}s",
            "repair_every": f"{repair_every}s",
            "staging_max_age": "30s",
            "log_format": "json",
            "metrics": str(metrics),
        },
    }
    path.write_text(json.dumps(settings, indent=2) + "\n")  # JSON is YAML
