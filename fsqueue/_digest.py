"""md5 and sha256 of short names (guard shards, breaker windows, owner keys), cheap to import.

``hashlib`` loads OpenSSL: ~2.5 ms of start-up that a cron agent pays every minute for hashing a few
bytes. CPython's built-in ``_md5``/``_sha256`` (``_sha2`` from 3.12) give the same digests and load in
microseconds; ``hashlib`` remains the fallback for interpreters built without them.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    _md5: Callable[..., Any]
    _sha256: Callable[..., Any]

try:
    from _md5 import md5 as _md5  # type: ignore[import-not-found, no-redef, unused-ignore]
except ImportError:  # pragma: no cover - CPython always builds it
    from hashlib import md5 as _md5  # type: ignore[no-redef, unused-ignore]
try:
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found, no-redef, unused-ignore]
except ImportError:  # pragma: no cover - Python 3.12 renamed it
    try:
        from _sha2 import sha256 as _sha256  # type: ignore[import-not-found, no-redef, unused-ignore]
    except ImportError:
        from hashlib import sha256 as _sha256  # type: ignore[no-redef, unused-ignore]


def md5_hex(text: str) -> str:
    """Hex md5 of ``text``'s UTF-8 bytes (what ``printf %s TEXT | md5sum`` prints)."""
    digest: str = _md5(text.encode(), usedforsecurity=False).hexdigest()
    return digest


def sha256_hex(text: str) -> str:
    """Hex sha256 of ``text``'s UTF-8 bytes."""
    digest: str = _sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
    return digest
