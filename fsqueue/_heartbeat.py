"""Heartbeats: ``status/<agent>.heartbeat``, replaced atomically, judged ok / late / down.

A heartbeat says "agent A was alive at time T and promises to beat again within I seconds".
Readers judge it healthchecks.io-style: ``late`` once older than I + grace, ``down`` once older
than ``down_after`` x I + grace. It is written like every record (staging file, fsync, rename), so a
reader never sees a torn one (P6); ``format`` is versioned like the rest.
"""

from __future__ import annotations

import json
import os
from types import TracebackType

from ._errors import CorruptRecord, InvalidPayload, StorageError
from ._frozen import frozen
from ._fsio import publish_replace, storage_errors
from ._identity import Owner, current_owner, owner_state
from ._ids import validate_task_id
from ._record import FORMAT, load_record, owner_dict, parse_owner, read_field

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from typing import Any, Literal

    Verdict = Literal["ok", "late", "down"]

    from ._store import Store
else:
    # Literal needs ``typing`` at run time; importers of these names only use them in annotations.
    Verdict = str


MAX_MESSAGE = 500


@frozen
class HeartbeatRecord:
    """One agent's last beat."""

    agent: str
    at: float
    interval: float
    state: str
    message: str
    owner: Owner

    def verdict(self, now: float, *, grace: float, down_after: float) -> Verdict:
        """ok / late / down for a reader at ``now``.

        A beat dated ahead of ``now`` is judged by its distance too: a clock that is wrong (or a shell
        writer that stamped microseconds) must not keep a dead agent fresh until that future time.
        """
        age = abs(now - self.at)
        if age <= self.interval + grace:
            return "ok"
        if age <= down_after * self.interval + grace:
            return "late"
        return "down"


def check_agent_name(agent: str) -> str:
    """An agent name that can name a file under ``status/`` (the task-id rules)."""
    try:
        return validate_task_id(agent)
    except ValueError as exc:
        raise InvalidPayload(f"agent name {agent!r} cannot name a heartbeat file: {exc}") from None


def heartbeat_path(store: Store, agent: str) -> str:
    return os.path.join(store.layout.sub("status"), f"{agent}.heartbeat")


def encode_heartbeat(hb: HeartbeatRecord) -> bytes:
    data = {
        "format": FORMAT,
        "kind": "heartbeat",
        "agent": hb.agent,
        "at": hb.at,
        "interval": hb.interval,
        "state": hb.state,
        "message": hb.message,
        "owner": owner_dict(hb.owner),
    }
    return (json.dumps(data, separators=(",", ":")) + "\n").encode()


def parse_heartbeat(data: bytes, path: str) -> HeartbeatRecord:
    obj = load_record(data, path, "heartbeat")
    return HeartbeatRecord(
        agent=read_field(obj, "agent", str, path),
        at=float(read_field(obj, "at", (int, float), path)),
        interval=float(read_field(obj, "interval", (int, float), path)),
        state=read_field(obj, "state", str, path),
        message=read_field(obj, "message", str, path),
        owner=parse_owner(obj.get("owner"), path),
    )


def write_beat(
    store: Store,
    agent: str,
    *,
    state: str = "ok",
    message: str = "",
    interval: float | None = None,
    owner: Owner | None = None,
) -> HeartbeatRecord:
    """Publish ``agent``'s heartbeat now (atomically replacing the previous one)."""
    check_agent_name(agent)
    every = store.config.heartbeat_interval if interval is None else interval
    if isinstance(every, bool) or not isinstance(every, int | float) or not 0 < every < 10**9:
        raise InvalidPayload(f"heartbeat interval must be positive, got {interval!r}")
    hb = HeartbeatRecord(
        agent, store.clock.now(), float(every), state[:80] or "ok", message[:MAX_MESSAGE], owner or current_owner()
    )
    path = heartbeat_path(store, agent)
    with storage_errors("write heartbeat", path):
        publish_replace(store.layout.staging, encode_heartbeat(hb), path, durable=False)
    return hb


def read_beat(store: Store, agent: str) -> HeartbeatRecord | None:
    """The agent's last heartbeat, None when it never beat; CorruptRecord when unreadable."""
    return store._read(heartbeat_path(store, check_agent_name(agent)), parse_heartbeat)


@frozen
class AgentInfo:
    """One row of ``fsqueue agents``."""

    agent: str
    verdict: Verdict | Literal["corrupt"]
    state: str = ""
    message: str = ""
    at: float = 0.0
    age: float = 0.0
    interval: float = 0.0
    pid: int = 0
    host: str = ""
    alive: bool | None = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_agents(store: Store) -> list[AgentInfo]:
    """Every agent that ever beat, with its verdict at the store's clock."""
    now = store.clock.now()
    config = store.config
    out: list[AgentInfo] = []
    try:
        names = sorted(
            n[: -len(".heartbeat")] for n in os.listdir(store.layout.sub("status")) if n.endswith(".heartbeat")
        )
    except FileNotFoundError:
        names = []
    for name in names:
        try:
            hb = read_beat(store, name)
        except InvalidPayload:
            continue
        except (CorruptRecord, StorageError) as exc:  # damaged or unreadable (EACCES): listed as corrupt
            out.append(AgentInfo(name, "corrupt", error=str(exc)))
            continue
        if hb is None:
            continue
        state = owner_state(hb.owner)
        out.append(
            AgentInfo(
                agent=name,
                verdict=hb.verdict(now, grace=config.heartbeat_grace, down_after=config.heartbeat_down_after),
                state=hb.state,
                message=hb.message,
                at=hb.at,
                age=now - hb.at,
                interval=hb.interval,
                pid=hb.owner.pid,
                host=hb.owner.host,
                alive=None if state == "foreign" else state == "alive",
            )
        )
    return out


class Heartbeat:
    """Beat on entry, every ``interval`` from a daemon thread, and on exit with the final state.

    ``with queue.heartbeat("scraper"):`` -- the exit state is ``stopped``, or ``failed`` with the
    exception's text when the block raised.
    """

    def __init__(
        self, store: Store, agent: str, *, interval: float | None = None, state: str = "running", message: str = ""
    ) -> None:
        self._store = store
        self.agent = check_agent_name(agent)
        self.interval = store.config.heartbeat_interval if interval is None else interval
        self.state = state
        self.message = message
        import threading  # here, not at module level: a one-off beat never needs it

        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, state: str | None = None, message: str | None = None) -> HeartbeatRecord:
        """Beat now, optionally changing the state and message that later beats repeat."""
        if state is not None:
            self.state = state
        if message is not None:
            self.message = message
        return write_beat(self._store, self.agent, state=self.state, message=self.message, interval=self.interval)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except OSError:
                continue  # a full disk: the next beat retries; readers see the agent go late, truthfully

    def __enter__(self) -> Heartbeat:
        import threading

        self.beat()
        self._thread = threading.Thread(target=self._loop, name=f"fsqueue-heartbeat-{self.agent}", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc is None:
            self.beat("stopped", "")
        else:
            self.beat("failed", f"{type(exc).__name__}: {exc}")
