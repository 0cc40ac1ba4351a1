"""Faults injected for real, at random moments chosen by the seeded RNG, each recorded in ``faults.jsonl``.

- ``sigkill_worker``: SIGKILL of an API worker or an `fsqueue run` process, most often one that holds a
  claim (found by reading ``tasks/*.lock`` directly), so that its task has to be recovered (P4).
- ``sigstop_holder``: SIGSTOP of a claim holder for longer than its TTL, then SIGCONT as soon as the
  watchdog has broken the stopped claims (their lock is gone or holds another token), or after a bound.
  The holder still exists when its lease is broken; its later commit must be refused (P1). Each stop
  also records, from ``/proc/locks``, whether the holder was stopped inside a transition (holding a
  guard's flock) and whether the watchdog was waiting for that flock when the holder was continued.
- ``sigkill_producer``: SIGKILL of an API producer in the middle of its enqueues; it is restarted and
  repeats the cut-short enqueue with ``if_absent`` (P2: an acknowledged enqueue is durable).
- ``sigkill_watchdog``: SIGKILL of the watchdog as it starts a sweep (inotify reports ``owners/`` being
  opened, the sweep's first step, and its ``/proc/<pid>/stat`` state is R or D, i.e. not idle between
  sweeps), then a restart after a random downtime.

Each record names the victim and the claims it held at that moment (read after the signal, when the
victim can no longer change them), so the checker can measure recovery and fencing per claim.

Nothing here polls: fault times are drawn in advance and waited for with ``select`` on a halt pipe, a
stopped holder is continued when inotify reports its lock file unlinked or renamed (or at its bound), and
a watchdog kill waits for the sweep's own opening of ``owners/``.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inotify import GONE, IN_ISDIR, IN_OPEN, Inotify

from chaos.farm import Farm, Member
from chaos.ledger import open_append


@dataclass(frozen=True)
class Holder:
    """A claim as its lock file tells it."""

    task: str
    token: str
    pid: int


def holders(root: str) -> list[Holder]:
    """Every current lock's task, token and owner pid (unreadable or vanishing locks are skipped)."""
    found = []
    tasks = os.path.join(root, "tasks")
    for name in os.listdir(tasks):
        try:
            with open(os.path.join(tasks, name), encoding="utf-8") as handle:
                lock = json.load(handle)
            found.append(Holder(lock["task"], lock["token"], int(lock["owner"]["pid"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # settled and removed between listdir and open
    return found


def flocks() -> tuple[dict[int, set[str]], dict[int, set[str]]]:
    """From ``/proc/locks``: the inodes each pid holds a FLOCK on, and those it waits for."""
    held: dict[int, set[str]] = {}
    waiting: dict[int, set[str]] = {}
    with open("/proc/locks", encoding="ascii") as handle:
        for line in handle:
            fields = line.split()
            blocked = len(fields) > 1 and fields[1] == "->"
            rest = fields[2:] if blocked else fields[1:]
            if len(rest) >= 5 and rest[0] == "FLOCK":
                (waiting if blocked else held).setdefault(int(rest[3]), set()).add(rest[4])
    return held, waiting


def lock_token(root: str, task: str) -> str | None:
    """The token in ``tasks/<task>.lock`` now, or None when there is no lock."""
    try:
        with open(os.path.join(root, "tasks", f"{task}.lock"), encoding="utf-8") as handle:
            return str(json.load(handle)["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class Pause:
    """A SIGSTOPped holder: continued once its claims were broken (after ``earliest``), or at ``latest``."""

    member: Member
    pid: int
    held: list[list[str]]
    earliest: float  # monotonic
    latest: float
    watches: list[int]  # inotify watches on its locks: a break unlinks or renames them


def run_state(pid: int) -> str:
    """The one-letter state of a process (R running, S sleeping, D disk, T stopped, Z zombie), or ""."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return ""
    return data[data.rindex(b")") + 2 :][:1].decode()


class Injector:
    """Two threads: worker/producer faults at exponential intervals, and watchdog kills."""

    def __init__(self, farm: Farm, rng: random.Random, log: Path) -> None:
        self.farm = farm
        self.rng = rng
        self.profile = farm.profile
        self.root = farm.run.root
        self.fd = open_append(log)
        self.watchdog_rng = random.Random(rng.random())  # the watchdog thread's own stream of choices
        self.counts: Counter[str] = Counter()
        self._recording = threading.Lock()  # both threads record
        self.halt = threading.Event()
        self._halt_r, self._halt_w = os.pipe()  # readable once finish() begins: wakes every select below
        self.lock_events = Inotify()  # the stopped holders' lock files
        self.paused: list[Pause] = []
        self.max_paused = max(1, self.profile.workers // 8)
        self.threads = [
            threading.Thread(target=self._fault_loop, name="faults", daemon=True),
            threading.Thread(target=self._watchdog_loop, name="watchdog-faults", daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        """Stop injecting, then SIGCONT every stopped holder."""
        self.halt.set()
        os.write(self._halt_w, b"x")
        for thread in self.threads:
            thread.join()
        self._continue(everyone=True)
        self.lock_events.close()
        for fd in (self.fd, self._halt_r, self._halt_w):
            os.close(fd)

    def record(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"t": time.time(), "kind": kind, **fields}, sort_keys=True)
        with self._recording:
            self.counts[kind] += 1
            os.write(self.fd, (line + "\n").encode())

    # -- workers and producers ------------------------------------------------------------------------

    def _fault_loop(self) -> None:
        kinds = list(self.profile.weights)
        weights = [self.profile.weights[k] for k in kinds]
        next_at = time.monotonic() + self.rng.expovariate(1 / self.profile.fault_every)
        while True:
            self._continue()
            now = time.monotonic()
            if now < next_at:
                # Until the next fault, a stopped holder's bound, or a change to a stopped holder's lock.
                wake = min([next_at] + [p.earliest if now < p.earliest else p.latest for p in self.paused])
                ready, _, _ = select.select([self._halt_r, self.lock_events.fileno()], [], [], max(0.0, wake - now))
                if self._halt_r in ready:
                    return
                self.lock_events.drain()
                continue
            next_at = now + self.rng.expovariate(1 / self.profile.fault_every)
            kind = self.rng.choices(kinds, weights)[0]
            if kind == "sigstop_holder" and len(self.paused) >= self.max_paused:
                kind = "sigkill_worker"
            getattr(self, kind)()

    def _victims(self, want_holder: bool) -> list[tuple[Member, int]]:
        members = self.farm.by_pid()
        pids = {h.pid for h in holders(self.root)} if want_holder else set(members)
        return [
            (members[pid], pid)
            for pid in sorted(pids)
            if pid in members and members[pid].role in ("api", "run") and not members[pid].stopped
        ]

    def _send(self, member: Member, pid: int, sig: int) -> bool:
        with self.farm.lock:
            if member.proc is None or member.proc.pid != pid:
                return False  # it died and was replaced since we chose it
            return self.farm.signal(member, sig)

    def _held(self, pid: int) -> list[list[str]]:
        return [[h.task, h.token] for h in holders(self.root) if h.pid == pid]

    def sigkill_worker(self) -> None:
        victims = self._victims(want_holder=self.rng.random() < 0.65) or self._victims(want_holder=False)
        if not victims:
            return
        member, pid = self.rng.choice(victims)
        if self._send(member, pid, signal.SIGKILL):
            self.record(f"sigkill_worker_{member.role}", pid=pid, name=member.name, held=self._held(pid))

    def sigstop_holder(self) -> None:
        victims = self._victims(want_holder=True)
        if not victims:
            return
        member, pid = self.rng.choice(victims)
        with self.farm.lock:
            if not self._send(member, pid, signal.SIGSTOP):
                return
            member.stopped = True
        held = self._held(pid)
        inside = bool(flocks()[0].get(pid))  # stopped inside a transition: it holds a guard's flock
        watches = []
        for task, _ in held:  # watched before _continue() next checks the tokens: no break goes unseen
            try:
                watches.append(self.lock_events.add(os.path.join(self.root, "tasks", f"{task}.lock"), GONE))
            except FileNotFoundError:
                pass  # already settled or broken
        # Past the TTL for sure; then continued once the watchdog broke its claims, or at the bound.
        p, now = self.profile, time.monotonic()
        earliest = now + p.ttl + self.rng.uniform(0.2, 1.0)
        self.paused.append(Pause(member, pid, held, earliest, earliest + 4 * p.interval + 4.0, watches))
        self.record(f"sigstop_holder_{member.role}", pid=pid, name=member.name, held=held, in_transition=inside)

    def _continue(self, *, everyone: bool = False) -> None:
        now = time.monotonic()
        for pause in list(self.paused):
            broken = all(lock_token(self.root, task) != token for task, token in pause.held)
            if not (everyone or now >= pause.latest or (now >= pause.earliest and broken)):
                continue
            self.paused.remove(pause)
            for wd in pause.watches:
                self.lock_events.remove(wd)
            held, waiting = flocks()
            watchdog = self.farm.members[0].proc
            blocked = watchdog is not None and bool(waiting.get(watchdog.pid, set()) & held.get(pause.pid, set()))
            with self.farm.lock:
                if self._send(pause.member, pause.pid, signal.SIGCONT):
                    pause.member.stopped = False
                    self.record(
                        "sigcont", pid=pause.pid, name=pause.member.name, broken=broken, blocked_watchdog=blocked
                    )

    def sigkill_producer(self) -> None:
        victims = [m for m in self.farm.alive("producer") if not self.farm.run.is_cli_producer(int(m.name[9:]))]
        if not victims:
            return
        member = self.rng.choice(victims)
        pid = member.proc.pid if member.proc is not None else 0
        if self._send(member, pid, signal.SIGKILL):
            self.record("sigkill_producer", pid=pid, name=member.name)

    # -- the watchdog ---------------------------------------------------------------------------------

    def _watchdog_loop(self) -> None:
        while not self.halt.wait(self.watchdog_rng.expovariate(1 / self.profile.watchdog_kill_every)):
            self.sigkill_watchdog()

    def sigkill_watchdog(self) -> None:
        """Wait (at most a few sweeps) for the watchdog to start a sweep, then SIGKILL it and plan its restart."""
        member = self.farm.members[0]
        with self.farm.lock:
            proc = member.proc if member.alive() else None
        if proc is None or time.monotonic() - member.started < 1.0:
            return  # not up, or still starting: its first sweep has not run yet
        deadline = time.monotonic() + 4 * self.profile.interval + 1.0
        # A sweep begins by listing owners/; a worker fsyncing owners/ as it registers opens it too, so
        # the state read at the kill, not the event, decides whether the kill counts as mid-sweep.
        with Inotify([os.path.join(self.root, "owners")], IN_OPEN) as opened:
            sweeping = False
            while not sweeping and (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([self._halt_r, opened.fileno()], [], [], left)
                if self._halt_r in ready:
                    break
                sweeping = any(mask & IN_ISDIR and not name for _, mask, name in opened.read())
        state = run_state(proc.pid)
        downtime = self.watchdog_rng.uniform(0.0, 3 * self.profile.interval)
        with self.farm.lock:
            self.farm.watchdog_down_until = time.time() + downtime
            if not self._send(member, proc.pid, signal.SIGKILL):
                return
        kind = "sigkill_watchdog_mid_sweep" if state in ("R", "D") else "sigkill_watchdog_idle"
        self.record(kind, pid=proc.pid, state=state, downtime=downtime, owners_opened=sweeping)
