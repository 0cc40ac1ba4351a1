"""The watchdog as a real process: one per root, signals, sd_notify, and recovery of killed and hung holders.

Every daemon here is ``python -m fsqueue_watchdog`` started with ``subprocess.Popen`` and stopped by a real
signal. Nothing waits on a timer: the daemon's progress is read from its stderr pipe (one line per
action), from a real ``AF_UNIX`` datagram socket passed as ``NOTIFY_SOCKET`` (the service manager's
end of sd_notify, which also tells who sent each datagram), from inotify on its singleton lock and the
queue's directories, and from process exits. ``WAIT`` only bounds those waits so that a broken daemon
fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from inotify import CHANGES, IN_CLOSE_WRITE, Inotify

from fsqueue import Config, ManualClock, Queue

WAIT = 60.0  # upper bound on any single wait for a real event (a datagram, a log line, a process exit)
FAST_RETRY = "retry:\n  base: 1ms\n  max: 1ms\n"  # a broken task is claimable again 1 ms later
QUIET = 3600.0  # an interval so long that only a signal makes the daemon sweep again


class Notifier:
    """The service manager's end of sd_notify: a bound datagram socket that learns each sender's pid."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(WAIT)

    def receive(self) -> tuple[int, list[str]]:
        """The next datagram's sender pid and lines, waiting at most WAIT seconds in a blocking recv."""
        try:
            data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(struct.calcsize("3i")))
        except TimeoutError:
            pytest.fail(f"no sd_notify datagram within {WAIT}s")
        pid = 0
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                pid = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
        return pid, data.decode().split("\n")

    def next_lines(self) -> list[str]:
        return self.receive()[1]

    def until(self, first: str) -> list[list[str]]:
        """Datagrams up to and including the first one that starts with ``first``."""
        seen = []
        while True:
            lines = self.next_lines()
            seen.append(lines)
            if lines[0] == first:
                return seen

    def queued(self) -> list[list[str]]:
        """Datagrams already waiting, without blocking."""
        self.sock.setblocking(False)
        try:
            found = []
            while True:
                try:
                    found.append(self.sock.recv(65536).decode().split("\n"))
                except BlockingIOError:
                    return found
        finally:
            self.sock.settimeout(WAIT)

    def close(self) -> None:
        """Hang up: later notifications fail at once (ECONNREFUSED) instead of filling the socket's queue."""
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Lines:
    """Lines from a pipe, read with select() and os.read (a buffered readline would hide data from select)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def next(self) -> str | None:
        """The next line, or None at end of file; fails after WAIT seconds without one."""
        deadline = time.monotonic() + WAIT
        while b"\n" not in self.buffer and not self.eof:
            readable, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                pytest.fail(f"no line within {WAIT}s; so far: {self.buffer!r}")
            chunk = os.read(self.fd, 65536)
            self.buffer += chunk
            self.eof = not chunk
        if not self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def until(self, needle: str) -> list[str]:
        """Lines up to and including the first one containing ``needle``."""
        seen = []
        while (line := self.next()) is not None:
            seen.append(line)
            if needle in line:
                return seen
        pytest.fail(f"pipe closed before a line with {needle!r}; got {seen}")

    def rest(self) -> list[str]:
        """Every remaining line, up to end of file (the writer has exited)."""
        lines = []
        while (line := self.next()) is not None:
            lines.append(line)
        return lines


class Watchdog:
    """A ``python -m fsqueue_watchdog`` process with its stderr read as lines."""

    def __init__(self, root: Path, *args: str, env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "fsqueue_watchdog", "--root", str(root), *args]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        assert self.proc.stderr is not None
        self.log = Lines(self.proc.stderr.fileno())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait(self) -> int:
        return self.proc.wait(timeout=WAIT)

    def reap(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


# A claim holder using the API: claims as itself (its death is provable), reports, waits for a line on
# stdin, then tries to commit and reports whether the commit was refused.
HOLDER = """
import sys
from fsqueue import LeaseLost, Queue, load_config

root, config, ttl = sys.argv[1:4]
queue = Queue(root, config=load_config(config))
claim = queue.claim("holder", ttl=float(ttl))
if claim is None:
    print("none", flush=True)
    sys.exit(3)
