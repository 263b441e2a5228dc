"""C2SP checkpoints (c2sp.org/tlog-checkpoint) and cosignature/v1 (c2sp.org/tlog-cosignature).

A checkpoint is the ledger's tree head as a signed note whose text is exactly::

    <origin>
    <tree size, decimal>
    <root hash, base64>
    [extension lines]

The controller signs it with its Ed25519 signing key under a key name equal to the origin;
witnesses (tlog-witness) add cosignature/v1 lines: a timestamped Ed25519 signature (type 0x04)
over ``"cosignature/v1\\ntime <t>\\n" + checkpoint text``. Beside the JSON tree head
(``duet.ledger.heads``), this is the form that existing witnesses, monitors and tlog tools read.

The origin of a duet ledger is ``controller_origin(controller id)``: ``duet.controller/<id>``,
the controller id being the SHA-256 (hex) of its signing key's SubjectPublicKeyInfo. It is a
schema-less, URL-like name without spaces or plus signs, as the spec recommends, unique per
controller (so per log), and an auditor who pinned the controller's key can derive it instead of
being told it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from cryptography.hazmat.primitives.asymmetric import ed25519

from duet import keys
from duet.ledger.merkle import EMPTY_ROOT, HASH_SIZE
from duet.ledger.note import (
    COSIGNATURE_V1,
    MAX_SIGNATURES,
    BadVerifierKey,
    Note,
    NoteError,
    NoteNotSigned,
    NoteSignature,
    NoteSignatureInvalid,
    NoteSigner,
    NoteVerifier,
    b64decode,
    b64encode,
    open_note,
    parse_signature_lines,
    sign_note,
)
from duet.protocol.canonical import is_hex64

__all__ = [
    "MAX_TIMESTAMP",
    "ORIGIN_PREFIX",
    "Checkpoint",
    "CheckpointError",
    "Cosignature",
    "CosignatureSigner",
    "CosignatureVerifier",
    "CosignedCheckpoint",
    "MalformedCheckpoint",
    "WitnessQuorumNotMet",
    "controller_origin",
    "cosign",
    "cosignature_message",
    "log_signer",
    "parse_checkpoint",
    "sign_checkpoint",
    "verify_checkpoint",
    "verify_cosignature",
    "verify_cosigned_checkpoint",
    "witness_vkey",
]

ORIGIN_PREFIX = "duet.controller/"
MAX_SIZE = 2**64 - 1
"""Tree sizes are uint64 in tlog-witness; a larger size is no checkpoint anyone can cosign."""
MAX_TIMESTAMP = 2**63 - 1
"""tlog-cosignature: a cosignature's timestamp MUST NOT exceed 2^63 - 1."""

_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_COSIGNATURE_SIZE = 8 + 64


class CheckpointError(NoteError):
    """A checkpoint does not verify, or is not the log's (``wrong_origin``, ``bad_empty_root``,
    ``not_signed_by_log``, ``wrong_witness``, ``duplicate_witness_key``, ``bad_quorum``)."""

    code = "bad_checkpoint"


class MalformedCheckpoint(CheckpointError):
    """The note text is not a checkpoint."""

    code = "malformed_checkpoint"


class WitnessQuorumNotMet(CheckpointError):
    """Fewer known witnesses than the policy asks cosigned the checkpoint; ``cosigned`` says
    which did."""

    code = "witness_quorum"

    def __init__(self, message: str, *, cosigned: tuple[Cosignature, ...]) -> None:
        super().__init__(message)
        self.cosigned = cosigned


def controller_origin(controller_id: str) -> str:
    """The checkpoint origin (and log key name) of the controller ``controller_id``."""
    if not is_hex64(controller_id):
        raise ValueError(f"a controller id is 64 lowercase hex characters, got {controller_id!r}")
    return ORIGIN_PREFIX + controller_id


