"""The circuit breaker (P8): more than N outputs in a window halts every claim and enqueue, with one alert.

Counting is shared by real one-shot processes through ``breaker/<md5(agent)>.window``; tripping publishes
``halt.json`` with ``link()``, so however many processes cross the limit at once, one halts and alerts.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import fsqueue._breaker as breaker
from fsqueue import Config, ConfigError, ManualClock, Queue, load_config
from fsqueue._config import Alerts, Rule
from fsqueue._errors import PipelineHalted

WAIT = 60.0  # upper bound on any single wait for a real process or event
HOUR = 3600.0
RACERS = 50
LIMIT = 10

# Waits at the start barrier, then becomes the real `fsqueue ...` process (same pid).
BARRIER_EXEC = """
import os, sys
os.write(int(sys.argv[1]), b"r")
os.close(int(sys.argv[1]))
os.read(int(sys.argv[2]), 1)  # returns at EOF, when the test closes the write end
os.close(int(sys.argv[2]))
os.execv(sys.argv[3], sys.argv[3:])
"""

# One agent output through the Python API: record_output, or an enqueue credited to the agent.
API_RACER = """
import os, sys
from fsqueue import Queue, load_config
from fsqueue._errors import PipelineHalted

root, config, ready, go, mode, agent = sys.argv[1:7]
queue = Queue(root, config=load_config(config))
os.write(int(ready), b"r")
os.close(int(ready))
os.read(int(go), 1)
if mode == "record":
    print("tripped" if queue.record_output(agent) is not None else "counted")
else:
    try:
        queue.enqueue({"by": os.getpid()}, agent=agent)
        print("enqueued")
    except PipelineHalted:
        print("refused")
"""

# A watchdog sweeping over and over (delivering pending alerts) until its stop pipe reaches EOF.
SWEEP_LOOP = """
import select, sys
from fsqueue import Queue, load_config
from fsqueue_watchdog import ActionLog, Sweeper, WatchdogSettings

root, config, stop = sys.argv[1], sys.argv[2], int(sys.argv[3])
sweeper = Sweeper(Queue(root, config=load_config(config)), WatchdogSettings(), ActionLog("json"), persist=False)
sweeps = 0
while not select.select([stop], [], [], 0.002)[0]:
    sweeper.sweep()
    sweeps += 1
print(sweeps)
"""

# A cron-style one-shot agent using the Python API: counts COUNT outputs, exits 4 if that tripped it.
API_ONE_SHOT = """
import sys
from fsqueue import Queue, load_config

root, config, agent, count = sys.argv[1:5]
sys.exit(4 if Queue(root, config=load_config(config)).record_output(agent, int(count)) else 0)
"""


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a config file (JSON is YAML) and return its path."""
    path.write_text(json.dumps(data))
    return path


def rule_section(agent: str, limit: int, window: str = "1h") -> dict[str, Any]:
    return {"rules": [{"agent": agent, "max_outputs": limit, "window": window}]}


def counting_command(counter: Path) -> str:
    """An alert command that appends one line (alert id, halt id) per invocation to ``counter``."""
    return f'printf "%s %s\\n" "$FSQUEUE_ALERT_ID" "$FSQUEUE_ALERT_HALT_ID" >>{shlex.quote(str(counter))}'


def cli_env(root: Path, config: Path | None) -> dict[str, str]:
    env = dict(os.environ, FSQUEUE_ROOT=str(root))
    env.pop("FSQUEUE_CONFIG", None)
    if config is not None:
        env["FSQUEUE_CONFIG"] = str(config)
    return env


