"""The circuit breaker: more than N outputs in M minutes by one agent halts the whole pipeline.

Outputs are counted per agent in ``breaker/<md5(agent)>.window`` -- the last ``max_outputs + 1``
timestamps, rewritten under a guard, so the file never grows and one-shot cron processes share it.
Tripping publishes ``halt.json`` with ``link()``: exactly one process can create it, and only that
process sends the alert (``_alerts``) -- one alert per trip however many processes notice at once
(P8). While ``halt.json`` exists every claim and enqueue raises PipelineHalted (exit 4).
"""

from __future__ import annotations

import json
import math
import os
import time

from ._config import Rule
from ._digest import md5_hex
from ._errors import PipelineHalted
from ._frozen import frozen
from ._fsio import exists_nofollow, publish_new, publish_replace, read_nofollow, storage_errors, unlink_quietly
from ._guard import guarded
from ._identity import current_owner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._store import Store

HALT_FILE = "halt.json"


@frozen
class Halt:
    """Why the pipeline is halted."""

    id: str
    at: float
    reason: str
    agent: str
    rule: Rule | None
    pid: int
    host: str

    def to_json(self) -> dict[str, Any]:
        rule = (
            None
            if self.rule is None
            else {"agent": self.rule.agent, "max_outputs": self.rule.max_outputs, "window": self.rule.window}
        )
        return {
            "format": "fsqueue/1",
            "kind": "halt",
            "id": self.id,
            "at": self.at,
            "reason": self.reason,
            "agent": self.agent,
            "rule": rule,
            "pid": self.pid,
            "host": self.host,
        }

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))
        return f"since {when}: {self.reason}"


def halt_path(store: Store) -> str:
    return os.path.join(store.root, HALT_FILE)


