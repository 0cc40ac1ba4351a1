"""Filesystem primitives: complete-or-absent publication, bounded no-follow reads, directory fsync.

Every record becomes visible in one step (P6): it is written under a unique name in ``staging/`` (same
filesystem), flushed, then ``link()``-ed (create, fails if the name is taken) or ``rename()``-d (replace)
into place, and the directory is fsynced so the new name survives power loss (persist-queue #56, #180).
"""

from __future__ import annotations

import errno
import os
import stat

from ._errors import CorruptRecord, QueueRootError, StorageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Final

MAX_RECORD_BYTES: Final = 16 * 1024 * 1024
_NOFOLLOW: Final = os.O_NOFOLLOW | os.O_CLOEXEC


def storage_error(exc: OSError, action: str, path: str, task_id: str | None = None) -> StorageError:
    """Wrap an OSError in a message that says what failed, where, and what to do."""
    hint = {
        errno.ENOSPC: "the disk is full; free space and retry (nothing accepted so far is lost)",
        errno.EDQUOT: "the disk quota is exhausted; free space and retry",
        errno.EACCES: "permission denied; check the owner and mode of the queue root",
        errno.EPERM: "operation not permitted; check the owner and mode of the queue root",
        errno.EROFS: "the filesystem is read-only; remount it read-write",
        errno.ELOOP: "a symlink was found where fsqueue expects a real file; it is not followed",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return StorageError(f"cannot {action} {path}: {hint}", path=path, task_id=task_id, errno=exc.errno)


class storage_errors:  # used as a function: ``with storage_errors(...)``
    """Turn a bare OSError raised inside into a StorageError naming the action, path and remedy.

    A class, not ``@contextmanager``: ``contextlib`` is start-up cost for every cron run, and this runs
    on every transition.
    """

    __slots__ = ("action", "path", "task_id")

    def __init__(self, action: str, path: str, task_id: str | None = None) -> None:
        self.action, self.path, self.task_id = action, path, task_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not isinstance(exc, OSError) or isinstance(exc, StorageError | FileExistsError):
            return
        # filename2 is the destination of a refused link()/rename(): name it, not the vanished temp file.
        raise storage_error(exc, self.action, exc.filename2 or exc.filename or self.path, self.task_id) from exc


def make_dir(path: str) -> None:
    """``mkdir`` that keeps a shared root shared (git's core.sharedRepository).

    When the parent directory is group-writable (a root made ``2770`` for agents in one group), the
    new directory gets ``2770`` too, whatever the creator's umask: a bucket or owner directory made
    by one agent must stay usable by the others and by the watchdog. Raises FileExistsError as mkdir.
    """
    os.mkdir(path, 0o750)
    try:
        if os.stat(os.path.dirname(path)).st_mode & stat.S_IWGRP:
            os.chmod(path, 0o2770)  # noqa: S103  # group-shared on purpose; "other" still gets nothing
    except OSError:
        pass  # the directory exists and is ours; a failed chmod leaves it private, not broken


def fsync_dir(path: str) -> None:
    """Flush a directory so the names created or removed in it survive power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Staging names are ``<pid>-<16 hex>.tmp``: 8 random hex digits drawn once per process and an 8-digit
#: counter, so naming a file costs neither ``getrandom`` nor ``getpid``. A fork draws afresh in the child
#: (``register_at_fork``). Uniqueness does not rest on that: ``O_EXCL`` turns any collision (a leftover
#: of a dead process with the same PID and prefix, a child forked behind Python's back) into
#: FileExistsError, retried under a new prefix and the current PID -- never a shared or clobbered file.
#: The PID in the name is for people; the watchdog removes staging files by age.
_STAGE: list[int] = [0, 0, 0]  # pid (0: draw again), prefix, next sequence number


def _forget_stage() -> None:
    _STAGE[0] = 0


os.register_at_fork(after_in_child=_forget_stage)


def _staging_name() -> str:
    stage = _STAGE
    if not stage[0]:
        stage[:] = [os.getpid(), int.from_bytes(os.urandom(4), "big"), 0]
    seq = stage[2]
    stage[2] = (seq + 1) & 0xFFFFFFFF  # threads may race here: O_EXCL still keeps two files apart
    return f"{stage[0]}-{stage[1]:08x}{seq:08x}.tmp"


def _create_staged(staging_dir: str) -> tuple[str, int]:
    for _ in range(100):
        path = os.path.join(staging_dir, _staging_name())
        try:
            return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        except FileExistsError:
            _forget_stage()  # taken (a leftover, a racing thread, an unnoticed fork): draw a new prefix
    # Not EEXIST: a caller of publish_new would read FileExistsError as "the destination is taken".
    raise OSError(errno.EBUSY, "no free staging name after 100 tries", staging_dir)


def write_staged(staging_dir: str, data: bytes, *, durable: bool, mtime: float | None = None) -> str:
    """Write ``data`` to a new unique file in ``staging_dir`` and return its path (flushed if durable)."""
    path, fd = _create_staged(staging_dir)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise
    os.close(fd)
    return path


def publish_new(staging_dir: str, data: bytes, dest: str, *, durable: bool, mtime: float | None = None) -> None:
    """Create ``dest`` holding ``data`` in one step; raise FileExistsError if the name is taken."""
    tmp = write_staged(staging_dir, data, durable=durable, mtime=mtime)
    try:
        # link() never replaces: it is the exclusive create of a complete file (filelock #532, borg #3637).
        os.link(tmp, dest, follow_symlinks=False)
    finally:
        unlink_quietly(tmp)
    if durable:
        fsync_dir(os.path.dirname(dest))


def publish_replace(staging_dir: str, data: bytes, dest: str, *, durable: bool) -> None:
    """Replace ``dest`` with ``data`` in one step (readers see the old or the new file, never a mix)."""
    tmp = write_staged(staging_dir, data, durable=durable)
    try:
        os.rename(tmp, dest)
    except BaseException:
        unlink_quietly(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(dest))


def read_nofollow(path: str) -> tuple[bytes, os.stat_result]:
    """Read a whole regular file without following a symlink at ``path``; return its bytes and fstat.

    Raises FileNotFoundError when absent, and OSError(ELOOP) for a symlink or a non-regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not _is_regular(st.st_mode):
            raise OSError(errno.ELOOP, "not a regular file", path)
        if st.st_size > MAX_RECORD_BYTES:
            raise OSError(errno.EFBIG, f"record larger than {MAX_RECORD_BYTES} bytes", path)
        # Records are never rewritten in place: asking for one byte more than the fstat size returns
        # exactly that size when the file is still whole, and a read of a regular file that stops short
        # of what was asked stopped at its end -- no second read() just to see EOF. Anything else (a file
        # growing or shrinking under a hand edit) is read on until a read returns nothing, as before.
        chunk = os.read(fd, st.st_size + 1)
        if len(chunk) == st.st_size:
            return chunk, st
        chunks = [chunk]
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


def unlink_quietly(path: str) -> bool:
    """Remove ``path`` if present; True when this call removed it."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def exists_nofollow(path: str) -> bool:
    """Whether any directory entry (including a dangling symlink) is at ``path``."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def ensure_real_dir(path: str, *, durable: bool = False, remedy: str = "move it aside") -> None:
    """Create ``path`` if missing (fsyncing its parent when durable); refuse a symlink or non-directory.

    ``remedy`` ends the error for a non-directory: what the user does about it.

    lstat, then mkdir: another writer creating the directory in between only makes mkdir fail with
    EEXIST, which is success; a symlink planted in between is refused by the next caller's check.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            make_dir(path)
        except FileExistsError:
            return  # another writer created it first
        except OSError as exc:
            raise storage_error(exc, "create", path) from exc
        if durable:
            fsync_dir(os.path.dirname(path))
        return
    except OSError as exc:
        raise storage_error(exc, "inspect", path) from exc
    if stat.S_ISLNK(st.st_mode):
        raise QueueRootError(
            f"{path} is a symlink; fsqueue does not follow symlinks inside the queue root. "
            "Replace it with a real directory.",
            path=path,
        )
    if not stat.S_ISDIR(st.st_mode):
        raise QueueRootError(f"{path} is not a directory; {remedy}", path=path)


def read_record_stat(path: str) -> tuple[bytes, os.stat_result] | None:
    """A whole record file and its fstat, not following symlinks; None when absent, CorruptRecord when not a file."""
    try:
        return read_nofollow(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EFBIG):
            raise CorruptRecord(f"{path} is a symlink, not a regular file, or too large", path=path) from exc
        raise storage_error(exc, "read", path) from exc


def read_record_file(path: str) -> bytes | None:
    """A whole record file without following symlinks; None when absent, CorruptRecord when not a file."""
    got = read_record_stat(path)
    return None if got is None else got[0]
