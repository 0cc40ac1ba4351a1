"""The systems the throughput runs compare, behind one small interface.

Each system can ``prepare`` a root (enqueue the ids, in the parent, not timed) and open a ``Worker`` in
a worker process: ``claim()`` returns ``(task id, handle)`` or None once the queue is drained, and
``complete(handle)`` settles the task. ``fsqueue run`` is the exception: its workers are processes that
exec the CLI, so the system gives a command line instead of a worker.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

Claimed = tuple[str, Any]


class Worker(Protocol):
    def claim(self) -> Claimed | None: ...

    def complete(self, handle: Any) -> None: ...


class System:
    """A queue in one configuration. ``durable``: it fsyncs each settled task (compare with floor+fsync)."""

    key = ""
    label = ""
    durable = False
    role = "peer"  # "reference", "fsqueue" or "peer"
    module: str | None = None  # the import this system needs; missing means "not installed"
    execs = False  # its workers exec a program (see ``command``) instead of running a ``Worker``

    def unavailable(self) -> str | None:
        """Why this system cannot run here, or None."""
        if self.module and importlib.util.find_spec(self.module) is None:
            return f"{self.module} is not installed (pip install -e '.[bench]')"
        return None

    def prepare(self, root: Path, ids: Sequence[str]) -> None:
        raise NotImplementedError

    def open_worker(self, root: Path, index: int, workers: int) -> Worker:
        raise NotImplementedError

    def command(self, root: Path, index: int, tasks: int, ids_file: Path) -> tuple[list[str], dict[str, str]] | None:
        """argv and environment of a worker process that execs a program, or None for in-process workers."""
        return None


# --- the floor: the irreducible syscalls of a claim, a reference and not a product -----------------------


class Floor(System):
    key, label, role = "floor", "floor (reference)", "reference"

    def prepare(self, root: Path, ids: Sequence[str]) -> None:
        for sub in ("pending", "locks", "staging", "done"):
            (root / sub).mkdir(parents=True)
        for task_id in ids:
            (root / "pending" / task_id).write_bytes(b"null\n")

    def open_worker(self, root: Path, index: int, workers: int) -> Worker:
        return FloorWorker(root, index, workers, fsync=self.durable)


class FloorFsync(Floor):
    key, label, durable = "floor-fsync", "floor+fsync (reference)", True


class FloorWorker:
    """Lists ``pending/`` once, then tries each entry: O_EXCL lock, write, rename of the result, unlinks."""

    def __init__(self, root: Path, index: int, workers: int, *, fsync: bool) -> None:
        self.pending, self.locks = f"{root}/pending", f"{root}/locks"
        self.staging, self.done = f"{root}/staging", f"{root}/done"
        self.index, self.workers, self.fsync = index, workers, fsync
        self.names: list[str] | None = None
        self.position = 0
        self.owner = f"{os.getpid()}\n".encode()

    def claim(self) -> Claimed | None:
        if self.names is None:
            names = os.listdir(self.pending)
            start = len(names) * self.index // self.workers  # start apart, so W workers do not all collide
            self.names = names[start:] + names[:start]
        while self.position < len(self.names):
            name = self.names[self.position]
            self.position += 1
            # A failed stat is far cheaper than creating and removing a lock for a task another worker has
            # finished; without it each worker would create a lock for every done entry of its listing.
            try:
                os.stat(f"{self.pending}/{name}")
            except FileNotFoundError:
                continue
            lock = f"{self.locks}/{name}"
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            try:
                os.write(fd, self.owner)
            finally:
                os.close(fd)
            # Our lock may come after another worker's whole claim: it unlinks the task file before its
            # lock, so a task file that is gone now means the task is done.
            try:
                os.stat(f"{self.pending}/{name}")
            except FileNotFoundError:
                os.unlink(lock)
                continue
            return name, name
        return None

    def complete(self, handle: Any) -> None:
        name = str(handle)
        staged = f"{self.staging}/{name}.{os.getpid()}"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"null\n")
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(staged, f"{self.done}/{name}")
        os.unlink(f"{self.pending}/{name}")
        os.unlink(f"{self.locks}/{name}")


# --- fsqueue ---------------------------------------------------------------------------------------------


def _fill_fsqueue(root: Path, ids: Sequence[str]) -> None:
    from fsqueue import Config, Queue

    queue = Queue(root, create=True, config=Config(durability="none"))
    for task_id in ids:
        queue.enqueue(task_id, id=task_id)


class FsqueueApi(System):
    key, label, role, module = "fsqueue-api", "fsqueue API", "fsqueue", "fsqueue"
    durability = "none"

    def prepare(self, root: Path, ids: Sequence[str]) -> None:
        _fill_fsqueue(root, ids)

    def open_worker(self, root: Path, index: int, workers: int) -> Worker:
        return FsqueueWorker(root, self.durability)


class FsqueueApiFsync(FsqueueApi):
    key, label, durable, durability = "fsqueue-api-fsync", "fsqueue API, fsync", True, "fsync"


class FsqueueWorker:
    """Queue.claim / Claim.complete, as concepts.md shows (the claim is owned by this process)."""

    def __init__(self, root: Path, durability: str) -> None:
        from fsqueue import Config, Queue

        self.queue = Queue(root, config=Config(durability=durability))  # type: ignore[arg-type]

    def claim(self) -> Claimed | None:
        claim = self.queue.claim("bench")
        return None if claim is None else (claim.id, claim)

    def complete(self, handle: Any) -> None:
        handle.complete()


def fsqueue_argv() -> list[str]:
    """The installed `fsqueue` script next to this interpreter, else `python -m fsqueue`."""
    script = Path(sys.executable).parent / "fsqueue"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fsqueue"]


class FsqueueRun(System):
    """One `fsqueue run --max-tasks N` per worker: the documented way to drain many tasks with one process."""

    key, label, role, module = "fsqueue-run", "fsqueue run (CLI)", "fsqueue", "fsqueue"
    durability, execs = "none", True

    def prepare(self, root: Path, ids: Sequence[str]) -> None:
        _fill_fsqueue(root, ids)
        root.with_suffix(".yaml").write_text(f"durability: {self.durability}\n")

    def command(self, root: Path, index: int, tasks: int, ids_file: Path) -> tuple[list[str], dict[str, str]] | None:
        # The task appends its id to a file the queue does not manage: an independent delivery log.
        task = ["/bin/sh", "-c", 'echo "$FSQUEUE_TASK_ID" >>"$BENCH_IDS"']
        argv = [*fsqueue_argv(), "--root", str(root), "run", "--agent", f"w{index}", "--max-tasks", str(tasks)]
        env = dict(os.environ, FSQUEUE_CONFIG=str(root.with_suffix(".yaml")), BENCH_IDS=str(ids_file))
        return [*argv, "--", *task], env


class FsqueueRunFsync(FsqueueRun):
    key, label, durable, durability = "fsqueue-run-fsync", "fsqueue run (CLI), fsync", True, "fsync"


# --- peers -----------------------------------------------------------------------------------------------


class HueySqlite(System):
    """huey's SqliteStorage as a consumer uses it: dequeue, then store the result (default: no fsync)."""

    key, label, module = "huey-sqlite", "huey SqliteStorage", "huey"
    fsync = False

    def _storage(self, root: Path, *, fsync: bool) -> Any:
        from huey.storage import SqliteStorage

        return SqliteStorage(name="bench", filename=str(root / "huey.db"), fsync=fsync)

    def prepare(self, root: Path, ids: Sequence[str]) -> None:
        root.mkdir(parents=True)
        storage = self._storage(root, fsync=False)
        for task_id in ids:
            storage.enqueue(task_id.encode())
        storage.close()

    def open_worker(self, root: Path, index: int, workers: int) -> Worker:
        return HueyWorker(self._storage(root, fsync=self.fsync))


