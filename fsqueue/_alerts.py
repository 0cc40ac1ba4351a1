"""Alert delivery: a shell command, an HTTP webhook, sendmail -- each transport at most once per alert.

An alert is a record ``alerts/<id>.json`` with a state per transport. Delivery runs under the alert's
guard (non-blocking: a second deliverer simply skips), marks a transport ``sending`` *before* trying
it, then ``sent`` or ``failed``. A ``failed`` transport is retried later (by the watchdog); one left
``sending`` by a deliverer that died mid-send is never retried, because it may have gone out: an
alert is sent at most once per transport, and at least once unless its sender dies mid-send. A fully
delivered alert moves to ``alerts/sent/``.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import urllib.error
import urllib.request

from ._fsio import make_dir, publish_new, publish_replace, read_nofollow
from ._guard import guarded

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._store import Store

TIMEOUT = 30.0
SENDMAIL = "/usr/sbin/sendmail"


def _path(store: Store, alert_id: str) -> str:
    return os.path.join(store.layout.sub("alerts"), f"{alert_id}.json")


def create_alert(store: Store, alert_id: str, *, kind: str, text: str, fields: dict[str, Any]) -> bool:
    """Write a pending alert; False if one with this id already exists (or was already sent)."""
    alerts = store.config.alerts
    transports = {
        name: "pending"
        for name, on in (("command", alerts.command), ("webhook", alerts.webhook), ("sendmail", alerts.sendmail))
        if on
    }
    if not transports or os.path.lexists(os.path.join(store.layout.sub("alerts"), "sent", f"{alert_id}.json")):
        return False
    record = {
        "format": "fsqueue/1",
        "kind": "alert",
        "id": alert_id,
        "type": kind,
        "at": store.clock.now(),
        "text": text,
        "fields": fields,
        "transports": transports,
        "errors": {},
    }
    try:
        publish_new(store.layout.staging, json.dumps(record).encode(), _path(store, alert_id), durable=store.durable)
    except FileExistsError:
        return False
    return True


def pending_alerts(store: Store) -> list[str]:
    """Ids of alerts not fully delivered yet."""
    try:
        names = os.listdir(store.layout.sub("alerts"))
    except FileNotFoundError:
        return []
    return sorted(n[: -len(".json")] for n in names if n.endswith(".json"))


def alert_lock(store: Store, alert_id: str) -> str:
    """The alert's own flock file: never a task guard shard, so slow transports never block a task."""
    return os.path.join(store.layout.staging, f"alert-{alert_id}.lock")


def deliver(store: Store, alert_id: str, *, due_only: bool = False) -> dict[str, str] | None:
    """Try every transport not yet sent; returns their states, or None if another deliverer is busy.

    ``due_only`` (the watchdog's retries) skips an alert whose back-off after a failure has not passed.
    """
    with guarded(alert_lock(store, alert_id), blocking=False) as held:
        if not held:
            return None
        path = _path(store, alert_id)
        try:
            data, _ = read_nofollow(path)
            record = json.loads(data)
            states: dict[str, str] = dict(record["transports"])
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable: leave it for a human (fsqueue status shows it)
        if record.get("type") == "halt" and _orphan(store, record):
            os.unlink(path)  # its process lost the race to halt (or died before): no halt, no alert
            return {}
        if due_only and float(record.get("next_try", 0)) > store.clock.now():
            return None
        for name, state in list(states.items()):
            if state == "sending":
                states[name] = "unknown"  # its deliverer died mid-send: it may have gone out; never resend
                _save(store, path, record, states)
            if states[name] not in ("pending", "failed"):
                continue
            states[name] = "sending"
            _save(store, path, record, states)
            error = _send(name, store, record)
            states[name] = "sent" if error is None else "failed"
            if error is not None:
                record.setdefault("errors", {})[name] = error
                failures = int(record.get("failures", 0)) + 1
                record["failures"] = failures
                # The next sweep retries at once; later failures back off (30 s, 60 s, ... up to an hour).
                delay = 0.0 if failures == 1 else min(3600.0, 30.0 * 2 ** (failures - 2))
                record["next_try"] = store.clock.now() + delay
            _save(store, path, record, states)
        if all(state in ("sent", "unknown") for state in states.values()):
            sent_dir = os.path.join(store.layout.sub("alerts"), "sent")
            try:
                make_dir(sent_dir)
            except FileExistsError:
                pass
            os.replace(path, os.path.join(sent_dir, f"{alert_id}.json"))
            try:
                os.unlink(alert_lock(store, alert_id))  # a later deliverer finds no record and stops
            except OSError:
                pass
        return states


