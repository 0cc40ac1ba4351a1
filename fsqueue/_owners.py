"""The owner index: ``owners/<key>/<id>.lock`` hard links, so dead owners are found without reading locks.

Every claim owned by a process is also linked (same inode) under a directory named for that process's
identity, beside an ``owner.json`` that records the identity once. A sweep then judges each *owner*
once -- a few hundred processes, not 100,000 locks -- and reads the lock records of dead owners only;
a lease's expiry is the lock's mtime, so the rest of a sweep is one ``stat`` per lock. The links are an
index, never the truth: a link whose ``tasks/<id>.lock`` is gone or is another inode is a leftover.
"""

from __future__ import annotations

import json
import os
import stat

from ._digest import sha256_hex
from ._fsio import make_dir, publish_new, unlink_quietly
from ._identity import Owner
from ._record import FORMAT, owner_dict


def owner_key(owner: Owner) -> str:
    """The directory name for an owner: a digest of every identity field (names stay short and safe)."""
    text = "\0".join(
        (owner.host, owner.machine_id, owner.boot_id, str(owner.pidns), str(owner.pid), str(owner.start_ticks))
    )
    return sha256_hex(text)[:24]


def encode_owner(owner: Owner) -> bytes:
    return (json.dumps({"format": FORMAT, "kind": "owner", **owner_dict(owner)}) + "\n").encode()


#: Owner directories this process has seen complete. Only a dead owner's directory is ever removed
#: (by the watchdog, once empty), so a live process's entry stays true; a claim whose link still finds
#: the directory gone (removed by hand) forgets it and makes it again (``forget_owner_dir``).
_COMPLETE: set[str] = set()


def ensure_owner_dir(owners_dir: str, staging_dir: str, owner: Owner) -> str:
    """Create ``owners/<key>/`` with its ``owner.json`` if missing; return the directory."""
    path = os.path.join(owners_dir, owner_key(owner))
    if path in _COMPLETE:
        return path
    _ensure(path, staging_dir, owner)
    _COMPLETE.add(path)
    return path


def forget_owner_dir(path: str) -> None:
    _COMPLETE.discard(path)


def _ensure(path: str, staging_dir: str, owner: Owner) -> None:
    try:
        make_dir(path)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            # A planted symlink (or file): following it would write owner.json and lock links outside
            # the root, and hide a dead owner from the sweep. Move it aside and make the real directory.
            # lstat-then-rename is safe: owners/<key> names this process alone, so no other fsqueue
            # process creates it meanwhile; if a planter swaps the entry, mkdir below fails loudly.
            root = os.path.dirname(os.path.dirname(path))
            aside = f"{os.getpid()}-{os.urandom(4).hex()}-owner-{os.path.basename(path)}"
            os.rename(path, os.path.join(root, "quarantine", aside))
            make_dir(path)
        elif os.path.lexists(os.path.join(path, "owner.json")):
            return
    try:
        publish_new(staging_dir, encode_owner(owner), os.path.join(path, "owner.json"), durable=False)
    except FileExistsError:
        pass


def owner_link(owners_dir: str, owner: Owner, task_id: str) -> str:
    return os.path.join(owners_dir, owner_key(owner), f"{task_id}.lock")


def unlink_owner_link(owners_dir: str, owner: Owner, task_id: str) -> None:
    unlink_quietly(owner_link(owners_dir, owner, task_id))
