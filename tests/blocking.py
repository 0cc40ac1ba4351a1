"""Run an operation that must not block, and fail the test (never hang it) if it does."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

#: Seconds any single operation may take before the test calls it hung.
TIMEOUT = 5.0


def finishes(action: Callable[[], T], *, unblock: Callable[[], None] | None = None) -> T:
    """Run ``action`` in a thread; its result, or a test failure if it is still running after TIMEOUT."""
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(action())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    if thread.is_alive():
        if unblock is not None:
            unblock()  # let the stuck thread go, so it does not outlive the test blocked in a syscall
        pytest.fail(f"still blocked after {TIMEOUT}s")
    if errors:
        raise errors[0]
    return results[0]
