"""Shared state: named JSON documents that one steward writes and every process reads.

Writers never touch a document. They *submit* a JSON merge patch (RFC 7396) into ``state/inbox/``
and get a ticket back; the steward (``_steward.py``) applies submissions in ticket order and
publishes each document as a complete snapshot. This module holds the on-disk layout and the client
side: :func:`read`, :func:`submit`, :func:`outcome` and :func:`wait`.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from typing import Any, Final

from ._config import Config
from ._errors import CorruptRecord, InvalidPayload, TicketNotFound
from ._fsio import (
    ensure_real_dir,
    exists_nofollow,
    fsync_dir,
    read_record_file,
    storage_error,
    storage_errors,
    unlink_quietly,
    write_staged,
)
from ._layout import Layout, default_root, open_root
from ._staterecord import (
    MAX_NAME_LENGTH,
    MAX_VERSION,
    NAME_PATTERN,
    Outcome,
    Snapshot,
    encode_submission,
    is_version,
    parse_outcome,
    parse_snapshot,
    validate_name,
)
from ._ticket import issue_ticket, ticket_ns, validate_ticket

OUTCOME_BUCKET_NS: Final = 3600 * 10**9
"""Outcome files are grouped by the hour their ticket was issued, so pruning removes whole directories."""


@dataclass(frozen=True)
class StatePaths:
    """Where shared state lives under a queue root."""

    root: str

    @property
    def dir(self) -> str:
        return os.path.join(self.root, "state")

    @property
    def staging(self) -> str:
        return os.path.join(self.root, "staging")

    @property
    def inbox(self) -> str:
        return os.path.join(self.dir, "inbox")

    @property
    def outcomes(self) -> str:
        return os.path.join(self.dir, "outcomes")

    @property
    def docs(self) -> str:
        return os.path.join(self.dir, "docs")

    @property
    def counter(self) -> str:
        return os.path.join(self.dir, "ticket.lock")

    @property
    def steward_lock(self) -> str:
        return os.path.join(self.dir, "steward.lock")

    @property
    def steward_pid(self) -> str:
        return os.path.join(self.dir, "steward.pid")

    def submission(self, ticket: str) -> str:
        return os.path.join(self.dir, "inbox", f"{ticket}.json")

    def outcome_bucket(self, ticket: str) -> str:
        return os.path.join(self.dir, "outcomes", f"{ticket_ns(ticket) // OUTCOME_BUCKET_NS:08d}")

    def outcome(self, ticket: str) -> str:
        return os.path.join(self.outcome_bucket(ticket), f"{ticket}.json")

    def doc(self, name: str) -> str:
        return os.path.join(self.dir, "docs", name)

    def current(self, name: str) -> str:
        return os.path.join(self.dir, "docs", name, "current.json")

    def history(self, name: str, version: int | None = None) -> str:
        base = os.path.join(self.dir, "docs", name, "history")
        return base if version is None else os.path.join(base, f"{version:012d}.json")


def real_dirs(*paths: str) -> bool:
    """Whether every path is a directory (False at the first absent one); CorruptRecord for a symlink or other entry.

    ``O_NOFOLLOW`` guards only the last component of a path: a directory planted as a symlink would be
    followed by every open below it, so readers check the directories on the way first.
    """
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise storage_error(exc, "inspect", path) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise CorruptRecord(
                f"{path} is a symlink or not a directory; fsqueue does not follow it (the steward moves it to "
                "quarantine/)",
                path=path,
            )
    return True


def history_versions(paths: StatePaths, name: str) -> list[int]:
    """The versions kept in a document's ``history/``, newest first (other names are ignored)."""
    try:
        if not real_dirs(paths.history(name)):
            return []
        names = os.listdir(paths.history(name))
    except (FileNotFoundError, NotADirectoryError, CorruptRecord):
        return []
    except OSError as exc:
        raise storage_error(exc, "list", paths.history(name)) from exc
    found = [int(n[:12]) for n in names if len(n) == 17 and n.endswith(".json") and n[:12].isdigit()]
    return sorted(found, reverse=True)


def read_snapshot(paths: StatePaths, name: str) -> Snapshot:
    """The latest published snapshot of ``name`` -- never torn, since it only ever appears by rename()."""
    path = paths.current(name)
    if not real_dirs(paths.dir, paths.docs, paths.doc(name)):
        return Snapshot(name, 0, {})
    try:
        data = read_record_file(path)
        if data is None:
            return Snapshot(name, 0, {})  # never written (or its first publication is not finished)
        return parse_snapshot(data, path, name)
    except CorruptRecord as exc:
        # Damage outside the protocol: serve the newest intact history entry; the steward repairs it.
        for version in history_versions(paths, name):
            hist = paths.history(name, version)
            try:
                raw = read_record_file(hist)
                if raw is not None:
                    return parse_snapshot(raw, hist, name)
            except CorruptRecord:
                continue
        raise CorruptRecord(f"{exc}; no intact snapshot in {paths.history(name)} either", path=path) from None


