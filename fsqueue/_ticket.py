"""Tickets: the submission order of shared-state updates, strictly increasing across every process of a root.

A ticket is ``<ns>-<pid>-<seq>``: a nanosecond timestamp (20 decimal digits), the submitting process's
PID (7 digits; Linux PIDs stay below 2**22) and that process's own submission count (6 digits,
wrapping). The widths are fixed, so tickets compare as plain strings (``ls | sort``).

The ``ns`` part is issued under an exclusive ``flock(2)`` on ``state/ticket.lock``, whose first 20
bytes hold the last ``ns`` issued: a submitter takes ``ns = max(now, last + 1)``, writes it back, and
``link()``s its complete submission into ``state/inbox/`` *before* releasing the flock. Hence:

- ticket order is the order in which submissions entered the inbox -- a total order over every
  submitter, which is by definition the submission order; one process's tickets strictly increase,
  and so do the tickets of any two submissions where one returned before the other began, whatever
  the wall clock does meanwhile;
- a steward that reads the counter under the same flock (the *cut*) knows every ticket up to it is
  already in the inbox, so applying them in ticket order can never be overtaken by a late arrival.

The file is a flock target and must never be deleted or replaced (a waiter on the old inode and a
newcomer on a new one would both "hold" it -- the reason the queue's guards are never deleted either).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from ._errors import InvalidName, StorageError
from ._fsio import storage_errors

TICKET_PATTERN: Final = re.compile(r"[0-9]{20}-[0-9]{7}-[0-9]{6}")
_COUNTER_WIDTH: Final = 20
_SEQ: Final = itertools.count(1)


def validate_ticket(ticket: object) -> str:
    """Return ``ticket`` if it is a well-formed ticket (so also a safe file name), else raise InvalidName."""
    if not isinstance(ticket, str) or TICKET_PATTERN.fullmatch(ticket) is None:
        shown = repr(ticket) if len(repr(ticket)) <= 60 else repr(ticket)[:57] + "..."
        raise InvalidName(
            f"{shown} is not a ticket; a ticket looks like 01800000000000000000-0012345-000001 "
            "(what `fsqueue state submit` printed)",
            name=ticket if isinstance(ticket, str) else None,
        )
    return ticket


def ticket_ns(ticket: str) -> int:
    """The issue time part of a ticket, in nanoseconds since the epoch."""
    return int(ticket[:_COUNTER_WIDTH])


def _open_counter(path: str) -> int:
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a planted FIFO never hangs us
    while True:
        try:
            fd = os.open(path, flags)
            break
        except FileNotFoundError:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o640)
            except FileExistsError:
                continue  # another submitter created it first: open theirs
            # Every submitter of a group-shared root must be able to write the counter.
            if os.stat(os.path.dirname(path)).st_mode & stat.S_IWGRP:
                os.fchmod(fd, 0o660)
            break
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StorageError(f"{path} is not a regular file; move it aside (it is recreated empty)", path=path)
    return fd


@contextmanager
def _counter_locked(path: str) -> Iterator[int]:
    with storage_errors("lock the ticket counter", path):
        fd = _open_counter(path)
    try:
        with storage_errors("lock the ticket counter", path):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd  # the flock dies with the descriptor, also when the process is killed
    finally:
        os.close(fd)


def _read_counter(fd: int) -> int:
    text = os.pread(fd, _COUNTER_WIDTH + 1, 0)[:_COUNTER_WIDTH]
    # Empty (new), or damaged: count from the clock; the steward's cut lifts it above every ticket it saw.
    return int(text) if len(text) == _COUNTER_WIDTH and text.isdigit() else 0


def _write_counter(fd: int, ns: int) -> None:
    # Fixed width, in place: under the flock nobody reads it half-written, and no truncate is needed.
    os.pwrite(fd, f"{ns:0{_COUNTER_WIDTH}d}\n".encode(), 0)


def issue_ticket(counter_path: str, publish: Callable[[str], None]) -> str:
    """Issue the next ticket and call ``publish(ticket)`` while still holding the counter's flock.

    ``publish`` must make the submission visible in the inbox (one ``link()``); FileExistsError from it
    (only possible after the counter file was reset) is retried with the next ticket.
    """
    with _counter_locked(counter_path) as fd:
        ns = max(time.time_ns(), _read_counter(fd) + 1)
        for _ in range(1000):
            _write_counter(fd, ns)
            ticket = f"{ns:020d}-{os.getpid() % 10_000_000:07d}-{next(_SEQ) % 1_000_000:06d}"
            try:
                with storage_errors("submit", counter_path):
                    publish(ticket)
            except FileExistsError:
                ns += 1
                continue
            return ticket
    raise StorageError(f"cannot issue a ticket: 1000 consecutive tickets were taken ({counter_path})")


def take_cut(counter_path: str, floor: int, *, durable: bool) -> int:
    """The steward's cut: the last ``ns`` issued, after lifting the counter to at least ``floor``.

    Every ticket whose ``ns`` is at most the returned value is already in the inbox. ``floor`` is the
    highest ticket the steward has seen: a counter lost to a power cut or reset by hand must not issue
    tickets below submissions that already exist.
    """
    with _counter_locked(counter_path) as fd:
        last = _read_counter(fd)
        if floor > last:
            _write_counter(fd, floor)
            if durable:
                os.fsync(fd)
            last = floor
        return last
