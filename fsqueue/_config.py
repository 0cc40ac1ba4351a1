"""Settings, validated once into a frozen object; YAML is parsed only when a file is given."""

from __future__ import annotations

import math
import re

from ._errors import ConfigError
from ._frozen import field, field_names, frozen, replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final, Literal

    Durability = Literal["fsync", "none"]
else:
    # Literal needs ``typing`` at run time; importers of these names only use them in annotations.
    Durability = str


_DURATION: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNIT: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


@frozen
class Rule:
    """A circuit-breaker rule: more than ``max_outputs`` outputs within ``window`` seconds trips it."""

    agent: str
    max_outputs: int
    window: float

    def __post_init__(self) -> None:
        if isinstance(self.max_outputs, bool) or not isinstance(self.max_outputs, int) or self.max_outputs < 1:
            raise ConfigError(f"breaker rule max_outputs must be an integer >= 1, got {self.max_outputs!r}")
        _positive("breaker rule window", self.window)


@frozen
class Alerts:
    """Where an alert goes: a shell command, a webhook URL, a sendmail recipient (any or all)."""

    command: str | None = None
    webhook: str | None = None
    sendmail: str | None = None
    heartbeat_down: bool = False
    """Also alert, once per episode, when an agent's heartbeat goes ``down`` (the watchdog sends it)."""

    def __post_init__(self) -> None:
        if self.webhook is not None and not self.webhook.startswith(("http://", "https://")):
            raise ConfigError(f"alerts.webhook must be an http:// or https:// URL, got {self.webhook!r}")

    @property
    def configured(self) -> bool:
        return bool(self.command or self.webhook or self.sendmail)


@frozen
class Config:
    """Queue settings; every field has the default a user gets without a config file."""

    ttl: float = 1800.0
    """Lease time-to-live in seconds: an unrenewed claim expires after this (default 30 minutes)."""
    max_attempts: int = 5
    """Claims per task before it goes to dead-letter."""
    retry_base: float = 10.0
    """Back-off after the first failure, in seconds; doubles each attempt."""
    retry_max: float = 3600.0
    """Longest back-off, in seconds."""
    durability: Durability = "fsync"
    """``fsync``: accepted enqueues and completions survive power loss; ``none``: for tmpfs users."""
    heartbeat_interval: float = 300.0
    """How often agents beat by default (``heartbeats.interval``), in seconds."""
    heartbeat_grace: float = 60.0
    """A heartbeat is ``late`` once older than its interval plus this (``heartbeats.grace``)."""
    heartbeat_down_after: float = 3.0
    """... and ``down`` once older than this many intervals plus the grace (``heartbeats.down_after``)."""
    recover_after: float = 600.0
    """Degraded mode is left only after the upstream has been fresh this long (``heartbeats.recover_after``)."""
    rules: tuple[Rule, ...] = ()
    """Circuit-breaker rules (``breaker.rules``); none means outputs are not counted at all."""
    alerts: Alerts = field(default_factory=Alerts)
    """Alert transports (``alerts``)."""

    def rule_for(self, agent: str) -> Rule | None:
        """The most specific rule for ``agent``: its own name first, then ``"*"``."""
        for wanted in (agent, "*"):
            for rule in self.rules:
                if rule.agent == wanted:
                    return rule
        return None

    def __post_init__(self) -> None:
        _positive("ttl", self.ttl)
        _positive("heartbeats.interval", self.heartbeat_interval)
        if not (isinstance(self.heartbeat_down_after, int | float) and 1 <= self.heartbeat_down_after < 1e6):
            raise ConfigError(
                f"heartbeats.down_after must be a number of intervals >= 1, got {self.heartbeat_down_after!r}"
            )
        if (
            isinstance(self.heartbeat_grace, bool)
            or not isinstance(self.heartbeat_grace, int | float)
            or not (math.isfinite(self.heartbeat_grace) and self.heartbeat_grace >= 0)
        ):
            raise ConfigError(f"heartbeats.grace must be a number of seconds >= 0, got {self.heartbeat_grace!r}")
        if (
            isinstance(self.recover_after, bool)
            or not isinstance(self.recover_after, int | float)
            or not (math.isfinite(self.recover_after) and self.recover_after >= 0)
        ):
            raise ConfigError(f"heartbeats.recover_after must be a number of seconds >= 0, got {self.recover_after!r}")
        _positive("retry_base", self.retry_base)
        _positive("retry_max", self.retry_max)
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or not 1 <= self.max_attempts <= 1_000_000
        ):
            raise ConfigError(f"max_attempts must be an integer from 1 to 1000000, got {self.max_attempts!r}")
        if self.durability not in ("fsync", "none"):
            raise ConfigError(f"durability must be 'fsync' or 'none', got {self.durability!r}")


