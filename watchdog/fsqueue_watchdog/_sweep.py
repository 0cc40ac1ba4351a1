"""One sweep over a queue root: break dead and expired claims, repair crash leftovers, count.

Cost: one ``scandir`` + ``stat`` per lock, one judgement per *owner* (``owners/`` index), and a lock
record is read only when its stat or its owner says it may need action. Pending tasks cost nothing
here except in the slower repair pass, which runs every ``repair_every`` seconds.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fsqueue import CorruptRecord, Queue
from fsqueue._errors import FsQueueError
from fsqueue._fsio import read_nofollow
from fsqueue._identity import Owner, owner_state
from fsqueue._ids import validate_task_id
from fsqueue._record import ForeignFormat, LockRecord, load_record, parse_owner
from fsqueue._transitions import break_lock

from ._alerting import Alerting
from ._log import ActionLog
from ._repair import Repairer
from ._settings import WatchdogSettings
from ._state import SweepState, load_state, save_state

if TYPE_CHECKING:
    from fsqueue._identity import OwnerState
    from fsqueue._transitions import Verdict


@dataclass
class SweepReport:
    """What one sweep saw and did (the figures behind the metrics and the systemd STATUS line)."""

    at: float
    duration: float = 0.0
    locks: int = 0
    locks_by_owner: Counter[str] = field(default_factory=Counter)
    locks_expired: int = 0
    breaks: Counter[str] = field(default_factory=Counter)
    repairs: Counter[str] = field(default_factory=Counter)
    oldest_pending_age: float | None = None
    agents: Counter[str] = field(default_factory=Counter)
    spool_lines: int = 0
    state_applied: int = 0

    def status_line(self) -> str:
        broke = sum(self.breaks.values())
        return f"last sweep: {self.locks} locks, {broke} broken, {sum(self.repairs.values())} repaired"


#: Collect batches per sweep (each up to 64 segments / 32 MiB): a telemetry flood cannot stall a sweep.
SPOOL_BATCHES = 4

_EXPIRED: frozenset[Verdict] = frozenset({"expired", "dead", "corrupt"})


class Sweeper:
    """Sweeps one queue; keeps what must survive between sweeps (the two-sweep rule, owner cache)."""

    def __init__(self, queue: Queue, settings: WatchdogSettings, log: ActionLog, *, persist: bool = True) -> None:
        self.queue = queue
        self.settings = settings
        self.log = log
        self.repairer = Repairer(queue, settings, log)
        self.persist = persist
        state = load_state(queue.root) if persist else SweepState()
        #: Locks seen expired by the previous sweep, by task: (inode, mtime_ns). A renewal changes the
        #: mtime, so a renewal racing the sweep never meets the two-sweep rule (rq #2424, #1604).
        self._expired_seen: dict[str, tuple[int, int]] = state.expired
        self.repairer.last_run = state.repaired_at
        self.alerting = Alerting(queue, log, state.verdicts)
        self._owners: dict[str, Owner | None] = {}
        self._left_alone: set[tuple[str, int]] = set()
        #: The first sweep of a boot reads the locks the owner index does not know (see _locks_pass).
        self._first = not state.boot_id
        self.breaks_total: Counter[str] = Counter()

    def sweep(self, now: float | None = None) -> SweepReport:
        """Run one sweep at ``now`` (the injected clock by default)."""
        import time

        started = time.monotonic()
        now = self.queue.clock.now() if now is None else now
        report = SweepReport(at=now)
        # Each pass is isolated: one hostile entry must not stop the others (nor, by crashing the daemon
        # every sweep, keep expired leases from ever being broken).
        self._guarded_pass("owners", lambda: self._owners_pass(report))
        self._guarded_pass("locks", lambda: self._locks_pass(report, now))
        self._guarded_pass("repair", lambda: self.repairer.run(report, now, force=self._first))
        self._guarded_pass("alerts", lambda: self.alerting.run(report))
        if self.settings.collect_spool:
            self._guarded_pass("spool", lambda: self._spool_pass(report))
        if self.settings.steward:
            self._guarded_pass("steward", lambda: self._steward_pass(report))
        self._first = False
        if self.persist:
            try:
                save_state(
                    self.queue.root,
                    self.queue.layout.staging,
                    SweepState(self._expired_seen, self.repairer.last_run, verdicts=self.alerting.verdicts),
                )
            except OSError as exc:
                self.log.action("error", reason=f"cannot save sweep state: {exc.strerror}")
        report.duration = time.monotonic() - started
        self.breaks_total.update(report.breaks)
        return report

    def _spool_pass(self, report: SweepReport) -> None:
        """Archive sealed telemetry, a bounded amount per sweep; quiet unless something was wrong."""
        if not os.path.isdir(os.path.join(self.queue.root, "spool")):
            return  # nobody has emitted here: do not create spool/ in every queue
        from fsqueue._collect import collect

        # Real time, not the queue clock: telemetry lines carry wall-clock stamps (retention, days).
        got = collect(self.queue.root, settings=self.settings.spool, max_batches=SPOOL_BATCHES)
        report.spool_lines += got.lines
        if got.anomalies() or got.sealed:
            self.log.action("spool", reason=got.summary())

    def _steward_pass(self, report: SweepReport) -> None:
        """Apply pending shared-state updates unless a ``fsqueue steward`` daemon holds the root."""
        from fsqueue._steward import steward_step

        # Real time, not the queue clock: tickets are wall-clock stamps and outcomes expire by them.
        got = steward_step(self.queue.root, config=self.queue.config, max_rounds=4)
        if got is not None:
            report.state_applied += got.applied
            if got.repaired or got.quarantined:
                self.log.action("steward", reason=got.summary())

    def _guarded_pass(self, name: str, run: Callable[[], None]) -> None:
        try:
            run()
        except Exception as exc:  # logged; the next sweep tries again
            self.log.action("error", reason=f"{name} pass failed: {type(exc).__name__}: {exc}")

    # -- owners: judge each process once, break the locks of the dead ones ----------------------------

    def _owners_pass(self, report: SweepReport) -> None:
        """Judge each owner once; break its locks if it is dead; count the others' locks by state."""
        for entry in _iter_dir(self.queue.layout.owners):
            if not entry.is_dir(follow_symlinks=False):
                continue
            owner = self._owner(entry.name, entry.path)
            state: OwnerState = "foreign" if owner is None else owner_state(owner)
            links = 0
            for link in _iter_dir(entry.path):
                if not link.name.endswith(".lock"):
                    continue
                links += 1
                if state == "dead":
                    self._break_dead(link.name[: -len(".lock")], link.path, report)
            if state == "dead":
                if not links:
                    self._forget_owner(entry.name, entry.path)
            elif links:
                report.locks_by_owner[state] += links

    def _owner(self, key: str, path: str) -> Owner | None:
        owner = self._owners.get(key)
        if owner is None:
            owner = _read_owner(os.path.join(path, "owner.json"))
            if owner is not None:  # never remember "unreadable": owner.json may be published a moment later
                self._owners[key] = owner
        return owner

    def _forget_owner(self, key: str, path: str) -> None:
        # A dead owner creates no new links, so an empty dead owner's directory can go.
        try:
            os.unlink(os.path.join(path, "owner.json"))
            os.rmdir(path)
        except OSError:
            return
        self._owners.pop(key, None)

    def _break_dead(self, task_id: str, link: str, report: SweepReport) -> None:
        lock_path = self.queue.layout.lock(task_id)
        try:
            same = _same_file(os.lstat(link), os.lstat(lock_path))
        except FileNotFoundError:
            same = False
        if not same:
            # The claim ended (or a crash came between its two unlinks): the link is a stray. Checked
            # and removed without the task's guard, which is safe: only this dead owner ever makes
            # links in its directory, so nothing can re-create this link between the check and the unlink.
            try:
                os.unlink(link)
            except OSError:
                pass
            return
        self._break(task_id, frozenset({"dead"}), report, reason="owner process is gone")

    # -- locks: stat each, break leases seen expired on two consecutive sweeps -------------------------

    def _locks_pass(self, report: SweepReport, now: float) -> None:
        """One stat per lock: break leases seen expired twice, and corrupt entries; count the rest."""
        seen: dict[str, tuple[int, int]] = {}
        for entry in _iter_dir(self.queue.layout.tasks):
            if not entry.name.endswith(".lock"):
                continue
            task_id = entry.name[: -len(".lock")]
            try:
                validate_task_id(task_id)
                st = entry.stat(follow_symlinks=False)
            except (ValueError, FileNotFoundError):
                continue
            report.locks += 1
            if not stat.S_ISREG(st.st_mode):
                report.locks_by_owner["corrupt"] += 1
                self._break(task_id, frozenset({"corrupt"}), report, reason="lock is not a regular file")
                continue
            # One link: not in the owner index -- a lease-only claim, or an owner link lost in a crash.
            unindexed = st.st_nlink < 2
            if unindexed:
                report.locks_by_owner["lease"] += 1
            if st.st_mtime + self.settings.grace <= now:
                report.locks_expired += 1
                key = (st.st_ino, st.st_mtime_ns)
                if self._expired_seen.get(task_id) == key:
                    self._break(task_id, _EXPIRED, report, reason="lease expired on two consecutive sweeps")
                # Kept even after a break attempt: one skipped because its guard was busy is retried next
                # sweep, while a broken or renewed lock never matches this inode and mtime again.
                seen[task_id] = key
            elif unindexed and self._first:
                # After a power loss an owner link may not have reached the disk; the first sweep of a
                # boot therefore reads the unindexed locks once and breaks those whose owner is dead.
                self._judge_unindexed(task_id, report)
        self._expired_seen = seen

    def _judge_unindexed(self, task_id: str, report: SweepReport) -> None:
        info = self.queue.lock_info(task_id)
        if info is not None and info.verdict in ("dead", "corrupt"):
            reason = "owner process is gone" if info.verdict == "dead" else "lock record is corrupt"
            self._break(task_id, frozenset({"dead", "corrupt"}), report, reason=reason)

    def _break(self, task_id: str, allow: frozenset[Verdict], report: SweepReport, *, reason: str) -> None:
        """Re-read the lock, then break it under the task's guard only if it is still the one judged."""
        try:
            found = self.queue.read_lock(task_id)
            token = None if found is None else found[0].token
            if found is None:
                return
        except ForeignFormat:
            self._note_left_alone(task_id)
            return
        except CorruptRecord:
            token = None
            allow = allow | {"corrupt"}
        except (FsQueueError, OSError) as exc:  # unreadable (EACCES, EIO): report it, go on with the others
            self.log.action("error", task=task_id, reason=f"cannot read lock: {exc}")
            return
        try:
            got = break_lock(
                self.queue,
                task_id,
                allow=allow,
                expect_token=token,
                reason=f"lease broken by the watchdog: {reason}",
                blocking=False,  # a guard held by a stopped process is retried next sweep, not waited on
            )
        except (FsQueueError, OSError) as exc:
            self.log.action("error", task=task_id, reason=f"cannot break lock: {exc}")
            return
        if got is None:
            return
        outcome, verdict, lock = got
        report.breaks[verdict] += 1
        self.log.action("break", **_lock_fields(task_id, lock), reason=reason, verdict=verdict, outcome=outcome)

    def _note_left_alone(self, task_id: str) -> None:
        try:
            ino = os.lstat(self.queue.layout.lock(task_id)).st_ino
        except OSError:
            return
        if (task_id, ino) not in self._left_alone:
            self._left_alone.add((task_id, ino))
            self.log.action("skip", task=task_id, reason="lock written in an unknown format; left alone")


def _lock_fields(task_id: str, lock: LockRecord | None) -> dict[str, Any]:
    if lock is None:
        return {"task": task_id}
    return {
        "task": task_id,
        "agent": lock.agent,
        "pid": lock.owner.pid,
        "host": lock.owner.host,
        "attempt": lock.attempt,
    }


def _read_owner(path: str) -> Owner | None:
    try:
        return parse_owner(load_record(read_nofollow(path)[0], path, "owner"), path)
    except (OSError, CorruptRecord):
        return None  # unreadable: the owner is treated as foreign, its locks judged by their lease


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _iter_dir(path: str) -> Iterator[os.DirEntry[str]]:
    """Entries of a directory, lazily (a list of 100,000 DirEntry objects would cost ~20 MB)."""
    try:
        with os.scandir(path) as entries:
            yield from entries
    except (FileNotFoundError, NotADirectoryError):
        return
