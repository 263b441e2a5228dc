"""The user's store of verified controllers, kept in the user's state directory.

A pin is written only by ``duet verify`` (:mod:`duet.client.verify`), after the controller's
evidence, report-data binding and policy held. It holds what every later connection is
checked against: the controller id and signing key (every answer must verify with it) and the
TLS certificate the attested identity names (every TLS connection must present exactly it).
A controller that later presents another key or certificate is refused, never silently
re-pinned; pinning a different controller for the same URL takes ``duet verify --replace``.

The pin also remembers the owner set the attested identity named (who may administer CVMs).
The same controller showing another set later is refused as well (``owners_changed``): an
owner set changes only through recorded ledger entries, and a host that swapped the owner keys
behind the enclave's back must not become an owner silently. :func:`check_repin` is the rule
``duet verify`` applies before it overwrites a pin; :func:`check_same_identity` is the rule a
client applies to the identity a pinned controller serves now.

Pins written by older duet versions (trust on first use, no ``verified_at``) are not trusted:
the controller must be verified again.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import httpx

from duet import keys
from duet.errors import ControllerChanged, DamagedPin


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
    owners_seq: int | None = None
    approval_policy: dict[str, Any] | None = None
    """The approval policy in force when pinned (None: a controller older than approvals)."""
    policy_seq: int | None = None
    """The ledger entries that put the owner set and the policy in force (governed changes)."""

    def public_key(self) -> keys.PublicKey:
        key = keys.load_public_key_bytes(self.signing_key.encode(), "pinned controller key")
        if keys.key_id(key) != self.controller:
            raise DamagedPin("the pinned controller key does not match its id; the pin file is damaged", code="bad_pin")
        return key

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["owners"] = list(self.owners)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ControllerPin:
        known = {f.name for f in fields(cls)}
        try:
            values = {name: value for name, value in data.items() if name in known}
            values["owners"] = tuple(values.get("owners") or ())
            return cls(**values)
        except TypeError:
            raise DamagedPin("a pin in the trust store is damaged; run `duet verify` again", code="bad_pin") from None


class TrustStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "controllers.json"

    @classmethod
    def default(cls) -> TrustStore:
        return cls(user_state_dir())

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return {}
        except ValueError:
            raise DamagedPin(f"{self.path} is damaged; remove it and run `duet verify` again", code="bad_pin") from None

    def _save(self, pins: dict[str, dict[str, Any]]) -> None:
        write_json_atomic(self.path, pins)

    def get(self, url: str) -> ControllerPin | None:
        entry = self._load().get(url.rstrip("/"))
        return ControllerPin.from_dict(entry) if entry else None

    def put(self, url: str, pin: ControllerPin) -> None:
        """Store ``pin`` for ``url`` as it is, replacing any pin there; programs that pin what
        they just verified use :meth:`pin_verified`, which keeps the re-pin rule."""
        pins = self._load()
        pins[url.rstrip("/")] = pin.to_dict()
        self._save(pins)

    def pin_verified(self, url: str, pin: ControllerPin, *, replace: bool = False) -> None:
        """Pin ``pin`` (just verified) for ``url`` unless :func:`check_repin` refuses it: a
        controller with another key, TLS certificate or owner set than the verified one pinned
        there is stored only with ``replace``. Raises :class:`~duet.errors.ControllerChanged`
        (nothing stored) or :class:`~duet.errors.DamagedPin`."""
        check_repin(self.get(url), pin, url=url, replace=replace)
        self.put(url, pin)


# --- a pinned controller that shows another identity ----------------------------------------


def short_id(key_id: str | None) -> str:
    """A key id or hash as people compare them in messages: its first 16 hex characters."""
    return f"{str(key_id)[:16]}…"


def _short_ids(key_ids: Iterable[str]) -> str:
    return ", ".join(short_id(key_id) for key_id in sorted(key_ids)) or "none"


def check_same_identity(pinned: ControllerPin, shown: ControllerPin, *, url: str, remedy: str) -> None:
    """Raise unless ``shown`` is the identity ``pinned`` remembers: same controller id (so the
    same signing key: both ids were checked to be their key's id, which compares keys whatever
    their PEM's formatting) and TLS certificate (else ``controller_changed``), same owner set in
    any order (else ``owners_changed``), same approval policy (else ``policy_changed``).

    A governed change (``owners.change``, ``policy.change``) is named with the ledger entry that
    made it, which the identity document carries; a different owner set without such an entry is
    said to be one no entry recorded. ``remedy`` ends the message with what the user can do about it.
    """
    when = f"you pinned on {pinned.verified_at}" if pinned.verified_at else "seen at first contact"
    if (pinned.controller, pinned.tls_cert_sha256) != (shown.controller, shown.tls_cert_sha256):
        raise ControllerChanged(
            f"the controller at {url} is not the one {when} (pinned {short_id(pinned.controller)}, TLS "
            f"{short_id(pinned.tls_cert_sha256)}; now {short_id(shown.controller)}, TLS "
            f"{short_id(shown.tls_cert_sha256)}). A replaced controller key usually means a new installation; "
            f"{remedy}",
            code="controller_changed",
        )
    added, removed = set(shown.owners) - set(pinned.owners), set(pinned.owners) - set(shown.owners)
    if added or removed:
        governed = shown.owners_seq is not None and shown.owners_seq != pinned.owners_seq
        raise ControllerChanged(
            f"the controller at {url} ({short_id(pinned.controller)}, same key and TLS certificate) now shows "
            f"another owner set than the one {when} (added {_short_ids(added)}; removed {_short_ids(removed)}). "
            + (
                f"Ledger entry {shown.owners_seq} put it in force (a governed owners.change: `duet audit` recounts its "
                "approvals). "
                if governed
                else "Owner sets change only through recorded ledger entries, and none recorded this change: the host "
                "may have swapped the owner keys. "
            )
            + f"Ask the controller's owners whether they changed it; if they did, {remedy}",
            code="owners_changed",
        )
    if pinned.approval_policy is not None and shown.approval_policy != pinned.approval_policy:
        raise ControllerChanged(
            f"the controller at {url} ({short_id(pinned.controller)}) now shows another approval policy than the one "
            f"{when}"
            + (f", put in force by ledger entry {shown.policy_seq}" if shown.policy_seq is not None else "")
            + f" (a governed policy.change: `duet audit` recounts its approvals). If its owners changed it, {remedy}",
            code="policy_changed",
        )


def check_repin(previous: ControllerPin | None, new: ControllerPin, *, url: str, replace: bool) -> None:
    """Raise unless ``new`` (just verified) may overwrite the pin ``previous`` for ``url``.

    Verification proves what a controller runs, not that it is the one the user chose before:
    a re-verified controller with another key, TLS certificate (``controller_changed``) or owner
    set (``owners_changed``) is pinned only when the user asks with ``replace``. Pins without
    ``verified_at`` (older trust-on-first-use ones) were never trusted, so they are overwritten.
    Lives in the SDK so that every program that pins, not only the CLI, keeps the rule.
    """
    if previous is None or not previous.verified_at or replace:
        return
    check_same_identity(previous, new, url=url, remedy="pass --replace to pin it (`duet verify --replace`).")


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` whole (written aside, then renamed), in a private directory: a crash
    leaves the old file or the new one, never a half-written pin or head."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


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


def certificate_pem(der: bytes) -> str:
    """A certificate's DER bytes as PEM text (how pins and ``duet verify --save`` keep it)."""
    return ssl.DER_cert_to_PEM_cert(der)
