"""The collector: sealed telemetry segments into daily archives and rollups, each line exactly once (P9).

One collector runs per root at a time (``flock`` on ``spool/collect.lock``; a second one waits or returns
``busy``). A run recovers what a crashed run left, seals the open segments of writers proven dead, then
archives batches of sealed segments, each batch in these steps:

  claim      rename ready/<seg> -> collecting/<seg>  (a segment is never read where writers can see it)
  register   new days enter the ledger at their current archive size (0 if none), ledger fsynced
  append     each day's lines appended to archive/<day>.jsonl in one write, fsynced
  commit     the ledger is replaced: archive sizes, rollups, totals and last_batch move together
  unlink     the batch's segments are removed from collecting/, the directory fsynced

The ledger's archive sizes are the truth: a rerun truncates every archive back to its committed size,
so bytes appended by a batch that never committed vanish, and that batch's segments -- still in
``collecting/`` -- are archived again, once. Segments named in the ledger's ``last_batch`` are already
archived: a rerun only removes them. Crash points C1-C9 are named where they fall; the table is in
docs/telemetry.md.
"""

from __future__ import annotations

import os
import re
import stat
import time

from ._config import SpoolSettings
from ._errors import CorruptRecord
from ._fsio import ensure_real_dir, fsync_dir, storage_errors, unlink_quietly
from ._guard import guarded
from ._identity import owner_state
from ._ledger import (
    TOTAL_KEYS,
    AgentRollup,
    Ledger,
    add_event,
    read_ledger,
    rollups_of,
    segment_id,
    write_ledger,
)
from ._segments import Batch, SpoolPaths, day_of, read_segment, spool_paths
from ._spool import segment_writer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    from ._ledger import SegmentId

#: What a sealed segment may be called: no leading dot (a writer's temporary file), no path, ``.jsonl``.
SEGMENT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@=+-]{0,200}\.jsonl")
ARCHIVE_NAME: Final = re.compile(r"(\d{4}-\d{2}-\d{2})\.jsonl")
BATCH_SEGMENTS: Final = 256
BATCH_BYTES: Final = 32 * 1024 * 1024


def _reached(step: str, path: str = "") -> None:
    """A named crash point; does nothing. Tests replace it to die exactly here (``os._exit``)."""


class CollectReport:
    """What one collector run did (``busy`` when another collector held the root)."""

    busy: bool = False
    batches: int = 0
    segments: int = 0
    lines: int = 0
    bytes: int = 0
    partial: int = 0
    """Unterminated last lines dropped (a writer killed mid-line)."""
    corrupt: int = 0
    """Lines dropped because they are not telemetry records (not JSON, fields missing, too long)."""
    expired: int = 0
    """Lines counted in rollups but not archived: their day is already past the retention."""
    sealed: int = 0
    """Open segments of writers proven dead, sealed by this run."""
    open_live: int = 0
    """Open segments left alone: their writer is alive, or on another host."""
    rejected: int = 0
    """Entries moved to ``spool/rejected/``: symlinks, non-files, segments larger than the bound."""
    recovered_bytes: int = 0
    """Bytes of uncommitted appends truncated from archives (a crashed run, C4-C6)."""
    recovered_segments: int = 0
    """Archived segments whose removal a crashed run left undone (C7-C8)."""
    removed_archives: list[str]
    """Days whose archives retention removed."""
    duration: float = 0.0

    def __init__(self) -> None:
        self.removed_archives = []

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in REPORT_FIELDS}

    def __repr__(self) -> str:
        return f"CollectReport({self.to_json()})"

    def anomalies(self) -> bool:
        """Lines dropped, entries rejected or a crashed run repaired: worth telling a person about."""
        return bool(self.partial or self.corrupt or self.rejected or self.recovered_bytes or self.recovered_segments)

    def summary(self) -> str:
        """One line for people and logs; empty when nothing happened."""
        parts = []
        if self.busy:
            return "another collector is running; nothing done"
        if self.segments:
            parts.append(f"archived {self.lines} lines from {self.segments} segments in {self.batches} batches")
        for count, what in (
            (self.partial, "partial lines dropped"),
            (self.corrupt, "corrupt lines dropped"),
            (self.expired, "lines past retention not archived"),
            (self.sealed, "dead writers' segments sealed"),
            (self.rejected, "entries rejected"),
            (self.recovered_bytes, "uncommitted archive bytes rolled back"),
            (self.recovered_segments, "archived segments removed after a crash"),
            (len(self.removed_archives), "archives removed by retention"),
        ):
            if count:
                parts.append(f"{count} {what}")
        return "; ".join(parts)


REPORT_FIELDS: Final = tuple(CollectReport.__annotations__)