def _positive(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key} must be a positive number of seconds, got {value!r}")


def parse_duration(value: object, key: str) -> float:
    """Seconds from a number or a string such as ``90``, ``30s``, ``10m``, ``2h``."""
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a duration such as 30, '30s', '10m' or '2h', got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        return float(match.group(1)) * _UNIT[match.group(2)]
    raise ConfigError(f"{key} must be a duration such as 30, '30s', '10m' or '2h', got {value!r}")


_QUEUE_KEYS: Final = {"ttl", "max_attempts", "retry", "durability", "heartbeats", "breaker", "alerts"}
_HEARTBEAT_KEYS: Final = {
    "interval": "heartbeat_interval",
    "grace": "heartbeat_grace",
    "down_after": "heartbeat_down_after",
    "recover_after": "recover_after",
}
_RETRY_KEYS: Final = {"base", "max"}
#: Sections read by other parts of fsqueue; the queue itself accepts and ignores them.
_OTHER_SECTIONS: Final = {"watchdog", "spool"}


def config_from_mapping(data: object, source: str = "config") -> Config:
    """Validate a parsed YAML document; unknown keys and bad types are refused with the key named."""
    if data is None:
        return Config()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}")
    unknown = sorted(set(data) - _QUEUE_KEYS - _OTHER_SECTIONS, key=str)
    if unknown:
        allowed = ", ".join(sorted(_QUEUE_KEYS | _OTHER_SECTIONS))
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known keys: {allowed})")
    changes: dict[str, Any] = {}
    if "ttl" in data:
        changes["ttl"] = parse_duration(data["ttl"], f"{source}: ttl")
    if "max_attempts" in data:
        changes["max_attempts"] = data["max_attempts"]
    if "durability" in data:
        changes["durability"] = data["durability"]
    retry = data.get("retry")
    if retry is not None:
        if not isinstance(retry, dict):
            raise ConfigError(f"{source}: retry must be a mapping with keys base and max, got {retry!r}")
        bad = sorted(set(retry) - _RETRY_KEYS, key=str)
        if bad:
            raise ConfigError(f"{source}: unknown key 'retry.{bad[0]}' (known: retry.base, retry.max)")
        for key in ("base", "max"):
            if key in retry:
                seconds = parse_duration(retry[key], f"{source}: retry.{key}")
                _positive(f"{source}: retry.{key}", seconds)
                changes[f"retry_{key}"] = seconds
    changes.update(_heartbeat_changes(data.get("heartbeats"), source))
    if data.get("breaker") is not None:
        changes["rules"] = _rules(data["breaker"], source)
    if data.get("alerts") is not None:
        changes["alerts"] = _alerts(data["alerts"], source)
    try:
        return replace(Config(), **changes)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _heartbeat_changes(section: object, source: str) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: heartbeats must be a mapping, got {section!r}")
    bad = sorted(set(section) - set(_HEARTBEAT_KEYS), key=str)
    if bad:
        raise ConfigError(f"{source}: unknown key 'heartbeats.{bad[0]}' (known: {', '.join(sorted(_HEARTBEAT_KEYS))})")
    changes: dict[str, Any] = {}
    for key, name in _HEARTBEAT_KEYS.items():
        if key in section:
            value = section[key]
            if key == "down_after":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"{source}: heartbeats.down_after must be a number of intervals, got {value!r}")
                changes[name] = float(value)
            else:
                changes[name] = parse_duration(value, f"{source}: heartbeats.{key}")
    return changes


def _rules(section: object, source: str) -> tuple[Rule, ...]:
    if not isinstance(section, dict) or set(section) - {"rules"}:
        raise ConfigError(f"{source}: breaker must be a mapping with one key, rules, got {section!r}")
    rules = section.get("rules") or []
    if not isinstance(rules, list):
        raise ConfigError(f"{source}: breaker.rules must be a list, got {rules!r}")
    out = []
    for i, rule in enumerate(rules):
        where = f"{source}: breaker.rules[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError(f"{where} must be a mapping with agent, max_outputs, window, got {rule!r}")
        bad = sorted(set(rule) - {"agent", "max_outputs", "window"}, key=str)
        missing = sorted({"agent", "max_outputs", "window"} - set(rule))
        if bad or missing:
            raise ConfigError(f"{where}: {'unknown key ' + repr(bad[0]) if bad else 'missing key ' + repr(missing[0])}")
        agent, limit = rule["agent"], rule["max_outputs"]
        if not isinstance(agent, str) or not agent:
            raise ConfigError(f'{where}.agent must be an agent name or "*", got {agent!r}')
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"{where}.max_outputs must be an integer >= 1, got {limit!r}")
        window = parse_duration(rule["window"], f"{where}.window")
        _positive(f"{where}.window", window)
        out.append(Rule(agent, limit, window))
    return tuple(out)


