"""The ready index: which pending task to claim next, at a cost that does not grow with queue depth.

A pending task has one empty marker file ``ready/<priority>/<a>/<b>/<c>/<d>/<when>-<id>`` where
``when`` is its ready time in microseconds (16 digits) and ``a``/``b``/``c``/``d`` are that number's
digits 0-5, 6-7, 8-9 and 10-11 (buckets of 2.8 h, 100 s, 1 s and 10 ms). Finding the next task walks
the smallest name at each level, so below the top level each ``listdir`` sees at most 100 names
however deep the queue is -- no full scan per claim (nq #37,
huey FileStorage). Delayed and backed-off tasks are simply entries with a future ``when``: a walk stops
at the first bucket that starts in the future. Empty buckets are removed by whoever empties them;
``rmdir`` fails on a non-empty directory, and an enqueuer whose bucket vanished between ``mkdir`` and
create simply retries.

A claimer keeps a ``Listings`` cache: the sorted names of the upper levels (priorities, the 2.8 h,
100 s and 1 s buckets), reused while a ``stat`` shows the directory unchanged -- one syscall instead
of open, two ``getdents`` and close per level. Git's "racy" rule makes the reuse safe: a listing is
kept only for a directory whose mtime is more than ``_SETTLED_NS`` in the past, so a change made in
the same timestamp tick as the listing (which would not move the mtime) cannot be missed.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator

from ._fsio import fsync_dir, make_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

MIN_PRIORITY: Final = -1_000_000
MAX_PRIORITY: Final = 1_000_000
_WHEN_DIGITS: Final = 16
#: Bucket boundaries in the 16 digits of ``when``: 10^10 us (2.8 h), 100 s, 1 s and 10 ms buckets, so
#: below the top level no directory holds more than 100 names.
_SPLITS: Final = (6, 8, 10, 12)
#: A directory unmodified for this long has a listing that its mtime vouches for. Filesystem
#: timestamps come from the kernel's coarse clock, which trails real time by at most one tick
#: (10 ms at the lowest HZ, 100): any change after a listing taken 50 ms past the mtime is stamped
#: at least 40 ms later than that mtime, so it moves it.
_SETTLED_NS: Final = 50_000_000


class Listings:
    """Sorted subdirectory names of index directories, reused while each directory is unchanged."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, int, list[str]]] = {}

    def dirs(self, path: str) -> list[str]:
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._known.pop(path, None)
            return []
        known = self._known.get(path)
        if known is not None and known[0] == st.st_mtime_ns and known[1] == st.st_ino:
            return known[2]
        names = _sorted_dirs(path) if stat.S_ISDIR(st.st_mode) else []
        if time.time_ns() - st.st_mtime_ns > _SETTLED_NS:
            if len(self._known) > 4096:  # bounded: a long-lived worker walks ever new buckets
                self._known.clear()
            self._known[path] = (st.st_mtime_ns, st.st_ino, names)
        else:
            self._known.pop(path, None)
        return names


def entry_for(priority: int, ready_at: float, task_id: str) -> str:
    """The index path (relative to ``ready/``) of a task ready at ``ready_at``."""
    when = max(0, min(int(ready_at * 1_000_000), 10**_WHEN_DIGITS - 1))
    digits = f"{when:0{_WHEN_DIGITS}d}"
    buckets = "/".join(digits[a:b] for a, b in zip((0, *_SPLITS), _SPLITS, strict=False))
    return f"{priority}/{buckets}/{digits}-{task_id}"


def parse_entry_name(name: str) -> tuple[float, str] | None:
    """``(ready_at, task_id)`` from a marker's file name, or None when it is not one."""
    if (
        len(name) <= _WHEN_DIGITS + 1
        or name[_WHEN_DIGITS] != "-"
        or not (name[:_WHEN_DIGITS].isascii() and name[:_WHEN_DIGITS].isdigit())
    ):
        return None
    return int(name[:_WHEN_DIGITS]) / 1_000_000, name[_WHEN_DIGITS + 1 :]


def add_entry(ready_dir: str, rel: str, *, durable: bool) -> None:
    """Create the marker ``rel``; its bucket directories are created (and flushed) as needed."""
    path = os.path.join(ready_dir, rel)
    parent = os.path.dirname(path)
    for _ in range(100):  # a claimer may rmdir an emptied bucket between our mkdir and create
        try:
            created = _make_dirs(ready_dir, os.path.dirname(rel))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            continue
        os.close(fd)
        if durable:
            fsync_dir(parent)
            for directory in created:
                fsync_dir(os.path.dirname(directory))
        return
    raise OSError(errno.EAGAIN, "bucket directory kept vanishing", parent)