def collect(
    root: str | os.PathLike[str],
    *,
    settings: SpoolSettings | None = None,
    wait: bool = False,
    now: float | None = None,
    max_batches: int | None = None,
    batch_segments: int = BATCH_SEGMENTS,
    batch_bytes: int = BATCH_BYTES,
) -> CollectReport:
    """Archive every sealed segment exactly once; return quietly (``busy``) if another collector runs.

    ``wait`` blocks until the other collector is done instead. ``max_batches`` bounds one run (the
    watchdog uses it so a flood of telemetry cannot stall a sweep); None drains ``ready/``.
    """
    started = time.monotonic()
    paths = spool_paths(root)
    settings = settings or SpoolSettings()
    now = time.time() if now is None else now
    for name in ("", "open", "ready", "collecting", "archive", "tmp", "rejected"):
        ensure_real_dir(paths.sub(name) if name else paths.dir)
    report = CollectReport()
    with guarded(paths.sub("collect.lock"), blocking=wait) as held:
        if not held:
            report.busy = True
            return report
        with storage_errors("collect telemetry in", paths.dir):
            ledger = read_ledger(paths.ledger)
            _recover(paths, ledger, report)
            _seal_dead_writers(paths, report)
            oldest = day_of(now - settings.retention) if settings.retention is not None else ""
            while max_batches is None or report.batches < max_batches:
                names, full = _claim_batch(paths, batch_segments, batch_bytes, report)
                if names:
                    _archive_batch(paths, ledger, names, oldest, now, report)
                if not full:
                    break
            if settings.retention is not None:
                _apply_retention(paths, ledger, oldest, report)
    report.duration = time.monotonic() - started
    return report


