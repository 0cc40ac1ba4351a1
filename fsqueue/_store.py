"""Shared plumbing of one open queue: paths, settings, clock, record reads and quarantine."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable

from ._clock import Clock, SystemClock
from ._config import Config
from ._fsio import publish_new, read_record_file, read_record_stat, storage_error
from ._index import Listings
from ._layout import Layout, create_root, default_root, open_root
from ._record import FinalRecord, LockRecord, TaskRecord, parse_final, parse_lock, parse_task

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random
    from typing import Literal, TypeVar

    T = TypeVar("T")


class Store:
    """One queue root opened with its settings; the state-machine code works through this."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        config: Config | None = None,
        clock: Clock | None = None,
        create: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        path = os.fspath(root) if root is not None else default_root()
        self.layout: Layout = create_root(path) if create else open_root(path)
        self.config = config or Config()
        self.clock: Clock = clock or SystemClock()
        self._rng = rng
        self._listings = Listings()  # the claim walk's cache of unchanged index levels
        self.durable = self.config.durability == "fsync"

    @property
    def rng(self) -> random.Random:
        """Jitter for retry delays and claim spreading; ``random`` is imported only once it is needed."""
        if self._rng is None:
            import random

            self._rng = random.Random()
        return self._rng

    @property
    def root(self) -> str:
        return self.layout.root

    def _read(self, path: str, parse: Callable[[bytes, str], T]) -> T | None:
        data = read_record_file(path)
        return None if data is None else parse(data, path)

    def read_task(self, task_id: str) -> TaskRecord | None:
        """The task record, None when absent; CorruptRecord when unreadable."""
        return self._read(self.layout.record(task_id), parse_task)

    def read_task_version(self, task_id: str) -> tuple[TaskRecord, os.stat_result] | None:
        """The task record and the fstat of the file it was read from (see ``task_if_unchanged``)."""
        path = self.layout.record(task_id)
        got = read_record_stat(path)
        return None if got is None else (parse_task(got[0], path), got[1])

    def task_if_unchanged(self, task_id: str, known: tuple[TaskRecord, os.stat_result] | None) -> TaskRecord | None:
        """The task record, reusing ``known`` (read earlier with its fstat) while the file is that same file.

        A record is never modified in place: every new version is a new inode linked or renamed into
        place. So the same inode with the same size, mtime and ctime is the same bytes, and one
        ``lstat`` replaces open, fstat, read and close plus the parse. Anything else is read afresh.
        Called under the task's guard, which every writer of a task record holds: the file cannot be
        replaced between this ``lstat`` and the caller's use of the record.
        """
        if known is None:
            return self.read_task(task_id)
        task, seen = known
        try:
            st = os.lstat(self.layout.record(task_id))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise storage_error(exc, "inspect", self.layout.record(task_id)) from exc
        if (
            stat.S_ISREG(st.st_mode)
            and st.st_ino == seen.st_ino
            and st.st_dev == seen.st_dev
            and st.st_size == seen.st_size
            and st.st_mtime_ns == seen.st_mtime_ns
            and st.st_ctime_ns == seen.st_ctime_ns
        ):
            return task
        return self.read_task(task_id)

    def read_lock(self, task_id: str) -> tuple[LockRecord, os.stat_result] | None:
        """The lock record and its fstat (mtime = lease expiry), None when absent."""
        path = self.layout.lock(task_id)
        got = read_record_stat(path)
        return None if got is None else (parse_lock(got[0], path), got[1])

    def read_final(self, task_id: str, state: Literal["done", "dead"]) -> FinalRecord | None:
        path = self.layout.done(task_id) if state == "done" else self.layout.dead(task_id)
        return self._read(path, lambda data, p: parse_final(data, p, state))

    def finished_state(self, task_id: str) -> Literal["done", "dead"] | None:
        """Whether a done or dead record exists: it is the commit point and wins over everything else.

        Only a regular file counts: a symlink (or anything else) planted there is moved aside, never
        obeyed -- obeying it would drop the pending task as if it had finished. Called under the guard.
        """
        for state, path in (("done", self.layout.done(task_id)), ("dead", self.layout.dead(task_id))):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                return "done" if state == "done" else "dead"
            self.quarantine(path, "not a regular file where a final record belongs")
        return None

    def quarantine(self, path: str, reason: str, *, copy: bool = False) -> str | None:
        """Move a corrupt file (or planted symlink) aside into ``quarantine/`` with a note saying why.

        ``copy`` hard-links it there instead and leaves ``path`` in place (the caller removes it later).
        """
        # Cut long names so "<prefix>-<name>.why" still fits NAME_MAX (255 bytes).
        name = f"{self.clock.now():.6f}-{os.path.basename(path)[:200]}"
        if copy:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return None
            copy = stat.S_ISREG(st.st_mode)  # a directory or device cannot be hard-linked: move it instead
            # Named by inode and mtime so a retried break after a crash finds its earlier copy.
            if copy:
                name = f"{st.st_ino}-{st.st_mtime_ns}-{os.path.basename(path)[:200]}"
        dest = os.path.join(self.layout.quarantine, name)
        try:
            if copy:
                os.link(path, dest, follow_symlinks=False)
            else:
                os.rename(path, dest)  # renames the entry itself: a symlink is moved, never followed
        except FileExistsError:
            return dest
        except FileNotFoundError:
            return None
        note = json.dumps({"format": "fsqueue/1", "kind": "quarantine", "from": path, "reason": reason})
        try:
            publish_new(self.layout.staging, (note + "\n").encode(), dest + ".why", durable=False)
        except OSError:
            pass  # the file itself is aside; a missing note must not turn a repair into a crash
        return dest
