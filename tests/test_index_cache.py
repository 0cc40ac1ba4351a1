"""The claim walk's shortcuts: cached index listings (Git's racy rule) and the remembered owner directory."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from fsqueue import Queue
from fsqueue._identity import current_owner
from fsqueue._index import Listings
from fsqueue._owners import owner_key

HOUR_NS = 3600 * 1_000_000_000


def _age(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def test_a_settled_listing_is_reused_until_the_directory_changes(tmp_path: Path) -> None:
    """An old directory's listing is cached; adding a name moves the mtime and the next call sees it."""
    (tmp_path / "01").mkdir()
    _age(tmp_path, time.time_ns() - HOUR_NS)
    listings = Listings()
    assert listings.dirs(str(tmp_path)) == ["01"]
    (tmp_path / "00").mkdir()
    assert listings.dirs(str(tmp_path)) == ["00", "01"]


def test_a_listing_taken_in_the_same_tick_as_a_change_is_not_trusted(tmp_path: Path) -> None:
    """A change stamped with the very mtime of the listed directory is still seen (the racy case)."""
    stamp = time.time_ns()  # a directory modified "now": inside the settling window
    (tmp_path / "01").mkdir()
    _age(tmp_path, stamp)
    listings = Listings()
    assert listings.dirs(str(tmp_path)) == ["01"]
    (tmp_path / "00").mkdir()
    _age(tmp_path, stamp)  # the same coarse tick: the mtime did not move
    assert listings.dirs(str(tmp_path)) == ["00", "01"]


def test_a_directory_made_again_is_relisted(tmp_path: Path) -> None:
    """A bucket removed and made again (even on a reused inode number) has a new mtime: it is relisted."""
    bucket = tmp_path / "b"
    (bucket / "x").mkdir(parents=True)
    old = time.time_ns() - HOUR_NS
    _age(bucket, old)
    listings = Listings()
    assert listings.dirs(str(bucket)) == ["x"]
    shutil.rmtree(bucket)
    (bucket / "y").mkdir(parents=True)
    assert listings.dirs(str(bucket)) == ["y"]


def test_claims_follow_new_work_through_cached_levels(root: Path) -> None:
    """With every index level settled and cached, tasks enqueued later are still claimed in order."""
    queue = Queue(root, create=True)
    first = queue.enqueue("a")
    old = time.time_ns() - HOUR_NS
    for directory, _, _ in os.walk(root / "ready"):
        _age(Path(directory), old)
    got = queue.claim("w")
    assert got is not None and got.id == first
    got.complete()
    later = [queue.enqueue(i, priority=p) for i, p in ((1, 0), (2, 5), (3, 0))]
    order = []
    while (claim := queue.claim("w")) is not None:
        order.append(claim.id)
        claim.complete()
    assert order == [later[1], later[0], later[2]]


def test_an_owner_directory_removed_by_hand_is_made_again(root: Path) -> None:
    """The remembered owner directory is re-created when a claim finds it gone; the claim still works."""
    queue = Queue(root, create=True)
    ids = [queue.enqueue(i) for i in range(2)]
    first = queue.claim("w")
    assert first is not None
    first.complete()
    owner_dir = root / "owners" / owner_key(current_owner())
    shutil.rmtree(owner_dir)
    second = queue.claim("w")
    assert second is not None and second.id == ids[1]
    assert (owner_dir / "owner.json").is_file()
    assert os.path.samefile(owner_dir / f"{second.id}.lock", root / "tasks" / f"{second.id}.lock")
    second.complete()
