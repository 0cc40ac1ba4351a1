"""A claim in hand: the lease, its fencing token, and the three ways it ends."""

from __future__ import annotations

from types import TracebackType

from . import _transitions as transitions
from ._errors import FsQueueError, LeaseLost

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os
    import threading
    from typing import Any

    from ._record import TaskRecord
    from ._store import Store


class Claim:
    """A leased task. Renew it while working; ``complete`` or ``fail`` it with its token.

    As a context manager it completes on success and fails (with the traceback) on an exception.
    ``start_renewing()`` keeps the lease alive from a background thread for long work.
    """

    def __init__(
        self,
        store: Store,
        *,
        id: str,
        payload: Any,
        token: str,
        attempt: int,
        fence: int,
        agent: str,
        ttl: float,
        expires_at: float,
        max_attempts: int,
        auto_renew: bool = False,
        record: tuple[TaskRecord, os.stat_result] | None = None,
    ) -> None:
        self._store = store
        # The task record as the claim read it, with its file's fstat: complete and fail reuse it
        # while the file is unchanged instead of reading and parsing it again (Store.task_if_unchanged).
        self._record = record
        self.id = id
        self.payload = payload
        self.token = token
        self.attempt = attempt
        self.fence = fence
        self.agent = agent
        self.ttl = ttl
        self.expires_at = expires_at
        self.max_attempts = max_attempts
        self.finished = False
        self._auto_renew = auto_renew
        import threading  # here, not at module level: an idle cron run never needs it

        self._lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lock = threading.Lock()  # a renewal from the thread never interleaves with a commit

    def __repr__(self) -> str:
        return f"<Claim {self.id} attempt={self.attempt} agent={self.agent}>"

    @property
    def lost(self) -> bool:
        """True once a renewal found the lease gone (stop working: the commit will be refused)."""
        return self._lost.is_set()

    def renew(self, ttl: float | None = None) -> float:
        """Extend the lease to now + ttl (default: the claim's ttl); returns the new expiry time."""
        with self._lock:
            try:
                self.expires_at = transitions.renew(self._store, self.id, self.token, ttl or self.ttl)
            except LeaseLost:
                self._lost.set()
                raise
            return self.expires_at

    def complete(self, result: Any = None) -> None:
        """Commit the result; LeaseLost if the lease was broken (the result is then not stored)."""
        from ._queue import check_json

        check_json(result, "result")
        self._end(lambda: transitions.complete(self._store, self.id, self.token, result, self.agent, self._record))
        from ._breaker import count_committed_output

        count_committed_output(self._store, self.agent)

    def fail(self, error: str, *, retry: bool = True) -> str:
        """Record a failed attempt; returns ``"pending"`` (retried later) or ``"dead"``."""
        outcome: list[str] = []
        self._end(
            lambda: outcome.append(
                transitions.fail(
                    self._store, self.id, self.token, error, retry=retry, agent=self.agent, known=self._record
                )
            )
        )
        return outcome[0]

    def _end(self, action: Any) -> None:
        self.stop_renewing()
        with self._lock:
            if self.finished:
                raise LeaseLost(f"claim on task {self.id} was already completed or failed", task_id=self.id)
            try:
                action()
            except LeaseLost:
                self._lost.set()
                self.finished = True
                raise
            self.finished = True

    def start_renewing(self, interval: float | None = None) -> None:
        """Renew from a daemon thread every ``interval`` seconds (default: a third of the ttl)."""
        import threading

        if self._renewer is not None and self._renewer.is_alive():
            return
        self._stop = threading.Event()  # a fresh one: stop_renewing() may have set the last
        period = interval or self.ttl / 3

        def loop() -> None:
            while not self._stop.wait(period):
                try:
                    self.renew()
                except LeaseLost:
                    return
                except (FsQueueError, OSError):
                    continue  # transient (e.g. a busy disk); the next tick retries well before expiry

        self._renewer = threading.Thread(target=loop, name=f"fsqueue-renew-{self.id}", daemon=True)
        self._renewer.start()

    def stop_renewing(self) -> None:
        import threading

        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join()
            self._renewer = None

    def __enter__(self) -> Claim:
        if self._auto_renew:
            self.start_renewing()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.finished:
            self.stop_renewing()
            return
        if exc is None:
            self.complete()
        elif isinstance(exc, LeaseLost):
            self.stop_renewing()
        else:
            import traceback  # only on failure: it costs 7 ms of import that a cron agent need not pay

            text = "".join(traceback.format_exception(exc_type, exc, tb))
            self.fail(text)
