"""Shared-state records (format ``fsqueue/1``): submissions, snapshots and outcomes, one encode/parse pair each.

Bounds, checked at submit and again by the steward: a document name is a safe file-name component of
at most 128 characters; a submission is at most 1 MiB encoded and nests at most 100 levels; a document
is at most 8 MiB encoded (an update that would grow it further is rejected).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Final, Literal

from ._errors import CorruptRecord, InvalidName, InvalidPayload
from ._mergepatch import json_depth
from ._record import FORMAT, load_record, read_field
from ._ticket import TICKET_PATTERN

MAX_NAME_LENGTH: Final = 128
MAX_PATCH_BYTES: Final = 1024 * 1024
MAX_DOCUMENT_BYTES: Final = 8 * 1024 * 1024
MAX_DEPTH: Final = 100
MAX_VERSION: Final = 10**15
# The task-id rule: a leading letter or digit rules out "." and ".." and hidden names; no "/" or NUL.
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@=+-]*")

OutcomeState = Literal["applied", "rejected", "pending"]


def validate_name(name: object) -> str:
    """Return ``name`` if it is a safe document name, else raise :class:`InvalidName`."""
    if not isinstance(name, str):
        raise InvalidName(f"document name must be a string, got {type(name).__name__}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"document name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    if NAME_PATTERN.fullmatch(name) is None:
        raise InvalidName(
            f"document name {name!r} is refused: it must start with a letter or digit and contain only "
            "letters, digits and . _ : @ = + - (no '/', NUL, spaces or leading dot)",
            name=name,
        )
    return name


def dumps(obj: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON plus a newline; NaN and infinities are refused (ValueError)."""
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n").encode()


@dataclass(frozen=True)
class Outcome:
    """What became of one submission: applied (at ``version``), rejected (for ``reason``) or still pending."""

    ticket: str
    state: OutcomeState
    name: str = ""
    version: int | None = None
    reason: str = ""
    decided_at: float | None = None

    def describe(self) -> str:
        if self.state == "applied":
            return f"applied v={self.version}"
        return f"rejected: {self.reason}" if self.state == "rejected" else "pending"

    def to_json(self) -> dict[str, Any]:
        return {"ticket": self.ticket, "state": self.state, "name": self.name, "version": self.version,
                "reason": self.reason, "decided_at": self.decided_at}  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    """One published version of a document (version 0: never written, an empty object)."""

    name: str
    version: int
    document: dict[str, Any]
    published_at: float | None = None
    last_ticket: str | None = None
    tickets: tuple[Outcome, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "published_at": self.published_at,
            "last_ticket": self.last_ticket,
            "tickets": [_decision_dict(o) for o in self.tickets],
            "document": self.document,
        }


@dataclass(frozen=True)
class Submission:
    """A queued update, as stored in ``state/inbox/<ticket>.json``."""

    ticket: str
    name: str
    patch: dict[str, Any]
    if_version: int | None
    size: int


def _decision_dict(o: Outcome) -> dict[str, Any]:
    return {"ticket": o.ticket, "state": o.state, "version": o.version, "reason": o.reason}


def encode_snapshot(s: Snapshot) -> bytes:
    return dumps({"format": FORMAT, "kind": "snapshot", **s.to_json()})


def _parse_decision(obj: Any, name: str, path: str, decided_at: float | None = None) -> Outcome:
    # Hot for readers (a snapshot lists up to a round's worth of tickets): plain type checks, one regex.
    ticket = obj.get("ticket") if isinstance(obj, dict) else None
    state = obj.get("state") if isinstance(obj, dict) else None
    if type(ticket) is not str or TICKET_PATTERN.fullmatch(ticket) is None or state not in ("applied", "rejected"):
        raise CorruptRecord(f"{path}: a ticket entry has a bad ticket or state ({str(obj)[:80]})", path=path)
    version = obj.get("version")
    reason = obj.get("reason")
    if state == "applied" and not (type(version) is int and version > 0):
        raise CorruptRecord(f"{path}: applied ticket {ticket} has no valid version ({version!r})", path=path)
    if type(reason) is not str:
        raise CorruptRecord(f"{path}: ticket {ticket} has no valid reason ({reason!r})", path=path)
    return Outcome(ticket, state, name, version if state == "applied" else None, reason, decided_at)


