"""A Hypothesis state machine drives the public API against an in-memory model of the queue.

The model knows only what the documentation promises (docs/concepts.md, docs/protocol.md): a task is in
exactly one state; a claim takes the highest priority, then the earliest ready time (the marker name
``<when16>-<id>`` breaks ties); attempts are counted at claim and settle when the claim ends; only the
current claim's token can renew or commit, and a refused commit changes nothing on disk; a lease is
breakable once its expiry (the lock's mtime) is not after now, by ``clear --expired`` at once and by the
watchdog when two consecutive sweeps saw the same lock file (inode and mtime) expired; a lock whose owning
process has exited is ``dead`` whatever its lease says, and is broken by ``clear --dead`` and by the next sweep.

Every step runs on a real queue root with an injected ``ManualClock`` that also jumps backwards. Clock
steps are whole seconds, so every lease expiry is an exact float and the model's comparisons are the
implementation's.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import stat
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from fsqueue import Claim, Config, LeaseLost, LockHeld, ManualClock, Queue, TaskExists, TaskNotFound
from fsqueue._index import parse_entry_name
from fsqueue_watchdog import ActionLog, Sweeper, WatchdogSettings

START = 1_800_000_000.0
TTL = 60
RETRY_BASE = 10.0
RETRY_MAX = 100.0
#: A small pool of explicit ids, so that repeated enqueues of one id (TaskExists, if_absent) happen often.
IDS = ("a", "b", "c", "d", "e")
#: Whole seconds, forwards and backwards: past a TTL, past a back-off, and back across both.
CLOCK_STEPS = (1, 5, 29, 30, 59, 60, 61, 120, 700, -1, -30, -61, -700)
EPSILON = 1e-6
ENQUEUE_ARGS = st.fixed_dictionaries(
    {
        "explicit": st.booleans(),
        "name": st.sampled_from(IDS),
        "priority": st.sampled_from([-1, 0, 0, 1, 5]),
        "delay": st.sampled_from([0, 0, 0, 3, 45, 400]),
        "max_attempts": st.integers(1, 3),
        "ttl": st.sampled_from([None, None, 20.0]),
        "if_absent": st.booleans(),
    }
)


def when_us(ready_at: float) -> int:
    """The marker's ``when16`` for a ready time, as the claim walk compares it."""
    return max(0, min(int(ready_at * 1_000_000), 10**16 - 1))


def backoff_bounds(attempts: int) -> tuple[float, float]:
    """The documented back-off after ``attempts`` used attempts: ``[d/2, d)`` with d = min(max, base * 2^(n-1))."""
    delay = min(RETRY_MAX, RETRY_BASE * 2.0 ** max(0, attempts - 1))
    return delay * 0.5, delay


@dataclass
class ModelTask:
    """What the model believes about one task."""

    id: str
    priority: int
    max_attempts: int
    ttl: float | None
    ready_at: float
    state: str = "ready"  # ready (pending or delayed), running, done, dead
    attempts: int = 0
    fence: int = 0
    token: str = ""
    running_attempt: int = 0
    expires: float = 0.0
    owner: str = "self"  # "self" (this process), "lease" (nobody) or "helper-<n>" (a helper process)
    result: Any = None


