"""fsqueue: a task queue whose only state is a directory tree.

``import fsqueue`` loads the standard library only; psutil, PyYAML and click are imported where used.
"""

from __future__ import annotations

from ._claim import Claim
from ._clock import Clock, ManualClock, SystemClock
from ._config import Alerts, Config, Rule, load_config
from ._degraded import Mode
from ._errors import (
    ConfigError,
    CorruptRecord,
    FsQueueError,
    InvalidName,
    InvalidPayload,
    InvalidTaskId,
    LeaseLost,
    LockHeld,
    PipelineHalted,
    QueueRootError,
    StewardRunning,
    StorageError,
    TaskExists,
    TaskNotFound,
    TicketNotFound,
)
from ._heartbeat import AgentInfo, Heartbeat, HeartbeatRecord
from ._inspect import LockInfo, TaskInfo
from ._layout import default_root
from ._queue import Queue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._collect import collect
    from ._spool import Spool, emit
    from ._state import SharedState
    from ._staterecord import Outcome, Snapshot

__version__ = "0.1.0"

#: Telemetry and shared state load on first use: a cron agent that only claims never pays for them.
_LAZY = {
    "emit": "_spool",
    "Spool": "_spool",
    "collect": "_collect",
    "SharedState": "_state",
    "Snapshot": "_staterecord",
    "Outcome": "_staterecord",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fsqueue' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"fsqueue.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AgentInfo",
    "Alerts",
    "Claim",
    "Clock",
    "Config",
    "ConfigError",
    "CorruptRecord",
    "FsQueueError",
    "Heartbeat",
    "HeartbeatRecord",
    "InvalidName",
    "InvalidPayload",
    "InvalidTaskId",
    "LeaseLost",
    "LockHeld",
    "LockInfo",
    "ManualClock",
    "Mode",
    "Outcome",
    "PipelineHalted",
    "Queue",
    "QueueRootError",
    "Rule",
    "SharedState",
    "Snapshot",
    "Spool",
    "StewardRunning",
    "StorageError",
    "SystemClock",
    "TaskExists",
    "TaskInfo",
    "TaskNotFound",
    "TicketNotFound",
    "__version__",
    "collect",
    "default_root",
    "emit",
    "load_config",
]
