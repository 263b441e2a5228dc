"""No TEE at all, for development: evidence ``{"type": "none"}`` proves nothing.

Clients must warn loudly when they see it. The sealed directory is an ordinary 0700 directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from duet.tee.base import private_dir, require_report_data


class NoneTee:
    name = "none"

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)

    def quote(self, report_data: bytes) -> dict[str, Any]:
        require_report_data(report_data)
        return {"type": self.name}

    def sealed_dir(self) -> Path:
        return private_dir(self.state_dir / "sealed")
