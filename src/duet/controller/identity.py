"""The controller's identity (design.md §4): its signing key, id and identity document.

The signing key is created at first start and kept in the sealed directory; the controller
id is its key id. The identity document also names the owner keys, so that whoever verifies
the controller's attestation learns who may administer its CVMs.

Owner keys are pinned in sealed state (controller/sealed_state.py) at first start. Why: under Gramine the owner key files
are *allowed* files, which are not measured, so the host could swap them between two starts.
A later start with a different owner set is refused (and recorded in the ledger by the
runtime), never silently accepted.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from duet import __version__, keys
from duet.controller.sealed_state import SealedStateError
from duet.controller.tls import TLS_CERT_FILE, TLS_KEY_FILE
from duet.errors import ConfigError
from duet.protocol.canonical import canonical

SIGNING_KEY_FILE = "controller-signing.pem"


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
            "key files; start without --owner-key (or with the first start's files) to use the owners in force, or "
            "have the owners change them (`duet owners add|remove`)."
        )
        self.pinned, self.given = pinned, given


class ApprovalPolicyChanged(ConfigError):
    """The approval policy file given at this start is not the policy in force."""

    code = "approval_policy_changed"

    def __init__(self, pinned: str, given: str) -> None:
        super().__init__(
            f"refused: the approval policy given at this start (sha256 {given[:16]}…) is neither the one in force "
            f"(sha256 {pinned[:16]}…) nor the first start's. The policy cannot be changed by swapping its file; start "
            "without --approval-policy (or with the first start's file) to use the one in force, or have the owners "
            "change it (`duet policy set FILE`)."
        )
        self.pinned, self.given = pinned, given


def check_owners(pinned: dict[str, str], given: dict[str, str], first: frozenset[str] | None = None) -> dict[str, str]:
    """The owner keys (key id → public PEM) this controller accepts: the set in force (pinned at
    first start, then as governed changes left it). Keys given at a later start must be that set,
    the first start's (``first``: a measured command line names the same files at every start),
    or none; either way the set in force is used."""
    if given and sorted(given) != sorted(pinned) and (first is None or set(given) != set(first)):
        raise OwnerKeysChanged(sorted(pinned), sorted(given))
    return dict(pinned)


PENDING_SUFFIX = ".pending"


def load_signing_key(sealed_dir: Path, *, first_start: bool, anchored: bool) -> keys.PrivateKey:
    """The controller's signing key; on a first start, a new one, kept pending until sealed
    state exists (``commit_first_start``).

    Why pending: a first start that stops half-way (a mistyped owner key, a crash) must not
    leave a signing key without its sealed anchor, which every later start rightly reads as
    deleted sealed state. A pending key was never served with, so it is discarded, with the TLS
    identity made for it. A signing key missing beside an existing anchor is refused: the key
    was deleted or replaced."""
    path, pending = sealed_dir / SIGNING_KEY_FILE, sealed_dir / (SIGNING_KEY_FILE + PENDING_SUFFIX)
    if not first_start:
        return keys.load_private_key(path)
    if anchored and not pending.exists():
        raise SealedStateError(
            f"the controller's signing key is missing from {sealed_dir}, but its sealed anchor "
            "exists: the key was deleted or replaced. Refusing to start (and to make a new key)"
        )
    if pending.exists() and not anchored:
        for name in (SIGNING_KEY_FILE + PENDING_SUFFIX, TLS_KEY_FILE, TLS_CERT_FILE):
            (sealed_dir / name).unlink(missing_ok=True)  # an unfinished first start: nothing was served
    if not pending.exists():
        sealed_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys.write_private_key(pending, ed25519.Ed25519PrivateKey.generate())
    return keys.load_private_key(pending)


def commit_first_start(sealed_dir: Path) -> None:
    """Sealed state exists: the pending signing key becomes the controller's key."""
    os.replace(sealed_dir / (SIGNING_KEY_FILE + PENDING_SUFFIX), sealed_dir / SIGNING_KEY_FILE)


@dataclass(frozen=True)
class Identity:
    """Replaced whole (``dataclasses.replace``) when a governed change puts another owner set
    or approval policy in force: the document, and so the TEE's report data, changes with it."""

    signing_key: keys.PrivateKey
    owners: tuple[str, ...]
    tls_cert_sha256: str | None = None
    approval_policy: dict[str, Any] | None = None
    """The approval policy in force (its canonical dict): who may act, and how many must agree."""
    owners_seq: int | None = None
    policy_seq: int | None = None
    """The ledger entries that put the owner set and the policy in force."""

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
            "owners_seq": self.owners_seq,
            "approval_policy": self.approval_policy,
            "policy_seq": self.policy_seq,
            "version": __version__,
        }

    def report_data(self) -> bytes:
        """What the TEE quote binds: SHA-512 of JCS(identity document), 64 bytes."""
        return hashlib.sha512(canonical(self.document())).digest()