def read_halt(store: Store) -> Halt | None:
    """The current halt, or None when the pipeline runs. An unreadable halt file still halts."""
    try:
        data, _ = read_nofollow(halt_path(store))
    except FileNotFoundError:
        return None
    except OSError:
        return Halt("unreadable", 0.0, f"{halt_path(store)} exists but cannot be read", "", None, 0, "")
    try:
        obj = json.loads(data)
        rule = obj.get("rule")
        at = float(obj["at"])
        if not (math.isfinite(at) and 0 <= at < 1e11):  # later code formats it as a local time
            raise ValueError(f"halt time {at!r} is out of range")
        return Halt(
            str(obj["id"]),
            at,
            str(obj["reason"]),
            str(obj.get("agent", "")),
            None if not rule else Rule(str(rule["agent"]), int(rule["max_outputs"]), float(rule["window"])),
            int(obj.get("pid", 0)),
            str(obj.get("host", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return Halt("unreadable", 0.0, f"{halt_path(store)} is not a valid halt record", "", None, 0, "")


def check_running(store: Store) -> None:
    """Raise PipelineHalted when the pipeline is halted (one ``lstat`` when it is not)."""
    if not exists_nofollow(halt_path(store)):
        return
    halt = read_halt(store)
    if halt is None:
        return  # resumed between the two looks
    raise PipelineHalted(
        f"pipeline halted {halt.describe()}; nothing is claimed or enqueued until `fsqueue resume`",
        path=halt_path(store),
    )


def _window_path(store: Store, agent: str) -> str:
    digest = md5_hex(agent)
    return os.path.join(store.layout.sub("breaker"), f"{digest}.window")


def _breaker_lock(store: Store) -> str:
    # One flock for all counting, tripping and resuming: a resume can then never interleave with an
    # output's count-and-verdict (which would halt the pipeline again at once). It is its own file,
    # never a guard shard, so holding it with an alert's guard can never mean one file twice.
    return os.path.join(store.layout.sub("breaker"), "breaker.lock")


def record_output(store: Store, agent: str, count: int = 1) -> Halt | None:
    """Count ``count`` outputs by ``agent``; trip the breaker (and return the halt) if over its rule."""
    rule = store.config.rule_for(agent)
    if rule is None or count < 1:
        return None  # no rule: outputs are not counted at all, and cost nothing
    path = _window_path(store, agent)
    now = store.clock.now()
    with storage_errors("count outputs in", path), guarded(_breaker_lock(store)):
        try:
            data, _ = read_nofollow(path)
            stamps = [float(t) for t in json.loads(data)["stamps"]]
        except (OSError, ValueError, KeyError, TypeError):
            stamps = []  # missing or damaged: start counting afresh
        keep = rule.max_outputs + 1  # all a verdict needs: the file stays bounded
        stamps = ([t for t in stamps if t > now - rule.window] + [now] * min(count, keep))[-keep:]
        record = {"format": "fsqueue/1", "kind": "window", "agent": agent, "stamps": stamps}
        publish_replace(store.layout.staging, json.dumps(record).encode(), path, durable=False)
        if len(stamps) <= rule.max_outputs:
            return None
        reason = (
            f"agent {agent} produced more than {rule.max_outputs} outputs in {_span(rule.window)} "
            f"(rule for {rule.agent!r})"
        )
        halt = _publish_halt(store, reason, agent=agent, rule=rule, alert=True)
    if halt is not None:
        _deliver(store, halt)
    return halt


def count_committed_output(store: Store, agent: str) -> None:
    """Count a completion; the task is already done, so a counting failure is a warning, not an error."""
    try:
        record_output(store, agent)
    except OSError as exc:
        import warnings

        warnings.warn(f"fsqueue: output of agent {agent} not counted by the circuit breaker: {exc}", stacklevel=3)


def _span(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def trip(store: Store, reason: str, *, agent: str = "", rule: Rule | None = None, alert: bool = True) -> Halt | None:
    """Halt the pipeline; returns the halt if this call created it (None if it was already halted)."""
    with guarded(_breaker_lock(store)):
        halt = _publish_halt(store, reason, agent=agent, rule=rule, alert=alert)
    if halt is not None and alert:
        _deliver(store, halt)
    return halt


def _publish_halt(store: Store, reason: str, *, agent: str, rule: Rule | None, alert: bool) -> Halt | None:
    """Write the alert (if any), then ``link()`` halt.json; the halt if this call created it. Under the lock."""
    from ._alerts import alert_lock, create_alert

    owner = current_owner()
    halt = Halt(os.urandom(8).hex(), store.clock.now(), reason, agent, rule, owner.pid, owner.host)
    alert_id = f"halt-{halt.id}"
    lock = alert_lock(store, alert_id)
    with guarded(lock):
        # The alert is written before the halt and delivered by its creator only: whoever wins the
        # link() of halt.json is the one process that alerts (P8). Holding the alert's guard keeps
        # the watchdog from judging the alert an orphan before the halt exists.
        made_alert = alert and store.config.alerts.configured
        if made_alert:
            create_alert(
                store,
                alert_id,
                kind="halt",
                text=f"fsqueue pipeline halted: {reason}",
                fields={"halt_id": halt.id, "agent": agent, "reason": reason, "root": store.root},
            )
        try:
            with storage_errors("halt the pipeline in", halt_path(store)):
                publish_new(
                    store.layout.staging,
                    (json.dumps(halt.to_json()) + "\n").encode(),
                    halt_path(store),
                    durable=store.durable,
                )
        except FileExistsError:
            if made_alert:
                unlink_quietly(os.path.join(store.layout.sub("alerts"), f"{alert_id}.json"))
            unlink_quietly(lock)  # this halt id was never published: nobody else will ever use its lock
            return None
        log_event(store, "halted", halt=halt.id, reason=reason, agent=agent)
    return halt


def _deliver(store: Store, halt: Halt) -> None:
    from ._alerts import deliver

    if store.config.alerts.configured:
        deliver(store, f"halt-{halt.id}")


def resume(store: Store) -> Halt | None:
    """Lift the halt (and forget the counted outputs, which would trip it again at once)."""
    halt = read_halt(store)
    path = halt_path(store)
    if halt is None:
        return None
    history = os.path.join(store.layout.sub("breaker"), f"halt-{halt.id}-{int(store.clock.now())}.json")
    with storage_errors("resume the pipeline in", path), guarded(_breaker_lock(store)):
        try:
            os.rename(path, history)
        except FileNotFoundError:
            return None
        for name in os.listdir(store.layout.sub("breaker")):
            if name.endswith(".window"):  # under the lock: no output is being counted meanwhile
                unlink_quietly(os.path.join(store.layout.sub("breaker"), name))
    log_event(store, "resumed", halt=halt.id, reason=halt.reason)
    return halt


def log_event(store: Store, event: str, **fields: Any) -> None:
    """Append one line to ``breaker/log.jsonl`` (halts and resumes: the audit trail), and to the spool."""
    from ._spool import record_event

    record_event(store.root, "fsqueue", f"breaker.{event}", **fields)
    owner = current_owner()
    line = (
        json.dumps(
            {
                "at": store.clock.now(),
                "event": event,
                "pid": owner.pid,
                "host": owner.host,
                "user": os.environ.get("USER", ""),
                **fields,
            }
        )
        + "\n"
    )
    path = os.path.join(store.layout.sub("breaker"), "log.jsonl")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    except OSError:
        return  # the audit line is best effort; the halt file itself is the truth
    try:
        os.write(fd, line.encode())  # one write on an O_APPEND fd: lines never interleave
    finally:
        os.close(fd)
