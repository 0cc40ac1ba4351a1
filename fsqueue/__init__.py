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
    InvalidPayload,
    InvalidTaskId,
    LeaseLost,
    LockHeld,
    PipelineHalted,
    QueueRootError,
    StorageError,
    TaskExists,
    TaskNotFound,
)
from ._heartbeat import AgentInfo, Heartbeat, HeartbeatRecord
from ._inspect import LockInfo, TaskInfo
from ._layout import default_root
from ._queue import Queue

__version__ = "0.1.0"

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
    "InvalidPayload",
    "InvalidTaskId",
    "LeaseLost",
    "LockHeld",
    "LockInfo",
    "ManualClock",
    "Mode",
    "PipelineHalted",
    "Queue",
    "QueueRootError",
    "Rule",
    "StorageError",
    "SystemClock",
    "TaskExists",
    "TaskInfo",
    "TaskNotFound",
    "__version__",
    "default_root",
    "load_config",
]
