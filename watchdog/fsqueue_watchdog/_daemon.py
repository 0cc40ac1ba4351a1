"""The daemon: one per root, a sweep every interval, graceful on SIGTERM/SIGINT, reloads on SIGHUP.

Signal handlers only set flags (huey's consumer); the loop waits on an Event with the interval as
timeout, so between sweeps the process sleeps in the kernel and costs no CPU. SIGTERM/SIGINT let the
sweep in flight finish (each break is a complete guarded transition anyway) and exit 0.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from typing import IO, Any

from fsqueue import ConfigError, FsQueueError, Queue

from ._log import ActionLog
from ._metrics import render, write_metrics
from ._notify import sd_notify
from ._settings import LogFormat, WatchdogSettings, load_settings
from ._sweep import Sweeper, SweepReport

EXIT_ALREADY_RUNNING = 1


class AlreadyRunning(FsQueueError, RuntimeError):
    """Another watchdog holds this root's singleton lock."""


class Daemon:
    """Sweeps one queue root until told to stop."""

    def __init__(
        self,
        root: str,
        *,
        config_path: str | None = None,
        interval: float | None = None,
        log_format: LogFormat | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        self.root = root
        self.config_path = config_path
        self._interval_override = interval
        self._format_override = log_format
        config, settings = load_settings(config_path)
        self.settings = self._overridden(settings)
        self.log = ActionLog(self.settings.log_format, stream)
        self.queue = Queue(root, config=config)
        self.sweeper = Sweeper(self.queue, self.settings, self.log)
        self.stop_requested = False
        self.reload_requested = False
        self._wake = threading.Event()
        self.last_report: SweepReport | None = None

    def _overridden(self, settings: WatchdogSettings) -> WatchdogSettings:
        changes: dict[str, Any] = {}
        if self._interval_override is not None:
            changes["interval"] = self._interval_override
        if self._format_override is not None:
            changes["log_format"] = self._format_override
        return replace(settings, **changes) if changes else settings

    # Handlers only record the request and wake the loop.
    def _on_stop(self, signum: int, frame: object) -> None:
        self.stop_requested = True
        self._wake.set()

    def _on_hup(self, signum: int, frame: object) -> None:
        self.reload_requested = True
        self._wake.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def reload(self) -> bool:
        """Re-read the config; a bad one keeps the old settings and says why."""
        try:
            config, settings = load_settings(self.config_path)
        except ConfigError as exc:
            self.log.action("reload", reason=f"config rejected, keeping the previous one: {exc}")
            return False
        self.settings = self._overridden(settings)
        self.log.fmt = self.settings.log_format
        self.queue = Queue(self.root, config=config)
        self.sweeper.queue = self.sweeper.repairer.queue = self.sweeper.alerting.queue = self.queue
        self.sweeper.settings = self.sweeper.repairer.settings = self.settings
        self.log.action("reload", reason="config reloaded", path=self.config_path or "-")
        return True

    def sweep_once(self) -> SweepReport:
        """One sweep, then metrics and the systemd watchdog ping."""
        report = self.sweeper.sweep()
        self.last_report = report
        if self.settings.metrics:
            try:
                text = render(report, self.sweeper.repairer.census, self.sweeper.breaks_total, self.queue.root)
                write_metrics(self.settings.metrics, text)
            except OSError as exc:
                self.log.action("error", path=self.settings.metrics, reason=f"cannot write metrics: {exc.strerror}")
        sd_notify("WATCHDOG=1", f"STATUS={report.status_line()}")
        return report

    def run(self, *, once: bool = False) -> int:
        """Sweep every interval until SIGTERM/SIGINT (or once); returns the exit status."""
        sd_notify("READY=1", "STATUS=started")
        ping = watchdog_ping_interval()
        try:
            while True:
                if self.reload_requested:
                    self.reload_requested = False
                    self.reload()
                self.sweep_once()
                if once or self.stop_requested:
                    break
                self._idle(ping)
                if self.stop_requested:
                    break
        finally:
            sd_notify("STOPPING=1")
        return 0

    def _idle(self, ping: float | None) -> None:
        """Wait one interval (or until a signal), pinging systemd's watchdog often enough meanwhile."""
        deadline = time.monotonic() + self.settings.interval
        while (left := deadline - time.monotonic()) > 0:
            woken = self._wake.wait(left if ping is None else min(left, ping))
            self._wake.clear()
            if woken:
                return  # a signal: stop, or reload and sweep now
            if ping is not None and deadline - time.monotonic() > 0:
                sd_notify("WATCHDOG=1")  # an interval longer than WatchdogSec= must not look like a hang


def watchdog_ping_interval() -> float | None:
    """Half of systemd's ``WatchdogSec=`` (``$WATCHDOG_USEC``) when it applies to this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.01, int(usec) / 2e6)
    except ValueError:
        return None


def hold_singleton(root: str, *, wait: bool) -> Any:
    """Take the one-watchdog-per-root lock (filelock's flock); raise AlreadyRunning if held."""
    from filelock import FileLock, Timeout

    from fsqueue._fsio import publish_replace, storage_error, storage_errors
    from fsqueue._layout import open_root

    open_root(root)  # a missing root, or one that is not a queue, is a clear error before any lock file
    path = os.path.join(os.path.abspath(root), "watchdog.lock")
    pid_path = os.path.join(os.path.abspath(root), "watchdog.pid")
    lock = FileLock(path, timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        holder = _read_pid(pid_path)
        raise AlreadyRunning(
            f"another fsqueue-watchdog already sweeps {root} ({path} is held{holder}); "
            "stop it first, or pass --wait to take over when it exits",
            path=path,
        ) from None
    except OSError as exc:  # after Timeout, which is an OSError too: a full disk, a root it may not write
        raise storage_error(exc, "take the watchdog lock", path) from exc
    # Staged in staging/ with O_EXCL|O_NOFOLLOW: a symlink planted in the root is never written through.
    staging = os.path.join(os.path.abspath(root), "staging")
    try:
        with storage_errors("write the watchdog pid file", pid_path):
            publish_replace(staging, f"{os.getpid()}\n".encode(), pid_path, durable=False)
    except BaseException:
        lock.release()
        raise
    return lock


def _read_pid(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return f" by pid {int(handle.read().strip())}"
    except (OSError, ValueError):
        return ""
