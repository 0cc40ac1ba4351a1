"""fsqueue-watchdog: sweeps an fsqueue root, breaking dead and expired claims without touching live ones."""

from __future__ import annotations

from ._daemon import AlreadyRunning, Daemon, hold_singleton
from ._log import ActionLog
from ._notify import sd_notify
from ._settings import WatchdogSettings, load_settings, settings_from_mapping
from ._sweep import Sweeper, SweepReport

__all__ = [
    "ActionLog",
    "AlreadyRunning",
    "Daemon",
    "SweepReport",
    "Sweeper",
    "WatchdogSettings",
    "hold_singleton",
    "load_settings",
    "sd_notify",
    "settings_from_mapping",
]
