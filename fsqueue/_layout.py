"""Where everything lives under a queue root, and checking that the root is a real, usable queue."""

from __future__ import annotations

import errno
import json
import os
import stat

from ._digest import md5_hex
from ._errors import QueueRootError
from ._frozen import frozen
from ._fsio import ensure_real_dir, publish_new, storage_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

ROOT_MARKER: Final = "fsqueue.json"
SUBDIRS: Final = (
    "tasks",
    "records",
    "ready",
    "done",
    "dead",
    "staging",
    "quarantine",
    "guards",
    "owners",
    "status",
    "breaker",
    "alerts",
)
GUARD_SHARDS: Final = 256


def default_root() -> str:
    """``$XDG_STATE_HOME/fsqueue``, else ``~/.local/state/fsqueue`` -- never under ``/tmp`` (pitfall 13)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "fsqueue")


def _base(root: str) -> str:
    # ``root`` is absolute and normalized (``open_root``): only "/" itself ends with a slash. Joining
    # with f-strings gives the same strings as os.path.join at a fraction of its cost, and these paths
    # are built a few dozen times per task.
    return "" if root == "/" else root


@frozen
class Layout:
    """The paths of one queue root."""

    root: str

    def sub(self, name: str) -> str:
        return f"{_base(self.root)}/{name}"

    @property
    def tasks(self) -> str:
        return f"{_base(self.root)}/tasks"

    @property
    def records(self) -> str:
        return f"{_base(self.root)}/records"

    @property
    def ready(self) -> str:
        return f"{_base(self.root)}/ready"

    @property
    def owners(self) -> str:
        return f"{_base(self.root)}/owners"

    @property
    def staging(self) -> str:
        return f"{_base(self.root)}/staging"

    @property
    def quarantine(self) -> str:
        return f"{_base(self.root)}/quarantine"

    def lock(self, task_id: str) -> str:
        return f"{_base(self.root)}/tasks/{task_id}.lock"

    def record(self, task_id: str) -> str:
        return f"{_base(self.root)}/records/{task_id}.json"

    def done(self, task_id: str) -> str:
        return f"{_base(self.root)}/done/{task_id}.json"

    def dead(self, task_id: str) -> str:
        return f"{_base(self.root)}/dead/{task_id}.json"

    def guard(self, task_id: str) -> str:
        return f"{_base(self.root)}/guards/{guard_shard(task_id)}"


def guard_shard(task_id: str) -> str:
    """The guard file name for a task: the first two hex digits of md5(id) (``md5sum`` in shell)."""
    return md5_hex(task_id)[:2]


def create_root(root: str) -> Layout:
    """Create (or complete) a queue root; idempotent."""
    try:
        os.makedirs(root, mode=0o750, exist_ok=True)
    except FileExistsError as exc:
        raise QueueRootError(f"queue root {root} exists and is not a directory", path=root) from exc
    except OSError as exc:
        raise storage_error(exc, "create queue root", root) from exc
    layout = open_root(root, create_missing=True)
    marker = os.path.join(layout.root, ROOT_MARKER)
    if not os.path.lexists(marker):
        data = (json.dumps({"format": "fsqueue/1", "kind": "root"}) + "\n").encode()
        try:
            publish_new(layout.staging, data, marker, durable=True)
        except FileExistsError:
            pass  # a concurrent `fsqueue init` made it first: the same marker
        except OSError as exc:
            raise storage_error(exc, "write", marker) from exc
    return layout


def open_root(root: str, *, create_missing: bool = False) -> Layout:
    """Check that ``root`` is a queue and return its layout; recreate missing subdirectories if asked."""
    root = os.path.abspath(root)
    try:
        st = os.stat(root)  # the root itself may be a symlink the operator chose (/var/lib/fsqueue -> /data)
    except FileNotFoundError:
        raise QueueRootError(
            f"queue root {root} does not exist; create it with `fsqueue init --root {root}`", path=root
        ) from None
    except OSError as exc:
        raise storage_error(exc, "open queue root", root) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise QueueRootError(f"queue root {root} is not a directory", path=root)
    if not create_missing and not os.path.lexists(os.path.join(root, ROOT_MARKER)):
        raise QueueRootError(
            f"{root} is not an fsqueue root (no {ROOT_MARKER}); create one with `fsqueue init --root {root}`",
            path=root,
        )
    for name in SUBDIRS:
        ensure_real_dir(os.path.join(root, name), remedy="move it aside and run `fsqueue init`")
    layout = Layout(root)
    _ensure_guards(layout, create=create_missing)
    return layout


def _ensure_guards(layout: Layout, *, create: bool) -> None:
    guards = layout.sub("guards")
    try:
        present = len(os.listdir(guards))
    except OSError as exc:
        raise storage_error(exc, "list", guards) from exc
    if present >= GUARD_SHARDS and not create:
        return
    for shard in range(GUARD_SHARDS):
        path = os.path.join(guards, f"{shard:02x}")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EROFS):
                return  # a read-only root still opens for inspection; writers report the error when they act
            raise storage_error(exc, "create guard", path) from exc
        os.close(fd)
