"""One log line per action, as text for people or JSON for log shippers; nothing when nothing happened."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

from ._settings import LogFormat


class ActionLog:
    """Writes each watchdog action as one line naming task, agent, pid, host and reason."""

    def __init__(self, fmt: LogFormat = "text", stream: IO[str] | None = None) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self.lines = 0

    def action(self, action: str, **fields: Any) -> None:
        """Log one action, e.g. ``action("break", task=..., agent=..., pid=..., host=..., reason=...)``."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.fmt == "json":
            line = json.dumps({"ts": stamp, "action": action, **fields}, default=str, sort_keys=True)
        else:
            detail = " ".join(f"{k}={_quote(v)}" for k, v in fields.items() if v not in (None, ""))
            line = f"{stamp} fsqueue-watchdog {action} {detail}".rstrip()
        print(line, file=self.stream, flush=True)
        self.lines += 1


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text
