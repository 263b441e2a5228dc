"""The user's store of verified controllers, kept in the user's state directory.

A pin is written only by ``duet verify`` (:mod:`duet.client.verify`), after the controller's
evidence, report-data binding and policy held. It holds what every later connection is
checked against: the controller id and signing key (every answer must verify with it) and the
TLS certificate the attested identity names (every TLS connection must present exactly it).
A controller that later presents another key or certificate is refused, never silently
re-pinned; pinning a different controller for the same URL takes ``duet verify --replace``.

Pins written by older duet versions (trust on first use, no ``verified_at``) are not trusted:
the controller must be verified again.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import httpx

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
    """Evidence type seen at verification: ``sgx-dcap``, ``simulated-sgx`` or ``none``."""
    tls_cert_sha256: str | None = None
    tls_cert_pem: str | None = None
    """The certificate presented during verification (it hashed to ``tls_cert_sha256``)."""
    owners: tuple[str, ...] = ()
    attested: bool = False
    """True when the evidence verified; False for a controller pinned with ``--insecure``."""
    verified_at: str | None = None
    """When ``duet verify`` pinned it; None for unverified identities (never stored)."""

    def public_key(self) -> keys.PublicKey:
        key = keys.load_public_key_bytes(self.signing_key.encode(), "pinned controller key")
        if keys.key_id(key) != self.controller:
            raise VerificationError("the pinned controller key does not match its id; the pin file is damaged", code="bad_pin")
        return key

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["owners"] = list(self.owners)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ControllerPin":
        known = {f.name for f in fields(cls)}
        try:
            values = {name: value for name, value in data.items() if name in known}
            values["owners"] = tuple(values.get("owners") or ())
            return cls(**values)
        except TypeError:
            raise VerificationError("a pin in the trust store is damaged; run `duet verify` again", code="bad_pin") from None


class TrustStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "controllers.json"

    @classmethod
    def default(cls) -> "TrustStore":
        return cls(user_state_dir())

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return {}
        except ValueError:
            raise VerificationError(f"{self.path} is damaged; remove it and run `duet verify` again", code="bad_pin") from None

    def _save(self, pins: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(pins, indent=2, sort_keys=True))
        tmp.replace(self.path)

    def get(self, url: str) -> ControllerPin | None:
        entry = self._load().get(url.rstrip("/"))
        return ControllerPin.from_dict(entry) if entry else None

    def put(self, url: str, pin: ControllerPin) -> None:
        pins = self._load()
        pins[url.rstrip("/")] = pin.to_dict()
        self._save(pins)


# --- TLS pinning -----------------------------------------------------------------------------
#
# How the pin is enforced with httpx: the SSL context trusts the pinned certificate as its only
# anchor (the certificate is self-signed and CA:FALSE, so nothing it "issues" is accepted), with
# hostname checking off because the certificate, not a name, is what was attested. OpenSSL thus
# refuses any other certificate during the handshake, before a request is sent. After each
# answer the peer certificate's SHA-256 is compared with the pin again (``peer_certificate``),
# so the check does not rest on OpenSSL's path-building rules alone.


def pinned_ssl_context(cert_pem: str) -> ssl.SSLContext:
    """A client context that accepts exactly ``cert_pem`` and nothing else."""
    context = ssl.create_default_context(cadata=cert_pem)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def unverified_ssl_context() -> ssl.SSLContext:
    """For first contact (``duet verify``, ``--insecure``): the certificate is judged afterwards,
    against the attested identity, not by a CA."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def peer_certificate(response: httpx.Response) -> bytes | None:
    """DER of the TLS certificate the server presented for ``response`` (None over plain HTTP
    or through a transport that does not expose its stream)."""
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    ssl_object = stream.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(True)
    return bytes(der) if der else None


def presented_certificate(url: str, timeout: float = 10.0) -> bytes | None:
    """Fetch the certificate a server presents, without trusting it (to explain a refusal)."""
    parsed = httpx.URL(url)
    try:
        pem = ssl.get_server_certificate((parsed.host, parsed.port or 443), timeout=timeout)
    except (OSError, ValueError):
        return None
    return ssl.PEM_cert_to_DER_cert(pem)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