def _orphan(store: Store, record: dict[str, Any]) -> bool:
    halt_id = record.get("fields", {}).get("halt_id")
    from ._breaker import read_halt

    current = read_halt(store)
    if current is not None and current.id in (halt_id, "unreadable"):  # cannot prove an orphan: keep it
        return False
    breaker = store.layout.sub("breaker")
    return not any(n.startswith(f"halt-{halt_id}-") for n in os.listdir(breaker))


def _save(store: Store, path: str, record: dict[str, Any], states: dict[str, str]) -> None:
    record["transports"] = dict(states)
    # Durable: a "sending" mark that a crash lost would let the transport be tried twice.
    publish_replace(store.layout.staging, json.dumps(record).encode(), path, durable=True)


def _send(transport: str, store: Store, record: dict[str, Any]) -> str | None:
    """Send through one transport; None on success, else a one-line error."""
    alerts = store.config.alerts
    try:
        if transport == "command" and alerts.command:
            return _run_command(alerts.command, record)
        if transport == "webhook" and alerts.webhook:
            return _post(alerts.webhook, record)
        if transport == "sendmail" and alerts.sendmail:
            return _mail(alerts.sendmail, record)
    except (OSError, subprocess.SubprocessError, ValueError, http.client.HTTPException) as exc:
        # Anything a transport raises must end as "failed" (retried), never leave it "sending".
        return f"{type(exc).__name__}: {exc}"
    return f"transport {transport} is no longer configured"


def _env(record: dict[str, Any]) -> dict[str, str]:
    fields = {f"FSQUEUE_ALERT_{k.upper()}": str(v) for k, v in record.get("fields", {}).items()}
    return dict(
        os.environ,
        FSQUEUE_ALERT_ID=record["id"],
        FSQUEUE_ALERT_TYPE=record["type"],
        FSQUEUE_ALERT_TEXT=record["text"],
        FSQUEUE_ALERT_AT=str(record["at"]),
        **fields,
    )


def _run_command(command: str, record: dict[str, Any]) -> str | None:
    proc = subprocess.run(
        ["/bin/sh", "-c", command],
        env=_env(record),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    if proc.returncode == 0:
        return None
    return f"alert command exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[-300:]}"


def _post(url: str, record: dict[str, Any]) -> str | None:
    # "text" for Slack-style hooks, "content" for Discord; the fields for everything else.
    body = json.dumps({"text": record["text"], "content": record["text"], "fsqueue": record["fields"]}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})  # noqa: S310  # scheme checked in config
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310  # scheme checked in config
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"webhook answered HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return f"webhook unreachable: {exc.reason}"
    return None if 200 <= status < 300 else f"webhook answered HTTP {status}"


def _mail(recipient: str, record: dict[str, Any]) -> str | None:
    message = (
        f"To: {recipient}\nSubject: {record['text'][:120]}\n\n{record['text']}\n\n{json.dumps(record['fields'])}\n"
    )
    proc = subprocess.run(
        [SENDMAIL, "-t", "-oi"], input=message.encode(), capture_output=True, timeout=TIMEOUT, check=False
    )
    return None if proc.returncode == 0 else f"sendmail exited {proc.returncode}"
