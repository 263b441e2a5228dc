"""The controller's anchor in sealed state: what the host's disk cannot rewrite (design.md §1, §7).

The host owns the state database; it may edit, delete or roll back any row. Only the TEE's
sealed directory is beyond its reach (under Gramine an encrypted mount keyed to MRENCLAVE:
the host can delete or replace whole files with older copies, but cannot read or forge one).
So the few facts every decision rests on live here, in one file written after every commit:

* the signed head of the ledger (size and root): at start the stored ledger must reproduce
  it, so an edited, re-tagged or truncated entry stops the start;
* a MAC key: entries committed after the last sealed head (a crash between the database
  commit and this file's write) are accepted only with a valid MAC bound to that head, so
  the host can neither append entries of its own nor, with an older copy of this file,
  keep a history it cut after the transaction that followed that copy;
* one data key per CVM SSH key: destroying a CVM's key destroys its data key here
  (crypto-shredding), so a ciphertext written back into the database decrypts no more;
* the owner set and the approval policy, pinned at first start and changed only by a
  governed change the ledger records (``govern``).

One file, not several, so that the host cannot mix versions of them: replacing it with an
older copy is refused at start unless the database is rolled back to the same moment too,
which is a rollback of the whole state — caught only by auditors and witnesses
(docs/security.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from duet import keys
from duet.errors import ConfigError, VerificationError
from duet.ledger.heads import sign_head, verify_head
from duet.ledger.merkle import EMPTY_ROOT
from duet.protocol.canonical import timestamp

ANCHOR_FILE = "anchor.json"
FORMAT = 1


class SealedStateError(ConfigError):
    """Sealed state is missing, damaged or disagrees with the database: refuse to start."""

    code = "sealed_state_tampered"


@dataclass(frozen=True)
class SealedHead:
    tree_size: int
    root: bytes


class SealedState:
    """The anchor file, held in memory; ``seal`` writes it whole after each commit."""

    def __init__(
        self,
        path: Path,
        signing_key: keys.PrivateKey,
        controller_id: str,
        data: dict[str, Any],
        *,
        generation: int = 0,
        slot_size: int = 0,
    ) -> None:
        self.path = path
        self._generation, self._slot_size = generation, slot_size
        self._signing_key = signing_key
        self._controller_id = controller_id
        try:
            head = verify_head(data["head"], controller=controller_id, public_key=signing_key.public_key())
            self.head = SealedHead(head.tree_size, head.root)
            self.mac_key = base64.b64decode(data["mac_key"], validate=True)
            self._data_keys = {cvm: base64.b64decode(key, validate=True) for cvm, key in data["data_keys"].items()}
            self.owners: dict[str, str] = dict(data["owners"])
            policy = data.get("approval_policy")  # absent in anchors older than approvals: the default
            self.approval_policy: dict[str, Any] | None = dict(policy) if isinstance(policy, dict) else None
            if data.get("format") != FORMAT or len(self.mac_key) != 32 or not self.owners:
                raise ValueError
        except VerificationError:
            raise SealedStateError(
                f"the sealed anchor {path} is not signed by this controller's signing key: the "
                "signing key was replaced; refusing to start"
            ) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SealedStateError(
                f"the sealed anchor {path} is damaged ({type(exc).__name__}); refusing to start on state that cannot be checked"
            ) from None

    # --- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        sealed_dir: Path,
        signing_key: keys.PrivateKey,
        *,
        first_start: bool,
        owners: dict[str, str],
        approval_policy: dict[str, Any] | None = None,
    ) -> SealedState:
        """Load the anchor; create it only on a first start (no signing key existed before).

        ``owners`` are the keys given at this start, pinned when the anchor is created, with
        ``approval_policy`` (the canonical dict of the policy file; None: the default). A
        missing anchor for a controller that already had a signing key is tampering (or a
        state directory of an older duet), never a first start: the owner set and the
        ledger's anchor would otherwise be whatever the host chose."""
        controller_id = keys.key_id(signing_key.public_key())
        path = sealed_dir / ANCHOR_FILE
        if path.exists():
            generation, slot_size, data = read_anchor_file(path)
            return cls(path, signing_key, controller_id, data, generation=generation, slot_size=slot_size)
        if not first_start:
            raise SealedStateError(
                f"the sealed anchor {path} is missing, but this controller's signing key exists: sealed state was "
                "deleted (or the state directory is from a duet older than the sealed anchor). Refusing to start: "
                "the owner set and the ledger's sealed head cannot be re-created from what the host left."
            )
        if not owners:
            raise ConfigError("no owner key given: pass --owner-key PUB at least once", code="no_owner_keys")
        data = {
            "format": FORMAT,
            "head": sign_head(
                {"tree_size": 0, "root_hash": EMPTY_ROOT.hex(), "timestamp": timestamp(), "controller": controller_id},
                signing_key,
            ),
            "mac_key": base64.b64encode(secrets.token_bytes(32)).decode(),
            "data_keys": {},
            "owners": dict(owners),
            "approval_policy": approval_policy,
        }
        state = cls(path, signing_key, controller_id, data)
        state._rewrite(data)
        return state

    # --- the ledger's anchor ---------------------------------------------------------------

    def entry_mac(self, entry_bytes: bytes) -> bytes:
        """MAC of a ledger entry's canonical bytes, bound to the sealed head it follows.

        Why bound to the head: entries are written after the head sealed at the previous
        commit, so at start only the one transaction after the sealed head can verify. An
        older copy of this file put back by the host then accepts no later history than the
        transaction right after it, never a tail the host cut wherever it liked."""
        key = hmac.new(self.mac_key, b"duet-entry-mac/v1\0%d\0%s" % (self.head.tree_size, self.head.root), hashlib.sha256)
        return hmac.new(key.digest(), entry_bytes, hashlib.sha256).digest()

    def entry_mac_valid(self, entry_bytes: bytes, mac: bytes | None) -> bool:
        return mac is not None and hmac.compare_digest(self.entry_mac(entry_bytes), bytes(mac))

    def seal(self, tree_size: int, root: bytes) -> None:
        """Record the committed ledger head (and the current data keys) in sealed state."""
        self.head = SealedHead(tree_size, root)
        self._write(self._document())

    def govern(self, *, owners: dict[str, str], approval_policy: dict[str, Any] | None) -> None:
        """Pin the owner set and policy a governed change put in force (called once its ledger
        entry committed; at start, when the ledger shows a change a crash kept from here)."""
        self.owners, self.approval_policy = dict(owners), approval_policy
        self._write(self._document())

    # --- per-CVM data keys (crypto-shredding) --------------------------------------------------

    def encrypt_ssh_key(self, cvm_id: str, private_key: str) -> bytes:
        """Encrypt a CVM's SSH key under a fresh data key of its own (sealed at the next commit)."""
        data_key = AESGCM.generate_key(bit_length=256)
        self._data_keys[cvm_id] = data_key
        nonce = os.urandom(12)
        return nonce + AESGCM(data_key).encrypt(nonce, private_key.encode(), cvm_id.encode())

    def decrypt_ssh_key(self, cvm_id: str, ciphertext: bytes | None) -> str | None:
        """The CVM's SSH key, or None once its data key was destroyed (whatever the database holds)."""
        data_key = self._data_keys.get(cvm_id)
        if data_key is None or ciphertext is None:
            return None
        try:
            return AESGCM(data_key).decrypt(ciphertext[:12], ciphertext[12:], cvm_id.encode()).decode()
        except (InvalidTag, ValueError):
            raise SealedStateError(
                f"the stored SSH key of CVM {cvm_id[:16]}… does not decrypt with its sealed data "
                "key: the database row was replaced"
            ) from None

    def has_data_key(self, cvm_id: str) -> bool:
        return cvm_id in self._data_keys

    def destroy_data_key(self, cvm_id: str) -> None:
        """Forget the data key; the next ``seal`` (right after the commit recording it) drops it from disk."""
        self._data_keys.pop(cvm_id, None)

    def cvms_with_keys(self) -> set[str]:
        return set(self._data_keys)

    # --- writing -------------------------------------------------------------------------------

    def _document(self) -> dict[str, Any]:
        head = sign_head(
            {
                "tree_size": self.head.tree_size,
                "root_hash": self.head.root.hex(),
                "timestamp": timestamp(),
                "controller": self._controller_id,
            },
            self._signing_key,
        )
        return {
            "format": FORMAT,
            "head": head,
            "mac_key": base64.b64encode(self.mac_key).decode(),
            "data_keys": {cvm: base64.b64encode(key).decode() for cvm, key in sorted(self._data_keys.items())},
            "owners": self.owners,
            "approval_policy": self.approval_policy,
        }

    def _write(self, data: dict[str, Any]) -> None:
        """Write the next generation into the older of the file's two slots, in place.

        Why slots and not write-then-rename: this runs after every commit, and a rename costs
        about ten times a write here. A crash mid-write tears only the slot being written; the
        other slot still holds the previous generation, and a torn slot fails its checksum."""
        self._generation += 1
        record = _slot_record(self._generation, data)
        if len(record) > self._slot_size:
            self._rewrite(data)
            return
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, record.ljust(self._slot_size, b"\0"), (self._generation % 2) * self._slot_size)
        finally:
            os.close(fd)

    def _rewrite(self, data: dict[str, Any]) -> None:
        """A new file (first start, or a document outgrowing its slots): written aside, then renamed."""
        self._generation += 1
        record = _slot_record(self._generation, data)
        self._slot_size = max(MIN_SLOT, 1 << (2 * len(record) - 1).bit_length())
        image = bytearray(2 * self._slot_size)
        image[(self._generation % 2) * self._slot_size :][: len(record)] = record
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(image))
        finally:
            os.close(fd)
        os.replace(tmp, self.path)


