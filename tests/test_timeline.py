"""One timeline for "what happened at 3 a.m.": breaker halts and degraded-mode switches reach the spool.

The events are collected by the watchdog's sweep (its spool pass) as well as by `fsqueue spool collect`;
the sweep can also run the steward's step for small installations.
"""

from __future__ import annotations

import io
from pathlib import Path

from fsqueue import Config, ManualClock, Queue, Rule, SharedState
from fsqueue._collect import collect
from fsqueue._export import read_archived
from fsqueue._steward import hold_steward_lock
from fsqueue_watchdog._log import ActionLog
from fsqueue_watchdog._settings import WatchdogSettings
from fsqueue_watchdog._sweep import Sweeper


def _events(root: Path) -> list[tuple[str, str, dict[str, object]]]:
    return [(obj["agent"], obj["event"], obj["fields"]) for _, obj in read_archived(root)]


def test_a_trip_and_a_resume_are_on_the_timeline(root: Path, clock: ManualClock) -> None:
    """The breaker's halt and the human's resume are archived as fsqueue events naming the halt."""
    queue = Queue(root, create=True, clock=clock, config=Config(rules=(Rule("poster", 1, 600),)))
    for _ in range(2):
        queue.record_output("poster")
    assert queue.halted() is not None
    queue.resume()
    assert collect(root).lines == 2
    (halted, resumed) = _events(root)
    assert halted[:2] == ("fsqueue", "breaker.halted") and resumed[:2] == ("fsqueue", "breaker.resumed")
    assert halted[2]["agent"] == "poster" and halted[2]["halt"] == resumed[2]["halt"]


def test_degraded_mode_is_entered_and_left_once_each(root: Path, clock: ManualClock) -> None:
    """Only the switches are recorded: asking again while degraded adds nothing."""
    queue = Queue(root, create=True, clock=clock, config=Config(recover_after=60))
    for _ in range(3):
        assert queue.upstream("scraper", agent="writer").degraded
    queue.beat("scraper", interval=300)
    assert queue.upstream("scraper", agent="writer").degraded  # fresh, but not for recover_after yet
    clock.advance(61)
    queue.beat("scraper", interval=300)
    assert not queue.upstream("scraper", agent="writer").degraded
    collect(root)
    assert [(a, e, f["upstream"]) for a, e, f in _events(root)] == [
        ("writer", "degraded", "scraper"),
        ("writer", "recovered", "scraper"),
    ]


def test_the_watchdog_sweep_collects_the_spool(root: Path, clock: ManualClock) -> None:
    """A sweep archives sealed segments; a queue where nothing was emitted gets no spool/ at all."""
    queue = Queue(root, create=True, clock=clock)
    out = io.StringIO()
    sweeper = Sweeper(queue, WatchdogSettings(), ActionLog(out), persist=False)
    assert sweeper.sweep().spool_lines == 0
    assert not (root / "spool").exists()
    queue.halt("by hand")
    report = sweeper.sweep()
    assert report.spool_lines == 1
    assert [e for _, e, _ in _events(root)] == ["breaker.halted"]
    assert out.getvalue() == ""  # routine archiving is not an action worth a log line
    off = Sweeper(queue, WatchdogSettings(collect_spool=False), ActionLog(out), persist=False)
    queue.resume()
    assert off.sweep().spool_lines == 0
    assert len(_events(root)) == 1


def test_the_watchdog_sweep_applies_shared_state_only_when_asked(root: Path, clock: ManualClock) -> None:
    """With watchdog.steward the sweep applies pending updates, and skips them while a steward runs."""
    queue = Queue(root, create=True, clock=clock)
    state = SharedState(root)
    first = state.submit("memory", {"a": 1})
    log = io.StringIO()
    assert Sweeper(queue, WatchdogSettings(), ActionLog(log), persist=False).sweep().state_applied == 0
    assert state.outcome(first).state == "pending"
    sweeper = Sweeper(queue, WatchdogSettings(steward=True), ActionLog(log), persist=False)
    assert sweeper.sweep().state_applied == 1
    assert (state.read("memory").version, state.read("memory").document) == (1, {"a": 1})
    assert state.outcome(first).state == "applied"
    second = state.submit("memory", {"b": 2})
    daemon = hold_steward_lock(root, wait=False)  # a `fsqueue steward` owns the root
    try:
        assert sweeper.sweep().state_applied == 0
        assert state.outcome(second).state == "pending"
    finally:
        daemon.release()
    assert sweeper.sweep().state_applied == 1
    assert state.read("memory").document == {"a": 1, "b": 2}
    assert log.getvalue() == ""