def _line_ok(line: str) -> bool:
    return bool(line) and not any(ord(ch) < 0x20 for ch in line)


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: ``origin``, ``size`` leaves, RFC 6962 ``root`` hash, and optional
    opaque extension lines (the spec does not recommend them; duet writes none)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not _line_ok(self.origin):
            raise MalformedCheckpoint("a checkpoint's origin is one non-empty line without control characters")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 0 <= self.size <= MAX_SIZE:
            raise MalformedCheckpoint(f"a checkpoint's size is an integer from 0 to 2^64 - 1, got {self.size!r}")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise MalformedCheckpoint(f"a checkpoint's root hash is {HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple) or not all(isinstance(e, str) and _line_ok(e) for e in self.extensions):
            raise MalformedCheckpoint("a checkpoint's extension lines are non-empty lines without control characters")

    def body(self) -> str:
        """The note text: what the log signs and witnesses cosign, final newline included."""
        return "".join(f"{line}\n" for line in (self.origin, str(self.size), b64encode(self.root), *self.extensions))

    @property
    def root_hash(self) -> str:
        """The root in the lowercase hex the JSON heads use."""
        return self.root.hex()


def parse_checkpoint(text: str) -> Checkpoint:
    """The checkpoint a note's text states (no signature is checked: see ``verify_checkpoint``).

    Byte-exact: ``parse_checkpoint(text).body() == text`` for every text it accepts, since the
    size must be decimal without leading zeros and the root canonical base64 of 32 bytes."""
    if not isinstance(text, str) or not text.endswith("\n"):
        raise MalformedCheckpoint("a checkpoint's text is lines each ending in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedCheckpoint(f"a checkpoint has at least three lines (origin, size, root hash), got {len(lines)}")
    origin, size_line, root_line, *extensions = lines
    if not origin:
        raise MalformedCheckpoint("the checkpoint's origin line is empty")
    if not size_line.isascii() or not _DECIMAL.fullmatch(size_line):
        raise MalformedCheckpoint(f"the checkpoint's size {size_line[:30]!r} is not a decimal number without leading zeros")
    size = int(size_line)
    if size > MAX_SIZE:
        raise MalformedCheckpoint(f"the checkpoint's size {size_line[:30]} is beyond 2^64 - 1")
    try:
        root = b64decode(root_line)
    except ValueError:
        raise MalformedCheckpoint("the checkpoint's root hash is not canonical base64") from None
    if len(root) != HASH_SIZE:
        raise MalformedCheckpoint(f"the checkpoint's root hash is {len(root)} bytes, not {HASH_SIZE} (SHA-256)")
    if not all(extensions):
        raise MalformedCheckpoint("the checkpoint has an empty extension line")
    return Checkpoint(origin, size, root, tuple(extensions))


def log_signer(private_key: keys.PrivateKey, controller_id: str) -> NoteSigner:
    """The controller's checkpoint signer: its Ed25519 key, named after its origin."""
    return NoteSigner(controller_origin(controller_id), private_key)


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner | keys.PrivateKey, *, keep: Sequence[NoteSignature] = ()) -> bytes:
    """The signed checkpoint note. A bare private key signs under the checkpoint's origin, as
    the spec recommends for the log's key name; ``keep`` carries cosignatures along."""
    if not isinstance(signer, NoteSigner):
        signer = NoteSigner(checkpoint.origin, signer)
    return sign_note(checkpoint.body(), [signer], keep=keep)


def _checkpoint_of(note: Note, origin: str) -> Checkpoint:
    checkpoint = parse_checkpoint(note.text)
    if checkpoint.origin != origin:
        raise CheckpointError(f"the checkpoint is of log {checkpoint.origin!r}, not {origin!r}", code="wrong_origin")
    if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
        raise CheckpointError("the checkpoint of an empty log has a root other than SHA-256 of nothing", code="bad_empty_root")
    return checkpoint


def verify_checkpoint(note: bytes, verifier: NoteVerifier, *, origin: str | None = None) -> Checkpoint:
    """The checkpoint in ``note`` if the log key ``verifier`` signed it and it is of ``origin``
    (default: the key's name, as the spec has the log name its key). Other signatures, such as
    cosignatures, are ignored here: ``verify_cosigned_checkpoint`` counts them."""
    opened = open_note(note, [verifier])
    return _checkpoint_of(opened.note, verifier.name if origin is None else origin)


# --- cosignature/v1 ------------------------------------------------------------------------------


def cosignature_message(timestamp: int, text: bytes) -> bytes:
    """What a cosignature/v1 signs: the header, the time line, then the whole checkpoint text."""
    return b"cosignature/v1\ntime %d\n" % timestamp + text


def _check_timestamp(timestamp: object) -> int:
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or not 0 < timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"a cosignature timestamp is POSIX seconds from 1 to 2^63 - 1, got {timestamp!r}")
    return timestamp


class CosignatureVerifier(NoteVerifier):
    """A witness's key (type 0x04): verifies cosignature/v1 lines.

    The signed message does not commit to the witness's name, so one key must never serve two
    witnesses; ``verify_cosigned_checkpoint`` refuses a policy where it does. A timestamp of 0
    is refused: tlog-witness forbids witnesses to omit it."""

    signature_type: ClassVar[int] = COSIGNATURE_V1

    def verify(self, text: bytes, signature: bytes) -> bool:
        if len(signature) != _COSIGNATURE_SIZE:
            return False
        timestamp = int.from_bytes(signature[:8], "big")
        if not 0 < timestamp <= MAX_TIMESTAMP:
            return False
        return self._ed25519_verify(signature[8:], cosignature_message(timestamp, text))

    @staticmethod
    def timestamp(signature: NoteSignature) -> int:
        """The time a cosignature states (meaningful once it verified)."""
        return int.from_bytes(signature.signature[:8], "big")


class CosignatureSigner(NoteSigner):
    """A witness's signer: each ``sign`` is a cosignature/v1 at the clock's current second."""

    signature_type: ClassVar[int] = COSIGNATURE_V1

    def __init__(self, name: str, private_key: keys.PrivateKey, clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, private_key)
        self._clock = clock

    def sign(self, text: bytes) -> bytes:
        return self.sign_at(text, int(self._clock()))

    def sign_at(self, text: bytes, timestamp: int) -> bytes:
        timestamp = _check_timestamp(timestamp)
        return timestamp.to_bytes(8, "big") + self._private_key.sign(cosignature_message(timestamp, text))

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self.public_key)


