"""A producer process: ``python -m chaos.producer WORKDIR INDEX``.

Producer ``k`` of ``P`` enqueues specs ``k, k + P, k + 2P, ...`` until the end of the fault phase, pausing
while the queue holds more than its backlog, and records each enqueue in its ledger (ledger.py). API
producers enqueue with explicit ids and ``if_absent``, so after a SIGKILL the restarted process repeats
the enqueue it was cut short in; a spec marked ``duplicate`` is also offered by the next producer, so two
processes enqueue the same id at once. CLI producers run `fsqueue enqueue` once per task, half of them
with ``--id ... --if-absent`` and half with a generated id read from its output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from inotify import IN_DELETE, IN_MOVED_FROM, Inotify

from chaos.ledger import Ledger, RunInfo, append_line, ledger_dir, open_append
from chaos.plan import TaskSpec, spec
from fsqueue import Queue, load_config


class Producer:
    """One producer's loop; ``enqueue`` is the API or the CLI depending on its index."""

    def __init__(self, workdir: Path, index: int) -> None:
        self.run = RunInfo.load(workdir)
        self.index = index
        self.cli = self.run.is_cli_producer(index)
        self.queue = Queue(self.run.root, config=load_config(self.run.config))
        path = ledger_dir(workdir) / f"producer-{index}.log"
        self.ledger = Ledger.read(path)
        self.fd = open_append(path)
        self.limit = self.run.profile.backlog_per_worker * self.run.profile.workers
        self.count = 0
        self.fsqueue = [str(Path(sys.executable).parent / "fsqueue")]

    def main(self) -> None:
        # First the enqueues a SIGKILL cut short: an offered explicit id is repeated with if_absent.
        for n in sorted(set(self.ledger.offered) - set(self.ledger.acked)):
            if self.ledger.offered[n] != "*":
                self.offer(spec(self.run.seed, n, self.run.profile, cli=self.cli))
        step = self.run.producers
        own = [n for n in self.ledger.offered if n % step == self.index]
        n = max(own) + step if own else self.index
        while time.time() < self.run.deadline:
            self.pace()
            task = spec(self.run.seed, n, self.run.profile, cli=self.cli)
            self.offer(task)
            previous = n - 1
            if previous >= 0 and self.run.producers > 1:
                other = spec(self.run.seed, previous, self.run.profile, cli=self.run.is_cli_producer(previous % step))
                if other.duplicate and other.id is not None:
                    self.offer(other)  # the same id its own producer offers at about the same time
            n += step

    def pace(self) -> None:
        self.count += 1
        if self.count % 10:
            return
        records = os.path.join(self.run.root, "records")
        if len(os.listdir(records)) <= self.limit:
            return
        # Counted again each time a record leaves (settled): watched before the recount, so none is missed.
        with Inotify([records], IN_DELETE | IN_MOVED_FROM) as settled:
            while len(os.listdir(records)) > self.limit and (left := self.run.deadline - time.time()) > 0:
                settled.wait(left)

    def offer(self, task: TaskSpec) -> None:
        append_line(self.fd, "offer", task.n, task.id or "*", os.getpid())
        got = self.enqueue_cli(task) if self.cli else self.enqueue_api(task)
        append_line(self.fd, "ack", task.n, got, os.getpid())

    def enqueue_api(self, task: TaskSpec) -> str:
        return self.queue.enqueue(
            task.payload(),
            id=task.id,
            priority=task.priority,
            delay=task.delay,
            max_attempts=task.max_attempts,
            agent=f"producer-{self.index}",
            if_absent=True,
        )

    def enqueue_cli(self, task: TaskSpec) -> str:
        argv = [*self.fsqueue, "enqueue", "--priority", str(task.priority), "--delay", str(task.delay)]
        argv += ["--max-attempts", str(task.max_attempts), "--agent", f"producer-{self.index}"]
        if task.id is not None:
            argv += ["--id", task.id, "--if-absent"]
        out = subprocess.run([*argv, json.dumps(task.payload())], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{argv} exited {out.returncode}: {out.stderr.strip()}")
        return out.stdout.strip()


if __name__ == "__main__":
    Producer(Path(sys.argv[1]), int(sys.argv[2])).main()
