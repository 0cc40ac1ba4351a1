"""Shared fixtures: a fresh queue on the real filesystem, with an injected clock."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsqueue import Config, ManualClock, Queue

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test says so."""
    return ManualClock(start=1_800_000_000.0)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A queue root path (not yet created)."""
    return tmp_path / "queue"


@pytest.fixture
def queue(root: Path, clock: ManualClock) -> Queue:
    """A fresh queue with durability on, the injected clock and a seeded jitter source."""
    return Queue(root, create=True, clock=clock, config=Config(), rng=random.Random(7))


@pytest.fixture
def fsqueue_cmd() -> list[str]:
    """The argv prefix that runs this checkout's CLI in a subprocess."""
    return [sys.executable, "-m", "fsqueue"]


@pytest.fixture
def cli_env(root: Path) -> Iterator[dict[str, str]]:
    """Environment for CLI subprocesses pointing at the test queue."""
    env = dict(os.environ, FSQUEUE_ROOT=str(root))
    env.pop("FSQUEUE_CONFIG", None)
    yield env