def witness_vkey(name: str, public_key: keys.PublicKey | bytes) -> str:
    """The vkey (type 0x04) that names a witness's Ed25519 key for cosignature/v1."""
    return CosignatureVerifier(name, public_key).vkey


def cosign(checkpoint: Checkpoint, witness_key: keys.PrivateKey, name: str, timestamp: int) -> str:
    """The cosignature/v1 line (final newline included) of witness ``name`` over ``checkpoint``
    at ``timestamp`` (POSIX seconds): a witness's add-checkpoint answer is such lines."""
    if not isinstance(witness_key, ed25519.Ed25519PrivateKey):
        raise BadVerifierKey("a cosignature/v1 witness key is an Ed25519 key", code="unsupported_signature_type")
    signer = CosignatureSigner(name, witness_key)
    signature = signer.sign_at(checkpoint.body().encode("utf-8"), timestamp)
    return NoteSignature(signer.name, signer.key_id, signature).line()


def verify_cosignature(checkpoint: Checkpoint, line: str | NoteSignature, witness: CosignatureVerifier) -> int:
    """The timestamp of ``line`` if it is ``witness``'s valid cosignature of ``checkpoint``."""
    if isinstance(line, NoteSignature):
        signature = line
    else:
        text = line if line.endswith("\n") else line + "\n"
        (signature,) = parse_signature_lines(text.encode("utf-8"), max_signatures=1)
    if (signature.name, signature.key_id) != (witness.name, witness.key_id):
        raise CheckpointError(
            f"the cosignature is by {signature.name}+{signature.key_id:08x}, not the witness {witness.name}+{witness.key_id:08x}",
            code="wrong_witness",
        )
    if not witness.verify(checkpoint.body().encode("utf-8"), signature.signature):
        raise NoteSignatureInvalid(
            f"the cosignature of witness {witness.name!r} does not verify for this checkpoint",
            name=signature.name,
            key_id=signature.key_id,
        )
    return CosignatureVerifier.timestamp(signature)


@dataclass(frozen=True)
class Cosignature:
    witness: CosignatureVerifier
    timestamp: int
    signature: NoteSignature


@dataclass(frozen=True)
class CosignedCheckpoint:
    """A checkpoint the log signed, with the known witnesses that cosigned it (one each)."""

    checkpoint: Checkpoint
    note: Note
    cosignatures: tuple[Cosignature, ...]

    @property
    def witnesses(self) -> tuple[str, ...]:
        return tuple(c.witness.name for c in self.cosignatures)


def verify_cosigned_checkpoint(
    note: bytes,
    log: NoteVerifier,
    witnesses: Sequence[CosignatureVerifier],
    *,
    quorum: int,
    origin: str | None = None,
    max_signatures: int = MAX_SIGNATURES,
) -> CosignedCheckpoint:
    """The checkpoint if ``log`` signed it and at least ``quorum`` of ``witnesses`` cosigned it.

    A controller showing two audiences two histories needs two checkpoints of one size: a witness
    cosigns only one of them, so with a quorum both cannot pass. Witnesses are counted by key,
    and a cosignature that fails to verify rejects the note (as any known key's bad signature)."""
    if not isinstance(quorum, int) or isinstance(quorum, bool) or not 0 <= quorum <= len(witnesses):
        raise CheckpointError(f"a quorum of {quorum!r} out of {len(witnesses)} witnesses cannot be met", code="bad_quorum")
    by_key: dict[bytes, str] = {}
    for witness in witnesses:
        if not isinstance(witness, CosignatureVerifier):
            raise BadVerifierKey(
                f"witness {witness.name!r} is not a cosignature/v1 (0x04) key", code="unsupported_signature_type"
            )
        if by_key.setdefault(witness.public_key, witness.name) != witness.name:
            raise CheckpointError(
                f"witnesses {by_key[witness.public_key]!r} and {witness.name!r} share one key: a cosignature/v1 does not "
                "name its witness, so one key's cosignature would count for both",
                code="duplicate_witness_key",
            )
    opened = open_note(note, [log, *witnesses], max_signatures=max_signatures)
    if log not in opened.signed_by:
        raise NoteNotSigned(f"the checkpoint is not signed by the log key {log.name!r}", note=opened.note)
    checkpoint = _checkpoint_of(opened.note, log.name if origin is None else origin)
    cosigned = tuple(
        Cosignature(v.verifier, CosignatureVerifier.timestamp(v.signature), v.signature)
        for v in opened.verified
        if isinstance(v.verifier, CosignatureVerifier)
    )
    if len(cosigned) < quorum:
        signed = ", ".join(c.witness.name for c in cosigned) or "none"
        raise WitnessQuorumNotMet(
            f"{len(cosigned)} of the {len(witnesses)} known witnesses cosigned the checkpoint ({signed}); {quorum} are required",
            cosigned=cosigned,
        )
    return CosignedCheckpoint(checkpoint, opened.note, cosigned)
