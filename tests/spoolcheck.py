"""Helpers for the telemetry tests: make segments, and check that archives hold each line exactly once."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from fsqueue._config import SpoolSettings
from fsqueue._ledger import read_ledger
from fsqueue._spool import Spool

DAY = 86400.0

#: A writer that emits N lines tagged (S, n), writes half a line, and dies without sealing its segment.
DYING_WRITER = """
import os, sys
from fsqueue._spool import configure
root, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
spool = configure(root)
for n in range(count):
    spool.emit("dying", "step", s=tag, n=n)
os.write(spool._fd, b'{"ts":1795600000.5,"agent":"dying","host":"h","pid":1,"event":"st')  # killed mid-line
os._exit(0)
"""


def sealed_segments(root: Path, tag: str, segments: int, lines: int, agent: str = "worker") -> set[tuple[str, int]]:
    """Write ``segments`` sealed segments of ``lines`` lines each; return the (s, n) ids written."""
    spool = Spool(root, settings=SpoolSettings())
    ids = set()
    for seg in range(segments):
        for n in range(lines):
            spool.emit(agent, "error" if n == 0 else "step", s=f"{tag}{seg}", n=n)
            ids.add((f"{tag}{seg}", n))
        spool.seal()
    return ids


def hand_segment(root: Path, name: str, lines: list[bytes | dict[str, Any]], where: str = "ready") -> None:
    """A segment written as a shell script would: raw lines (bytes) or records (dicts), in ``where``."""
    directory = root / "spool" / where
    directory.mkdir(parents=True, exist_ok=True)
    data = b"".join(x if isinstance(x, bytes) else json.dumps(x).encode() + b"\n" for x in lines)
    (directory / name).write_bytes(data)


def record(ts: float, s: str, n: int, agent: str = "hand", event: str = "step") -> dict[str, Any]:
    return {"ts": ts, "agent": agent, "host": "h", "pid": 1, "event": event, "fields": {"s": s, "n": n}}


def archived(root: Path) -> Counter[tuple[str, int]]:
    """How many times each (s, n) id occurs across every archive (read whole, committed or not)."""
    seen: Counter[tuple[str, int]] = Counter()
    archive = root / "spool" / "archive"
    for path in sorted(archive.iterdir()) if archive.exists() else []:
        data = path.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{path} ends in a partial line"
        for line in data.splitlines():
            fields = json.loads(line)["fields"]
            seen[(fields["s"], fields["n"])] += 1
    return seen


def assert_exactly_once(root: Path, expected: set[tuple[str, int]], removed: int = 0) -> None:
    """Every expected id archived once, nothing else; ledger sizes and totals agree; nothing left over.

    ``removed``: lines the ledger counted in archives that retention has removed since.
    """
    seen = archived(root)
    duplicated = {k: v for k, v in seen.items() if v > 1}
    assert not duplicated, f"duplicated: {sorted(duplicated)[:10]}"
    assert set(seen) == expected, (
        f"lost {sorted(expected - set(seen))[:10]}, unexpected {sorted(set(seen) - expected)[:10]}"
    )
    ledger = read_ledger(str(root / "spool" / "ledger.json"))
    sizes = {p.name.removesuffix(".jsonl"): p.stat().st_size for p in (root / "spool" / "archive").iterdir()}
    assert {d: s for d, s in ledger.archives.items() if d in sizes} == sizes
    assert ledger.totals["lines"] == len(expected) + removed
    for where in ("ready", "collecting"):
        assert os.listdir(root / "spool" / where) == [], f"left in {where}"