def _make_dirs(ready_dir: str, rel_dir: str) -> list[str]:
    created: list[str] = []
    current = ready_dir
    for part in rel_dir.split("/"):
        current = os.path.join(current, part)
        try:
            make_dir(current)
            created.append(current)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                # A symlink (or file) planted where a bucket belongs: never follow it. Move it aside
                # and make the real directory; the caller's retry loop takes it from there.
                _move_aside(ready_dir, current)
                raise FileNotFoundError(errno.ENOENT, "bucket was not a directory", current) from None
    return created


def _move_aside(ready_dir: str, path: str) -> None:
    quarantine = os.path.join(os.path.dirname(ready_dir), "quarantine")
    dest = os.path.join(quarantine, f"{os.getpid()}-{os.urandom(4).hex()}-ready-{os.path.basename(path)}")
    try:
        os.rename(path, dest)
    except FileNotFoundError:
        pass


def remove_entry(ready_dir: str, rel: str, *, prune: bool = True) -> bool:
    """Remove the marker ``rel`` and any bucket it leaves empty; True if the marker was there.

    ``prune=False`` (a claim) leaves an emptied bucket for the next walk, which removes it on its way:
    a ``rmdir`` attempt per claim, failing on a bucket that still holds markers, costs more than that.
    """
    path = os.path.join(ready_dir, rel)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    if not prune:
        return True
    parts = rel.split("/")
    # Remove the bucket levels bottom-up (never the priority level); stop at the first that is not empty.
    for depth in range(len(parts) - 1, 1, -1):
        if not _rmdir_if_empty(os.path.join(ready_dir, *parts[:depth])):
            break
    return True


def _rmdir_if_empty(path: str) -> bool:
    try:
        os.rmdir(path)
    except OSError as exc:
        # Not empty (a marker arrived), already gone, or a read-only root: all leave the index correct.
        return exc.errno == errno.ENOENT
    return True


def _sorted_dirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as entries:
            # Symlinks planted in the index are not followed (is_dir without following).
            return sorted(entry.name for entry in entries if entry.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def priorities(ready_dir: str, listings: Listings | None = None) -> list[int]:
    """The priority levels present, highest first."""
    levels = []
    for name in listings.dirs(ready_dir) if listings is not None else _sorted_dirs(ready_dir):
        try:
            level = int(name)
        except ValueError:
            continue
        if str(level) == name:
            levels.append(level)
    return sorted(levels, reverse=True)


def iter_entries(
    ready_dir: str, priority: int, *, until: float | None = None, listings: Listings | None = None
) -> Iterator[tuple[str, float, str]]:
    """Markers of one priority in ready order: ``(rel, ready_at, task_id)``; stop after ``until``.

    Empty buckets met on the way are removed, so a drained queue costs nothing to walk.
    """
    limit = None if until is None else int(until * 1_000_000)
    yield from _walk(os.path.join(ready_dir, str(priority)), str(priority), "", 0, limit, listings)


def _walk(
    path: str, rel: str, prefix: str, level: int, limit: int | None, listings: Listings | None
) -> Iterator[tuple[str, float, str]]:
    if level == len(_SPLITS):
        for name in _sorted_files(path):
            parsed = parse_entry_name(name)
            if parsed is None:
                continue
            if limit is not None and int(name[:_WHEN_DIGITS]) > limit:
                return
            yield f"{rel}/{name}", parsed[0], parsed[1]
        return
    width = _SPLITS[level] - (_SPLITS[level - 1] if level else 0)
    for bucket in listings.dirs(path) if listings is not None else _sorted_dirs(path):
        if len(bucket) != width or not (bucket.isascii() and bucket.isdigit()):
            continue  # not a bucket fsqueue made (lost+found, a stray directory): never part of the index
        digits = prefix + bucket
        if limit is not None and int(digits.ljust(_WHEN_DIGITS, "0")) > limit:
            return
        child = os.path.join(path, bucket)
        yield from _walk(child, f"{rel}/{bucket}", digits, level + 1, limit, listings)
        _rmdir_if_empty(child)


def _sorted_files(path: str) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return sorted(entry.name for entry in entries if entry.is_file(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def iter_all(ready_dir: str) -> Iterator[tuple[str, float, str]]:
    """Every marker, highest priority first, then ready order."""
    for priority in priorities(ready_dir):
        yield from iter_entries(ready_dir, priority)
