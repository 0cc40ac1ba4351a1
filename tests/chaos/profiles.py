"""The sizes of a chaos run: ``short`` for the test suite, ``chaos`` for `make chaos`, ``soak`` for `make soak`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final

#: Fault kinds the injector chooses from, with their relative weights (see faults.py).
DEFAULT_WEIGHTS: Final = {"sigkill_worker": 5, "sigstop_holder": 3, "sigkill_producer": 1}


@dataclass(frozen=True)
class Profile:
    """Everything that sizes one run; the seed chooses everything random within it."""

    name: str
    api_workers: int  # long-running Python workers on the API
    run_slots: int  # cron-like slots, each re-launching `fsqueue run --max-tasks N` one after another
    api_producers: int  # Python producers with explicit ids and if_absent; SIGKILLed and restarted
    cli_producers: int  # producers that run `fsqueue enqueue` per task (generated ids or --id --if-absent)
    seconds: float  # length of the fault phase: producers enqueue and faults are injected meanwhile
    work: tuple[float, float]  # range of a task's work (seconds of sleep)
    ttl: float  # every claim's lease
    interval: float  # watchdog sweep interval
    repair_every: float  # watchdog repair pass cadence
    fault_every: float  # mean seconds between worker/producer faults (exponential)
    watchdog_kill_every: float  # mean seconds between SIGKILLs of the watchdog
    backlog_per_worker: int  # producers pause while more records than this x workers exist
    poison_one_in: int  # one task spec in N is poison
    max_delay: float  # delayed tasks wait up to this long
    drain_timeout: float  # seconds the queue may take to empty after the fault phase
    weights: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    @property
    def workers(self) -> int:
        return self.api_workers + self.run_slots

    def with_minutes(self, minutes: float) -> Profile:
        """The same profile with another fault phase length."""
        return replace(self, seconds=minutes * 60.0, drain_timeout=max(self.drain_timeout, minutes * 6.0))

    def with_workers(self, workers: int) -> Profile:
        """The same profile with ``workers`` workers, split between the API and `fsqueue run` as before."""
        run = max(1, round(workers * self.run_slots / self.workers))
        return replace(self, api_workers=max(1, workers - run), run_slots=run)


PROFILES: Final = {
    "short": Profile(
        name="short",
        api_workers=14,
        run_slots=8,
        api_producers=2,
        cli_producers=1,
        seconds=33.0,
        work=(0.01, 0.25),
        ttl=1.5,
        interval=0.2,
        repair_every=2.0,
        fault_every=0.35,
        watchdog_kill_every=4.0,
        backlog_per_worker=4,
        poison_one_in=40,
        max_delay=4.0,
        drain_timeout=60.0,
    ),
    "chaos": Profile(
        name="chaos",
        api_workers=40,
        run_slots=24,
        api_producers=3,
        cli_producers=1,
        seconds=180.0,
        work=(0.02, 0.5),
        ttl=2.0,
        interval=0.25,
        repair_every=3.0,
        fault_every=0.3,
        watchdog_kill_every=6.0,
        backlog_per_worker=4,
        poison_one_in=50,
        max_delay=10.0,
        drain_timeout=180.0,
    ),
    "soak": Profile(
        name="soak",
        api_workers=90,
        run_slots=55,
        api_producers=4,
        cli_producers=1,
        seconds=1800.0,
        work=(0.05, 1.0),
        ttl=2.0,
        interval=0.25,
        repair_every=10.0,
        fault_every=0.4,
        watchdog_kill_every=20.0,
        backlog_per_worker=3,
        poison_one_in=100,
        max_delay=30.0,
        drain_timeout=300.0,
    ),
}