print("claimed", claim.id, claim.token, flush=True)
sys.stdin.readline()
try:
    claim.complete({"by": "holder"})
except LeaseLost:
    print("LeaseLost", flush=True)
else:
    print("committed", flush=True)
"""


class Holder:
    """A holder process; its stdin is the test's pipe, its stdout reports claim and commit."""

    def __init__(self, root: Path, config: Path, ttl: float, env: dict[str, str]) -> None:
        argv = [sys.executable, "-c", HOLDER, str(root), str(config), str(ttl)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        self.out = Lines(self.proc.stdout.fileno())

    def claimed(self) -> tuple[str, str]:
        line = self.out.next()
        assert line is not None and line.startswith("claimed "), line
        _, task_id, token = line.split()
        return task_id, token

    def release(self) -> str | None:
        """Let the holder try to commit; its report."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        return self.out.next()

    def reap(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a stopped process too
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config file with 1 ms retry back-off, so a broken task is claimable again at once."""
    path = tmp_path / "fsqueue.yaml"
    path.write_text(FAST_RETRY)
    return path


@pytest.fixture
def env() -> dict[str, str]:
    """The environment for watchdog and holder processes: no inherited queue, config or notify socket."""
    clean = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "FSQUEUE_ROOT", "FSQUEUE_CONFIG", "WATCHDOG_USEC", "WATCHDOG_PID"):
        clean.pop(name, None)
    return clean


@pytest.fixture
def notifier(tmp_path: Path) -> Iterator[Notifier]:
    """A bound notify socket, closed afterwards."""
    n = Notifier(tmp_path / "notify.sock")
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def procs() -> Iterator[list[Watchdog | Holder]]:
    """Processes started by a test; every one is killed if still running and reaped."""
    started: list[Watchdog | Holder] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.reap()


def fast_queue(root: Path) -> Queue:
    """The test's own handle on a queue, with the same 1 ms back-off as the config file."""
    return Queue(root, create=True, config=Config(retry_base=0.001, retry_max=0.001))


def dead_owner_claims(queue: Queue, count: int = 1) -> list[str]:
    """Claim ``count`` tasks bound to a short-lived process, then kill and reap it: provably dead owners."""
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)  # lives until killed
    try:
        ids = []
        for _ in range(count):
            claim = queue.claim("doomed", owner_pid=child.pid)
            assert claim is not None
            ids.append(claim.id)
    finally:
        child.kill()
        child.wait()
        if child.stdin is not None:
            child.stdin.close()
    return ids


