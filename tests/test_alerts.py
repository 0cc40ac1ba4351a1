"""Alert delivery (P8): each transport at most once per alert, failed ones retried by the watchdog.

Transports are real: a shell command that counts its invocations in a file, an HTTP server on 127.0.0.1,
a sendmail stand-in that records its stdin. Heartbeat-down alerts are one per down episode, however many
sweeps (or one-shot watchdog processes) see the agent down.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

import fsqueue._alerts as alerts
from fsqueue import Config, ConfigError, ManualClock, Queue, load_config
from fsqueue._alerts import alert_lock
from fsqueue._config import Alerts, Rule
from fsqueue._guard import guarded
from fsqueue_watchdog import ActionLog, Sweeper, WatchdogSettings

WAIT = 60.0  # upper bound on any single wait for a real process or event
HOUR = 3600.0
REASON = "agent a produced more than 1 outputs in 1h (rule for 'a')"


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a config file (JSON is YAML) and return its path."""
    path.write_text(json.dumps(data))
    return path


def counting_command(counter: Path, *, fail_first: Path | None = None, then: str = "") -> str:
    """A command appending "ID TYPE AGENT" per call to ``counter``; exits 1 on the first call if asked."""
    line = f'printf "%s %s %s\\n" "$FSQUEUE_ALERT_ID" "$FSQUEUE_ALERT_TYPE" "$FSQUEUE_ALERT_AGENT" >>{_q(counter)}'
    if fail_first is not None:
        line += f"; if [ ! -e {_q(fail_first)} ]; then : >{_q(fail_first)}; echo 'relay down' >&2; exit 1; fi"
    return line + (f"; {then}" if then else "")


def _q(path: Path) -> str:
    return shlex.quote(str(path))


def counter_lines(counter: Path) -> list[str]:
    return counter.read_text().splitlines() if counter.exists() else []


def cli_env(root: Path, config: Path) -> dict[str, str]:
    return dict(os.environ, FSQUEUE_ROOT=str(root), FSQUEUE_CONFIG=str(config))


