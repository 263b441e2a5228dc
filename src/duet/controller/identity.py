"""The controller's identity (design.md §4): its signing key, id and identity document.

The signing key is created at first start and kept in the sealed directory; the controller
id is its key id. The identity document also names the owner keys, so that whoever verifies
the controller's attestation learns who may administer its CVMs.

Owner keys are pinned in sealed state at first start. Why: under Gramine the owner key files
are *allowed* files, which are not measured, so the host could swap them between two starts.
A later start with a different owner set is refused (and recorded in the ledger by the
runtime), never silently accepted.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from duet import __version__, keys
from duet.errors import ConfigError
from duet.protocol.canonical import canonical

SIGNING_KEY_FILE = "controller-signing.pem"
OWNERS_FILE = "owners.json"


class OwnerKeysChanged(ConfigError):
    """The owner keys given at this start differ from those pinned at first start."""

    code = "owner_keys_changed"

    def __init__(self, pinned: list[str], given: list[str]) -> None:
        added = sorted(set(given) - set(pinned))
        removed = sorted(set(pinned) - set(given))
        super().__init__(
            "refused: the owner keys given at this start differ from the ones pinned in sealed state at first "
            f"start (new: {', '.join(k[:16] + '…' for k in added) or 'none'}; missing: "
            f"{', '.join(k[:16] + '…' for k in removed) or 'none'}). The owner set cannot be changed by swapping "
            "key files; start without --owner-key to use the pinned owners."
        )
        self.pinned, self.given = pinned, given


def pin_owners(sealed_dir: Path, given: dict[str, str]) -> dict[str, str]:
    """The owner keys (key id → public PEM) this controller accepts, pinned at first start.

    ``given`` are the keys passed at this start. At first start they are pinned; later they
    must be exactly the pinned set, or be empty (then the pinned set is used).
    """
    path = sealed_dir / OWNERS_FILE
    if not path.exists():
        if not given:
            raise ConfigError("no owner key given: pass --owner-key PUB at least once", code="no_owner_keys")
        sealed_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"owners": given}, indent=2, sort_keys=True))
        os.replace(tmp, path)
        return dict(given)
    try:
        pinned: dict[str, str] = json.loads(path.read_text())["owners"]
        if not isinstance(pinned, dict) or not pinned:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError("the sealed owner pin is damaged; refusing to guess who may administer",
                          code="owner_pin_damaged") from None
    if given and sorted(given) != sorted(pinned):
        raise OwnerKeysChanged(sorted(pinned), sorted(given))
    return pinned


def load_or_create_signing_key(sealed_dir: Path) -> keys.PrivateKey:
    path = sealed_dir / SIGNING_KEY_FILE
    if not path.exists():
        sealed_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys.write_private_key(path, ed25519.Ed25519PrivateKey.generate())
    return keys.load_private_key(path)


@dataclass(frozen=True)
class Identity:
    signing_key: keys.PrivateKey
    owners: tuple[str, ...]
    tls_cert_sha256: str | None = None

    @cached_property
    def controller_id(self) -> str:
        """Named in every answer, so computed once."""
        return keys.key_id(self.signing_key.public_key())

    def document(self) -> dict[str, Any]:
        return {
            "controller": self.controller_id,
            "signing_key": keys.public_pem(self.signing_key.public_key()).decode(),
            "tls_cert_sha256": self.tls_cert_sha256,
            "owners": sorted(self.owners),
            "version": __version__,
        }

    def report_data(self) -> bytes:
        """What the TEE quote binds: SHA-512 of JCS(identity document), 64 bytes."""
        return hashlib.sha512(canonical(self.document())).digest()
