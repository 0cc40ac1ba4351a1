"""Helpers of the fault-injection tests: tiny filesystems, CLI runs and the checks that nothing was lost.

A test that needs root (to mount a tmpfs) skips when it cannot get it -- except in CI (``CI=true``),
where it must run, so it fails instead of hiding behind a skip.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest
from conftest import IN_CI

from fsqueue import Queue
from fsqueue._index import MAX_PRIORITY

NOBODY = 65534
#: CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: what lets uid 0 ignore permission bits.
CAPABILITIES_THAT_BYPASS_PERMISSIONS = (1, 2, 3)


def drop_dac_capabilities() -> None:
    """Run in a child before exec: uid 0 that obeys permission bits on every file it does not own.

    For uid 0, exec sets the permitted and effective capabilities to the bounding set; dropping these
    from it is enough.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in CAPABILITIES_THAT_BYPASS_PERMISSIONS:
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))


def python_runs(code: str, **options: Any) -> bool:
    """Whether a Python child started from ``/`` with these ``subprocess.run`` options runs ``code``."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=60, cwd="/", check=False, **options
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def skip_or_fail(reason: str) -> NoReturn:
    """Skip locally when the machine cannot run a test; with CI set the test must run, so fail."""
    if IN_CI:
        pytest.fail(f"{reason} -- and CI is set, where this test must not be skipped")
    pytest.skip(reason)


def need_root(what: str) -> None:
    """Skip (or, in CI, fail) unless this process is root and has mount and umount."""
    if os.geteuid() != 0:
        skip_or_fail(f"{what} needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        skip_or_fail(f"{what} needs the mount and umount commands")


@contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` at ``mount_point`` for the ``with`` body; always unmounted afterwards."""
    need_root(f"a {size} tmpfs")
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs at {mount_point}: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], capture_output=True, text=True, check=True)


def fill_disk(ballast: Path) -> Path:
    """Write ``ballast`` until the filesystem refuses even one more byte (ENOSPC); returns it."""
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return ballast


def grow(ballast: Path, size: int) -> bool:
    """Append up to ``size`` bytes to ``ballast``; False once the filesystem is full."""
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"\0" * size)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
        return False
    finally:
        os.close(fd)
    return True


def snapshot(top: str | Path, *, skip: tuple[str, ...] = ()) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``top`` (but the ``skip`` subdirectories) with kind, content digest and mtime."""
    entries: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.path.relpath(os.path.join(dirpath, d), top) not in skip]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, top)
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir",)
            else:
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                entries[rel] = ("file", digest, st.st_mtime_ns)
    return entries


def run_cli(
    argv: list[str], env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a real command line in a subprocess and capture its output."""
    return subprocess.run(
        [*argv, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], *fragments: str, prefix: str = "fsqueue: error:", code: int = 1
) -> str:
    """Exit ``code``, exactly one ``prefix`` line on stderr holding every fragment, no traceback."""
    assert result.returncode == code, (result.args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    return lines[0]


def assert_clean_exit(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 0 without a traceback; returns stdout."""
    assert result.returncode == 0, (result.args, result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def assert_queue_works(queue: Queue) -> None:
    """A fresh task still goes through enqueue, claim and complete: the queue is not wedged."""
    task_id = queue.enqueue({"probe": True}, priority=MAX_PRIORITY)
    claim = queue.claim("probe-agent")
    assert claim is not None and claim.id == task_id
    claim.complete({"ok": True})
    assert queue.task(task_id).state == "done"


def markers(queue: Queue) -> list[str]:
    """Task ids of the marker files under ``ready/``."""
    found = []
    for _dirpath, _, filenames in os.walk(queue.layout.ready):
        found += [name.split("-", 1)[1] for name in filenames]
    return sorted(found)


def drain(queue: Queue, agent: str = "drain") -> dict[str, Any]:
    """Claim and complete every ready task; returns each task's payload by id."""
    ran: dict[str, Any] = {}
    while (claim := queue.claim(agent)) is not None:
        assert claim.id not in ran, f"{claim.id} was claimed twice"
        ran[claim.id] = claim.payload
        claim.complete({"echo": claim.payload})
    return ran
