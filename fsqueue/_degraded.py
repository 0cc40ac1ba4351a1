"""Degraded standalone mode: is my upstream alive? If not, run a degraded path instead of hanging.

``queue.upstream("scraper", agent="writer")`` reads the scraper's heartbeat and answers ``full`` or
``degraded``, with hysteresis: once degraded, the downstream stays degraded until the upstream has
been fresh for ``recover_after`` seconds, so a flapping upstream does not flip the mode every run.
The decision is remembered per downstream in ``status/<agent>.modes`` (so one-shot cron runs share
it), and the downstream's own heartbeat records that it runs degraded, and why.
"""

from __future__ import annotations

import json
import math
import os

from ._errors import CorruptRecord
from ._frozen import frozen
from ._fsio import publish_replace, read_nofollow
from ._heartbeat import check_agent_name, read_beat, write_beat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._store import Store


@frozen
class Mode:
    """The answer to "is my upstream alive?"; true when the full path may run."""

    upstream: str
    degraded: bool
    reason: str
    since: float

    @property
    def full(self) -> bool:
        return not self.degraded

    def __bool__(self) -> bool:
        return not self.degraded


def upstream_fresh(store: Store, name: str, max_age: float | None, now: float) -> tuple[bool, str]:
    """Whether ``name``'s last heartbeat is younger than ``max_age`` (default: its interval + grace)."""
    try:
        hb = read_beat(store, name)
    except CorruptRecord as exc:
        return False, f"its heartbeat is unreadable ({exc})"
    if hb is None:
        return False, f"{name} has never beaten"
    limit = hb.interval + store.config.heartbeat_grace if max_age is None else max_age
    age = now - hb.at
    if -age > limit:  # dated in the future beyond any tolerance: an untrustworthy clock, not a live agent
        return False, f"{name}'s last heartbeat is dated {-age:.0f}s in the future (limit {limit:.0f}s)"
    if age > limit:
        return False, f"{name}'s last heartbeat is {age:.0f}s old (limit {limit:.0f}s)"
    if hb.state == "failed":
        return False, f"{name} reported failure: {hb.message}"
    return True, f"{name} beat {age:.0f}s ago"


def upstream(
    store: Store,
    name: str,
    *,
    max_age: float | None = None,
    agent: str | None = None,
    recover_after: float | None = None,
) -> Mode:
    """Full or degraded for a downstream of ``name``, with hysteresis; see the module docstring."""
    check_agent_name(name)
    now = store.clock.now()
    fresh, why = upstream_fresh(store, name, max_age, now)
    recover = store.config.recover_after if recover_after is None else recover_after
    states = _load_modes(store, agent)
    prev = states.get(name, {"degraded": False, "since": now, "fresh_since": None})
    degraded = bool(prev.get("degraded"))
    fresh_since = prev.get("fresh_since")
    since = float(prev.get("since") or now)
    if not fresh:
        if not degraded:
            degraded, since = True, now
        fresh_since = None
        reason = why
    elif degraded:
        fresh_since = now if fresh_since is None else float(fresh_since)
        if now - fresh_since >= recover:
            degraded, since, fresh_since = False, now, None
            reason = f"{why}; fresh for {recover:.0f}s, leaving degraded mode"
        else:
            reason = f"{why}, but fresh only {now - fresh_since:.0f}s of the {recover:.0f}s required"
    else:
        reason = why
    states[name] = {"degraded": degraded, "since": since, "fresh_since": fresh_since}
    if agent is not None and degraded != bool(prev.get("degraded")):
        from ._spool import record_event

        record_event(store.root, agent, "degraded" if degraded else "recovered", upstream=name, reason=reason)
    if agent is not None:
        _save_modes(store, agent, states)
        if degraded:
            write_beat(store, agent, state="degraded", message=f"upstream {name}: {reason}")
        else:
            write_beat(store, agent, state="ok", message="")
    return Mode(name, degraded, reason, since)


def _modes_path(store: Store, agent: str) -> str:
    return os.path.join(store.layout.sub("status"), f"{check_agent_name(agent)}.modes")


def _load_modes(store: Store, agent: str | None) -> dict[str, dict[str, Any]]:
    if agent is None:
        return {}
    try:
        data, _ = read_nofollow(_modes_path(store, agent))
        loaded = json.loads(data)
    except (OSError, ValueError):
        return {}  # missing or damaged: start without history (the answer is still right, only less sticky)
    modes = loaded.get("upstreams") if isinstance(loaded, dict) else None
    return {k: v for k, v in modes.items() if _valid_mode(v)} if isinstance(modes, dict) else {}


def _valid_mode(entry: object) -> bool:
    """An entry whose fields have the types ``upstream()`` computes with (else it is forgotten)."""

    def finite(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    return (
        isinstance(entry, dict)
        and isinstance(entry.get("degraded"), bool)
        and finite(entry.get("since"))
        and (entry.get("fresh_since") is None or finite(entry.get("fresh_since")))
    )


def _save_modes(store: Store, agent: str, states: dict[str, dict[str, Any]]) -> None:
    data = json.dumps({"format": "fsqueue/1", "kind": "modes", "agent": agent, "upstreams": states})
    try:
        publish_replace(store.layout.staging, (data + "\n").encode(), _modes_path(store, agent), durable=False)
    except OSError:
        pass  # hysteresis memory is advisory: a full disk must not stop the agent from working