def fsq(root: Path, config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``fsqueue ARGS`` in a real process against ``root``."""
    return subprocess.run(
        [sys.executable, "-m", "fsqueue", *args],
        env=cli_env(root, config),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def read_halt_file(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "halt.json").read_text())
    return data


def halt_files(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root) if n.startswith("halt"))


def window_stamps(root: Path) -> list[float]:
    """The stamps of the one window file under ``breaker/``."""
    (path,) = (root / "breaker").glob("*.window")
    return [float(t) for t in json.loads(path.read_text())["stamps"]]


def log_events(root: Path) -> list[dict[str, Any]]:
    path = root / "breaker" / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def counter_lines(counter: Path) -> list[str]:
    return counter.read_text().splitlines() if counter.exists() else []


def rule_queue(root: Path, clock: ManualClock, *rules: Rule, alerts: Alerts | None = None) -> Queue:
    return Queue(root, create=True, clock=clock, config=Config(rules=rules, alerts=alerts or Alerts()))


# -- fifty processes cross the limit at once ------------------------------------------------------------


def _wait_ready(fd: int, count: int, procs: list[subprocess.Popen[str]]) -> None:
    got = 0
    while got < count:
        readable, _, _ = select.select([fd], [], [], WAIT)
        data = os.read(fd, 4096) if readable else b""
        if not data:
            early = [p.args for p in procs if p.poll() is not None]
            raise AssertionError(f"{got}/{count} racers reached the start barrier; exited early: {early[:3]}")
        got += len(data)


def _racer_argv(n: int, root: Path, config: Path, barrier: list[str]) -> tuple[str, list[str]]:
    if n % 3 == 0:
        return "cli", [
            sys.executable,
            "-c",
            BARRIER_EXEC,
            *barrier,
            sys.executable,
            "-m",
            "fsqueue",
            "output",
            "poster",
        ]
    mode = "record" if n % 3 == 1 else "enqueue"
    return mode, [sys.executable, "-c", API_RACER, str(root), str(config), *barrier, mode, "poster"]


def race(root: Path, config: Path) -> tuple[list[tuple[str, int, int, str, str]], int]:
    """Start RACERS output processes and a sweeping watchdog, release them at once; return what each did."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    stop_r, stop_w = os.pipe()
    fds = [ready_r, ready_w, go_r, go_w, stop_r, stop_w]
    racers: list[tuple[str, subprocess.Popen[str]]] = []
    procs: list[subprocess.Popen[str]] = []
    env = cli_env(root, config)
    try:
        for n in range(RACERS):
            kind, argv = _racer_argv(n, root, config, [str(ready_w), str(go_r)])
            proc = subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=(ready_w, go_r)
            )
            racers.append((kind, proc))
            procs.append(proc)
        sweeper = subprocess.Popen(
            [sys.executable, "-c", SWEEP_LOOP, str(root), str(config), str(stop_r)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=(stop_r,),
        )
        procs.append(sweeper)
        os.close(ready_w)
        fds.remove(ready_w)
        _wait_ready(ready_r, RACERS, procs)
        os.close(go_w)  # every racer is past its imports and blocked on the pipe: release them together
        fds.remove(go_w)
        done = []
        for kind, proc in racers:
            out, err = proc.communicate(timeout=WAIT)
            done.append((kind, proc.pid, proc.returncode, out.strip(), err.strip()))
        os.close(stop_w)
        fds.remove(stop_w)
        out, err = sweeper.communicate(timeout=WAIT)
        assert sweeper.returncode == 0, err
        return done, int(out)
    finally:
        for fd in fds:
            os.close(fd)
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                proc.communicate()


def test_fifty_processes_over_the_limit_halt_once_alert_once_and_resume(tmp_path: Path) -> None:
    """50 processes crossing the limit at once: one halt, one alert sent, then exit 4 everywhere until resume."""
    root, counter = tmp_path / "queue", tmp_path / "alerts.log"
    config = write_config(
        tmp_path / "fsqueue.yaml",
        {"breaker": rule_section("poster", LIMIT), "alerts": {"command": counting_command(counter)}},
    )
    queue = Queue(root, create=True, config=load_config(str(config)))
    waiting = queue.enqueue({"job": "before the halt"})

    done, sweeps = race(root, config)

    assert halt_files(root) == ["halt.json"]
    halt = read_halt_file(root)
    assert halt["agent"] == "poster" and halt["rule"] == {"agent": "poster", "max_outputs": LIMIT, "window": HOUR}
    assert [e["event"] for e in log_events(root)] == ["halted"]
    # The one process that linked halt.json tripped it; a CLI output made once the pipeline is halted
    # (by the trip or after it) exits 4 with one line, so the agent stops producing.
    assert halt["pid"] in {pid for _, pid, _, _, _ in done}
    for kind, pid, code, out, err in done:
        winner = pid == halt["pid"]
        if kind == "cli":
            assert out == "" and code in ((4,) if winner else (0, 4)), (pid, err)
            if code == 4:
                assert err.startswith("fsqueue: pipeline halted since ") and halt["reason"] in err, err
                assert len(err.splitlines()) == 1
            else:
                assert err == ""
        else:
            assert (code, err) == (0, ""), (pid, err)
            if kind == "record":
                assert out == ("tripped" if winner else "counted")
            else:
                assert out in ({"enqueued"} if winner else {"enqueued", "refused"})
    # Exactly one alert-command invocation, for this halt, and its record was moved to alerts/sent/.
    alert_id = f"halt-{halt['id']}"
    assert counter_lines(counter) == [f"{alert_id} {halt['id']}"]
    assert sorted(os.listdir(root / "alerts")) == ["sent"]
    assert os.listdir(root / "alerts" / "sent") == [f"{alert_id}.json"]
    sent = json.loads((root / "alerts" / "sent" / f"{alert_id}.json").read_text())
    assert sent["transports"] == {"command": "sent"} and halt["reason"] in sent["text"]
    assert len(window_stamps(root)) == LIMIT + 1
    assert sweeps >= 1

    # Halted: every claim and enqueue is refused, naming the reason, through the CLI and the API.
    for args in (["claim", "--agent", "w"], ["enqueue", '{"x": 1}'], ["enqueue", "--agent", "poster", "{}"]):
        got = fsq(root, config, *args)
        assert got.returncode == 4, got
        assert got.stdout == "" and halt["reason"] in got.stderr and len(got.stderr.splitlines()) == 1
    api = Queue(root, config=load_config(str(config)))
    with pytest.raises(PipelineHalted, match=re.escape(halt["reason"])):
        api.claim("w")
    with pytest.raises(PipelineHalted, match=re.escape(halt["reason"])):
        api.enqueue({"x": 1}, agent="poster")
    run = fsq(root, config, "run", "--agent", "w", "--", "true")
    assert run.returncode == 4 and len(run.stderr.splitlines()) <= 1 and "halted" in run.stderr
    assert queue.task(waiting).state == "pending"

    resumed = fsq(root, config, "resume")
    assert resumed.returncode == 0 and resumed.stdout.startswith("resumed (was halted since ")
    assert halt_files(root) == [] and list((root / "breaker").glob("*.window")) == []
    claim = api.claim("w")
    assert claim is not None and claim.id == waiting
    assert api.record_output("poster") is None  # the windows were cleared: one output is one output
    assert window_stamps(root) == [pytest.approx(time.time(), abs=WAIT)]
    assert [(e["event"], e["halt"]) for e in log_events(root)] == [("halted", halt["id"]), ("resumed", halt["id"])]
    assert len(counter_lines(counter)) == 1


# -- counting across processes and windows ---------------------------------------------------------------


def one_shot(kind: str, root: Path, config: Path, agent: str, count: int) -> subprocess.CompletedProcess[str]:
    """A cron-style process that records ``count`` outputs of ``agent`` and exits."""
    if kind == "cli":
        return fsq(root, config, "output", agent, "--count", str(count))
    return subprocess.run(
        [sys.executable, "-c", API_ONE_SHOT, str(root), str(config), agent, str(count)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def test_one_shot_processes_share_the_count_and_trip_on_the_n_plus_first_output(tmp_path: Path, root: Path) -> None:
    """Short-lived processes adding a few outputs each: output N does not trip, output N+1 does."""
    config = write_config(tmp_path / "c.yaml", {"breaker": rule_section("cron-poster", 7)})
    Queue(root, create=True)
    for kind, count in (("cli", 3), ("api", 2), ("cli", 1), ("api", 1)):
        got = one_shot(kind, root, config, "cron-poster", count)
        assert (got.returncode, got.stderr) == (0, ""), got
        assert halt_files(root) == []
    assert len(window_stamps(root)) == 7
    got = one_shot("cli", root, config, "cron-poster", 1)
    assert got.returncode == 4
    assert got.stderr.startswith("fsqueue: pipeline halted since ")
    assert got.stderr.endswith(": agent cron-poster produced more than 7 outputs in 1h (rule for 'cron-poster')\n")
    assert read_halt_file(root)["agent"] == "cron-poster"


@pytest.mark.parametrize(("age", "trips"), [(59.0, True), (60.0, False), (600.0, False)])
def test_only_outputs_inside_the_window_count(root: Path, clock: ManualClock, age: float, trips: bool) -> None:
    """Outputs older than the window (60 s here) are not counted; younger ones are."""
    queue = rule_queue(root, clock, Rule("a", 3, 60.0))
    for _ in range(3):
        assert queue.record_output("a") is None
    clock.advance(age)
    assert (queue.record_output("a") is not None) is trips
    assert (queue.halted() is not None) is trips


def test_a_steady_rate_at_the_limit_never_trips(root: Path, clock: ManualClock) -> None:
    """Three outputs per minute every 20 s, for 100 outputs: the sliding window never holds more than 3."""
    queue = rule_queue(root, clock, Rule("a", 3, 60.0))
    for _ in range(100):
        assert queue.record_output("a") is None
        clock.advance(20.0)
    assert queue.halted() is None


def test_aged_window_file_stamps_do_not_count(tmp_path: Path, root: Path) -> None:
    """Stamps aged past the window in the shared file are dropped by the next process that counts."""
    config = write_config(tmp_path / "c.yaml", {"breaker": rule_section("a", 3)})
    Queue(root, create=True)
    assert one_shot("cli", root, config, "a", 3).returncode == 0
    (path,) = (root / "breaker").glob("*.window")
    record = json.loads(path.read_text())
    record["stamps"] = [t - 2 * HOUR for t in record["stamps"]]
    path.write_text(json.dumps(record))
    assert one_shot("api", root, config, "a", 1).returncode == 0
    assert len(window_stamps(root)) == 1 and halt_files(root) == []
    assert one_shot("cli", root, config, "a", 3).returncode == 4  # 1 + 3 > 3
    assert halt_files(root) == ["halt.json"]


def test_window_file_stays_bounded(root: Path, clock: ManualClock) -> None:
    """However many outputs are counted, the window file keeps at most max_outputs + 1 stamps."""
    queue = rule_queue(root, clock, Rule("a", 5, HOUR))
    for n in range(300):
        queue.record_output("a")
        clock.advance(1.0)
        assert len(window_stamps(root)) == min(n + 1, 6)
    queue.record_output("a", 10_000)
    assert len(window_stamps(root)) == 6
    assert next((root / "breaker").glob("*.window")).stat().st_size < 1024


def test_huge_output_count_trips_instead_of_crashing(tmp_path: Path, root: Path) -> None:
    """`fsqueue output A --count 10**12` trips the breaker like any count over the limit."""
    config = write_config(tmp_path / "c.yaml", {"breaker": rule_section("a", 5)})
    Queue(root, create=True)
    got = one_shot("cli", root, config, "a", 10**12)
    assert got.returncode == 4, got.stderr[-300:]
    assert len(window_stamps(root)) == 6


def test_the_agents_own_rule_wins_over_the_wildcard(root: Path, clock: ManualClock) -> None:
    """With rules for "*" (2) and "vip" (5), vip trips on its 6th output and anyone else on the 3rd."""
    queue = rule_queue(root, clock, Rule("*", 2, HOUR), Rule("vip", 5, HOUR))
    for _ in range(5):
        assert queue.record_output("vip") is None
    halt = queue.record_output("vip")
    assert halt is not None and halt.rule == Rule("vip", 5, HOUR)
    assert queue.resume() is not None
    assert queue.record_output("other", 2) is None
    halt = queue.record_output("other")
    assert halt is not None and halt.rule == Rule("*", 2, HOUR) and halt.agent == "other"
    assert halt.reason == "agent other produced more than 2 outputs in 1h (rule for '*')"


def test_without_a_rule_nothing_is_counted_or_written(tmp_path: Path, root: Path, clock: ManualClock) -> None:
    """An agent no rule covers is never counted: no window file, no halt, however many outputs."""
    queue = rule_queue(root, clock, Rule("a", 1, HOUR))
    for _ in range(50):
        assert queue.record_output("b") is None
    assert queue.enqueue({}, agent="b") and queue.halted() is None
    assert os.listdir(root / "breaker") == []
    bare = fsq(root, None, "output", "b", "--count", "1000")
    assert (bare.returncode, bare.stderr) == (0, "")
    assert os.listdir(root / "breaker") == [] and halt_files(root) == []


# -- completions are outputs ------------------------------------------------------------------------------


def test_claim_complete_counts_as_an_output_and_trips(root: Path, clock: ManualClock) -> None:
    """Each Claim.complete counts for the claiming agent; the completion over the limit halts the pipeline."""
    queue = rule_queue(root, clock, Rule("worker", 2, HOUR))
    for n in range(4):
        queue.enqueue({"n": n})
    for _ in range(2):
        claim = queue.claim("worker")
        assert claim is not None
        claim.complete("ok")
        assert queue.halted() is None
    claim = queue.claim("worker")
    assert claim is not None
    claim.complete("ok")  # the commit itself stands; what follows is refused
    halt = queue.halted()
    assert halt is not None and halt.agent == "worker"
    assert queue.task(claim.id).state == "done"
    with pytest.raises(PipelineHalted, match="agent worker produced more than 2 outputs"):
        queue.claim("worker")


def test_token_complete_credits_the_claiming_agent(tmp_path: Path, root: Path) -> None:
    """`fsqueue complete ID --token T` counts an output for the agent that claimed the task."""
    config = write_config(tmp_path / "c.yaml", {"breaker": rule_section("shell", 1)})
    queue = Queue(root, create=True)
    for n in range(3):
        queue.enqueue({"n": n})
    for halted_after in (False, True):
        claimed = json.loads(fsq(root, config, "claim", "--agent", "shell").stdout)
        done = fsq(root, config, "complete", claimed["id"], '"ok"', "--token", claimed["token"])
        assert done.returncode == 0, done.stderr
        assert (halt_files(root) == ["halt.json"]) is halted_after
    assert fsq(root, config, "claim", "--agent", "shell").returncode == 4
    assert read_halt_file(root)["agent"] == "shell"


def test_fsqueue_run_trips_the_breaker_and_exits_4(tmp_path: Path, root: Path) -> None:
    """`fsqueue run` completing one task too many halts; its next claim is refused with exit 4 and one line."""
    config = write_config(tmp_path / "c.yaml", {"breaker": rule_section("runner", 1)})
    queue = Queue(root, create=True)
    ids = [queue.enqueue({"n": n}) for n in range(3)]
    got = fsq(root, config, "run", "--agent", "runner", "--max-tasks", "3", "--", "true")
    assert got.returncode == 4, got.stderr
    assert len(got.stderr.splitlines()) == 1 and "produced more than 1 outputs" in got.stderr
    assert [queue.task(i).state for i in ids] == ["done", "done", "pending"]


# -- halting and resuming by hand -------------------------------------------------------------------------


def test_halt_status_resume_by_hand(tmp_path: Path, root: Path) -> None:
    """`fsqueue halt --reason` halts without an alert, `status` shows it, `resume` lifts it; both are logged."""
    counter = tmp_path / "alerts.log"
    config = write_config(tmp_path / "c.yaml", {"alerts": {"command": counting_command(counter)}})
    Queue(root, create=True)
    before = time.time()
    assert fsq(root, config, "halt", "--reason", "bad deploy").returncode == 0
    text = fsq(root, config, "status").stdout
    (line,) = [x for x in text.splitlines() if x.startswith("HALTED")]
    assert "halted by hand: bad deploy" in line and "`fsqueue resume`" in line
    halted = json.loads(fsq(root, config, "status", "--json").stdout)["halted"]
    assert (halted["reason"], halted["agent"]) == ("halted by hand: bad deploy", "")
    assert before <= halted["at"] <= time.time()
    refused = fsq(root, config, "enqueue", "{}")
    assert refused.returncode == 4 and "halted by hand: bad deploy" in refused.stderr
    again = fsq(root, config, "halt", "--reason", "twice")
    assert again.returncode == 0 and again.stdout.startswith("already halted since ")
    assert read_halt_file(root)["reason"] == "halted by hand: bad deploy"
    assert fsq(root, config, "resume").returncode == 0
    assert "HALTED" not in fsq(root, config, "status").stdout
    assert json.loads(fsq(root, config, "status", "--json").stdout)["halted"] is None
    assert fsq(root, config, "resume").stdout == "the pipeline was not halted\n"
    assert [e["event"] for e in log_events(root)] == ["halted", "resumed"]
    assert counter_lines(counter) == [] and os.listdir(root / "alerts") == []


def test_output_racing_resume_does_not_halt_again(tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An output being counted while `fsqueue resume` runs does not re-halt the pipeline it resumed."""
    config = write_config(tmp_path / "c.yaml", {"breaker": rule_section("poster", 2)})
    queue = Queue(root, create=True, config=load_config(str(config)))
    queue.record_output("poster", 3)
    assert queue.halted() is not None
    reached, go = threading.Event(), threading.Event()
    real_trip = breaker._publish_halt

    def paused_trip(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        assert go.wait(WAIT)
        return real_trip(*args, **kwargs)

    monkeypatch.setattr(breaker, "_publish_halt", paused_trip)
    counting = threading.Thread(target=queue.record_output, args=("poster",))
    counting.start()
    resume = subprocess.Popen([sys.executable, "-m", "fsqueue", "resume"], env=cli_env(root, config))
    try:
        assert reached.wait(WAIT)
        try:
            resume.wait(timeout=5)  # a resume that waits for the in-flight count is also correct
        except subprocess.TimeoutExpired:
            pass
    finally:
        go.set()
        counting.join(WAIT)
        assert resume.wait(WAIT) == 0
    assert queue.halted() is None


# -- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"rules": [{"agent": "a", "max_outputs": 0, "window": "1h"}]}, "breaker.rules[0].max_outputs"),
        ({"rules": [{"agent": "a", "max_outputs": "10", "window": "1h"}]}, "breaker.rules[0].max_outputs"),
        ({"rules": [{"agent": "a", "max_outputs": True, "window": "1h"}]}, "breaker.rules[0].max_outputs"),
        ({"rules": [{"agent": "a", "max_outputs": 5, "window": "1h"}, {"agent": "b"}]}, "breaker.rules[1]"),
        ({"rules": [{"agent": "a", "max_outputs": 5, "window": "soon"}]}, "breaker.rules[0].window"),
        ({"rules": [{"agent": "a", "max_outputs": 5, "window": 0}]}, "breaker.rules[0].window"),
        ({"rules": [{"agent": "a", "max_outputs": 5, "window": -60}]}, "breaker.rules[0].window"),
        ({"rules": [{"agent": "", "max_outputs": 5, "window": "1h"}]}, "breaker.rules[0].agent"),
        ({"rules": [{"agent": "a", "max_outputs": 5, "window": "1h", "per": "host"}]}, "'per'"),
        ({"rules": {"agent": "a"}}, "breaker.rules must be a list"),
        ({"limits": []}, "breaker must be a mapping with one key, rules"),
        (["a"], "breaker must be a mapping"),
    ],
)
def test_bad_breaker_section_is_refused_naming_the_key(tmp_path: Path, section: object, named: str) -> None:
    """A bad `breaker:` section is refused with a ConfigError naming the file and the key."""
    path = write_config(tmp_path / "c.yaml", {"breaker": section})
    with pytest.raises(ConfigError, match=r"c\.yaml") as caught:
        load_config(str(path))
    assert named in str(caught.value)


def test_bad_breaker_section_fails_the_cli_with_one_line(tmp_path: Path, root: Path) -> None:
    """The CLI refuses a bad rule before doing anything: exit 1 and one line naming the key."""
    path = write_config(tmp_path / "c.yaml", {"breaker": rule_section("a", -1)})
    Queue(root, create=True)
    got = fsq(root, path, "output", "a")
    assert got.returncode == 1 and len(got.stderr.splitlines()) == 1
    assert "breaker.rules[0].max_outputs must be an integer >= 1, got -1" in got.stderr
    assert os.listdir(root / "breaker") == []


def test_rule_windows_accept_durations(tmp_path: Path) -> None:
    """Rule windows take the same durations as every other setting: 90, '30s', '10m', '2h'."""
    rules = [{"agent": f"a{n}", "max_outputs": 1, "window": w} for n, w in enumerate([90, "30s", "10m", "2h"])]
    config = load_config(str(write_config(tmp_path / "c.yaml", {"breaker": {"rules": rules}})))
    assert [r.window for r in config.rules] == [90.0, 30.0, 600.0, 7200.0]
    assert config.rule_for("a2") == Rule("a2", 1, 600.0) and config.rule_for("zzz") is None
