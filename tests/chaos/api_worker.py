"""A long-running API worker: ``python -m chaos.api_worker WORKDIR AGENT STYLE``.

It claims, appends ``start`` to the history, works (sleeps) for the task's time, commits, and appends
``commit`` only after ``complete()`` returned -- or ``fenced`` when ``complete()`` raised LeaseLost.
STYLE ``ctx`` uses the claim as a context manager with ``auto_renew=True`` (a renewal thread); ``manual``
renews by hand every third of the TTL and, when a renewal is refused, still tries to commit, so the
refusal is proven at the commit. Poison tasks fail (``poison-fail``) or SIGKILL this process
(``poison-crash``) on every attempt. SIGTERM stops it between tasks.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from history import append, open_history
from inotify import Inotify

from chaos.ledger import RunInfo
from fsqueue import Claim, LeaseLost, Queue, load_config

IDLE = 0.03  # an idle worker's polling cadence: what finds delayed and retried tasks falling due
SLICE = 0.05  # a manual worker works in slices this long, renewing between them


class PoisonError(RuntimeError):
    """Raised by a poison-fail task inside the claim's context manager: the claim fails."""


class Worker:
    """One API worker's loop."""

    def __init__(self, workdir: Path, agent: str, style: str) -> None:
        self.run = RunInfo.load(workdir)
        self.agent = agent
        self.style = style
        self.queue = Queue(self.run.root, config=load_config(self.run.config))
        self.fd = open_history(self.run.history)
        self.pid = os.getpid()
        self.stopping = False
        # An idle worker claims again as soon as a task is published or a lock released; only a task
        # falling due (a delay or a retry back-off ending) has no event, so IDLE bounds each wait.
        self.changes = Inotify([os.path.join(self.run.root, d) for d in ("records", "tasks")])

    def on_term(self, signum: int, frame: object) -> None:
        self.stopping = True

    def main(self) -> None:
        signal.signal(signal.SIGTERM, self.on_term)
        while not self.stopping:
            claim = self.queue.claim(self.agent, auto_renew=self.style == "ctx")
            if claim is None:
                self.changes.wait(IDLE)
                continue
            append(self.fd, "start", claim.id, self.pid, claim.token, time.time())
            kind = claim.payload.get("kind") if isinstance(claim.payload, dict) else None
            if kind == "poison-crash":
                os.kill(self.pid, signal.SIGKILL)  # the worker dies with the claim in hand, every attempt
            try:
                committed = self.work_ctx(claim, kind) if self.style == "ctx" else self.work_manual(claim, kind)
            except LeaseLost:
                append(self.fd, "fenced", claim.id, self.pid, claim.token, time.time())
                continue
            if committed:
                append(self.fd, "commit", claim.id, self.pid, claim.token, time.time())

    def result(self, claim: Claim) -> dict[str, Any]:
        return {"pid": self.pid, "token": claim.token}

    def work_ctx(self, claim: Claim, kind: Any) -> bool:
        """Renewed by the claim's thread; the context manager commits on exit, or fails on PoisonError."""
        try:
            with claim:
                time.sleep(float(claim.payload["sleep"]))  # the task's work (renewed by the claim's thread)
                if kind == "poison-fail":
                    raise PoisonError(f"poison task {claim.id} fails on every attempt")
                claim.complete(self.result(claim))
        except PoisonError:
            return False
        return True

    def work_manual(self, claim: Claim, kind: Any) -> bool:
        """Renew every third of the TTL; a refused renewal stops the work, and the commit is tried anyway."""
        end = time.monotonic() + float(claim.payload["sleep"])
        renewed = time.monotonic()
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(SLICE, left))  # the task's work, one slice between renewals
            if time.monotonic() - renewed >= claim.ttl / 3:
                try:
                    claim.renew()
                except LeaseLost:
                    break  # the lease was broken (we were stopped): the commit below must be refused
                renewed = time.monotonic()
        if kind == "poison-fail":
            claim.fail(f"poison task {claim.id} fails on every attempt")
            return False
        claim.complete(self.result(claim))
        return True


if __name__ == "__main__":
    Worker(Path(sys.argv[1]), sys.argv[2], sys.argv[3]).main()
