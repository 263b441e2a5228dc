"""The user's store of controllers they trust, kept in the user's state directory.

A controller is pinned by its id and signing key; every later answer must verify with that
key. A controller that later presents another key is refused, not silently re-pinned.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from duet import keys
from duet.errors import VerificationError


def user_state_dir() -> Path:
    """``$DUET_HOME``, else ``$XDG_STATE_HOME/duet``, else ``~/.local/state/duet``."""
    if os.environ.get("DUET_HOME"):
        return Path(os.environ["DUET_HOME"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "duet"


@dataclass(frozen=True)
class ControllerPin:
    controller: str
    signing_key: str
    tee: str

    def public_key(self) -> keys.PublicKey:
        key = keys.load_public_key_bytes(self.signing_key.encode(), "pinned controller key")
        if keys.key_id(key) != self.controller:
            raise VerificationError("the pinned controller key does not match its id; the pin file is damaged", code="bad_pin")
        return key


class TrustStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "controllers.json"

    @classmethod
    def default(cls) -> "TrustStore":
        return cls(user_state_dir())

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads(self.path.read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return {}
        except ValueError:
            raise VerificationError(f"{self.path} is damaged; remove it to pin controllers again", code="bad_pin") from None

    def get(self, url: str) -> ControllerPin | None:
        entry = self._load().get(url.rstrip("/"))
        return ControllerPin(**entry) if entry else None

    def put(self, url: str, pin: ControllerPin) -> None:
        pins = self._load()
        pins[url.rstrip("/")] = asdict(pin)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(pins, indent=2, sort_keys=True))
        tmp.replace(self.path)

    def forget(self, url: str) -> None:
        pins = self._load()
        if pins.pop(url.rstrip("/"), None) is not None:
            self.path.write_text(json.dumps(pins, indent=2, sort_keys=True))