class HueySqliteFsync(HueySqlite):
    key, label, durable, fsync = "huey-sqlite-fsync", "huey SqliteStorage, fsync=True", True, True


class HueyFile(System):
    """huey's FileStorage: one global flock around every operation (its docstring: not for production)."""

    key, label, module = "huey-file", "huey FileStorage", "huey"

    def _storage(self, root: Path) -> Any:
        from huey.storage import FileStorage

        return FileStorage(name="bench", path=str(root / "huey"))

    def prepare(self, root: Path, ids: Sequence[str]) -> None:
        root.mkdir(parents=True)
        storage = self._storage(root)
        for task_id in ids:
            storage.enqueue(task_id.encode())

    def open_worker(self, root: Path, index: int, workers: int) -> Worker:
        return HueyWorker(self._storage(root))


class HueyWorker:
    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def claim(self) -> Claimed | None:
        data = self.storage.dequeue()
        return None if data is None else (data.decode(), data)

    def complete(self, handle: Any) -> None:
        self.storage.put_data(b"result:" + handle, b"null", is_result=True)


class PersistQueue(System):
    """persist-queue SQLiteAckQueue: every worker opens the same path; get(block=False), then ack."""

    key, label, module, durable = "persist-queue", "persist-queue SQLiteAckQueue", "persistqueue", True

    def prepare(self, root: Path, ids: Sequence[str]) -> None:
        import persistqueue

        queue = persistqueue.SQLiteAckQueue(str(root))
        putter: Any = queue._putter
        putter.execute("PRAGMA synchronous=OFF")  # filling is not timed; the workers keep the default
        for task_id in ids:
            queue.put(task_id)
        queue.close()

    def open_worker(self, root: Path, index: int, workers: int) -> Worker:
        return PersistQueueWorker(root)