def replace_text(path: Path, text: str) -> None:
    """Write a file the daemon may read at any moment: a temp name, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def with_notify(env: dict[str, str], notifier: Notifier) -> dict[str, str]:
    return dict(env, NOTIFY_SOCKET=notifier.path)


def broken_events(queue: Queue, task_id: str) -> list[dict[str, object]]:
    return [e for e in queue.task(task_id).history if e["event"] == "broken"]


#: What a transition does to the queue's directories: every step of a break shows up as one of these.
STEPS = CHANGES


def await_events(events: Inotify, wanted: int) -> None:
    """Return once ``wanted`` more events have arrived."""
    seen = 0
    while seen < wanted:
        got = events.wait(WAIT)
        assert got, f"only {seen} of {wanted} filesystem events within {WAIT}s"
        seen += got


# -- one watchdog per root ----------------------------------------------------------------------------


def test_second_watchdog_exits_1_naming_the_root(
    root: Path, env: dict[str, str], notifier: Notifier, procs: list[Watchdog | Holder]
) -> None:
    """While one watchdog runs, a second one for the same root exits 1 saying the root is already swept."""
    fast_queue(root)
    first = Watchdog(root, "--interval", str(QUIET), env=with_notify(env, notifier))
    procs.append(first)
    assert notifier.next_lines()[0] == "READY=1"
    second = subprocess.run(
        [sys.executable, "-m", "fsqueue_watchdog", "--root", str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert second.returncode == 1
    assert str(root) in second.stderr and "already" in second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert first.proc.poll() is None
    first.signal(signal.SIGTERM)
    assert first.wait() == 0


def test_wait_takes_over_only_after_the_first_exits(
    root: Path, env: dict[str, str], notifier: Notifier, procs: list[Watchdog | Holder]
) -> None:
    """With --wait a second watchdog blocks on the root's lock and sends READY=1 only after the first's STOPPING=1."""
    fast_queue(root)
    first = Watchdog(root, "--interval", str(QUIET), env=with_notify(env, notifier))
    procs.append(first)
    assert notifier.next_lines()[0] == "READY=1"
    # The first holds watchdog.lock open from here on; the next close of that file is a contender that
    # opened it, lost the flock and closed it again (filelock retries that way) -- proof that the
    # second reached the lock while the first held it.
    with Inotify([root / "watchdog.lock"], IN_CLOSE_WRITE) as events:
        second = Watchdog(root, "--once", "--wait", env=with_notify(env, notifier))
        procs.append(second)
        readable, _, _ = select.select([events], [], [], WAIT)
        assert readable, "the second watchdog never tried the singleton lock"
    assert second.proc.poll() is None, "the second watchdog exited instead of waiting"
    first.signal(signal.SIGTERM)
    order: list[tuple[int, str]] = []
    while not order or order[-1] != (second.pid, "STOPPING=1"):
        pid, lines = notifier.receive()
        order.append((pid, lines[0]))
    assert first.wait() == 0
    assert second.wait() == 0
    first_stopping = order.index((first.pid, "STOPPING=1"))
    second_ready = order.index((second.pid, "READY=1"))
    assert first_stopping < second_ready, order
    assert (second.pid, "WATCHDOG=1") in order[second_ready:], order  # and then it swept


# -- signals and sd_notify ----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_0_with_stopping(
    root: Path, env: dict[str, str], notifier: Notifier, procs: list[Watchdog | Holder], signum: int
) -> None:
    """SIGTERM and SIGINT end the daemon between sweeps, at once, with STOPPING=1 and exit status 0."""
    fast_queue(root)
    daemon = Watchdog(root, "--interval", str(QUIET), env=with_notify(env, notifier))
    procs.append(daemon)
    assert notifier.next_lines()[0] == "READY=1"
    assert notifier.next_lines()[0] == "WATCHDOG=1"  # the first sweep is done; it now waits an hour
    daemon.signal(signum)
    assert notifier.next_lines() == ["STOPPING=1"]
    assert daemon.wait() == 0
    assert daemon.log.rest() == []  # no traceback, no KeyboardInterrupt


def test_sd_notify_ready_watchdog_stopping_in_order(
    root: Path, env: dict[str, str], notifier: Notifier, procs: list[Watchdog | Holder]
) -> None:
    """The notify socket receives READY=1, then WATCHDOG=1 with a STATUS= line per sweep, then STOPPING=1."""
    queue = fast_queue(root)
    queue.enqueue("x", id="t")
    dead_owner_claims(queue)
    daemon = Watchdog(root, "--interval", str(QUIET), env=with_notify(env, notifier))
    procs.append(daemon)
    ready = notifier.next_lines()
    assert ready[0] == "READY=1"
    sweep = notifier.next_lines()
    assert sweep[0] == "WATCHDOG=1"
    status = [line for line in sweep if line.startswith("STATUS=")]
    assert len(status) == 1 and re.fullmatch(r"STATUS=last sweep: \d+ locks, 1 broken, \d+ repaired", status[0]), sweep
    daemon.signal(signal.SIGTERM)
    assert notifier.next_lines() == ["STOPPING=1"]
    assert daemon.wait() == 0
    assert notifier.queued() == []


def test_watchdog_pings_within_watchdog_usec_whatever_the_interval(
    root: Path, env: dict[str, str], notifier: Notifier, procs: list[Watchdog | Holder]
) -> None:
    """With WATCHDOG_USEC shorter than the sweep interval, WATCHDOG=1 still arrives before systemd's deadline."""
    fast_queue(root)
    deadline = 2.0  # WatchdogSec=2s; the unit's 120 s against `interval: 5m` in the config is the same case
    daemon = Watchdog(
        root, "--interval", str(QUIET), env=dict(with_notify(env, notifier), WATCHDOG_USEC=str(int(deadline * 1e6)))
    )
    procs.append(daemon)
    assert notifier.next_lines()[0] == "READY=1"
    assert notifier.next_lines()[0] == "WATCHDOG=1"
    notifier.sock.settimeout(deadline)  # systemd's bound: no ping within WatchdogSec and it kills the daemon
    try:
        ping = notifier.sock.recv(65536).decode().split("\n")
    except TimeoutError:
        pytest.fail(f"no WATCHDOG=1 within WATCHDOG_USEC ({deadline:g}s): systemd would kill the daemon")
    assert ping[0] == "WATCHDOG=1"
    daemon.signal(signal.SIGTERM)
    notifier.sock.settimeout(WAIT)
    notifier.until("STOPPING=1")
    assert daemon.wait() == 0


