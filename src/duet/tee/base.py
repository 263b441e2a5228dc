"""What a TEE backend gives the controller: evidence over report data, and a sealed directory.

The controller binds its identity to its evidence by putting SHA-512 of its identity document
in the 64-byte report data (design.md §4). Backends differ only in who vouches for that report
data: nobody (``none``), a locally generated simulated root (``simulated-sgx``), or Intel
(``sgx-dcap``, under Gramine).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from duet.errors import DuetError

REPORT_DATA_SIZE = 64


class TeeError(DuetError):
    code = "tee_error"


@runtime_checkable
class TeeBackend(Protocol):
    name: str
    """``"none"``, ``"simulated-sgx"`` or ``"sgx-dcap"``: also the evidence ``type``."""

    def quote(self, report_data: bytes) -> dict[str, Any]:
        """Evidence JSON ``{"type": name, "quote": base64 (absent for none), ...}`` over ``report_data``."""
        ...

    def sealed_dir(self) -> Path:
        """A directory (mode 0700) whose contents only this TEE can read."""
        ...


def require_report_data(report_data: bytes) -> bytes:
    """Report data must be exactly 64 bytes: padding silently (as Gramine does) hides mistakes."""
    if not isinstance(report_data, bytes | bytearray) or len(report_data) != REPORT_DATA_SIZE:
        size = len(report_data) if isinstance(report_data, bytes | bytearray) else type(report_data).__name__
        raise TeeError(
            f"report data must be exactly {REPORT_DATA_SIZE} bytes (e.g. a SHA-512 digest), got {size}", code="bad_report_data"
        )
    return bytes(report_data)


def private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700 (and fix the mode if it already exists)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
