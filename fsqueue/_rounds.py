"""The steward's rounds: submissions applied exactly once, in ticket order, crash-safe at every step.

One round (:meth:`Steward.round`):

1. *Cut*: read the ticket counter under its flock (``_ticket.take_cut``); every ticket up to it is in
   the inbox already, and every later one will be larger.
2. List ``state/inbox/``; take the oldest ``batch`` tickets up to the cut, in ticket order.
3. Per document: load its snapshot (repairing a crash, below), then decide each submission -- a
   ticket at or below the snapshot's ``last_ticket`` was decided before a crash and is not applied
   again; otherwise ``if_version`` is checked, the merge patch applied and the size bounded.
   Each applied update is one version.
4. Publish the new snapshot: ``link()`` it as ``history/<version>.json`` (the commit point), then
   ``rename()`` the same inode over ``current.json`` (what readers open).
5. Write one outcome segment for the round and hard-link it as each ticket's outcome file.
6. Remove the decided submissions from the inbox; prune old history and outcomes.

Crash points (the process may die before or after any instruction; the next round repairs):

- S1, before 4's link: nothing of the round is visible; the same submissions are decided again, in
  the same order against the same snapshot, to the same outcomes.
- S2, between 4's link and rename: ``history/`` holds a version newer than ``current.json``;
  loading adopts it (re-points ``current.json``), and its tickets count as decided.
- S3, after 4, before or during 5: the snapshot lists every ticket it decided (and every earlier
  ticket whose submission is still in the inbox); those are answered from it, never re-applied.
- S4, after 5, before or during 6: a ticket with an outcome file is only removed from the inbox.

A snapshot is published before any of its outcomes exists, so an ``applied v=N`` outcome always
finds ``current.json`` at version N or later (read-your-writes for ``wait`` then ``read``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from ._clock import Clock
from ._config import Config
from ._errors import ConfigError, CorruptRecord, StewardRunning
from ._fsio import (
    ensure_real_dir,
    exists_nofollow,
    fsync_dir,
    read_record_file,
    storage_errors,
    unlink_quietly,
    write_staged,
)
from ._mergepatch import apply_merge_patch
from ._state import OUTCOME_BUCKET_NS, StatePaths, history_versions, real_dirs
from ._staterecord import (
    MAX_DOCUMENT_BYTES,
    Outcome,
    Snapshot,
    Submission,
    dumps,
    encode_outcomes,
    encode_snapshot,
    parse_snapshot,
    parse_submission,
)
from ._store import Store
from ._ticket import TICKET_PATTERN, take_cut, ticket_ns


@dataclass(frozen=True)
class StewardSettings:
    """How the steward runs; validated once."""

    history: int = 20
    """Snapshots kept per document in ``history/`` (at least 1: the newest is the commit record)."""
    batch: int = 500
    """Most submissions decided per round (one snapshot per document and one outcome segment per round)."""
    keep_outcomes: float = 86400.0
    """Seconds an outcome stays readable by ``wait`` (by the ticket's hour)."""
    interval: float = 1.0
    """Seconds between rounds of a running steward when the inbox is empty."""

    def __post_init__(self) -> None:
        for key, low, high in (("history", 1, 1_000_000), ("batch", 1, 100_000)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"steward {key} must be an integer from {low} to {high}, got {value!r}")
        for key in ("keep_outcomes", "interval"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3.2e9:
                raise ConfigError(f"steward {key} must be a positive number of seconds, got {value!r}")


@dataclass
class RoundReport:
    """What rounds did: counts, and the version each touched document was published at."""

    applied: int = 0
    rejected: int = 0
    repaired: int = 0
    quarantined: int = 0
    published: dict[str, int] = field(default_factory=dict)
    more: bool = False

    def add(self, other: RoundReport) -> None:
        self.applied += other.applied
        self.rejected += other.rejected
        self.repaired += other.repaired
        self.quarantined += other.quarantined
        self.published.update(other.published)
        self.more = other.more

    @property
    def idle(self) -> bool:
        return not (self.applied or self.rejected or self.repaired or self.quarantined)

    def summary(self) -> str:
        docs = "".join(f", {name} v={version}" for name, version in sorted(self.published.items()))
        counts = f"applied {self.applied}, rejected {self.rejected}, repaired {self.repaired}"
        return f"{counts}, quarantined {self.quarantined}" + (f"; published{docs[1:]}" if docs else "")


class Steward:
    """Applies the submissions of one queue root. The caller holds the singleton lock."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        config: Config | None = None,
        settings: StewardSettings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = Store(root, config=config, clock=clock)
        self.paths = StatePaths(self.store.root)
        self.settings = settings or StewardSettings()
        self.durable = self.store.durable
        self._floor: int | None = None

    def drain(self, stop: threading.Event | None = None, *, max_rounds: int | None = None) -> RoundReport:
        """Rounds until nothing more is pending up to the latest cut, ``stop`` is set, or ``max_rounds`` ran."""
        total, rounds = RoundReport(), 0
        while True:
            total.add(self.round())
            rounds += 1
            if not total.more or (stop is not None and stop.is_set()) or rounds == max_rounds:
                return total

    def round(self) -> RoundReport:
        """One round: decide up to ``batch`` submissions in ticket order, publish, answer, clean up."""
        paths, report = self.paths, RoundReport()
        for path in (paths.dir, paths.inbox, paths.outcomes, paths.docs):
            ensure_real_dir(path, durable=self.durable)
        if self._floor is None:
            self._floor = _highest(self._list_inbox(report, quarantine=False))
        cut = take_cut(paths.counter, self._floor, durable=self.durable)
        listed = self._list_inbox(report, quarantine=True)
        self._floor = max(self._floor, _highest(listed))
        eligible = [t for t in listed if ticket_ns(t) <= cut]  # later tickets wait for the next cut
        batch = eligible[: self.settings.batch]
        report.more = len(eligible) > len(batch)
        outcomes, by_doc, finished = self._read_batch(batch, report)
        in_inbox = set(listed)
        for name, subs in by_doc.items():
            outcomes.extend(self._apply(name, subs, in_inbox, report))
        self._write_outcomes(outcomes, report)
        for ticket in finished:  # S4: every outcome above is durable; the submissions can go
            unlink_quietly(paths.submission(ticket))
        self._prune_outcomes()
        return report

    # -- reading the inbox -------------------------------------------------------------------------

    def _list_inbox(self, report: RoundReport, *, quarantine: bool) -> list[str]:
        """The tickets in the inbox, sorted; anything else found there is moved to quarantine/."""
        with storage_errors("list", self.paths.inbox):
            names = os.listdir(self.paths.inbox)
        tickets = []
        for name in names:
            if name.endswith(".json") and TICKET_PATTERN.fullmatch(name[:-5]):
                tickets.append(name[:-5])
            elif quarantine:
                reason = "not a submission: state/inbox/ holds only <ticket>.json files"
                if self.store.quarantine(os.path.join(self.paths.inbox, name), reason):
                    report.quarantined += 1
        return sorted(tickets)

    def _read_batch(
        self, batch: list[str], report: RoundReport
    ) -> tuple[list[Outcome], dict[str, list[Submission]], list[str]]:
        now = self.store.clock.now()
        outcomes: list[Outcome] = []
        by_doc: dict[str, list[Submission]] = {}
        finished: list[str] = []
        for ticket in batch:
            if self._answered(ticket):
                finished.append(ticket)  # S4: answered by a round that died before removing it
                report.repaired += 1
                continue
            path = self.paths.submission(ticket)
            try:
                data = read_record_file(path)
                if data is None:
                    continue  # removed by hand since the listing
                sub = parse_submission(data, path, ticket)
            except CorruptRecord as exc:
                # Refused the same way however often a crash makes us see it again. Kept in quarantine/
                # by a hard link made before its outcome exists, so S4 (which only unlinks) loses nothing.
                outcomes.append(Outcome(ticket, "rejected", "", None, f"unreadable submission: {exc}", now))
                self.store.quarantine(path, str(exc), copy=True)
                report.rejected += 1
                report.quarantined += 1
            else:
                by_doc.setdefault(sub.name, []).append(sub)
            finished.append(ticket)
        return outcomes, by_doc, finished

    def _answered(self, ticket: str) -> bool:
        try:  # an outcome seen through a planted symlink is no answer; the bucket is evicted when written
            return real_dirs(self.paths.outcome_bucket(ticket)) and exists_nofollow(self.paths.outcome(ticket))
        except CorruptRecord:
            return False

    # -- deciding and publishing one document ------------------------------------------------------

    def _apply(self, name: str, subs: list[Submission], in_inbox: set[str], report: RoundReport) -> list[Outcome]:
        snap = self._load(name, report)
        now = self.store.clock.now()
        # Decided earlier, answer not yet removed from the inbox: carried into the next snapshot so
        # that a crash after it (S3) still finds them listed.
        carried = [o for o in snap.tickets if o.ticket in in_inbox]
        doc, version, last = snap.document, snap.version, snap.last_ticket
        size: int | None = None
        answers: list[Outcome] = []
        decided: list[Outcome] = []
        for sub in subs:
            if last is not None and sub.ticket <= last:
                answers.append(self._earlier(snap, sub.ticket, now))  # S2/S3: never applied twice
                report.repaired += 1
                continue
            reason = ""
            if sub.if_version is not None and sub.if_version != version:
                reason = f"document {name} is at version {version}, not {sub.if_version} (if_version)"
            else:
                new = apply_merge_patch(doc, sub.patch)
                if size is None:
                    size = len(dumps(doc))
                # A merge patch grows a document by less than twice its own encoded size, so the
                # exact size is only computed near the bound.
                bound = size + 2 * sub.size
                if bound > MAX_DOCUMENT_BYTES:
                    bound = len(dumps(new))
                if bound > MAX_DOCUMENT_BYTES:
                    reason = f"the document would be {bound} bytes; the limit is {MAX_DOCUMENT_BYTES} (8 MiB)"
                else:
                    doc, version, size = new, version + 1, bound
            if reason:
                decided.append(Outcome(sub.ticket, "rejected", name, None, reason, now))
                report.rejected += 1
            else:
                decided.append(Outcome(sub.ticket, "applied", name, version, "", now))
                report.applied += 1
            last = sub.ticket
        if version != snap.version:
            # Rejections alone change nothing: after a crash they are decided again, identically.
            self._publish(Snapshot(name, version, doc, now, last, (*carried, *decided)))
            report.published[name] = version
        return answers + decided

    def _earlier(self, snap: Snapshot, ticket: str, now: float) -> Outcome:
        """The decision on a ticket at or below the snapshot's ``last_ticket``, from the snapshots kept."""
        for entry in snap.tickets:
            if entry.ticket == ticket:
                return entry
        for version in history_versions(self.paths, snap.name):
            path = self.paths.history(snap.name, version)
            try:
                data = read_record_file(path)
                older = parse_snapshot(data, path, snap.name) if data is not None else None
            except CorruptRecord:
                continue
            for entry in older.tickets if older is not None else ():
                if entry.ticket == ticket:
                    return entry
        # Only a submission linked without the ticket counter's flock (or after the counter was
        # reset by hand) can arrive below a ticket already decided; applying it now would reorder.
        reason = f"arrived after later tickets of {snap.name} were applied (submitted outside the ticket lock?)"
        return Outcome(ticket, "rejected", snap.name, None, reason, now)

    def _load(self, name: str, report: RoundReport) -> Snapshot:
        """The newest intact snapshot: ``current.json``, unless ``history/`` holds a newer one (S2)."""
        paths = self.paths
        for path in (paths.doc(name), paths.history(name)):
            self._evict_non_directory(path, report)
        current = self._read_snapshot(paths.current(name), name, report)
        for version in history_versions(paths, name):
            if current is not None and version <= current.version:
                break
            hist = paths.history(name, version)
            newer = self._read_snapshot(hist, name, report)
            if newer is None or newer.version != version:
                continue
            self._repoint(name, hist)
            report.repaired += 1
            return newer
        return current if current is not None else Snapshot(name, 0, {})

    def _read_snapshot(self, path: str, name: str, report: RoundReport) -> Snapshot | None:
        """The snapshot at ``path``; None when absent or damaged (a damaged one is quarantined)."""
        try:
            data = read_record_file(path)
            return None if data is None else parse_snapshot(data, path, name)
        except CorruptRecord as exc:
            self.store.quarantine(path, str(exc))
            report.quarantined += 1
            return None

    def _evict_non_directory(self, path: str, report: RoundReport) -> None:
        """Move a symlink or file planted where a directory belongs to quarantine/ (never follow it)."""
        try:
            real_dirs(path)
        except CorruptRecord as exc:
            if self.store.quarantine(path, str(exc)):
                report.quarantined += 1

    def _repoint(self, name: str, hist: str) -> None:
        """Make ``current.json`` the same inode as ``hist`` (finishing a publication cut short at S2)."""
        tmp = os.path.join(self.paths.staging, f"{os.getpid()}-{os.urandom(8).hex()}.tmp")
        with storage_errors("repair", self.paths.current(name)):
            os.link(hist, tmp, follow_symlinks=False)
            try:
                os.rename(tmp, self.paths.current(name))
            finally:
                unlink_quietly(tmp)
            if self.durable:
                fsync_dir(self.paths.doc(name))

    def _publish(self, snap: Snapshot) -> None:
        paths, name = self.paths, snap.name
        for path in (paths.doc(name), paths.history(name)):
            ensure_real_dir(path, durable=self.durable)
        hist = paths.history(name, snap.version)
        with storage_errors("publish", hist):
            tmp = write_staged(paths.staging, encode_snapshot(snap), durable=self.durable)
            try:
                try:
                    os.link(tmp, hist, follow_symlinks=False)  # the commit point; never replaces
                except FileExistsError:
                    raise StewardRunning(
                        f"{hist} appeared while this steward published it: another writer applies "
                        "updates to this root; exactly one steward may run per root",
                        path=hist,
                    ) from None
                if self.durable:
                    fsync_dir(paths.history(name))
                os.rename(tmp, paths.current(name))  # readers see the new version from here on
                if self.durable:
                    fsync_dir(paths.doc(name))
            finally:
                unlink_quietly(tmp)
        for version in history_versions(paths, name)[self.settings.history :]:
            unlink_quietly(paths.history(name, version))

    # -- answering -------------------------------------------------------------------------------

    def _write_outcomes(self, outcomes: list[Outcome], report: RoundReport) -> None:
        """One segment for the round, hard-linked once per ticket: one file write and flush in all."""
        if not outcomes:
            return
        paths = self.paths
        data = encode_outcomes(outcomes, self.store.clock.now())
        with storage_errors("write outcomes in", paths.outcomes):
            tmp = write_staged(paths.staging, data, durable=self.durable)
            try:
                buckets = set()
                for entry in outcomes:
                    bucket = paths.outcome_bucket(entry.ticket)
                    if bucket not in buckets:
                        self._evict_non_directory(bucket, report)
                        ensure_real_dir(bucket, durable=self.durable)
                        buckets.add(bucket)
                    try:
                        os.link(tmp, paths.outcome(entry.ticket), follow_symlinks=False)
                    except FileExistsError:
                        pass  # answered by a round that died before removing the submission: same answer
                if self.durable:
                    for bucket in buckets:
                        fsync_dir(bucket)
            finally:
                unlink_quietly(tmp)

    def _prune_outcomes(self) -> None:
        """Remove outcome buckets whose newest possible ticket is older than ``keep_outcomes``."""
        horizon = int((self.store.clock.now() - self.settings.keep_outcomes) * 1e9) // OUTCOME_BUCKET_NS
        with storage_errors("list", self.paths.outcomes):
            entries = list(os.scandir(self.paths.outcomes))
        for entry in entries:
            old = len(entry.name) == 8 and entry.name.isdigit() and int(entry.name) < horizon
            if not old or not entry.is_dir(follow_symlinks=False):
                continue
            for item in os.scandir(entry.path):
                unlink_quietly(item.path)
            try:
                os.rmdir(entry.path)
            except OSError:
                pass  # something that is not an outcome was left there; the next round tries again


def _highest(tickets: list[str]) -> int:
    return ticket_ns(tickets[-1]) if tickets else 0