# -- SIGHUP reload ------------------------------------------------------------------------------------


def test_sighup_with_good_config_switches_to_json_logs(
    root: Path, tmp_path: Path, env: dict[str, str], notifier: Notifier, procs: list[Watchdog | Holder]
) -> None:
    """After SIGHUP with log_format json the reload line and the next action lines are JSON objects."""
    queue = fast_queue(root)
    settings = tmp_path / "watchdog.yaml"
    settings.write_text(FAST_RETRY + "watchdog:\n  log_format: text\n")
    queue.enqueue("x", id="before")
    dead_owner_claims(queue)
    daemon = Watchdog(root, "--config", str(settings), "--interval", str(QUIET), env=with_notify(env, notifier))
    procs.append(daemon)
    assert notifier.next_lines()[0] == "READY=1"
    (line,) = daemon.log.until("break")
    assert " fsqueue-watchdog break task=before " in line  # text to begin with
    queue.enqueue("x", id="after")
    (victim,) = dead_owner_claims(queue)  # the oldest ready task: "before" again, retried after 1 ms
    replace_text(settings, FAST_RETRY + "watchdog:\n  log_format: json\n")
    daemon.signal(signal.SIGHUP)
    reload, broke = json.loads(daemon.log.next() or ""), json.loads(daemon.log.next() or "")
    assert (reload["action"], reload["reason"], reload["path"]) == ("reload", "config reloaded", str(settings))
    assert (broke["action"], broke["task"], broke["verdict"]) == ("break", victim, "dead")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_sighup_with_bad_config_keeps_the_previous_one(
    root: Path, tmp_path: Path, env: dict[str, str], notifier: Notifier, procs: list[Watchdog | Holder]
) -> None:
    """A SIGHUP with an unknown key logs that the previous config is kept, naming the key, and sweeping goes on."""
    queue = fast_queue(root)
    settings = tmp_path / "watchdog.yaml"
    settings.write_text(FAST_RETRY + "watchdog:\n  log_format: text\n")
    daemon = Watchdog(root, "--config", str(settings), "--interval", str(QUIET), env=with_notify(env, notifier))
    procs.append(daemon)
    assert notifier.next_lines()[0] == "READY=1"
    assert notifier.next_lines()[0] == "WATCHDOG=1"
    queue.enqueue("x", id="later")
    dead_owner_claims(queue)
    replace_text(settings, FAST_RETRY + "watchdog:\n  log_format: json\n  bogus_key: 1\n")
    daemon.signal(signal.SIGHUP)
    rejected = daemon.log.next() or ""
    assert " fsqueue-watchdog reload " in rejected, rejected
    assert "keeping the previous" in rejected and "bogus_key" in rejected, rejected
    # Still running, with the old settings: the sweep after the reload logs its break as text.
    assert notifier.next_lines()[0] == "WATCHDOG=1"
    assert " fsqueue-watchdog break task=later " in (daemon.log.next() or "")
    assert daemon.proc.poll() is None
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


# -- recovery of killed and hung holders --------------------------------------------------------------


