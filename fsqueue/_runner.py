"""``fsqueue run``: claim a task, run any command with it, keep the lease alive, commit by exit code."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from ._claim import Claim
from ._errors import InvalidPayload, LeaseLost
from ._frozen import frozen
from ._queue import Queue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any, Final

MAX_RESULT_BYTES: Final = 4 * 1024 * 1024
STDERR_TAIL: Final = 2000
KILL_GRACE: Final = 10.0
#: How long to wait for the command's output pipes to close after it exited (a background child may
#: keep them open); the lease is renewed meanwhile.
OUTPUT_GRACE: Final = 2.0
EXIT_LEASE_LOST: Final = 5


@frozen
class Outcome:
    """How one task ended under ``fsqueue run``."""

    task_id: str
    exit_code: int
    message: str = ""


@functools.cache
def _prctl() -> Any:
    """libc's prctl, resolved in the parent: the forked child must not import or take locks."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent(parent: int, prctl: Any) -> None:  # pragma: no cover  # runs in the forked child
    # If `fsqueue run` is killed (-9), its claim is judged dead and the task runs again elsewhere; the
    # orphaned command must not keep producing side effects, so the kernel kills it with its parent.
    if prctl is not None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        # The parent died between fork and prctl: no death signal will ever come, so go now.
        os.kill(os.getpid(), signal.SIGKILL)


class _Signals:
    """SIGTERM/SIGINT handlers that only record the signal; the loop forwards it to the command."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_tasks(
    queue: Queue,
    agent: str,
    command: Sequence[str],
    *,
    ttl: float | None = None,
    max_tasks: int = 1,
    timeout: float | None = None,
    err: IO[str] | None = None,
    on_claim: Callable[[Claim], None] | None = None,
) -> int:
    """Run up to ``max_tasks`` tasks; 0 if each completed (or none was ready), else the worst exit code."""
    err = err or sys.stderr
    signals = _Signals()
    signals.install()
    beater = Beater(queue, agent)
    worst = 0
    try:
        for _ in range(max_tasks):
            if signals.received is not None:
                break
            claim = queue.claim(agent, ttl=ttl)
            if claim is None:
                break
            if on_claim is not None:
                on_claim(claim)
            beater.beat("running", f"task {claim.id} (attempt {claim.attempt})", force=True)
            outcome = run_one(queue, claim, command, timeout=timeout, signals=signals, beater=beater)
            if outcome.message:
                print(outcome.message, file=err)
            worst = max(worst, outcome.exit_code)
    finally:
        signals.restore()
        beater.beat("idle", "", force=True)
    if signals.received is not None:
        return 128 + signals.received
    return worst


class Beater:
    """``fsqueue run --agent A`` beats for A: when a task starts, every heartbeat interval, and at the end."""

    def __init__(self, queue: Queue, agent: str) -> None:
        self.queue = queue
        self.agent = agent
        self.enabled = True
        self.state = "running"
        self.message = ""
        self.next_due = 0.0

    def beat(self, state: str | None = None, message: str | None = None, *, force: bool = False) -> None:
        if state is not None:
            self.state, self.message = state, message or ""
        now = time.monotonic()
        if not self.enabled or (not force and now < self.next_due):
            return
        self.next_due = now + self.queue.config.heartbeat_interval
        try:
            self.queue.beat(self.agent, state=self.state, message=self.message)
        except InvalidPayload:
            self.enabled = False  # an agent name that cannot name a file: claims work, heartbeats do not
        except OSError:
            pass  # a full disk: readers see the agent go late, which is the truth


def run_one(
    queue: Queue,
    claim: Claim,
    command: Sequence[str],
    *,
    timeout: float | None,
    signals: _Signals | None = None,
    beater: Beater | None = None,
) -> Outcome:
    """Run ``command`` for one claim and settle the claim by its exit status."""
    signals = signals or _Signals()
    env = dict(
        os.environ,
        FSQUEUE_TASK_ID=claim.id,
        FSQUEUE_TOKEN=claim.token,
        FSQUEUE_ATTEMPT=str(claim.attempt),
        FSQUEUE_AGENT=claim.agent,
        FSQUEUE_ROOT=queue.root,
        FSQUEUE_FENCE=str(claim.fence),
    )
    try:
        proc = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            # Its own process group: a timeout, a lost lease or a forwarded signal reaches the command's
            # children too (a `sh -c 'x &'` must not leave x running while the task is retried).
            start_new_session=True,
            preexec_fn=functools.partial(_die_with_parent, os.getpid(), _prctl()),  # noqa: PLW1509  # it calls prctl only: no lock a thread could hold
        )
    except OSError as exc:
        state = claim.fail(f"cannot start command {command[0]!r}: {exc.strerror}")
        return Outcome(
            claim.id, 1, f"fsqueue run: task {claim.id}: cannot start {command[0]!r}: {exc.strerror} (task is {state})"
        )
    io = _ChildIO(proc, json.dumps(claim.payload).encode() + b"\n")
    ended = _supervise(claim, proc, timeout, signals, beater)
    if ended != "lease-lost" and not _drain(claim, io):
        ended = "lease-lost"
    if ended == "lease-lost":
        return Outcome(
            claim.id,
            EXIT_LEASE_LOST,
            f"fsqueue run: lease on task {claim.id} was lost while the command ran; it was stopped and "
            "nothing was committed",
        )
    return _settle(claim, proc.returncode, ended, io, timeout)


def _settle(claim: Claim, code: int, ended: str, io: _ChildIO, timeout: float | None) -> Outcome:
    try:
        if ended == "exited" and code == 0:
            try:
                claim.complete(_as_result(io.stdout()))
                return Outcome(claim.id, 0)
            except InvalidPayload as exc:
                why = f"exited 0 but its stdout cannot be stored as the result ({exc})"
                state = claim.fail(f"command {why}", retry=False)
                return Outcome(
                    claim.id,
                    1,
                    f"fsqueue run: task {claim.id} failed: command {why}; it was "
                    f"{'moved to dead-letter' if state == 'dead' else 'requeued'}",
                )
        if ended == "timeout":
            why = f"timed out after {timeout:g}s and was killed"
        elif ended == "signalled":
            why = "interrupted by a signal to fsqueue run"
        elif code < 0:
            why = f"killed by signal {signal.Signals(-code).name}"
        else:
            why = f"exited with status {code}"
        tail = io.stderr_tail()
        state = claim.fail(f"command {why}" + (f"; stderr: {tail}" if tail else ""))
    except LeaseLost:
        return Outcome(
            claim.id,
            EXIT_LEASE_LOST,
            f"fsqueue run: lease on task {claim.id} was lost before the commit; nothing was committed",
        )
    verdict = "will be retried" if state == "pending" else "moved to dead-letter"
    return Outcome(
        claim.id,
        1,
        f"fsqueue run: task {claim.id} (attempt {claim.attempt}/{claim.max_attempts}) "
        f"failed: command {why}; it {verdict}",
    )


def _drain(claim: Claim, io: _ChildIO) -> bool:
    """Wait for the command's output pipes to close, renewing the lease; False if the lease was lost.

    A background process started by the command may hold its stdout open long after the command
    exited. We wait at most OUTPUT_GRACE for it, renewing meanwhile, then settle with what was read:
    a lease left unrenewed while ``fsqueue run`` lives would be broken and the task run twice.
    """
    deadline = time.monotonic() + OUTPUT_GRACE
    keeper = _LeaseKeeper(claim)
    while not io.join(timeout=keeper.poll):
        if time.monotonic() >= deadline:
            return True
        if not keeper.tick():
            return False
    return True


class _LeaseKeeper:
    """Renews a claim every third of its TTL from a polling loop; ``tick()`` is False once it is lost."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.every = max(0.05, claim.ttl / 3)
        self.poll = min(0.2, self.every)
        self.next = time.monotonic() + self.every

    def tick(self) -> bool:
        now = time.monotonic()
        if now < self.next:
            return True
        self.next = now + self.every
        try:
            self.claim.renew()
        except LeaseLost:
            return False
        except OSError:
            pass  # transient: retried at the next tick, well before the lease runs out
        return True


