"""Canonical JSON (RFC 8785, JCS) and the digests built on it.

Everything duet hashes or signs is first put in this one canonical form, so that a client in
any language can recompute the same bytes.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import rfc8785


def canonical(obj: Any) -> bytes:
    return rfc8785.dumps(obj)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_hex64(value: object) -> bool:
    """64 lowercase hex characters and nothing else (a SHA-256, a key id, a controller id)."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def digest(obj: Any) -> str:
    """SHA-256 hex of the canonical form of ``obj``."""
    return sha256_hex(canonical(obj))


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 UTC time with millisecond precision, e.g. ``2026-11-27T07:00:00.123Z``."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 time; naive times are refused because they are ambiguous."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return moment.astimezone(UTC)