class PersistQueueWorker:
    def __init__(self, root: Path) -> None:
        import persistqueue

        self.queue = persistqueue.SQLiteAckQueue(str(root))
        self.empty = persistqueue.Empty

    def claim(self) -> Claimed | None:
        try:
            item = self.queue.get(block=False)
        except self.empty:
            return None
        return str(item), item

    def complete(self, handle: Any) -> None:
        self.queue.ack(handle)


class Dirq(System):
    """python-dirq QueueSimple: iterate, lock (a hard link), get, remove; re-list until count() is 0."""

    key, label, module = "dirq", "python-dirq QueueSimple", "dirq"

    def prepare(self, root: Path, ids: Sequence[str]) -> None:
        from dirq.QueueSimple import QueueSimple

        queue = QueueSimple(str(root))
        for task_id in ids:
            queue.add(task_id.encode())

    def open_worker(self, root: Path, index: int, workers: int) -> Worker:
        return DirqWorker(root)


class DirqWorker:
    def __init__(self, root: Path) -> None:
        from dirq.QueueSimple import QueueSimple

        self.queue = QueueSimple(str(root))
        self.names: Iterator[str] = iter(())

    def claim(self) -> Claimed | None:
        while True:
            for name in self.names:
                if self.queue.lock(name):
                    return self.queue.get(name).decode(), name
            if self.queue.count() == 0:
                return None
            self.names = iter(self.queue)

    def complete(self, handle: Any) -> None:
        self.queue.remove(handle)


ALL: tuple[System, ...] = (
    Floor(),
    FloorFsync(),
    FsqueueApi(),
    FsqueueApiFsync(),
    FsqueueRun(),
    FsqueueRunFsync(),
    HueySqlite(),
    HueySqliteFsync(),
    HueyFile(),
    PersistQueue(),
    Dirq(),
)
BY_KEY = {system.key: system for system in ALL}


def select(keys: str) -> list[System]:
    """Systems named in a comma list (``all`` for every one), in the fixed order of ``ALL``."""
    wanted = {k.strip() for k in keys.split(",") if k.strip()}
    if "all" in wanted:
        return list(ALL)
    unknown = wanted - BY_KEY.keys()
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {', '.join(BY_KEY)}")
    return [s for s in ALL if s.key in wanted]


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with_yaml = path.with_suffix(".yaml")
    with_yaml.unlink(missing_ok=True)
