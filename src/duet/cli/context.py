"""What the global options say, handed to every subcommand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from duet.client.sdk import DuetClient


@dataclass
class CliContext:
    url: str
    key_path: Path | None
    json: bool

    def client(self, *, owner: bool = False) -> "DuetClient":
        from duet.client.sdk import DuetClient, load_owner_key
        from duet.errors import DuetError

        if owner and self.key_path is None:
            raise DuetError("this is an owner operation: pass --key PATH or set DUET_KEY", code="no_owner_key", status=400)
        return DuetClient(self.url, owner_key=load_owner_key(self.key_path) if owner else None)