def test_killed_holder_is_recovered_within_an_interval(
    root: Path, config: Path, env: dict[str, str], notifier: Notifier, procs: list[Watchdog | Holder]
) -> None:
    """A SIGKILLed holder's task is broken by a daemon sweeping every 0.2 s and can be claimed again."""
    queue = fast_queue(root)
    queue.enqueue({"n": 1}, id="job")
    holder = Holder(root, config, 1800.0, env)
    procs.append(holder)
    assert holder.claimed()[0] == "job"
    daemon = Watchdog(root, "--config", str(config), "--interval", "0.2", env=with_notify(env, notifier))
    procs.append(daemon)
    assert notifier.next_lines()[0] == "READY=1"
    assert notifier.next_lines()[0] == "WATCHDOG=1"  # a sweep saw the live holder and left it alone
    notifier.close()  # from here on the daemon's pings go nowhere instead of filling the socket's queue
    killed = time.monotonic()
    holder.proc.kill()
    holder.proc.wait()
    (line,) = [line for line in daemon.log.until("break task=job") if "break" in line]
    recovered = time.monotonic()
    print(f"\nrecovery: {(recovered - killed) * 1000:.0f} ms from SIGKILL to the break (interval 0.2 s)")
    assert "verdict=dead" in line
    # The 1 ms back-off is the only wait left; claim at the task's ready time, not after a sleep.
    clock = ManualClock(max(time.time(), queue.task("job").ready_at))
    rescuer = Queue(root, config=queue.config, clock=clock).claim("rescuer")
    assert rescuer is not None and (rescuer.id, rescuer.attempt) == ("job", 2)
    rescuer.complete("rescued")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_stopped_holder_is_fenced_after_its_lease_is_broken(
    root: Path, config: Path, env: dict[str, str], procs: list[Watchdog | Holder]
) -> None:
    """A SIGSTOPped holder's expired lease is broken on the second sweep; after SIGCONT its commit is refused."""
    queue = fast_queue(root)
    queue.enqueue({"n": 1}, id="slow")
    holder = Holder(root, config, 1.0, env)
    procs.append(holder)
    task_id, _ = holder.claimed()
    os.kill(holder.proc.pid, signal.SIGSTOP)
    os.waitid(os.P_PID, holder.proc.pid, os.WSTOPPED)  # returns once the holder is really stopped
    lock = root / "tasks" / f"{task_id}.lock"
    past = time.time() - 60
    os.utime(lock, (past, past))  # the lock's mtime is the lease expiry: expired a minute ago
    once = [sys.executable, "-m", "fsqueue_watchdog", "--root", str(root), "--config", str(config), "--once"]
    first = subprocess.run(once, env=env, capture_output=True, text=True, timeout=WAIT)
    assert (first.returncode, first.stderr) == (0, "")
    assert lock.exists()  # seen expired once: not yet broken
    second = subprocess.run(once, env=env, capture_output=True, text=True, timeout=WAIT)
    assert second.returncode == 0
    assert f"break task={task_id} agent=holder pid={holder.proc.pid}" in second.stderr
    assert "verdict=expired" in second.stderr  # the stopped holder is alive, not dead
    clock = ManualClock(max(time.time(), queue.task(task_id).ready_at))
    worker = Queue(root, config=queue.config, clock=clock).claim("second")
    assert worker is not None and worker.id == task_id
    worker.complete({"by": "second"})
    done = root / "done" / f"{task_id}.json"
    committed = done.read_bytes()
    os.kill(holder.proc.pid, signal.SIGCONT)
    assert holder.release() == "LeaseLost"
    assert holder.proc.wait(timeout=WAIT) == 0
    assert done.read_bytes() == committed
    record = json.loads(committed)
    assert (record["result"], record["token"]) == ({"by": "second"}, worker.token)
    events = [e["event"] for e in record["task"]["history"]]
    assert (events.count("completed"), events.count("broken")) == (1, 1), events


# -- kill -9 of the watchdog in the middle of a sweep -------------------------------------------------


def task_files(root: Path, task_id: str) -> dict[str, object]:
    """Which of a task's files exist, read from the directories themselves."""
    markers = [p for p in (root / "ready").rglob("*") if p.is_file() and p.name[17:] == task_id]
    return {
        "done": (root / "done" / f"{task_id}.json").exists(),
        "dead": (root / "dead" / f"{task_id}.json").exists(),
        "record": (root / "records" / f"{task_id}.json").exists(),
        "markers": len(markers),
        "lock": (root / "tasks" / f"{task_id}.lock").exists(),
    }


