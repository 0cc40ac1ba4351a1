"""Who owns a claim, and whether that owner is provably gone.

A PID alone lies: it is recycled (filelock #531) and means nothing on another host or in another PID
namespace (filelock #735). An owner is therefore recorded as host + machine id + boot id + PID namespace +
PID + the process start time in clock ticks since boot (``/proc/<pid>/stat`` field 22, the pair psutil
uses to identify a process). Judging fails closed: only a same-machine, same-boot, same-namespace owner
whose PID is gone, a zombie, or now names a process with another start time is *dead*; an owner on a
machine that has since rebooted is dead too; everything that cannot be probed is *foreign* and is judged
by its lease alone.
"""

from __future__ import annotations

import os
from functools import cache

from ._frozen import frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    OwnerState = Literal["alive", "dead", "foreign"]
else:
    # Literal needs ``typing`` at run time; importers of these names only use them in annotations.
    OwnerState = str


@frozen
class Owner:
    """The identity of a process that holds a claim (``pid`` 0 for a lease-only claim)."""

    host: str
    machine_id: str
    boot_id: str
    pidns: int
    pid: int
    start_ticks: int


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


@cache
def machine_id() -> str:
    """This machine's ``/etc/machine-id`` (empty when unreadable)."""
    return _read_text("/etc/machine-id") or _read_text("/var/lib/dbus/machine-id")


@cache
def boot_id() -> str:
    """The kernel's boot id, new at every boot (empty when unreadable)."""
    return _read_text("/proc/sys/kernel/random/boot_id")


def pid_namespace() -> int:
    """The inode of this process's PID namespace (0 when it cannot be read)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot, or None when the process is gone or unreadable."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)  # raw: no isatty ioctl, no lseek
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # comm (field 2) may contain spaces and ')'; the fixed fields start after the last ')'.
    fields = data[data.rfind(b")") + 1 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@cache
def _this_host() -> str:
    # The kernel's node name (= socket.gethostname(), without importing socket), never getfqdn:
    # a DNS lookup at every cron start is the slow start-up of pitfall 12.
    return os.uname().nodename


def owner_of(pid: int) -> Owner | None:
    """The identity of process ``pid`` on this machine, or None when it does not exist."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    return Owner(_this_host(), machine_id(), boot_id(), pid_namespace(), pid, ticks)


#: This process's identity, computed once per pid: a claim used to re-read /proc/self/stat and the
#: PID namespace each time (a fifth of a claim's cost). Keyed by pid, so a forked child computes its own.
_CURRENT: dict[int, Owner] = {}


def current_owner() -> Owner:
    """The identity of this process."""
    pid = os.getpid()
    owner = _CURRENT.get(pid)
    if owner is None:
        owner = owner_of(pid)
        if owner is None:  # /proc unavailable: record what we can; judges will treat it as foreign
            return Owner(_this_host(), machine_id(), boot_id(), 0, pid, 0)
        _CURRENT.clear()
        _CURRENT[pid] = owner
    return owner


def lease_only_owner() -> Owner:
    """The identity recorded for a claim that no process owns (judged by its lease alone)."""
    return Owner(_this_host(), machine_id(), boot_id(), pid_namespace(), 0, 0)


def owner_state(owner: Owner) -> OwnerState:
    """Judge a recorded owner: ``dead`` only on proof, ``foreign`` when it cannot be probed from here."""
    # Same machine = same machine id *and* host name (a cloned image may share the machine id).
    if owner.pid <= 0 or not owner.machine_id or owner.machine_id != machine_id() or owner.host != _this_host():
        return "foreign"
    if owner.boot_id and boot_id() and owner.boot_id != boot_id():
        return "dead"  # the same machine has rebooted since: every process of that boot is gone
    if owner.pidns == 0 or owner.pidns != pid_namespace() or owner.start_ticks == 0:
        return "foreign"
    return "alive" if _process_matches(owner.pid, owner.start_ticks) else "dead"


def _process_matches(pid: int, ticks: int) -> bool:
    current = start_ticks(pid)
    if current is None:
        # /proc/<pid> is unreadable: the process is gone, or hidden from us (hidepid, ProtectProc).
        # Only ESRCH proves death; anything else fails closed (alive).
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if current != ticks:
        return False  # the PID was recycled: the recorded owner is gone (filelock #531)
    # psutil reports zombies (killed, not yet reaped by their parent) that still have a /proc entry.
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