def run(root: Path, config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ARGV`` (fsqueue or fsqueue_watchdog) in a real process against ``root``."""
    return subprocess.run(
        [sys.executable, "-m", *argv],
        env=cli_env(root, config),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def pending(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((root / "alerts").glob("*.json"))]


def sent(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((root / "alerts" / "sent").glob("*.json"))]


def halt_id(root: Path) -> str:
    return str(json.loads((root / "halt.json").read_text())["id"])


def json_log() -> ActionLog:
    return ActionLog("json", io.StringIO())


def actions(log: ActionLog, kind: str) -> list[dict[str, Any]]:
    assert isinstance(log.stream, io.StringIO)
    lines = [json.loads(line) for line in log.stream.getvalue().splitlines()]
    return [line for line in lines if line["action"] == kind]


def sweeper(queue: Queue, log: ActionLog) -> Sweeper:
    return Sweeper(queue, WatchdogSettings(), log)


def breaker_queue(root: Path, clock: ManualClock, alerts_config: Alerts) -> Queue:
    """A queue whose agent "a" trips the breaker on its second output within an hour."""
    return Queue(root, create=True, clock=clock, config=Config(rules=(Rule("a", 1, HOUR),), alerts=alerts_config))


# -- retries of a failed transport --------------------------------------------------------------------------


def test_failed_command_is_retried_by_the_watchdog_and_sent_once(tmp_path: Path) -> None:
    """A command failing at the trip leaves the alert pending; `fsqueue-watchdog --once` sends it, once."""
    root, counter, state = tmp_path / "queue", tmp_path / "calls.log", tmp_path / "failed-once"
    config = write_config(
        tmp_path / "c.yaml",
        {
            "breaker": {"rules": [{"agent": "a", "max_outputs": 1, "window": "1h"}]},
            "alerts": {"command": counting_command(counter, fail_first=state)},
            "watchdog": {"log_format": "json"},
        },
    )
    Queue(root, create=True)
    tripped = run(root, config, "fsqueue", "output", "a", "--count", "2")
    assert tripped.returncode == 4 and tripped.stderr.startswith("fsqueue: pipeline halted since ")
    assert tripped.stderr.endswith(f": {REASON}\n") and len(tripped.stderr.splitlines()) == 1
    alert_id = f"halt-{halt_id(root)}"
    (record,) = pending(root)
    assert (record["id"], record["type"], record["transports"]) == (alert_id, "halt", {"command": "failed"})
    assert record["errors"]["command"] == "alert command exited 1: relay down"
    assert counter_lines(counter) == [f"{alert_id} halt a"]

    swept = run(root, config, "fsqueue_watchdog", "--once")
    assert swept.returncode == 0, swept.stderr
    logged = [json.loads(line) for line in swept.stderr.splitlines()]
    assert [(x["action"], x["id"], x["transport"], x["outcome"]) for x in logged if x["action"] == "alert"] == [
        ("alert", alert_id, "command", "sent")
    ]
    assert counter_lines(counter) == [f"{alert_id} halt a"] * 2
    assert pending(root) == [] and [r["transports"] for r in sent(root)] == [{"command": "sent"}]

    again = run(root, config, "fsqueue_watchdog", "--once")
    assert again.returncode == 0 and '"alert"' not in again.stderr
    assert len(counter_lines(counter)) == 2


def test_transport_left_sending_is_marked_unknown_never_retried(
    tmp_path: Path, root: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transport a dead deliverer left "sending" becomes "unknown" and is not resent; a failed one is retried."""
    counter, mail_calls = tmp_path / "calls.log", tmp_path / "mail.log"
    mail = tmp_path / "sendmail"
    mail.write_text(f"#!/bin/sh\necho call >>{_q(mail_calls)}\n[ -e {_q(tmp_path / 'once')} ] || exit 75\n")
    mail.chmod(0o755)
    monkeypatch.setattr(alerts, "SENDMAIL", str(mail))
    queue = breaker_queue(root, clock, Alerts(command=counting_command(counter), sendmail="ops@example.com"))
    assert queue.record_output("a", 2) is not None
    (record,) = pending(root)
    assert record["transports"] == {"command": "sent", "sendmail": "failed"}
    assert record["errors"]["sendmail"] == "sendmail exited 75"
    # The deliverer died after marking the command "sending": it may or may not have gone out.
    record["transports"]["command"] = "sending"
    (root / "alerts" / f"{record['id']}.json").write_text(json.dumps(record))
    (tmp_path / "once").touch()

    log = json_log()
    watchdog = sweeper(queue, log)
    watchdog.sweep()
    assert len(counter_lines(counter)) == 1 and len(counter_lines(mail_calls)) == 2
    assert [r["transports"] for r in sent(root)] == [{"command": "unknown", "sendmail": "sent"}]
    assert sorted((x["transport"], x["outcome"]) for x in actions(log, "alert")) == [
        ("command", "unknown"),
        ("sendmail", "sent"),
    ]
    watchdog.sweep()
    assert len(counter_lines(counter)) == 1 and len(counter_lines(mail_calls)) == 2
    assert len(actions(log, "alert")) == 2


def test_deliverer_killed_mid_send_is_never_resent(tmp_path: Path) -> None:
    """An alert command that kills its deliverer (-9) mid-send: the watchdog never runs it again."""
    root, counter = tmp_path / "queue", tmp_path / "calls.log"
    config = write_config(
        tmp_path / "c.yaml",
        {
            "breaker": {"rules": [{"agent": "a", "max_outputs": 1, "window": "1h"}]},
            "alerts": {"command": counting_command(counter, then="kill -9 $PPID")},
        },
    )
    Queue(root, create=True)
    tripped = run(root, config, "fsqueue", "output", "a", "--count", "2")
    assert tripped.returncode == -9
    (record,) = pending(root)
    assert record["transports"] == {"command": "sending"}
    for _ in range(2):
        swept = run(root, config, "fsqueue_watchdog", "--once")
        assert swept.returncode == 0, swept.stderr  # had it resent, the command would have killed it too
    assert len(counter_lines(counter)) == 1
    assert pending(root) == [] and [r["id"] for r in sent(root)] == [record["id"]]


def test_lone_transport_left_sending_is_recorded_unknown(tmp_path: Path, root: Path, clock: ManualClock) -> None:
    """A lone transport left "sending" ends in alerts/sent/ recorded "unknown", as the watchdog logged it."""
    counter = tmp_path / "calls.log"
    queue = breaker_queue(root, clock, Alerts(command=counting_command(counter, fail_first=tmp_path / "once")))
    assert queue.record_output("a", 2) is not None
    (record,) = pending(root)
    record["transports"]["command"] = "sending"
    (root / "alerts" / f"{record['id']}.json").write_text(json.dumps(record))
    log = json_log()
    sweeper(queue, log).sweep()
    assert len(counter_lines(counter)) == 1
    assert [(x["transport"], x["outcome"]) for x in actions(log, "alert")] == [("command", "unknown")]
    assert [r["transports"] for r in sent(root)] == [{"command": "unknown"}]


def test_halt_whose_creator_died_before_delivery_is_sent_by_the_watchdog(
    tmp_path: Path, root: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process that halted died before delivering: the next sweep sends the alert, once."""
    counter = tmp_path / "calls.log"
    queue = breaker_queue(root, clock, Alerts(command=counting_command(counter)))
    monkeypatch.setattr(alerts, "deliver", lambda store, alert_id: None)  # the creator dies right after the halt
    halt = queue.record_output("a", 2)
    assert halt is not None
    monkeypatch.undo()
    (record,) = pending(root)
    assert (record["id"], record["transports"]) == (f"halt-{halt.id}", {"command": "pending"})
    watchdog = sweeper(queue, json_log())
    watchdog.sweep()
    watchdog.sweep()
    assert counter_lines(counter) == [f"halt-{halt.id} halt a"]
    assert pending(root) == [] and [r["transports"] for r in sent(root)] == [{"command": "sent"}]


def test_alert_of_a_process_that_lost_the_halt_race_is_dropped_unsent(
    tmp_path: Path, root: Path, clock: ManualClock
) -> None:
    """A loser's alert left behind is never sent: skipped while its creator holds it, then deleted."""
    counter = tmp_path / "calls.log"
    queue = breaker_queue(root, clock, Alerts(command=counting_command(counter)))
    assert queue.record_output("a", 2) is not None
    watchdog = sweeper(queue, json_log())
    watchdog.sweep()  # the start-up sweep (its repair pass) is out of the way
    (winner,) = sent(root)
    loser = dict(winner, id="halt-0123456789abcdef", transports={"command": "pending"})
    loser["fields"] = dict(winner["fields"], halt_id="0123456789abcdef")
    path = root / "alerts" / f"{loser['id']}.json"
    path.write_text(json.dumps(loser))
    with guarded(alert_lock(queue, loser["id"])):  # its creator is still between alert and halt
        watchdog.sweep()
        assert path.exists()
    watchdog.sweep()
    assert not path.exists() and [r["id"] for r in sent(root)] == [winner["id"]]
    assert len(counter_lines(counter)) == 1


def test_without_transports_the_breaker_halts_and_writes_no_alert(root: Path, clock: ManualClock) -> None:
    """No alert transport configured: the trip still halts, and no alert record is written."""
    queue = breaker_queue(root, clock, Alerts())
    assert queue.record_output("a", 2) is not None and queue.halted() is not None
    assert os.listdir(root / "alerts") == []


# -- webhook and sendmail ----------------------------------------------------------------------------------


class Hook:
    """An HTTP server on 127.0.0.1 recording each POST and answering the given status codes in turn."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.posts.append((self.path, dict(self.headers.items()), body))
                self.send_response(hook.codes.pop(0) if hook.codes else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/fsqueue"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT)


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[list[int]], Hook]]:
    """Start webhook servers on 127.0.0.1 (no proxy in between); all are shut down at the end."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    started: list[Hook] = []

    def start(codes: list[int]) -> Hook:
        started.append(Hook(codes))
        return started[-1]

    yield start
    for server in started:
        server.close()


def test_webhook_posts_json_and_a_500_is_retried_once(
    root: Path, clock: ManualClock, hook: Callable[[list[int]], Hook]
) -> None:
    """The webhook gets a JSON POST whose "text" names the reason; after a 500 the next sweep delivers it once."""
    server = hook([500])
    queue = breaker_queue(root, clock, Alerts(webhook=server.url))
    halt = queue.record_output("a", 2)
    assert halt is not None
    (record,) = pending(root)
    assert record["transports"] == {"webhook": "failed"}
    assert record["errors"]["webhook"] == "webhook answered HTTP 500"
    ((path, headers, body),) = server.posts
    assert path == "/hooks/fsqueue" and headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert payload["text"] == f"fsqueue pipeline halted: {REASON}"
    assert payload["fsqueue"]["halt_id"] == halt.id and payload["fsqueue"]["reason"] == REASON

    log = json_log()
    watchdog = sweeper(queue, log)
    watchdog.sweep()
    assert len(server.posts) == 2 and json.loads(server.posts[1][2]) == payload
    assert pending(root) == [] and [r["transports"] for r in sent(root)] == [{"webhook": "sent"}]
    watchdog.sweep()
    sweeper(queue, log).sweep()
    assert len(server.posts) == 2
    assert [(x["transport"], x["outcome"]) for x in actions(log, "alert")] == [("webhook", "sent")]


def test_webhook_answering_garbage_fails_the_transport_for_a_retry(root: Path, clock: ManualClock) -> None:
    """A webhook URL that reaches a non-HTTP service marks the transport failed (retried later); it does not crash."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(WAIT)
    port = listener.getsockname()[1]

    def answer_like_smtp() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"220 mail.example.com ESMTP ready\r\n")
            conn.recv(65536)

    thread = threading.Thread(target=answer_like_smtp, daemon=True)
    thread.start()
    try:
        queue = breaker_queue(root, clock, Alerts(webhook=f"http://127.0.0.1:{port}/hook"))
        try:
            assert queue.record_output("a", 2) is not None
        finally:
            assert queue.halted() is not None
        (record,) = pending(root)
        assert record["transports"] == {"webhook": "failed"}
    finally:
        thread.join(WAIT)
        listener.close()


def test_sendmail_gets_to_and_subject(
    tmp_path: Path, root: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sendmail -t -oi is fed a message with To: the configured recipient and Subject: the alert text."""
    message, args = tmp_path / "message.txt", tmp_path / "args.txt"
    mail = tmp_path / "sendmail"
    mail.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >{_q(args)}\ncat >{_q(message)}\n')
    mail.chmod(0o755)
    monkeypatch.setattr(alerts, "SENDMAIL", str(mail))
    queue = breaker_queue(root, clock, Alerts(sendmail="ops@example.com"))
    assert queue.record_output("a", 2) is not None
    assert args.read_text() == "-t -oi\n"
    head, _, rest = message.read_text().partition("\n\n")
    assert head.splitlines() == ["To: ops@example.com", f"Subject: fsqueue pipeline halted: {REASON}"]
    assert REASON in rest
    assert [r["transports"] for r in sent(root)] == [{"sendmail": "sent"}]


# -- heartbeat-down alerts -----------------------------------------------------------------------------------

MIN = 60.0


def heartbeat_queue(root: Path, clock: ManualClock, counter: Path, *, down_alerts: bool) -> Queue:
    """Beats every minute, late after 1 min, down after 3 min; a counting alert command."""
    config = Config(
        heartbeat_interval=MIN,
        heartbeat_grace=0.0,
        heartbeat_down_after=3,
        alerts=Alerts(command=counting_command(counter), heartbeat_down=down_alerts),
    )
    return Queue(root, create=True, clock=clock, config=config)


def sweep_for(queue: Queue, log: ActionLog, clock: ManualClock, seconds: float, *, fresh: bool) -> Sweeper | None:
    """Sweep every 30 s for ``seconds`` (a new one-shot Sweeper each time if ``fresh``); "steady" beats."""
    keep = None if fresh else sweeper(queue, log)
    for _ in range(int(seconds // 30)):
        clock.advance(30.0)
        queue.beat("steady", interval=MIN)
        (keep or sweeper(queue, log)).sweep()
    return keep


@pytest.mark.parametrize("fresh", [False, True], ids=["daemon", "one-shot"])
def test_heartbeat_down_alerts_once_per_episode(tmp_path: Path, root: Path, clock: ManualClock, fresh: bool) -> None:
    """An agent going down alerts once however many sweeps see it; down again after a beat alerts again."""
    counter = tmp_path / "calls.log"
    queue = heartbeat_queue(root, clock, counter, down_alerts=True)
    log = json_log()
    queue.beat("scraper", interval=MIN)
    sweep_for(queue, log, clock, 30 * MIN, fresh=fresh)
    assert len(counter_lines(counter)) == 1
    queue.beat("scraper", interval=MIN)
    sweep_for(queue, log, clock, 30 * MIN, fresh=fresh)
    calls = counter_lines(counter)
    assert len(calls) == 2 and len(set(calls)) == 2
    assert all(call.split()[1:] == ["heartbeat-down", "scraper"] for call in calls)
    assert [r["transports"] for r in sent(root)] == [{"command": "sent"}] * 2 and pending(root) == []
    verdicts = [(x["agent"], x["verdict"]) for x in actions(log, "heartbeat")]
    assert verdicts == [("scraper", v) for v in ("late", "down", "ok", "late", "down")]
    assert [x["outcome"] for x in actions(log, "alert")] == ["sent", "sent"]


def test_heartbeat_down_without_the_option_logs_but_never_alerts(
    tmp_path: Path, root: Path, clock: ManualClock
) -> None:
    """With alerts.heartbeat_down false (the default) verdict changes are logged and no alert is made."""
    assert Alerts().heartbeat_down is False
    counter = tmp_path / "calls.log"
    queue = heartbeat_queue(root, clock, counter, down_alerts=False)
    log = json_log()
    queue.beat("scraper", interval=MIN)
    sweep_for(queue, log, clock, 30 * MIN, fresh=False)
    assert [x["verdict"] for x in actions(log, "heartbeat")] == ["late", "down"]
    assert counter_lines(counter) == [] and os.listdir(root / "alerts") == []


def test_nothing_is_logged_while_every_agent_stays_ok(tmp_path: Path, root: Path, clock: ManualClock) -> None:
    """Agents beating on time across many sweeps produce no watchdog log line at all."""
    queue = heartbeat_queue(root, clock, tmp_path / "calls.log", down_alerts=True)
    log = json_log()
    watchdog = sweeper(queue, log)
    for _ in range(60):
        for agent in ("scraper", "poster"):
            queue.beat(agent, interval=MIN)
        clock.advance(30.0)
        report = watchdog.sweep()
        assert report.agents == {"ok": 2}
    assert log.lines == 0


def test_one_shot_watchdog_processes_alert_once_per_down_episode(tmp_path: Path) -> None:
    """`fsqueue-watchdog --once` runs (cron) see an agent down: one alert and one log line per change."""
    root, counter = tmp_path / "queue", tmp_path / "calls.log"
    config = write_config(
        tmp_path / "c.yaml",
        {
            "heartbeats": {"interval": "1m", "grace": 0, "down_after": 3},
            "alerts": {"command": counting_command(counter), "heartbeat_down": True},
            "watchdog": {"log_format": "json"},
        },
    )
    queue = Queue(root, create=True, config=load_config(str(config)))
    then = ManualClock(time.time() - HOUR)
    past = Queue(root, clock=then, config=queue.config)
    logged: list[dict[str, Any]] = []

    def once() -> None:
        swept = run(root, config, "fsqueue_watchdog", "--once")
        assert swept.returncode == 0, swept.stderr
        logged.extend(json.loads(line) for line in swept.stderr.splitlines())

    for beat in (past, queue, past):  # down, back to ok, down again: two episodes
        then.advance(1.0)
        beat.beat("scraper", interval=MIN)
        for _ in range(3):
            once()
    assert [x["verdict"] for x in logged if x["action"] == "heartbeat"] == ["down", "ok", "down"]
    assert len(counter_lines(counter)) == 2
    assert [x["outcome"] for x in logged if x["action"] == "alert"] == ["sent"] * 2


# -- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"pager": "on-call"}, "unknown key 'alerts.pager'"),
        ({"webhook": "ftp://hooks.example.com/x"}, "alerts.webhook must be an http:// or https:// URL"),
        ({"webhook": "hooks.example.com/x"}, "alerts.webhook must be an http:// or https:// URL"),
        ({"webhook": 8080}, "alerts.webhook must be a non-empty string"),
        ({"command": ""}, "alerts.command must be a non-empty string"),
        ({"command": ["notify", "ops"]}, "alerts.command must be a non-empty string"),
        ({"sendmail": "  "}, "alerts.sendmail must be a non-empty string"),
        ({"heartbeat_down": "yes"}, "alerts.heartbeat_down must be true or false"),
        ("email me", "alerts must be a mapping"),
    ],
)
def test_bad_alerts_section_is_refused_naming_the_key(tmp_path: Path, section: object, named: str) -> None:
    """A bad `alerts:` section is refused with a ConfigError naming the file and the key."""
    path = write_config(tmp_path / "c.yaml", {"alerts": section})
    with pytest.raises(ConfigError, match=r"c\.yaml") as caught:
        load_config(str(path))
    assert named in str(caught.value)


def test_good_alerts_section_is_read(tmp_path: Path) -> None:
    """Every alerts key is read as given; an empty section configures no transport."""
    data = {
        "command": "notify",
        "webhook": "https://h.example/x",
        "sendmail": "ops@example.com",
        "heartbeat_down": True,
    }
    path = write_config(tmp_path / "c.yaml", {"alerts": data})
    assert load_config(str(path)).alerts == Alerts("notify", "https://h.example/x", "ops@example.com", True)
    empty = load_config(str(write_config(tmp_path / "e.yaml", {"alerts": {}}))).alerts
    assert empty == Alerts() and not empty.configured


def test_watchdog_refuses_a_bad_alerts_section_in_one_line(tmp_path: Path) -> None:
    """`fsqueue-watchdog --once` with an unknown alerts key exits 1 with one line naming it."""
    root = tmp_path / "queue"
    Queue(root, create=True)
    config = write_config(tmp_path / "c.yaml", {"alerts": {"pager": "x"}})
    got = run(root, config, "fsqueue_watchdog", "--once")
    assert got.returncode == 1 and len(got.stderr.splitlines()) == 1
    assert "unknown key 'alerts.pager'" in got.stderr