def _as_result(data: bytes) -> Any:
    text = data.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text  # not JSON (or nested too deep to be stored as such): keep it as text


def _supervise(
    claim: Claim, proc: subprocess.Popen[bytes], timeout: float | None, signals: _Signals, beater: Beater | None = None
) -> str:
    """Wait for the command, renewing the lease; returns exited / timeout / signalled / lease-lost."""
    keeper = _LeaseKeeper(claim)
    forwarded = False
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            proc.wait(timeout=keeper.poll)
            # Interrupted counts as failed even on exit 0: many programs exit 0 on SIGTERM without
            # finishing their work, and marking such a task done would lose it. A retry is fenced.
            return "signalled" if forwarded else "exited"
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if beater is not None:
            beater.beat()
        if signals.received is not None and not forwarded:
            _signal_group(proc, signals.received)
            forwarded = True
        if deadline is not None and now >= deadline:
            _stop(proc)
            return "timeout"
        if not keeper.tick():
            _stop(proc)
            return "lease-lost"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
    _signal_group(proc, signal.SIGKILL)  # whatever the command left behind in its group


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the command's whole process group (it leads its own session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


class _ChildIO:
    """Feeds the payload to stdin, collects stdout (bounded) and tees stderr, each on its own thread."""

    def __init__(self, proc: subprocess.Popen[bytes], payload: bytes) -> None:
        self._out = bytearray()
        self._tail = bytearray()
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
        self._threads = [
            threading.Thread(target=self._feed, args=(stdin, payload), daemon=True),
            threading.Thread(target=self._collect, args=(stdout,), daemon=True),
            threading.Thread(target=self._tee, args=(stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _feed(pipe: IO[bytes], payload: bytes) -> None:
        try:
            pipe.write(payload)
            pipe.close()
        except OSError:
            pass  # the command does not read its stdin; that is its choice

    def _collect(self, pipe: IO[bytes]) -> None:
        while chunk := pipe.read1(65536):  # type: ignore[attr-defined]  # what has arrived, not a full block
            if len(self._out) < MAX_RESULT_BYTES:
                self._out += chunk[: MAX_RESULT_BYTES - len(self._out)]

    def _tee(self, pipe: IO[bytes]) -> None:
        while chunk := pipe.read1(65536):  # type: ignore[attr-defined]  # BufferedReader has read1
            try:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
            except (OSError, AttributeError, ValueError):
                pass
            self._tail = (self._tail + chunk)[-STDERR_TAIL:]

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the three threads; True when all finished within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def stdout(self) -> bytes:
        return bytes(self._out)

    def stderr_tail(self) -> str:
        return self._tail.decode("utf-8", errors="replace").strip()