def _alerts(section: object, source: str) -> Alerts:
    keys = {"command", "webhook", "sendmail", "heartbeat_down"}
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: alerts must be a mapping, got {section!r}")
    bad = sorted(set(section) - keys, key=str)
    if bad:
        raise ConfigError(f"{source}: unknown key 'alerts.{bad[0]}' (known: {', '.join(sorted(keys))})")
    for key in ("command", "webhook", "sendmail"):
        value = section.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{source}: alerts.{key} must be a non-empty string, got {value!r}")
    webhook = section.get("webhook")
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise ConfigError(f"{source}: alerts.webhook must be an http:// or https:// URL, got {webhook!r}")
    down = section.get("heartbeat_down", False)
    if not isinstance(down, bool):
        raise ConfigError(f"{source}: alerts.heartbeat_down must be true or false, got {down!r}")
    return Alerts(section.get("command"), webhook, section.get("sendmail"), down)


def read_yaml(path: str) -> object:
    """Parse a YAML file with ``yaml.safe_load``; every failure is a one-line ConfigError naming the file."""
    import yaml  # imported here: a cron agent without --config never pays for it

    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}", path=path) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML{yaml_error_where(exc)}", path=path) from None


def load_config(path: str) -> Config:
    """Read and validate a YAML config file."""
    return config_from_mapping(read_yaml(path), path)


def yaml_error_where(exc: Exception) -> str:
    """``" at line L, column C: problem"`` on one line (PyYAML's own message spans several)."""
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(str(getattr(exc, "problem", "") or exc).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {problem}"


def config_field_names() -> list[str]:
    return list(field_names(Config))


# ------------------------------------------------------------------------------------------- spool

_SIZE: Final = re.compile(r"\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*", re.IGNORECASE)
_SIZE_UNIT: Final = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10}
_SIZE_UNIT.update({"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30})
_SPOOL_KEYS: Final = {"retention", "segment_bytes", "segment_age"}


@frozen
class SpoolSettings:
    """The telemetry spool (``spool:`` section); every field has the default a user gets without a file."""

    retention: float | None = 30 * 86400.0
    """Daily archives older than this many seconds are removed by the collector (None keeps them)."""
    segment_bytes: int = 1 << 20
    """A writer seals its open segment once it holds this many bytes."""
    segment_age: float = 60.0
    """... or once it is this many seconds old (checked at the writer's next emit)."""

    def __post_init__(self) -> None:
        if self.retention is not None:
            _positive("spool.retention", self.retention)
        if isinstance(self.segment_bytes, bool) or not isinstance(self.segment_bytes, int):
            raise ConfigError(f"spool.segment_bytes must be a size such as '1MiB', got {self.segment_bytes!r}")
        if not 1024 <= self.segment_bytes <= 1 << 30:
            raise ConfigError(f"spool.segment_bytes must be from 1KiB to 1GiB, got {self.segment_bytes!r}")
        _positive("spool.segment_age", self.segment_age)


def parse_size(value: object, key: str) -> int:
    """Bytes from an integer or a string such as ``65536``, ``64k``, ``1MiB``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        return int(match.group(1)) * _SIZE_UNIT[(match.group(2) or "").lower()]
    raise ConfigError(f"{key} must be a size such as 1048576, '64KiB' or '1MiB', got {value!r}")


def spool_settings_from_mapping(data: object, source: str = "config") -> SpoolSettings:
    """The ``spool:`` section of one parsed YAML document (the rest is checked by config_from_mapping)."""
    section = data.get("spool") if isinstance(data, dict) else None
    if section is None:
        return SpoolSettings()
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: spool must be a mapping, got {section!r}")
    unknown = sorted(set(section) - _SPOOL_KEYS, key=str)
    if unknown:
        raise ConfigError(f"{source}: unknown key 'spool.{unknown[0]}' (known: {', '.join(sorted(_SPOOL_KEYS))})")
    changes: dict[str, Any] = {}
    if "retention" in section:
        value = section["retention"]
        changes["retention"] = None if value is None else parse_duration(value, f"{source}: spool.retention")
    if "segment_bytes" in section:
        changes["segment_bytes"] = parse_size(section["segment_bytes"], f"{source}: spool.segment_bytes")
    if "segment_age" in section:
        changes["segment_age"] = parse_duration(section["segment_age"], f"{source}: spool.segment_age")
    try:
        return replace(SpoolSettings(), **changes)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_spool_settings(path: str) -> SpoolSettings:
    """Read a YAML config file and validate both the queue keys and its ``spool:`` section."""
    data = read_yaml(path)
    config_from_mapping(data, path)
    return spool_settings_from_mapping(data, path)
