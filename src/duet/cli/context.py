"""What the global options say, handed to every subcommand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from duet.cli.output import warn

if TYPE_CHECKING:
    from duet.client import DuetClient


@dataclass
class CliContext:
    url: str
    key_path: Path | None
    json: bool
    insecure: bool = False
    """``--insecure`` / ``DUET_INSECURE``: use a controller that was not verified (said on every run)."""

    def client(self, *, owner: bool = False) -> DuetClient:
        """A client for the controller at ``url``; its trust warnings go to stderr on every run
        (stdout stays one JSON object with --json)."""
        from duet.client import DuetClient, load_owner_key
        from duet.errors import DuetError

        if owner and self.key_path is None:
            raise DuetError("this is an owner operation: pass --key PATH or set DUET_KEY", code="no_owner_key")
        client = DuetClient(self.url, owner_key=load_owner_key(self.key_path) if owner else None, insecure=self.insecure)
        for message in client.warnings:
            warn(message)
        return client