def settled_state(root: Path, task_id: str) -> str:
    """done / dead / pending, asserting the task is in exactly one of them and nothing is left over."""
    files = task_files(root, task_id)
    states = [
        name
        for name, present in (
            ("done", files["done"]),
            ("dead", files["dead"]),
            ("pending", files["record"] and files["markers"] == 1 and not files["lock"]),
        )
        if present
    ]
    assert len(states) == 1, (task_id, files)
    if states[0] != "pending":
        assert (files["record"], files["markers"], files["lock"]) == (False, 0, False), (task_id, files)
    return states[0]


def kill_round(tmp_path: Path, config: Path, env: dict[str, str], seed: int) -> None:
    """One seeded round: set up dead and expired claims, kill -9 the daemon at a random point, restart, check."""
    rng = random.Random(seed)
    root = tmp_path / f"round-{seed}"
    queue = Queue(root, create=True, config=Config(durability="none"))  # the set-up needs no fsync
    expect: dict[str, str] = {}
    broken: set[str] = set()
    # Claims of dead owners: a few processes, several claims each, killed and reaped.
    for group in range(rng.randint(2, 5)):
        ids = [f"d{group}-{n}" for n in range(rng.randint(3, 8))]
        for task_id in ids:
            last_try = rng.random() < 0.3
            queue.enqueue({"id": task_id}, id=task_id, max_attempts=1 if last_try else 5)
            expect[task_id] = "dead" if last_try else "pending"
        assert sorted(dead_owner_claims(queue, len(ids))) == sorted(ids)
        broken.update(ids)
    # Lease-only claims whose lease ran out long ago (the lock's mtime is its expiry).
    for n in range(rng.randint(2, 6)):
        task_id = f"e{n}"
        queue.enqueue({"id": task_id}, id=task_id)
        claim = queue.claim("lapsed", lease_only=True)
        assert claim is not None and claim.id == task_id
        past = time.time() - rng.uniform(60, 7200)
        os.utime(root / "tasks" / f"{task_id}.lock", (past, past))
        expect[task_id] = "pending"
        broken.add(task_id)
    for n in range(2):
        queue.enqueue({"id": f"c{n}"}, id=f"c{n}")
        claim = queue.claim("clean")
        assert claim is not None
        claim.complete("ok")
        expect[f"c{n}"] = "done"
    for n in range(3):
        queue.enqueue({"id": f"p{n}"}, id=f"p{n}")
        expect[f"p{n}"] = "pending"

    # The kill point: after k logged breaks, then j more steps of the daemon on the queue's directories
    # (staging writes, renames, links, unlinks), so kills land inside a transition, not only between two.
    k, j = rng.randint(0, len(broken)), rng.randint(0, 6)
    notifier = Notifier(tmp_path / f"notify-{seed}.sock")
    watched = [root / name for name in ("staging", "records", "tasks", "dead")]
    with Inotify(watched, STEPS) as steps:
        daemon = Watchdog(root, "--config", str(config), "--interval", "0.05", env=with_notify(env, notifier))
        try:
            assert notifier.next_lines()[0] == "READY=1"
            notifier.close()
            for _ in range(k):
                daemon.log.until(" break ")
            steps.drain()
            await_events(steps, j)
            daemon.signal(signal.SIGKILL)
            assert daemon.wait() == -signal.SIGKILL
            logged = k + sum(" break " in line for line in daemon.log.rest())
        finally:
            notifier.close()
            daemon.reap()
    once = [sys.executable, "-m", "fsqueue_watchdog", "--root", str(root), "--config", str(config), "--once"]
    for _ in range(2):  # a lease seen expired by no finished sweep yet needs two
        run = subprocess.run(once, env=env, capture_output=True, text=True, timeout=WAIT)
        assert run.returncode == 0, run.stderr
        logged += sum(" break " in line for line in run.stderr.splitlines())
        if not os.listdir(root / "tasks"):
            break

    context = f"seed {seed}, killed after {k} of {len(broken)} breaks and {j} more steps"
    assert os.listdir(root / "tasks") == [], context
    assert list((root / "owners").rglob("*.lock")) == [], context
    assert os.listdir(root / "quarantine") == [], context
    names = {p.stem for d in ("records", "done", "dead") for p in (root / d).iterdir()}
    assert names <= set(expect), context  # nothing unexpected
    states = {task_id: settled_state(root, task_id) for task_id in expect}
    assert states == expect, context  # nothing lost, each in the one state it must be in
    for task_id in expect:
        events = [e["event"] for e in queue.task(task_id).history]
        assert events.count("broken") == (1 if task_id in broken else 0), (context, task_id, events)
        if task_id in broken:
            assert queue.task(task_id).attempts == 1, (context, task_id)
    # At most the one break in flight at the kill went unlogged; none was logged twice.
    assert len(broken) - 1 <= logged <= len(broken), (context, logged)


