"""Injectable wall clock: leases are judged by wall time shared across processes; tests advance it."""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Clock(Protocol):
        """Anything with ``now()`` returning seconds since the epoch."""

        def now(self) -> float: ...

else:
    # At run time a plain base class: ``typing`` costs ~9 ms of start-up and a Protocol checks nothing then.
    class Clock:
        """Anything with ``now()`` returning seconds since the epoch."""


class SystemClock:
    """The real wall clock (``time.time``)."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to, so a 30-minute rule is tested in microseconds."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def set(self, when: float) -> None:
        self._now = when
