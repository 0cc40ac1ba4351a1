"""The error tree: one root, each subclass also the builtin it refines, each naming path and rule."""

from __future__ import annotations


class FsQueueError(Exception):
    """Root of every error fsqueue raises on purpose; the CLI maps each subclass to an exit code."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | None = None, task_id: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.task_id = task_id


class InvalidTaskId(FsQueueError, ValueError):
    """A task id that could escape the queue directory or is not a safe file name."""


class InvalidPayload(FsQueueError, ValueError):
    """A payload or result that is not JSON, or too large."""


class ConfigError(FsQueueError, ValueError):
    """A configuration key that is unknown or holds a bad value."""


class TaskExists(FsQueueError, FileExistsError):
    """An enqueue with an explicit id that the queue already holds."""


class TaskNotFound(FsQueueError, LookupError):
    """No task, lock or dead letter with that id."""


class LeaseLost(FsQueueError, RuntimeError):
    """The claim's lock is no longer this claim's: renew and commit are refused (fenced)."""

    exit_code = 5


class PipelineHalted(FsQueueError, RuntimeError):
    """The circuit breaker tripped (or an operator halted the pipeline): no claim, no enqueue."""

    exit_code = 4


class LockHeld(FsQueueError, RuntimeError):
    """A lock whose owner is alive and whose lease is current was not broken (use force)."""


class CorruptRecord(FsQueueError, ValueError):
    """An on-disk record that is empty, truncated, not JSON, or missing fields."""


class QueueRootError(FsQueueError, OSError):
    """The queue root is missing, not a directory, not a queue, or not writable."""


class StorageError(FsQueueError, OSError):
    """The filesystem refused an operation (disk full, permission denied, read-only)."""

    def __init__(
        self, message: str, *, path: str | None = None, task_id: str | None = None, errno: int | None = None
    ) -> None:
        super().__init__(message, path=path, task_id=task_id)
        self.errno = errno


__all__ = [
    "ConfigError",
    "CorruptRecord",
    "FsQueueError",
    "InvalidPayload",
    "InvalidTaskId",
    "LeaseLost",
    "LockHeld",
    "PipelineHalted",
    "QueueRootError",
    "StorageError",
    "TaskExists",
    "TaskNotFound",
]


# Shared state (the steward): appended after __all__ so concurrent edits stay append-only.
class InvalidName(FsQueueError, ValueError):
    """A shared-state document name or ticket that is not a safe file-name component."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class TicketNotFound(FsQueueError, LookupError):
    """No pending submission and no kept outcome for a ticket."""

    def __init__(self, message: str, *, ticket: str, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.ticket = ticket


class StewardRunning(FsQueueError, RuntimeError):
    """Another steward holds the root's singleton lock (``state/steward.lock``)."""

    exit_code = 9

    def __init__(self, message: str, *, path: str, holder_pid: int | None = None) -> None:
        super().__init__(message, path=path)
        self.holder_pid = holder_pid
