"""A transparency-log witness (c2sp.org/tlog-witness): it cosigns a log's checkpoints, each only
if it is consistent with the last one it cosigned for that log, so a log cannot show two
audiences two histories and have both cosigned.

``state`` keeps what the witness must never forget (its key, its name, per log the latest
cosigned checkpoint), durably and atomically; ``server`` is the HTTP protocol (``POST
/add-checkpoint``) and its server; ``duet witness serve`` / ``duet witness key`` run it
(docs/witness.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_PORT", "ServeSettings"]

DEFAULT_PORT = 6038
"""Where ``duet witness serve`` listens unless told otherwise (the controller's port + 1)."""


@dataclass(frozen=True)
class ServeSettings:
    """How the witness serves; the limits bound what one client may hold of it (the defaults
    fit checkpoints with a hundred signatures, logs submitting over keep-alive connections)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_body_bytes: int = 64 * 1024
    """A checkpoint with 100 Ed25519 signature lines and 63 proof lines is under 20 KiB."""
    body_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_header_count: int = 50
    max_request_line_bytes: int = 1024
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 5.0
    keep_alive_timeout_s: float = 30.0
    max_connections: int = 1024
    max_connections_per_address: int = 64
    tls_handshake_timeout_s: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
