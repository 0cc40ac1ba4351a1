"""What the numbers were measured on: kernel, filesystem of the bench directory, CPUs, load, Python.

Also the extra filesystems `--filesystems` adds when running as root: a journaled ext4 image mounted
through a loop device, and a tmpfs, each mounted under the bench directory and unmounted in `finally`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Filesystem:
    """A directory the throughput runs use, and what it sits on."""

    label: str
    path: Path
    fstype: str
    device: str
    options: str
    journal: str  # "journaled", "no journal", or "n/a" (tmpfs) / "unknown"

    def describe(self) -> str:
        return f"{self.fstype} ({self.journal}) on {self.device}, mount options {self.options}"


def mount_of(path: Path) -> tuple[str, str, str, str]:
    """(mount point, fstype, device, super options) of the mount that holds ``path``, from mountinfo."""
    target = os.path.realpath(path)
    best: tuple[str, str, str, str] = ("/", "unknown", "unknown", "")
    best_len = -1
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 2:
                continue
            point = fields[4].replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= best_len:  # the last, longest match is the one in effect
                opts = fields[5] + ("," + tail[2] if len(tail) > 2 else "")
                best, best_len = (point, tail[0], tail[1], opts), len(point)
    return best


def journal_of(fstype: str, device: str) -> str:
    """ext3/ext4 with a jbd2 journal show up in /proc/fs/jbd2/<dev>-<n>; an ext4 without one does not."""
    if fstype == "tmpfs":
        return "in memory"
    if fstype not in ("ext3", "ext4"):
        return "journal unknown"
    name = os.path.basename(os.path.realpath(device)) if device.startswith("/") else device
    try:
        entries = os.listdir("/proc/fs/jbd2")
    except OSError:
        return "journal unknown"
    return "journaled" if any(e.rsplit("-", 1)[0] == name for e in entries) else "no journal"


def describe_dir(kind: str, path: Path) -> Filesystem:
    _, fstype, device, options = mount_of(path)
    journal = journal_of(fstype, device)
    return Filesystem(f"{kind} ({fstype}, {journal})", path, fstype, device, options, journal)


def machine_facts() -> dict[str, str]:
    """The machine line's parts, as strings."""
    load = os.getloadavg()
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as handle:
        cpu = next((ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")), cpu)
    return {
        "kernel": f"{platform.system()} {platform.release()}",
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load": " ".join(f"{x:.2f}" for x in load),
    }


@contextlib.contextmanager
def extra_filesystems(base: Path, size_mb: int) -> Iterator[list[Filesystem]]:
    """Mount a journaled ext4 loop image and a tmpfs under ``base`` (root only); always unmount."""
    mounted: list[Path] = []
    made: list[Filesystem] = []
    image = base / "ext4.img"
    try:
        if os.geteuid() != 0:
            print("--filesystems needs root: measuring the bench directory only", file=sys.stderr)
        elif shutil.which("mkfs.ext4") is None:
            print("--filesystems: mkfs.ext4 not found; skipping the ext4 image", file=sys.stderr)
        else:
            point = base / "ext4-journaled"
            point.mkdir()
            with open(image, "wb") as handle:
                handle.truncate(size_mb * 1024 * 1024)
            subprocess.run(["mkfs.ext4", "-q", "-F", "-j", str(image)], check=True)
            subprocess.run(["mount", "-o", "loop", str(image), str(point)], check=True)
            mounted.append(point)
            made.append(describe_dir("ext4 loop image", point))
        if os.geteuid() == 0:
            point = base / "tmpfs"
            point.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(point)], check=True)
            mounted.append(point)
            made.append(describe_dir("tmpfs", point))
        yield made
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", str(point)], check=False)
        image.unlink(missing_ok=True)


def bench_base(requested: str | None) -> Path:
    """A fresh directory to work in (the caller removes it): under ``requested``, else under the cwd."""
    parent = Path(requested) if requested else Path.cwd()
    parent.mkdir(parents=True, exist_ok=True)
    # The default is the checkout rather than /tmp: /tmp is often a tmpfs, which hides the cost of fsync.
    return Path(tempfile.mkdtemp(prefix=".fsqueue-bench-", dir=parent))
