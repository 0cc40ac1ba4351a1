"""The slower passes of a sweep: crash leftovers, retention, and the task census for metrics.

These cost time in proportion to the number of tasks, so they run every ``repair_every`` seconds and
at start-up, not every sweep. Each repair runs under the task's guard and is idempotent: a watchdog
killed in the middle of one simply does it again next time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fsqueue import CorruptRecord, Queue
from fsqueue._fsio import exists_nofollow, unlink_quietly
from fsqueue._guard import guarded
from fsqueue._ids import validate_task_id
from fsqueue._index import add_entry, iter_all, iter_entries, priorities
from fsqueue._record import ForeignFormat

from ._log import ActionLog
from ._settings import WatchdogSettings

if TYPE_CHECKING:
    from ._sweep import SweepReport


class Repairer:
    """Runs the slow passes on their cadence and keeps the last census."""

    def __init__(self, queue: Queue, settings: WatchdogSettings, log: ActionLog) -> None:
        self.queue = queue
        self.settings = settings
        self.log = log
        self.last_run: float | None = None
        self.census: dict[str, int] = {}

    def run(self, report: SweepReport, now: float, *, force: bool = False) -> None:
        report.oldest_pending_age = self.oldest_pending_age(now)
        if not force and self.last_run is not None and now - self.last_run < self.settings.repair_every:
            return
        self.last_run = now
        self.clean_staging(report, now)
        # Repair first: a committed task's leftover record must go while its done record still says so.
        self.repair_records(report, now)
        self.prune(report, now, "done", self.settings.retention_done)
        self.prune(report, now, "dead", self.settings.retention_dead)

    def oldest_pending_age(self, now: float) -> float | None:
        """Age of the longest-waiting ready task: the first marker of each priority, no full walk."""
        oldest = None
        for priority in priorities(self.queue.layout.ready):
            for _, ready_at, task_id in iter_entries(self.queue.layout.ready, priority, until=now):
                if exists_nofollow(self.queue.layout.lock(task_id)):
                    continue
                oldest = ready_at if oldest is None else min(oldest, ready_at)
                break
        return None if oldest is None else max(0.0, now - oldest)

    def clean_staging(self, report: SweepReport, now: float) -> None:
        """Remove staging files older than the bound: a writer crashed between write and link."""
        staging = self.queue.layout.staging
        for entry in _scandir(staging):
            try:
                if entry.is_dir(follow_symlinks=False):
                    continue  # fsqueue stages files only; a stray directory is not ours to remove
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            # Lock files are staged with their lease expiry as mtime (in the future): never "old".
            # An alert's lock (staging/alert-<id>.lock) may age past the bound while its alert waits
            # for a retry; removing it is safe because the only deliverers are the process that
            # tripped (its lock file is seconds old) and this watchdog, which is one per root and
            # does not deliver while it cleans.
            if age > self.settings.staging_max_age and _unlink_or_none(entry.path):
                report.repairs["staging"] += 1
                self.log.action("repair", path=entry.path, reason=f"staging file older than {age:.0f}s removed")

    def repair_records(self, report: SweepReport, now: float) -> None:
        """Records whose task is done/dead are removed; records with neither lock nor marker re-indexed.

        Decided from directory listings and ``lstat`` -- no record is read unless it looks orphaned --
        so the pass costs one name per task, not one file read per task.
        """
        layout = self.queue.layout
        pending = delayed = 0
        indexed: set[str] = set()
        for _, ready_at, task_id in iter_all(layout.ready):
            indexed.add(task_id)
            if ready_at > now:
                delayed += 1
            else:
                pending += 1
        for task_id in _iter_ids(layout.records, ".json"):
            if task_id not in indexed and not exists_nofollow(layout.lock(task_id)):
                self._repair_unless_busy(task_id, report)
        del indexed
        finished = {"done": 0, "dead": 0}
        for state in finished:
            for task_id in _iter_ids(layout.sub(state), ".json"):
                finished[state] += 1
                if exists_nofollow(layout.record(task_id)):  # committed, but the record survived a crash
                    self._repair_unless_busy(task_id, report)
        running = sum(1 for _ in _iter_ids(layout.tasks, ".lock"))
        self.census = {"pending": pending, "delayed": delayed, "running": running, **finished}

    def _repair_unless_busy(self, task_id: str, report: SweepReport) -> None:
        """Repair under the task's guard; a guard held now means a transition is in flight, and its
        holder may be stopped or hung: waiting would stall the sweep (every other task's recovery)
        for as long. Such a task is looked at again by the next repair pass."""
        with guarded(self.queue.layout.guard(task_id), blocking=False) as held:
            if held:
                self._repair_one(task_id, report)

    def _repair_one(self, task_id: str, report: SweepReport) -> None:
        layout = self.queue.layout
        if self.queue.finished_state(task_id) is not None:
            if unlink_quietly(layout.record(task_id)):
                report.repairs["record-of-finished-task"] += 1
                self.log.action("repair", task=task_id, reason="task was committed; its leftover record removed")
            return
        if exists_nofollow(layout.lock(task_id)):
            return
        try:
            task = self.queue.read_task(task_id)
        except ForeignFormat:
            return  # a newer fsqueue's record: not garbage, not ours to judge
        except CorruptRecord as exc:
            self.queue.quarantine(layout.record(task_id), str(exc))
            report.repairs["quarantined"] += 1
            self.log.action("quarantine", task=task_id, path=layout.record(task_id), reason=str(exc))
            return
        if task is None or exists_nofollow(os.path.join(layout.ready, task.entry)):
            return
        add_entry(layout.ready, task.entry, durable=self.queue.durable)
        report.repairs["orphan-record"] += 1
        self.log.action("repair", task=task_id, reason="pending task had no index marker; re-indexed")

    def prune(self, report: SweepReport, now: float, state: str, max_age: float | None) -> None:
        """Remove done results / dead letters older than their retention."""
        if max_age is None:
            return
        directory = self.queue.layout.sub(state)
        for entry in _scandir(directory):
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if age <= max_age or not entry.name.endswith(".json"):
                continue
            task_id = entry.name[: -len(".json")]
            try:
                validate_task_id(task_id)
            except ValueError:
                continue
            seen = entry.stat(follow_symlinks=False)
            # A requeue of this dead letter may be running: its guard is held, so it waits for a later pass.
            with guarded(self.queue.layout.guard(task_id), blocking=False) as held:
                if not held:
                    continue
                try:
                    now_st = os.lstat(entry.path)
                except FileNotFoundError:
                    continue  # requeued (or removed) since the scan: nothing to prune
                if (now_st.st_ino, now_st.st_mtime_ns) != (seen.st_ino, seen.st_mtime_ns):
                    continue  # a newer final record took its place
                # A leftover record would turn pending again once its done/dead record is gone.
                unlink_quietly(self.queue.layout.record(task_id))
                removed = unlink_quietly(entry.path)
            if removed:
                report.repairs[f"pruned-{state}"] += 1
                self.log.action("prune", task=task_id, reason=f"{state} for {age / 86400:.1f} days")


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _unlink_or_none(path: str) -> bool:
    try:
        return unlink_quietly(path)
    except OSError:
        return False


def _iter_ids(directory: str, suffix: str) -> Iterator[str]:
    """Valid task ids of the ``<id><suffix>`` entries in ``directory``, lazily."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(suffix) and _valid(task_id := entry.name[: -len(suffix)]):
                    yield task_id
    except (FileNotFoundError, NotADirectoryError):
        return


def _valid(task_id: str) -> bool:
    try:
        validate_task_id(task_id)
    except ValueError:
        return False
    return True
