"""Shared state in one process: submit, apply, read, wait; ordering, fencing by version, bounds and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import fsqueue._rounds
from fsqueue import ConfigError, CorruptRecord, InvalidPayload, ManualClock, Queue
from fsqueue._errors import InvalidName, StewardRunning, TicketNotFound
from fsqueue._state import SharedState, StatePaths, read, submit, wait
from fsqueue._steward import Steward, StewardSettings, hold_steward_lock, steward_step


@pytest.fixture
def shared(queue: Queue) -> SharedState:
    """The shared state of the fresh test queue."""
    return SharedState(queue.root)


@pytest.fixture
def steward(queue: Queue) -> Steward:
    """A steward for the test queue (the test does not hold the singleton lock: nothing else runs)."""
    return Steward(queue.root)


def submission_record(name: str, patch: dict[str, Any]) -> dict[str, Any]:
    """An inbox record as a submitter writes it."""
    return {"format": "fsqueue/1", "kind": "submission", "name": name, "if_version": None, "patch": patch}


def quarantined(root: str) -> list[str]:
    return sorted(os.listdir(os.path.join(root, "quarantine")))


def test_round_trip_versions_and_outcomes(shared: SharedState, steward: Steward) -> None:
    """Each applied update is one version; outcomes name it; the snapshot lists the tickets it decided."""
    assert shared.read("cfg").version == 0
    assert shared.read("cfg").document == {}
    t1 = shared.submit("cfg", {"a": 1, "b": {"c": 2}})
    t2 = shared.submit("cfg", {"b": {"c": None, "d": [1, 2]}})
    assert t1 < t2
    assert shared.outcome(t1).state == "pending"
    report = steward.round()
    assert (report.applied, report.rejected, report.published) == (2, 0, {"cfg": 2})
    snap = shared.read("cfg")
    assert snap.version == 2
    assert snap.document == {"a": 1, "b": {"d": [1, 2]}}
    assert [(o.ticket, o.version) for o in snap.tickets] == [(t1, 1), (t2, 2)]
    assert snap.last_ticket == t2
    assert shared.wait(t1, 0).describe() == "applied v=1"
    assert shared.wait(t2, 0).version == 2
    assert os.listdir(StatePaths(shared.paths.root).inbox) == []


def test_module_functions(queue: Queue) -> None:
    """read/submit/wait work from a root path alone."""
    ticket = submit(queue.root, "doc", {"x": 1}, if_version=0)
    assert steward_step(queue.root) is not None
    assert wait(queue.root, ticket, timeout=0).state == "applied"
    assert read(queue.root, "doc").document == {"x": 1}


def test_conditional_updates_on_one_version(shared: SharedState, steward: Steward) -> None:
    """Two updates conditional on the same version: the first in ticket order wins, the second is rejected."""
    shared.submit("cfg", {"n": 0})
    steward.round()
    first = shared.submit("cfg", {"n": 1}, if_version=1)
    second = shared.submit("cfg", {"n": 2}, if_version=1)
    steward.round()
    assert shared.outcome(first).describe() == "applied v=2"
    lost = shared.outcome(second)
    assert lost.state == "rejected"
    assert lost.reason == "document cfg is at version 2, not 1 (if_version)"
    assert shared.read("cfg").document == {"n": 1}


def test_if_version_zero_creates_only_once(shared: SharedState, steward: Steward) -> None:
    """if_version=0 means "only if the document was never written"."""
    a = shared.submit("lease", {"owner": "a"}, if_version=0)
    b = shared.submit("lease", {"owner": "b"}, if_version=0)
    steward.round()
    assert shared.outcome(a).state == "applied"
    assert shared.outcome(b).state == "rejected"
    assert shared.read("lease").document == {"owner": "a"}


def test_order_is_ticket_order_across_submitters_and_documents(queue: Queue, steward: Steward) -> None:
    """Interleaved submitters on several documents: each document sees its updates in ticket order."""
    writers = [SharedState(queue.root) for _ in range(3)]
    tickets = []
    for i in range(30):
        writer = writers[i % 3]
        name = f"doc{i % 2}"
        tickets.append((writer.submit(name, {"last": i, f"k{i}": i}), name, i))
    assert [t for t, _, _ in tickets] == sorted(t for t, _, _ in tickets)
    Steward(queue.root, settings=StewardSettings(batch=7)).drain()
    for name in ("doc0", "doc1"):
        mine = [(t, i) for t, n, i in tickets if n == name]
        versions = [writers[0].outcome(t).version for t, _ in mine]
        assert versions == list(range(1, len(mine) + 1))
        assert writers[0].read(name).document["last"] == mine[-1][1]


def test_history_is_bounded(shared: SharedState, queue: Queue) -> None:
    """Only the newest ``history`` snapshots are kept; current.json is the newest."""
    steward = Steward(queue.root, settings=StewardSettings(history=3, batch=1))
    for i in range(6):
        shared.submit("cfg", {"i": i})
    steward.drain()
    names = sorted(os.listdir(shared.paths.history("cfg")))
    assert names == ["000000000004.json", "000000000005.json", "000000000006.json"]
    assert os.path.samefile(shared.paths.current("cfg"), shared.paths.history("cfg", 6))


def test_outcomes_are_pruned_after_keep_outcomes(queue: Queue, clock: ManualClock) -> None:
    """An outcome is readable for keep_outcomes seconds (by the ticket's hour), then unknown."""
    shared = SharedState(queue.root)
    ticket = shared.submit("cfg", {"a": 1})
    clock.set(int(ticket[:20]) / 1e9)
    steward = Steward(queue.root, clock=clock, settings=StewardSettings(keep_outcomes=7200))
    steward.round()
    assert shared.outcome(ticket).state == "applied"
    clock.advance(3 * 3600)
    steward.round()
    with pytest.raises(TicketNotFound, match="no submission and no outcome"):
        shared.outcome(ticket)


def test_document_size_bound_rejects_the_update(
    shared: SharedState, steward: Steward, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update that would grow the document past the bound is rejected; the others still apply."""
    monkeypatch.setattr(fsqueue._rounds, "MAX_DOCUMENT_BYTES", 2000)
    ok = [shared.submit("big", {f"k{i}": "x" * 400}) for i in range(4)]
    too_big = shared.submit("big", {"k9": "x" * 400})
    small = shared.submit("big", {"k0": None})
    steward.round()
    assert [shared.outcome(t).state for t in ok] == ["applied"] * 4
    assert "the limit is 2000" in shared.outcome(too_big).reason
    assert shared.outcome(small).version == 5
    assert sorted(shared.read("big").document) == ["k1", "k2", "k3"]


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x\x00y", "-flag", "a b", "x" * 129, 7])
def test_bad_document_names_are_refused(shared: SharedState, name: Any) -> None:
    """Names that could escape state/docs/ (or are not names) are refused before anything is written."""
    with pytest.raises(InvalidName):
        shared.submit(name, {"a": 1})
    with pytest.raises(InvalidName):
        shared.read(name)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ("text", "must be a JSON object"),
        (None, "must be a JSON object"),
        ({"a": float("nan")}, "not JSON-serializable"),
        ({"a": object()}, "not JSON-serializable"),
        ({"a": "x" * (1024 * 1024)}, "the limit is 1048576"),
    ],
)
def test_bad_patches_are_refused(shared: SharedState, patch: Any, message: str) -> None:
    """Non-object, non-JSON and oversized patches are refused at submit with a clear message."""
    with pytest.raises(InvalidPayload, match=message):
        shared.submit("cfg", patch)
    assert not os.path.exists(shared.paths.inbox) or os.listdir(shared.paths.inbox) == []


def test_deep_and_cyclic_patches_are_refused(shared: SharedState) -> None:
    """Nesting beyond 100 levels, or a cycle, is refused without a RecursionError."""
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(150):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(InvalidPayload, match="deeper than 100"):
        shared.submit("cfg", deep)
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(InvalidPayload, match="deeper than 100"):
        shared.submit("cfg", cyclic)


@pytest.mark.parametrize("version", [-1, True, 1.5, "3", 10**15])
def test_bad_if_version_is_refused(shared: SharedState, version: Any) -> None:
    """if_version must be a non-negative integer."""
    with pytest.raises(InvalidPayload, match="if_version"):
        shared.submit("cfg", {"a": 1}, if_version=version)


@pytest.mark.parametrize("ticket", ["", "../../etc/passwd", "1-2-3", "0" * 20 + "-0000001-00000x", 5])
def test_malformed_tickets_are_refused(shared: SharedState, ticket: Any) -> None:
    """A ticket is checked against its exact form before it is used in a path."""
    with pytest.raises(InvalidName, match="is not a ticket"):
        shared.outcome(ticket)


def test_unknown_ticket(shared: SharedState) -> None:
    """A well-formed ticket that was never submitted is TicketNotFound, not pending forever."""
    with pytest.raises(TicketNotFound) as info:
        shared.wait("01800000000000000000-0000001-000001", timeout=5)
    assert info.value.ticket == "01800000000000000000-0000001-000001"


def test_corrupt_and_foreign_submissions_are_rejected_and_quarantined(shared: SharedState, steward: Steward) -> None:
    """Garbage in the inbox is answered 'rejected', moved to quarantine/, and does not stop the others."""
    good = shared.submit("cfg", {"a": 1})
    garbage = shared.submit("cfg", {"b": 1})
    foreign = shared.submit("cfg", {"c": 1})
    junk = os.path.join(shared.paths.inbox, "notes.txt")
    Path(shared.paths.submission(garbage)).write_bytes(b'{"format": "fsqueue/1", "kind": "submi')
    record = json.loads(Path(shared.paths.submission(foreign)).read_bytes())
    Path(shared.paths.submission(foreign)).write_text(json.dumps({**record, "format": "fsqueue/9"}))
    Path(junk).write_text("hello")
    report = steward.round()
    assert (report.applied, report.rejected, report.quarantined) == (1, 2, 3)
    assert shared.outcome(good).state == "applied"
    assert "unreadable submission" in shared.outcome(garbage).reason
    assert "fsqueue/9" in shared.outcome(foreign).reason
    assert os.listdir(shared.paths.inbox) == []
    assert len([n for n in quarantined(shared.paths.root) if not n.endswith(".why")]) == 3


def test_corrupt_current_snapshot_is_served_from_history_and_repaired(shared: SharedState, steward: Steward) -> None:
    """A damaged current.json: readers get the newest intact history entry; the steward quarantines and repairs."""
    shared.submit("cfg", {"a": 1})
    steward.round()
    current = shared.paths.current("cfg")
    os.unlink(current)
    Path(current).write_bytes(b"\x00\x00garbage")
    assert shared.read("cfg").document == {"a": 1}
    shared.submit("cfg", {"b": 2})
    steward.round()
    assert shared.read("cfg").version == 2
    assert shared.read("cfg").document == {"a": 1, "b": 2}
    assert any(n.endswith("current.json") for n in quarantined(shared.paths.root))


def test_corrupt_snapshot_without_intact_history_is_a_clear_error(shared: SharedState, steward: Steward) -> None:
    """With no intact snapshot left, read() names the file instead of inventing a document."""
    shared.submit("cfg", {"a": 1})
    steward.round()
    for path in (shared.paths.history("cfg", 1), shared.paths.current("cfg")):
        os.unlink(path)
        Path(path).write_text("{")
    with pytest.raises(CorruptRecord, match=r"current\.json is not valid JSON"):
        shared.read("cfg")


def test_symlinked_snapshot_is_not_followed(shared: SharedState, steward: Steward, tmp_path: Path) -> None:
    """A symlink planted as current.json is neither read through nor kept."""
    shared.submit("cfg", {"a": 1})
    steward.round()
    secret = tmp_path / "secret.json"
    secret.write_text('{"stolen": true}')
    os.unlink(shared.paths.current("cfg"))
    os.symlink(secret, shared.paths.current("cfg"))
    assert shared.read("cfg").document == {"a": 1}  # from history, never from the link's target
    shared.submit("cfg", {"b": 1})
    steward.round()
    assert not os.path.islink(shared.paths.current("cfg"))
    assert shared.read("cfg").document == {"a": 1, "b": 1}


def test_damaged_ticket_counter_keeps_order(shared: SharedState, steward: Steward) -> None:
    """A garbled counter restarts from the clock; the steward lifts it above every ticket it has seen."""
    first = shared.submit("cfg", {"a": 1})
    steward.round()
    Path(shared.paths.counter).write_text("garbage")
    second = shared.submit("cfg", {"a": 2})
    assert second > first
    steward.round()
    assert shared.read("cfg").document == {"a": 2}


def test_counter_that_is_a_directory_is_a_clear_error(shared: SharedState) -> None:
    """Something other than a regular file at state/ticket.lock is reported, not waited on."""
    os.makedirs(shared.paths.counter)
    with pytest.raises(OSError, match=r"ticket\.lock"):
        shared.submit("cfg", {"a": 1})


def test_submission_below_the_last_ticket_is_rejected_not_reordered(shared: SharedState, steward: Steward) -> None:
    """A submission linked without the counter lock, older than applied tickets, is refused as late."""
    early = shared.submit("cfg", {"a": 1})
    steward.round()
    late = f"{int(early[:20]) - 1:020d}" + early[20:]  # never issued by the counter
    Path(shared.paths.submission(late)).write_text(json.dumps(submission_record("cfg", {"a": 0})))
    steward.round()
    assert "arrived after later tickets" in shared.outcome(late).reason
    assert shared.read("cfg").document == {"a": 1}


def test_history_newer_than_current_is_adopted(shared: SharedState, steward: Steward) -> None:
    """A crash between the history link and the rename: readers keep the old version, the steward adopts the new."""
    shared.submit("cfg", {"a": 1})
    steward.round()
    ticket = shared.submit("cfg", {"a": 2})
    steward.round()
    v1 = Path(shared.paths.history("cfg", 1)).read_bytes()
    os.unlink(shared.paths.current("cfg"))
    Path(shared.paths.current("cfg")).write_bytes(v1)  # as if the rename of version 2 never happened
    os.unlink(shared.paths.outcome(ticket))  # and neither did the rest of the round
    Path(shared.paths.submission(ticket)).write_text(json.dumps(submission_record("cfg", {"a": 2})))
    assert shared.read("cfg").version == 1
    report = steward.round()
    assert (report.applied, report.repaired) == (0, 2)
    assert shared.read("cfg").version == 2
    assert shared.outcome(ticket).describe() == "applied v=2"


def test_second_steward_is_refused_and_step_skips(queue: Queue) -> None:
    """While one steward holds the lock, another is refused (exit code 9) and steward_step does nothing."""
    lock = hold_steward_lock(queue.root, wait=False)
    try:
        with pytest.raises(StewardRunning, match=f"is held by pid {os.getpid()}") as info:
            hold_steward_lock(queue.root, wait=False)
        assert info.value.exit_code == 9
        assert info.value.holder_pid == os.getpid()
        submit(queue.root, "cfg", {"a": 1})
        assert steward_step(queue.root) is None
    finally:
        lock.release()
    report = steward_step(queue.root)
    assert report is not None
    assert report.applied == 1


@pytest.mark.parametrize(
    "changes", [{"history": 0}, {"batch": 0}, {"batch": True}, {"keep_outcomes": -1}, {"interval": float("nan")}]
)
def test_bad_steward_settings(changes: dict[str, Any]) -> None:
    """Steward settings are validated once, naming the bad value."""
    with pytest.raises(ConfigError, match="steward"):
        StewardSettings(**changes)


def test_symlinked_directories_are_not_followed(shared: SharedState, steward: Steward, tmp_path: Path) -> None:
    """A document directory or outcome bucket planted as a symlink is refused by readers and moved aside."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "history").mkdir(parents=True)
    fake = {"format": "fsqueue/1", "kind": "snapshot", "name": "cfg", "version": 9, "published_at": 1.0,
            "last_ticket": None, "tickets": [], "document": {"planted": True}}  # fmt: skip
    (elsewhere / "current.json").write_text(json.dumps(fake))
    ticket = shared.submit("cfg", {"a": 1})
    os.makedirs(shared.paths.docs)
    os.symlink(elsewhere, shared.paths.doc("cfg"))
    os.makedirs(shared.paths.outcomes)
    os.symlink(elsewhere, shared.paths.outcome_bucket(ticket))
    with pytest.raises(CorruptRecord, match="is a symlink or not a directory"):
        shared.read("cfg")
    report = steward.round()
    assert report.quarantined == 2
    assert shared.read("cfg").document == {"a": 1}
    assert shared.outcome(ticket).describe() == "applied v=1"
    assert sorted(os.listdir(elsewhere)) == ["current.json", "history"]
    assert os.listdir(elsewhere / "history") == []


def test_step_bounded_by_max_rounds(queue: Queue) -> None:
    """A watchdog's step can bound its work: one round of the batch, the rest left for the next sweep."""
    shared = SharedState(queue.root)
    tickets = [shared.submit("cfg", {"i": i}) for i in range(5)]
    report = steward_step(queue.root, settings=StewardSettings(batch=2), max_rounds=1)
    assert report is not None
    assert (report.applied, report.more) == (2, True)
    assert [shared.outcome(t).state for t in tickets] == ["applied"] * 2 + ["pending"] * 3
    report = steward_step(queue.root, settings=StewardSettings(batch=2))
    assert report is not None
    assert (report.applied, report.more) == (3, False)