def test_watchdog_killed_mid_sweep_loses_and_double_counts_nothing(
    tmp_path: Path, config: Path, env: dict[str, str]
) -> None:
    """kill -9 of the daemon after a random number of breaks, then one-shot restarts: every task settles once."""
    for seed in range(12):
        kill_round(tmp_path, config, env, seed)


# -- the CLI subcommand and the footprint -------------------------------------------------------------


def test_fsqueue_watchdog_subcommand_matches_fsqueue_watchdog(tmp_path: Path, env: dict[str, str]) -> None:
    """`fsqueue watchdog --once` breaks, logs and exits exactly like `fsqueue-watchdog --once`."""
    commands = {
        "fsqueue watchdog": [sys.executable, "-m", "fsqueue", "watchdog", "--once"],
        "fsqueue-watchdog": [sys.executable, "-m", "fsqueue_watchdog", "--once"],
    }
    outcomes = {}
    for name, argv in commands.items():
        root = tmp_path / name.replace(" ", "_")
        queue = fast_queue(root)
        queue.enqueue("x", id="t")
        dead_owner_claims(queue)
        queue.enqueue("y", id="p")
        run = subprocess.run(argv, env=dict(env, FSQUEUE_ROOT=str(root)), capture_output=True, text=True, timeout=WAIT)
        # The log line differs only in its timestamp and the dead owner's pid.
        words = [w for w in run.stderr.split() if not w.startswith("pid=") and not w[:1].isdigit()]
        info = queue.task("t")
        outcomes[name] = (run.returncode, run.stdout, words, info.state, info.attempts, len(broken_events(queue, "t")))
    assert outcomes["fsqueue watchdog"] == outcomes["fsqueue-watchdog"]
    code, stdout, words, _, attempts, breaks = outcomes["fsqueue watchdog"]
    assert (code, stdout, attempts, breaks) == (0, "", 1, 1)
    assert words[:3] == ["fsqueue-watchdog", "break", "task=t"], words


def test_daemon_steady_rss_is_measured(
    root: Path, env: dict[str, str], notifier: Notifier, procs: list[Watchdog | Holder]
) -> None:
    """Report the resident memory of a daemon after a few sweeps and after many (measured, not asserted)."""
    queue = Queue(root, create=True, config=Config(durability="none"))
    for n in range(200):
        queue.enqueue({"n": n})
    for _ in range(20):
        assert queue.claim("busy", lease_only=True) is not None
    daemon = Watchdog(root, "--interval", "0.02", env=with_notify(env, notifier))
    procs.append(daemon)
    assert notifier.next_lines()[0] == "READY=1"
    rss = {}
    for sweeps in range(1, 101):
        assert notifier.next_lines()[0] == "WATCHDOG=1"
        if sweeps in (5, 100):
            status = Path(f"/proc/{daemon.pid}/status").read_text()
            rss[sweeps] = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    print(f"\nwatchdog VmRSS: {rss[5]} kB after 5 sweeps, {rss[100]} kB after 100 sweeps (200 tasks, 20 locks)")
    daemon.signal(signal.SIGTERM)
    notifier.until("STOPPING=1")
    assert daemon.wait() == 0