def parse_snapshot(data: bytes, path: str, name: str) -> Snapshot:
    obj = load_record(data, path, "snapshot")
    if obj.get("name") != name:
        raise CorruptRecord(f"{path}: holds document {obj.get('name')!r}, expected {name!r}", path=path)
    version = read_field(obj, "version", int, path)
    document = obj.get("document")
    tickets = obj.get("tickets")
    last = obj.get("last_ticket")
    if version < 1 or not isinstance(document, dict) or not isinstance(tickets, list):
        raise CorruptRecord(f"{path}: bad version, document or tickets field", path=path)
    if last is not None and (not isinstance(last, str) or TICKET_PATTERN.fullmatch(last) is None):
        raise CorruptRecord(f"{path}: field 'last_ticket' is not a ticket ({last!r})", path=path)
    return Snapshot(
        name=name,
        version=version,
        document=document,
        published_at=float(read_field(obj, "published_at", (int, float), path)),
        last_ticket=last,
        tickets=tuple(_parse_decision(t, name, path) for t in tickets),
    )


def encode_submission(name: str, patch: Any, if_version: int | None) -> bytes:
    """The inbox record; raises InvalidPayload for a patch that is not a bounded JSON object."""
    if not isinstance(patch, dict):
        raise InvalidPayload(
            f"a patch must be a JSON object (RFC 7396 merge patch), got {type(patch).__name__}; "
            'e.g. {"key": "value"} sets a member and {"key": null} removes it'
        )
    if json_depth(patch, MAX_DEPTH) > MAX_DEPTH:
        raise InvalidPayload(f"the patch nests deeper than {MAX_DEPTH} levels")
    try:
        data = dumps({"format": FORMAT, "kind": "submission", "name": name, "if_version": if_version,
                      "submitted_at": time.time(), "pid": os.getpid(), "patch": patch})  # fmt: skip
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidPayload(f"the patch is not JSON-serializable: {exc}") from None
    if len(data) > MAX_PATCH_BYTES:
        raise InvalidPayload(f"the patch is {len(data)} bytes encoded; the limit is {MAX_PATCH_BYTES} (1 MiB)")
    return data


def parse_submission(data: bytes, path: str, ticket: str) -> Submission:
    """The inbox record; CorruptRecord for anything the steward cannot apply."""
    obj = load_record(data, path, "submission")
    try:
        name = validate_name(obj.get("name"))
    except InvalidName as exc:
        raise CorruptRecord(f"{path}: {exc}", path=path) from None
    patch = obj.get("patch")
    if_version = obj.get("if_version")
    if not isinstance(patch, dict) or json_depth(patch, MAX_DEPTH) > MAX_DEPTH or len(data) > MAX_PATCH_BYTES:
        raise CorruptRecord(
            f"{path}: the patch is not a JSON object of at most {MAX_DEPTH} levels and 1 MiB", path=path
        )
    if if_version is not None and not is_version(if_version):
        raise CorruptRecord(f"{path}: field 'if_version' is not a version number ({if_version!r})", path=path)
    return Submission(ticket, name, patch, if_version, len(data))


def is_version(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_VERSION


def encode_outcomes(outcomes: list[Outcome], decided_at: float) -> bytes:
    """One segment for a steward round; each ticket's outcome file is a hard link to it."""
    entries = {o.ticket: {"name": o.name, **_decision_dict(o)} for o in outcomes}
    return dumps({"format": FORMAT, "kind": "outcomes", "decided_at": decided_at, "outcomes": entries})


def parse_outcome(data: bytes, path: str, ticket: str) -> Outcome:
    obj = load_record(data, path, "outcomes")
    entries = obj.get("outcomes")
    entry = entries.get(ticket) if isinstance(entries, dict) else None
    if not isinstance(entry, dict):
        raise CorruptRecord(f"{path}: holds no outcome for ticket {ticket}", path=path)
    decided_at = float(read_field(obj, "decided_at", (int, float), path))
    return _parse_decision({"ticket": ticket, **entry}, read_field(entry, "name", str, path), path, decided_at)