def _recover(paths: SpoolPaths, ledger: Ledger, report: CollectReport) -> None:
    """Undo what a crashed run left half done; we hold the collector lock, so nobody else is at work."""
    for entry in os.scandir(paths.sub("tmp")):
        unlink_quietly(entry.path)  # C3/C6: a ledger write that never got renamed into place
    known = len(ledger.archives)
    for day, size in list(ledger.archives.items()):
        path = paths.archive(day)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            del ledger.archives[day]  # removed by retention before its ledger write (C9), or by hand
            continue
        if not stat.S_ISREG(st.st_mode):
            _reject(paths, path, report)
            del ledger.archives[day]
        elif st.st_size > size:
            # C4-C6: appended, never committed. The batch's segments are still in collecting/ and are
            # archived again below, so the bytes past the committed size must go first.
            _truncate(path, size)
            report.recovered_bytes += st.st_size - size
        elif st.st_size < size:
            raise CorruptRecord(
                f"{path} is {st.st_size} bytes but the ledger {paths.ledger} committed {size}: it was cut by "
                "something other than the collector. Move the archive aside to start that day afresh.",
                path=path,
            )
    if len(ledger.archives) < known:
        write_ledger(paths.ledger, paths.sub("tmp"), ledger)  # forget the days whose archives are gone
    for name, ino, size, mtime_ns in ledger.last_batch:
        # C7-C8: committed, not yet (all) removed. These lines are archived; archiving them again would
        # duplicate them, so they are only removed -- if it is the very file archived, not a new one
        # that reuses its name.
        path = os.path.join(paths.sub("collecting"), name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if segment_id(name, st) == (name, ino, size, mtime_ns) and unlink_quietly(path):
            report.recovered_segments += 1


def _truncate(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal_dead_writers(paths: SpoolPaths, report: CollectReport) -> None:
    """Seal the open segments of writers proven dead (PID + start time + boot id); leave the others."""
    open_dir = paths.sub("open")
    for entry in os.scandir(open_dir):
        writer = segment_writer(entry.name)
        # A live writer appends to its segment and seals it itself: never touch it. A name that does
        # not prove its writer (another host, another naming) is left to its writer too.
        if writer is None or owner_state(writer) != "dead":
            report.open_live += 1
            continue
        try:
            os.rename(entry.path, os.path.join(paths.sub("ready"), entry.name))
        except FileNotFoundError:
            continue  # its writer sealed it at exit between our listing and this rename
        report.sealed += 1
        _reached("sealed", entry.path)


def _claim_batch(paths: SpoolPaths, max_segments: int, max_bytes: int, report: CollectReport) -> tuple[list[str], bool]:
    """Leftovers of a crashed run first, then sealed segments oldest first; True when limits were hit."""
    collecting = paths.sub("collecting")
    names = sorted(e.name for e in os.scandir(collecting))  # C1-C6 leftovers: never committed
    ready = []
    for entry in os.scandir(paths.sub("ready")):
        if not SEGMENT_NAME.fullmatch(entry.name):
            continue  # a writer's temporary name, or not ours: left alone
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            _reject(paths, entry.path, report)
            continue
        ready.append((st.st_mtime_ns, entry.name, st.st_size))
    ready.sort()
    total = 0
    for _, name, size in ready:
        if len(names) >= max_segments or total >= max_bytes:
            return names, True
        try:
            os.rename(os.path.join(paths.sub("ready"), name), os.path.join(collecting, name))
        except FileNotFoundError:
            continue
        names.append(name)
        total += size
        _reached("claimed", name)  # C1: claimed, nothing archived; a rerun archives it from collecting/
    return names, False


def _archive_batch(
    paths: SpoolPaths, ledger: Ledger, names: list[str], oldest: str, now: float, report: CollectReport
) -> None:
    batch = Batch(oldest)
    kept: list[SegmentId] = []
    for name in names:
        path = os.path.join(paths.sub("collecting"), name)
        got = read_segment(path)
        if got is None:
            _reject(paths, path, report)  # a symlink, a non-file or an oversized file planted in the spool
            continue
        batch.add_segment(got[0])
        kept.append(segment_id(name, got[1]))
    _reached("read")  # C2: nothing written yet
    _register_days(paths, ledger, batch)
    sizes = {day: _append(paths.archive(day), batch.archive_data(day), ledger.archives[day]) for day in batch.by_day}
    _reached("appended")  # C5: archives hold the batch, the ledger does not: a rerun truncates and redoes it
    for agent, event, ts, fields in batch.events:
        add_event(ledger.rollups, agent, event, ts, fields)
    ledger.archives.update(sizes)
    ledger.last_batch = kept
    ledger.batches += 1
    ledger.collected_at = now
    counts = {"segments": len(kept), "lines": batch.lines, "bytes": batch.bytes, "partial": batch.partial}
    counts.update(corrupt=batch.corrupt, expired=batch.expired)
    for key in TOTAL_KEYS:
        ledger.totals[key] = ledger.totals.get(key, 0) + counts[key]
    write_ledger(paths.ledger, paths.sub("tmp"), ledger)  # THE COMMIT POINT of the batch (C6 before, C7 after)
    _reached("committed")
    for name, *_ in kept:
        unlink_quietly(os.path.join(paths.sub("collecting"), name))
        _reached("unlinked", name)  # C8: some removed; a rerun removes the rest (they are in last_batch)
    # Durable removal before the next commit replaces last_batch: after a power loss, no archived
    # segment may come back into collecting/ unnamed by the ledger (it would be archived twice).
    fsync_dir(paths.sub("collecting"))
    report.batches += 1
    for key, value in counts.items():
        setattr(report, key, getattr(report, key) + value)


def _register_days(paths: SpoolPaths, ledger: Ledger, batch: Batch) -> None:
    """Enter new days in the ledger at their archive's current size before anything is appended."""
    new = {day: _archive_size(paths, day) for day in batch.by_day if day not in ledger.archives}
    if not new:
        return
    ledger.archives.update(new)
    # Only files the ledger knows are ever truncated by recovery: an archive restored by hand, unknown
    # to the ledger, is entered at its size and appended to, never cut.
    write_ledger(paths.ledger, paths.sub("tmp"), ledger)
    _reached("registered")  # C3: days known, nothing appended


def _archive_size(paths: SpoolPaths, day: str) -> int:
    path = paths.archive(day)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    _reject(paths, path, None)  # a planted symlink is moved aside, never appended through
    return 0


def _append(path: str, data: bytes, committed: int) -> int:
    """Append ``data`` and fsync; the archive must have been exactly ``committed`` bytes long."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        if os.fstat(fd).st_size != committed:
            raise CorruptRecord(
                f"{path} changed outside the collector (size {os.fstat(fd).st_size}, ledger {committed}); "
                "only `fsqueue spool collect` may write archives",
                path=path,
            )
        view = memoryview(data)
        while view:
            _reached("appending", path)  # C4: a torn append; the rerun's truncation removes it
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if committed == 0:
        fsync_dir(os.path.dirname(path))  # the new archive's name must outlive a power loss too
    return committed + len(data)


def _apply_retention(paths: SpoolPaths, ledger: Ledger, oldest: str, report: CollectReport) -> None:
    """Remove archives of days before ``oldest``; the ledger forgets them after the files are gone."""
    for entry in os.scandir(paths.sub("archive")):
        match = ARCHIVE_NAME.fullmatch(entry.name)
        if match and match.group(1) < oldest and unlink_quietly(entry.path):
            report.removed_archives.append(match.group(1))
            _reached("retention", entry.path)  # C9: removed, ledger not yet written; recovery forgets it
    if any(day in ledger.archives for day in report.removed_archives):
        for day in report.removed_archives:
            ledger.archives.pop(day, None)
        write_ledger(paths.ledger, paths.sub("tmp"), ledger)


def _reject(paths: SpoolPaths, path: str, report: CollectReport | None) -> None:
    """Move an entry that is not a segment (or an archive) aside, renamed itself, never followed."""
    dest = os.path.join(paths.sub("rejected"), f"{time.time():.6f}-{os.path.basename(path)[:200]}")
    try:
        os.rename(path, dest)
    except FileNotFoundError:
        return
    if report is not None:
        report.rejected += 1


# ------------------------------------------------------------------------------------------------ reading


def read_rollups(root: str | os.PathLike[str]) -> dict[str, AgentRollup]:
    """Per-agent rollups of archived telemetry, by agent name; empty before the first collect."""
    return rollups_of(read_ledger(spool_paths(root).ledger))
