"""The sweep's alerting pass: deliver pending alerts, and watch heartbeats go late / down / back."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from fsqueue import Queue
from fsqueue._alerts import create_alert, deliver, pending_alerts
from fsqueue._fsio import read_nofollow
from fsqueue._heartbeat import list_agents

from ._log import ActionLog

if TYPE_CHECKING:
    from ._sweep import SweepReport


class Alerting:
    """Retries failed alert transports; logs heartbeat verdict changes, alerting on ``down`` if asked."""

    def __init__(self, queue: Queue, log: ActionLog, verdicts: dict[str, str] | None = None) -> None:
        self.queue = queue
        self.log = log
        #: Last verdict logged per agent, kept in the sweep state so one-shot runs log a change once.
        self.verdicts: dict[str, str] = dict(verdicts or {})

    def run(self, report: SweepReport) -> None:
        self.watch_heartbeats(report)
        for alert_id in pending_alerts(self.queue):
            before = _field(self.queue, alert_id, "transports")
            states = deliver(self.queue, alert_id, due_only=True)
            if not states:
                continue  # another deliverer holds it, its back-off has not passed, or it was an orphan
            report.repairs["alert-delivery"] += 1
            errors = _field(self.queue, alert_id, "errors") if "failed" in states.values() else {}
            for transport, state in sorted(states.items()):
                if before.get(transport) != state or state == "failed":  # one line per attempt, none for old news
                    self.log.action(
                        "alert",
                        id=alert_id,
                        transport=transport,
                        outcome=state,
                        reason=errors.get(transport, "") if state == "failed" else "",
                    )

    def watch_heartbeats(self, report: SweepReport) -> None:
        seen: dict[str, str] = {}
        for info in list_agents(self.queue):
            seen[info.agent] = info.verdict
            report.agents[info.verdict] += 1
            previous = self.verdicts.get(info.agent)
            if previous == info.verdict or (previous is None and info.verdict == "ok"):
                continue
            self.log.action(
                "heartbeat",
                agent=info.agent,
                pid=info.pid,
                host=info.host,
                verdict=info.verdict,
                reason=f"last beat {info.age:.0f}s ago (every {info.interval:.0f}s), state {info.state}",
            )
            if info.verdict == "down" and self.queue.config.alerts.heartbeat_down:
                alert_id = f"down-{info.agent}-{int(info.at * 1_000_000)}"  # one alert per down episode
                if create_alert(
                    self.queue,
                    alert_id,
                    kind="heartbeat-down",
                    text=f"fsqueue agent {info.agent} is down: last heartbeat {info.age:.0f}s ago",
                    fields={"agent": info.agent, "last_beat": info.at, "root": self.queue.root},
                ):
                    report.repairs["alert-created"] += 1
        self.verdicts = seen


def _field(queue: Queue, alert_id: str, key: str) -> dict[str, str]:
    """One mapping field of a pending alert record ({} once it is sent, gone, or unreadable)."""
    try:
        data = json.loads(read_nofollow(os.path.join(queue.layout.sub("alerts"), f"{alert_id}.json"))[0])
    except (OSError, ValueError):
        return {}
    value = data.get(key) if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