MIN_SLOT = 16 * 1024
_MAGIC = b"duet-anchor/1"


def _slot_record(generation: int, data: dict[str, Any]) -> bytes:
    body = json.dumps({"generation": generation, "anchor": data}, separators=(",", ":")).encode()
    return b"%s %d %s\n%s" % (_MAGIC, len(body), hashlib.sha256(body).hexdigest().encode(), body)


def _parse_slot(slot: bytes) -> tuple[int, dict[str, Any]] | None:
    try:
        magic, length, digest = slot.split(b"\n", 1)[0].split(b" ")
        body = slot.split(b"\n", 1)[1][: int(length)]
        if magic != _MAGIC or hashlib.sha256(body).hexdigest().encode() != digest:
            return None
        record = json.loads(body)
        return int(record["generation"]), record["anchor"]
    except (ValueError, IndexError, KeyError, TypeError):
        return None


def read_anchor_file(path: Path) -> tuple[int, int, dict[str, Any]]:
    """(generation, slot size, anchor document) of the newest intact slot."""
    try:
        image = path.read_bytes()
    except OSError as exc:
        raise SealedStateError(f"the sealed anchor {path} is unreadable ({exc.strerror}); refusing to start") from None
    slot_size = len(image) // 2
    slots = [_parse_slot(image[i * slot_size : (i + 1) * slot_size]) for i in (0, 1)] if slot_size else []
    intact = [slot for slot in slots if slot is not None]
    if not intact:
        raise SealedStateError(f"the sealed anchor {path} is damaged (no intact slot); refusing to start")
    generation, data = max(intact, key=lambda slot: slot[0])
    return generation, slot_size, data


def read_anchor(path: Path) -> dict[str, Any]:
    """The newest anchor document in ``path`` (for the controller, and for tests that play the host)."""
    return read_anchor_file(path)[2]
