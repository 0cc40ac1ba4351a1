"""Watchdog settings: the ``watchdog:`` section of the YAML config, validated into a frozen object."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from fsqueue import Config, ConfigError
from fsqueue._config import SpoolSettings, config_from_mapping, parse_duration, read_yaml, spool_settings_from_mapping

LogFormat = Literal["text", "json"]

_KEYS: Final = {
    "interval",
    "grace",
    "staging_max_age",
    "repair_every",
    "retention",
    "metrics",
    "log_format",
    "collect_spool",
    "steward",
}
_RETENTION_KEYS: Final = {"done", "dead"}


@dataclass(frozen=True)
class WatchdogSettings:
    """How the watchdog sweeps; every field has the default a user gets without a config file."""

    interval: float = 30.0
    """Seconds between sweeps."""
    grace: float = 0.0
    """Extra seconds a lease must be past its expiry before it counts as expired."""
    staging_max_age: float = 3600.0
    """Staging files older than this were left by a crashed writer and are removed."""
    repair_every: float = 600.0
    """Seconds between the slower passes: orphan repair, retention, task census."""
    retention_done: float | None = 7 * 86400.0
    """Prune done results older than this (None keeps them forever)."""
    retention_dead: float | None = 30 * 86400.0
    """Prune dead letters older than this (None keeps them forever)."""
    metrics: str | None = None
    """Path of a Prometheus text file (node_exporter textfile collector) written after each sweep."""
    log_format: LogFormat = "text"
    collect_spool: bool = True
    """Archive sealed telemetry segments in each sweep (``fsqueue spool collect``), if ``spool/`` exists."""
    steward: bool = False
    """Apply pending shared-state updates in each sweep, unless a ``fsqueue steward`` runs."""
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    """The ``spool:`` section (archive retention), used by the collect step."""

    def __post_init__(self) -> None:
        for key in ("interval", "staging_max_age", "repair_every"):
            value = getattr(self, key)
            if value <= 0:
                raise ConfigError(f"watchdog.{key} must be positive, got {value!r}")
        if self.grace < 0:
            raise ConfigError(f"watchdog.grace must be >= 0, got {self.grace!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"watchdog.log_format must be 'text' or 'json', got {self.log_format!r}")


def settings_from_mapping(data: object, source: str = "config") -> tuple[Config, WatchdogSettings]:
    """The queue settings and the watchdog settings of one parsed YAML document."""
    config = config_from_mapping(data, source)
    spool = spool_settings_from_mapping(data, source)
    section = data.get("watchdog") if isinstance(data, dict) else None
    if section is None:
        return config, WatchdogSettings(spool=spool)
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: watchdog must be a mapping, got {section!r}")
    unknown = sorted(set(section) - _KEYS, key=str)
    if unknown:
        raise ConfigError(f"{source}: unknown key 'watchdog.{unknown[0]}' (known: {', '.join(sorted(_KEYS))})")
    changes: dict[str, Any] = {}
    for key in ("interval", "grace", "staging_max_age", "repair_every"):
        if key in section:
            changes[key] = parse_duration(section[key], f"{source}: watchdog.{key}")
    retention = section.get("retention")
    if retention is not None:
        if not isinstance(retention, dict) or set(retention) - _RETENTION_KEYS:
            raise ConfigError(
                f"{source}: watchdog.retention must be a mapping with keys done and dead, got {retention!r}"
            )
        for key in ("done", "dead"):
            if key in retention:
                value = retention[key]
                changes[f"retention_{key}"] = (
                    None if value is None else parse_duration(value, f"{source}: watchdog.retention.{key}")
                )
    if "metrics" in section:
        metrics = section["metrics"]
        if metrics is not None and not isinstance(metrics, str):
            raise ConfigError(f"{source}: watchdog.metrics must be a file path, got {metrics!r}")
        changes["metrics"] = metrics
    if "log_format" in section:
        changes["log_format"] = section["log_format"]
    for key in ("collect_spool", "steward"):
        if key in section:
            if not isinstance(section[key], bool):
                raise ConfigError(f"{source}: watchdog.{key} must be true or false, got {section[key]!r}")
            changes[key] = section[key]
    try:
        return config, replace(WatchdogSettings(spool=spool), **changes)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_settings(path: str | None) -> tuple[Config, WatchdogSettings]:
    """Read and validate the YAML config file (or the defaults when ``path`` is None)."""
    if path is None:
        return Config(), WatchdogSettings()
    data = read_yaml(path)
    return settings_from_mapping(data, path)
