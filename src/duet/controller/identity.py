"""The controller's identity (design.md §4): its signing key, id and identity document.

The signing key is created at first start and kept in the sealed directory; the controller
id is its key id. The identity document also names the owner keys, so that whoever verifies
the controller's attestation learns who may administer its CVMs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from duet import __version__, keys
from duet.protocol.canonical import canonical

SIGNING_KEY_FILE = "controller-signing.pem"


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

    @property
    def controller_id(self) -> str:
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
