"""Task ids: validated once so no id can escape the queue directory, generated time-ordered."""

from __future__ import annotations

import os
import re
import time

from ._errors import InvalidTaskId

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

MAX_ID_LENGTH: Final = 128
# A leading letter or digit rules out "." and ".." and hidden names; "/" and NUL are outside the set.
_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@=+-]*")


def validate_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is a safe file-name component, else raise :class:`InvalidTaskId`."""
    if not isinstance(task_id, str):
        raise InvalidTaskId(f"task id must be a string, got {type(task_id).__name__}")
    if not task_id:
        raise InvalidTaskId("task id is empty; use letters, digits and . _ : @ = + -")
    if len(task_id) > MAX_ID_LENGTH:
        raise InvalidTaskId(
            f"task id is {len(task_id)} characters long; the limit is {MAX_ID_LENGTH}", task_id=task_id[:40]
        )
    if _ID_PATTERN.fullmatch(task_id) is None:
        raise InvalidTaskId(
            f"task id {task_id!r} is refused: it must start with a letter or digit and contain only "
            "letters, digits and . _ : @ = + - (no '/', NUL, spaces or leading dot)",
        )
    return task_id


def new_task_id() -> str:
    """A fresh id that sorts by creation time: 16 hex digits of nanoseconds, then 8 random hex digits."""
    return f"{time.time_ns():016x}-{os.urandom(4).hex()}"