class SharedState:
    """Shared-state documents of one queue root: read them, submit updates, follow tickets."""

    def __init__(self, root: str | os.PathLike[str] | Layout | None = None, *, config: Config | None = None) -> None:
        layout = (
            root if isinstance(root, Layout) else open_root(os.fspath(root) if root is not None else default_root())
        )
        self.paths = StatePaths(layout.root)
        self.durable = (config or Config()).durability == "fsync"
        self._inbox_ready = False

    def read(self, name: str) -> Snapshot:
        """The latest snapshot of document ``name`` (version 0 and ``{}`` if it was never written)."""
        return read_snapshot(self.paths, validate_name(name))

    def submit(self, name: str, patch: Any, *, if_version: int | None = None) -> str:
        """Queue a merge patch for ``name`` and return its ticket; durable once this returns.

        With ``if_version`` the steward applies it only if the document is at exactly that version
        then (0: never written), and rejects it otherwise.
        """
        validate_name(name)
        if if_version is not None and not is_version(if_version):
            raise InvalidPayload(f"if_version must be an integer from 0 to {MAX_VERSION - 1}, got {if_version!r}")
        data = encode_submission(name, patch, if_version)
        paths = self.paths
        if not self._inbox_ready:
            for path in (paths.dir, paths.inbox):
                ensure_real_dir(path, durable=self.durable)
            self._inbox_ready = True
        with storage_errors("submit to", paths.inbox):
            tmp = write_staged(paths.staging, data, durable=self.durable)
            try:
                # link(): the submission appears complete or not at all, under the ticket counter's flock.
                ticket = issue_ticket(paths.counter, lambda t: os.link(tmp, paths.submission(t), follow_symlinks=False))
            finally:
                unlink_quietly(tmp)
            if self.durable:
                fsync_dir(paths.inbox)  # accepted only once the name survives a power cut (P2)
        return ticket

    def outcome(self, ticket: str) -> Outcome:
        """Where ``ticket`` stands now; TicketNotFound when it is neither pending nor decided (or pruned)."""
        paths = self.paths
        path = paths.outcome(validate_ticket(ticket))
        for attempt in range(2):
            data = (
                read_record_file(path) if real_dirs(paths.dir, paths.outcomes, paths.outcome_bucket(ticket)) else None
            )
            if data is not None:
                return parse_outcome(data, path, ticket)
            # The steward writes the outcome before it removes the submission, so a submission gone
            # from the inbox has its outcome in place: look once more before calling it unknown.
            if attempt == 0 and exists_nofollow(paths.submission(ticket)):
                return Outcome(ticket, "pending")
        raise TicketNotFound(
            f"no submission and no outcome for ticket {ticket} in {paths.dir} (outcomes are kept for a "
            "day by default, see `fsqueue steward --keep-outcomes`)",
            ticket=ticket,
            path=path,
        )

    def wait(self, ticket: str, timeout: float | None = None) -> Outcome:
        """Poll until ``ticket`` is decided; its pending outcome once ``timeout`` seconds have passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            got = self.outcome(ticket)
            if got.state != "pending":
                return got
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return got
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 1.5, 0.2)

    def names(self) -> list[str]:
        """Every document that has a directory under ``state/docs/``, sorted."""
        try:
            entries = os.listdir(self.paths.docs) if real_dirs(self.paths.dir, self.paths.docs) else []
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise storage_error(exc, "list", self.paths.docs) from exc
        return sorted(n for n in entries if NAME_PATTERN.fullmatch(n) and len(n) <= MAX_NAME_LENGTH)


def read(root: str | os.PathLike[str] | None, name: str, *, config: Config | None = None) -> Snapshot:
    """The latest published snapshot of document ``name`` under ``root``."""
    return SharedState(root, config=config).read(name)


def submit(
    root: str | os.PathLike[str] | None,
    name: str,
    patch: Any,
    if_version: int | None = None,
    *,
    config: Config | None = None,
) -> str:
    """Queue a merge patch for document ``name``; returns its ticket once the submission is durable."""
    return SharedState(root, config=config).submit(name, patch, if_version=if_version)


def outcome(root: str | os.PathLike[str] | None, ticket: str, *, config: Config | None = None) -> Outcome:
    """Where ``ticket`` stands now: applied, rejected or pending."""
    return SharedState(root, config=config).outcome(ticket)


def wait(
    root: str | os.PathLike[str] | None, ticket: str, timeout: float | None = None, *, config: Config | None = None
) -> Outcome:
    """Wait for ``ticket`` to be applied or rejected; returns it still pending after ``timeout`` seconds."""
    return SharedState(root, config=config).wait(ticket, timeout)