@settings(max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
class QueueMachine(RuleBasedStateMachine):
    """The queue against its model: every rule checks the call's answer, every invariant the disk."""

    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="fsqueue-model-")
        self.clock = ManualClock(start=START)
        config = Config(ttl=TTL, retry_base=RETRY_BASE, retry_max=RETRY_MAX, durability="none")
        self.queue = Queue(
            os.path.join(self.tmp, "q"), create=True, clock=self.clock, config=config, rng=random.Random(7)
        )
        settings_ = WatchdogSettings(retention_done=None, retention_dead=None)  # never prune what the model keeps
        self.sweeper = Sweeper(self.queue, settings_, ActionLog("text", io.StringIO()), persist=False)
        self.tasks: dict[str, ModelTask] = {}
        self.seen_expired: dict[str, tuple[int, int]] = {}
        self.reported_attempts: dict[str, int] = {}
        self.serial = 0
        self.helper: subprocess.Popen[bytes] | None = None
        self.helpers = 0
        self.dead_owners: set[str] = set()

    def teardown(self) -> None:
        if self.helper is not None:
            self.helper.kill()
            self.helper.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- model helpers ---------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock.now()

    def head(self) -> ModelTask | None:
        """The task a lone claimer must get: highest priority, then earliest ready time, then marker name."""
        limit = int(self.now() * 1_000_000)
        due = [t for t in self.tasks.values() if t.state == "ready" and when_us(t.ready_at) <= limit]
        if not due:
            return None
        return min(due, key=lambda t: (-t.priority, when_us(t.ready_at), t.id))

    def verdict(self, task: ModelTask) -> str:
        """The documented verdict of a running task's lock: dead owner first, then expiry, then the live kinds."""
        if task.owner in self.dead_owners:
            return "dead"
        if task.expires <= self.now():
            return "expired"
        return "lease" if task.owner == "lease" else "alive"

    def current(self, claim: Claim) -> ModelTask | None:
        """The model task if ``claim`` is still its current claim, else None (a stale claim)."""
        task = self.tasks.get(claim.id)
        if task is not None and task.state == "running" and task.token == claim.token:
            return task
        return None

    def settle_failure(self, task: ModelTask, *, retry: bool) -> str:
        """Apply a failed or broken attempt to the model; returns "pending" or "dead" as fsqueue does."""
        task.attempts = max(task.attempts, task.running_attempt)
        task.token = ""
        if retry and task.attempts < task.max_attempts:
            actual = self.queue.task(task.id).ready_at
            low, high = backoff_bounds(task.attempts)
            assert self.now() + low - EPSILON <= actual < self.now() + high + EPSILON, (
                actual - self.now(),
                (low, high),
            )
            task.state, task.ready_at = "ready", actual
            return "pending"
        task.state = "dead"
        return "dead"

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        """Every entry of the root but the guards (their content never changes) with size and mtime."""
        entries: dict[str, tuple[Any, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.queue.root):
            if os.path.basename(dirpath) == "guards":
                continue
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st_ = os.lstat(path)
                entries[os.path.relpath(path, self.queue.root)] = (
                    stat.S_IFMT(st_.st_mode),
                    st_.st_size,
                    st_.st_mtime_ns,
                )
        return entries

    # Each token-carrying operation through the Claim object or through the queue by id and token.

    def do_renew(self, claim: Claim, ttl: float | None, by_token: bool) -> float:
        return self.queue.renew(claim.id, claim.token, ttl=ttl) if by_token else claim.renew(ttl)

    def do_complete(self, claim: Claim, result: Any, by_token: bool) -> None:
        if by_token:
            self.queue.complete(claim.id, claim.token, result)
        else:
            claim.complete(result)

    def do_fail(self, claim: Claim, retry: bool, by_token: bool) -> str:
        return (
            self.queue.fail(claim.id, claim.token, "boom", retry=retry) if by_token else claim.fail("boom", retry=retry)
        )

    # -- rules -----------------------------------------------------------------------------------

    @initialize(batch=st.lists(ENQUEUE_ARGS, min_size=1, max_size=4))
    def some_tasks(self, batch: list[dict[str, Any]]) -> None:
        """Start with a few tasks, so that early claims find work."""
        for args in batch:
            self.enqueue_one(**args)

    @rule(args=ENQUEUE_ARGS)
    def enqueue(self, args: dict[str, Any]) -> None:
        """Enqueue with or without an explicit id; an id already held is TaskExists, or a no-op with if_absent."""
        self.enqueue_one(**args)

    def enqueue_one(
        self,
        explicit: bool,
        name: str,
        priority: int,
        delay: int,
        max_attempts: int,
        ttl: float | None,
        if_absent: bool,
    ) -> None:
        task_id = name if explicit else None
        if task_id is not None and task_id in self.tasks:
            before = self.snapshot()
            if if_absent:
                assert self.queue.enqueue("again", id=task_id, if_absent=True) == task_id
            else:
                with pytest.raises(TaskExists):
                    self.queue.enqueue("again", id=task_id, priority=priority)
            assert self.snapshot() == before
            return
        self.serial += 1
        now = self.now()
        got = self.queue.enqueue(
            {"n": self.serial},
            id=task_id,
            priority=priority,
            delay=delay,
            max_attempts=max_attempts,
            ttl=ttl,
            if_absent=if_absent,
        )
        assert task_id is None or got == task_id
        assert got not in self.tasks
        self.tasks[got] = ModelTask(got, priority, max_attempts, ttl, now + delay)

    @rule(
        target=claims,
        count=st.integers(1, 3),
        owner=st.sampled_from(["self", "self", "lease", "helper"]),
        ttl=st.sampled_from([None, None, 30.0, 90.0]),
    )
    def claim(self, count: int, owner: str, ttl: float | None) -> Any:
        """Each claim takes exactly the model's head, as attempt settled + 1 with the next fence number."""
        got = [claim for _ in range(count) if (claim := self.claim_one(owner, ttl)) is not None]
        return multiple(*got)

    def claim_one(self, owner: str, ttl: float | None) -> Claim | None:
        expected = self.head()
        if owner == "helper":
            if self.helper is None:
                self.helper = subprocess.Popen(["sleep", "3600"])
                self.helpers += 1
            got = self.queue.claim("worker", ttl=ttl, owner_pid=self.helper.pid)
            owner = f"helper-{self.helpers}"
        else:
            got = self.queue.claim("worker", ttl=ttl, lease_only=owner == "lease")
        if expected is None:
            assert got is None, got
            return None
        assert got is not None, f"expected {expected.id}"
        assert got.id == expected.id, (got.id, expected.id)
        assert (got.attempt, got.fence) == (expected.attempts + 1, expected.fence + 1)
        lease = ttl or expected.ttl or TTL
        assert got.ttl == lease and got.expires_at == self.now() + lease
        expected.state, expected.token = "running", got.token
        expected.running_attempt, expected.fence = got.attempt, got.fence
        expected.expires, expected.owner = got.expires_at, owner
        return got

    @precondition(lambda self: self.helper is not None)
    @rule()
    def helper_dies(self) -> None:
        """The helper process that owns some claims exits (and is reaped): its claims are dead at once."""
        assert self.helper is not None
        self.helper.kill()
        self.helper.wait()
        self.helper = None
        self.dead_owners.add(f"helper-{self.helpers}")

    @rule(claim=claims, ttl=st.sampled_from([None, None, 10.0, 200.0]), by_token=st.booleans())
    def renew(self, claim: Claim, ttl: float | None, by_token: bool) -> None:
        """Only the current claim renews (to now + ttl); a stale one gets LeaseLost and changes nothing."""
        task = self.current(claim)
        if task is None:
            before = self.snapshot()
            with pytest.raises(LeaseLost):
                self.do_renew(claim, ttl, by_token)
            assert self.snapshot() == before
            return
        expires = self.do_renew(claim, ttl, by_token)
        assert expires == self.now() + (ttl or claim.ttl)
        assert os.stat(self.queue.layout.lock(claim.id)).st_mtime == expires
        task.expires = expires

    @rule(claim=claims, by_token=st.booleans())
    def complete(self, claim: Claim, by_token: bool) -> None:
        """The current claim commits once; a stale or finished claim gets LeaseLost and the disk is unchanged."""
        task = self.current(claim)
        result = {"by": claim.token}
        if task is None:
            before = self.snapshot()
            with pytest.raises(LeaseLost):
                self.do_complete(claim, result, by_token)
            assert self.snapshot() == before
            return
        self.do_complete(claim, result, by_token)
        task.state, task.token, task.result = "done", "", result
        task.attempts = max(task.attempts, task.running_attempt)

    @rule(claim=claims, retry=st.booleans(), by_token=st.booleans())
    def fail(self, claim: Claim, retry: bool, by_token: bool) -> None:
        """The current claim fails into a back-off or dead-letter (after max_attempts); a stale one is fenced."""
        task = self.current(claim)
        if task is None:
            before = self.snapshot()
            with pytest.raises(LeaseLost):
                self.do_fail(claim, retry, by_token)
            assert self.snapshot() == before
            return
        outcome = self.do_fail(claim, retry, by_token)
        assert outcome == self.settle_failure(task, retry=retry)

    @rule(seconds=st.sampled_from(CLOCK_STEPS))
    def move_clock(self, seconds: int) -> None:
        """The wall clock moves, forwards or backwards; nothing happens until someone acts."""
        self.clock.advance(seconds)

    @rule(dead=st.booleans(), expired=st.booleans(), later=st.sampled_from([0, 0, 30, 61]))
    def clear(self, dead: bool, expired: bool, later: int) -> None:
        """``clear --dead`` breaks the locks of dead owners; ``--expired`` those and every expired lease."""
        self.clock.advance(later)
        allow = ({"dead"} if dead else set()) | ({"dead", "expired"} if expired else set())
        due = [(t, self.verdict(t)) for t in self.tasks.values() if t.state == "running"]
        due = [(t, v) for t, v in due if v in allow]
        got = self.queue.clear(dead=dead, expired=expired)
        expected = []
        for task, verdict in sorted(due, key=lambda pair: pair[0].id):
            outcome = self.settle_failure(task, retry=True)
            expected.append((task.id, "requeued" if outcome == "pending" else "dead", verdict))
        assert sorted(got) == expected

    @precondition(lambda self: bool(self.tasks))
    @rule(data=st.data(), force=st.booleans())
    def clear_named(self, data: st.DataObject, force: bool) -> None:
        """A named clear breaks a dead or expired lock, or any with force; a live one is LockHeld, none TaskNotFound."""
        task = self.tasks[data.draw(st.sampled_from(sorted(self.tasks)))]
        if task.state != "running":
            with pytest.raises(TaskNotFound):
                self.queue.clear([task.id], force=force)
            return
        verdict = self.verdict(task)
        if verdict not in ("dead", "expired") and not force:
            before = self.snapshot()
            with pytest.raises(LockHeld):
                self.queue.clear([task.id])
            assert self.snapshot() == before
            return
        got = self.queue.clear([task.id], force=force)
        outcome = self.settle_failure(task, retry=True)
        assert got == [(task.id, "requeued" if outcome == "pending" else "dead", verdict)]

    @rule(gaps=st.lists(st.sampled_from([0, 1, 30, 61]), min_size=1, max_size=2))
    def watchdog_sweep(self, gaps: list[int]) -> None:
        """A sweep breaks a lease only when the previous sweep saw the same lock file (inode, mtime) expired."""
        for gap in gaps:
            self.clock.advance(gap)
            self.sweep_once()

    def sweep_once(self) -> None:
        now = self.now()
        running = [t for t in self.tasks.values() if t.state == "running"]
        dead = [t for t in running if self.verdict(t) == "dead"]  # the owners pass breaks these first
        seen: dict[str, tuple[int, int]] = {}
        expired = []
        for task in running:
            if task not in dead and task.expires <= now:
                st_ = os.lstat(self.queue.layout.lock(task.id))
                seen[task.id] = (st_.st_ino, st_.st_mtime_ns)
                if self.seen_expired.get(task.id) == seen[task.id]:
                    expired.append(task)
        report = self.sweeper.sweep()
        for task in dead + expired:
            self.settle_failure(task, retry=True)
        self.seen_expired = seen
        expected = {"dead": len(dead), "expired": len(expired)}
        assert dict(report.breaks) == {k: n for k, n in expected.items() if n}

    @precondition(lambda self: bool(self.tasks))
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        """A dead task returns to pending now with a fresh attempt budget; any other is TaskNotFound."""
        task = self.tasks[data.draw(st.sampled_from(sorted(self.tasks)))]
        if task.state != "dead":
            with pytest.raises(TaskNotFound):
                self.queue.requeue(task.id)
            return
        self.queue.requeue(task.id)
        task.state, task.attempts, task.ready_at = "ready", 0, self.now()
        self.reported_attempts.pop(task.id, None)  # the one documented way attempts go back to 0

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def each_task_is_in_exactly_one_state_on_disk(self) -> None:
        """The files of each task are those of its model state and no other (protocol: which files exist)."""
        layout = self.queue.layout
        markers: Counter[str] = Counter()
        for _dirpath, _, filenames in os.walk(layout.ready):
            for name in filenames:
                parsed = parse_entry_name(name)
                assert parsed is not None, name
                markers[parsed[1]] += 1
        for task in self.tasks.values():
            files = (
                os.path.lexists(layout.done(task.id)),
                os.path.lexists(layout.dead(task.id)),
                os.path.lexists(layout.lock(task.id)),
                os.path.lexists(layout.record(task.id)),
                markers.pop(task.id, 0),
            )
            expected = {
                "done": (True, False, False, False, 0),
                "dead": (False, True, False, False, 0),
                "running": (False, False, True, True, 0),
                "ready": (False, False, False, True, 1),
            }[task.state]
            assert files == expected, (task.id, task.state, files)
        assert not markers, f"markers of unknown tasks: {markers}"
        assert sorted(os.listdir(layout.staging)) == []

    @invariant()
    def the_queue_reports_the_model(self) -> None:
        """tasks(), task() and status() agree with the model; attempts never decrease except by requeue."""
        now = self.now()
        listed = Counter(info.id for info in self.queue.tasks())
        assert listed == Counter(list(self.tasks)), "each task is listed exactly once"
        counts: Counter[str] = Counter()
        for task in self.tasks.values():
            info = self.queue.task(task.id)
            state = task.state
            if state == "ready":
                state = "delayed" if task.ready_at > now else "pending"
            assert info.state == state, (task.id, info.state, state)
            assert (info.attempts, info.max_attempts, info.priority) == (
                task.attempts,
                task.max_attempts,
                task.priority,
            )
            if task.state == "done":
                assert info.result == task.result
            if task.state == "running":
                assert info.lock is not None and info.lock.attempt == task.running_attempt
                assert (info.lock.expires_at, info.lock.verdict) == (task.expires, self.verdict(task))
            assert info.attempts >= self.reported_attempts.get(task.id, 0)
            self.reported_attempts[task.id] = info.attempts
            counts["ready" if task.state == "ready" else task.state] += 1
        status = self.queue.status()["tasks"]
        assert status["pending"] + status["delayed"] == counts["ready"]
        assert (status["running"], status["done"], status["dead"]) == (
            counts["running"],
            counts["done"],
            counts["dead"],
        )


class TestQueueModel(QueueMachine.TestCase):  # type: ignore[misc,valid-type]
    """Random sequences of enqueue, claim, renew, complete, fail, clock jumps, breaks and requeues."""
