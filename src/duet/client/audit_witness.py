"""Checkpoints in ``duet audit``: the controller's C2SP checkpoint notes taken as heads, and the
auditor's own witness policy (``--witness VKEY ... --witness-quorum K``).

A checkpoint note (``duet.ledger.checkpoint``) is, like a JSON signed head, the controller's
signed statement "my ledger of N entries has root R", under its pinned key and its origin
``duet.controller/<id>``. It carries no time, and cosignature lines of witnesses may follow the
controller's signature. :class:`NoteHead` is such a note as the auditor keeps it (the note as
read, its size and root, and when this auditor read it): ``duet audit --tiles`` audits against
it as a controller audit does against a signed head, and keeps it as the last head seen.

:class:`WitnessPolicy` is what the auditor requires of a checkpoint: signed by the pinned
controller key, and cosigned by at least ``quorum`` of the witnesses it names (each by its
cosignature/v1 vkey, reported by the vkey's key name). A witness cosigns a checkpoint only if
it is consistent with every one it cosigned before, so with ``quorum`` more than half of the
witnesses, at most one history of a controller can meet the policy (docs/transparency.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from duet import keys
from duet.client.checkpoints import QuorumNotMet, controller_log_verifier, verify_checkpoint_quorum
from duet.errors import ConfigError, VerificationError
from duet.ledger.checkpoint import Checkpoint, CosignatureVerifier, controller_origin, verify_checkpoint
from duet.ledger.heads import SignedHead, parse_head, verify_head
from duet.ledger.note import NoteError
from duet.protocol.canonical import is_hex64, timestamp

__all__ = ["Head", "NoteHead", "WitnessPolicy", "Witnessed", "parse_any_head", "verify_any_head"]

NOTE_HEAD_FIELDS = ("tree_size", "root_hash", "controller", "checkpoint", "seen")


@dataclass(frozen=True)
class NoteHead:
    """A checkpoint note the pinned controller key signed, as this auditor read it.

    ``note`` is the note as served (cosignature lines included); ``seen`` is when this auditor
    first read it, by its own clock: a checkpoint carries no time of its own. ``timestamp`` is
    ``seen``, so messages about heads read the same for both kinds."""

    tree_size: int
    root_hash: str
    controller: str
    note: str
    seen: str

    @property
    def root(self) -> bytes:
        return bytes.fromhex(self.root_hash)

    @property
    def timestamp(self) -> str:
        return self.seen

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(controller_origin(self.controller), self.tree_size, self.root)

    def short(self) -> str:
        return f"checkpoint of size {self.tree_size}, root {self.root_hash[:16]}…, read {self.seen}"

    def to_json(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "controller": self.controller,
            "checkpoint": self.note,
            "seen": self.seen,
        }

    @classmethod
    def of(cls, note: bytes, checkpoint: Checkpoint, controller: str, *, seen: str | None = None) -> NoteHead:
        """The head of ``note``, whose ``checkpoint`` the caller verified with ``controller``'s key."""
        return cls(checkpoint.size, checkpoint.root_hash, controller, note.decode("utf-8"), seen or timestamp())


Head = SignedHead | NoteHead
"""What an audit verifies the ledger against: the controller's JSON signed head, or its
checkpoint note (``--tiles``)."""


def parse_note_head(data: Any) -> NoteHead:
    """Shape checks only; :func:`verify_note_head` checks the note's signature."""
    if not isinstance(data, dict) or set(data) != set(NOTE_HEAD_FIELDS):
        raise VerificationError(
            "the checkpoint head is not {tree_size, root_hash, controller, checkpoint, seen}", code="bad_head"
        )
    size = data["tree_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise VerificationError(f"the checkpoint head's tree_size {size!r} is not a size", code="bad_head")
    if not is_hex64(data["root_hash"]) or not is_hex64(data["controller"]):
        raise VerificationError("the checkpoint head's root_hash or controller is not 64 hex characters", code="bad_head")
    if not isinstance(data["checkpoint"], str) or not isinstance(data["seen"], str):
        raise VerificationError("the checkpoint head's note and time are strings", code="bad_head")
    return NoteHead(size, data["root_hash"], data["controller"], data["checkpoint"], data["seen"])


def verify_note_head(data: Any, *, controller: str, public_key: keys.PublicKey) -> NoteHead:
    """The head if its note is signed by ``controller``'s key under its origin and states the
    head's size and root."""
    head = parse_note_head(data)
    if head.controller != controller:
        raise VerificationError(
            f"the checkpoint head names controller {head.controller[:16]}…, not the pinned {controller[:16]}…",
            code="bad_head_signature",
        )
    try:
        checkpoint = verify_checkpoint(head.note.encode("utf-8"), controller_log_verifier(controller, public_key))
    except (NoteError, ValueError) as exc:
        raise VerificationError(f"the checkpoint head's note does not verify: {exc}", code="bad_head_signature") from None
    if (checkpoint.size, checkpoint.root_hash) != (head.tree_size, head.root_hash):
        raise VerificationError("the checkpoint head's size or root is not its note's", code="bad_head")
    return head


def parse_any_head(data: Any) -> Head:
    """A head of either kind, as kept (shape checks only)."""
    return parse_note_head(data) if isinstance(data, dict) and "checkpoint" in data else parse_head(data)


def verify_any_head(data: Any, *, controller: str, public_key: keys.PublicKey) -> Head:
    """A head of either kind, if signed by ``controller``'s key."""
    if isinstance(data, dict) and "checkpoint" in data:
        return verify_note_head(data, controller=controller, public_key=public_key)
    return verify_head(data, controller=controller, public_key=public_key)


# --- the witness policy ------------------------------------------------------------------------


@dataclass(frozen=True)
class Witnessed:
    """A checkpoint the pinned controller signed, held to a witness policy: the known witnesses
    that cosigned it, and ``refusal`` when they are fewer than the quorum."""

    head: NoteHead
    signed_by: list[str]
    refusal: QuorumNotMet | None = None
    served: str = "latest"
    """Which checkpoint it is: ``latest``, or ``witnessed`` (the controller's newest cosigned one)."""


@dataclass(frozen=True)
class WitnessPolicy:
    """``--witness VKEY`` (repeatable) and ``--witness-quorum K`` (default: all of them)."""

    witnesses: tuple[tuple[str, CosignatureVerifier], ...]
    quorum: int
    notes: list[str] = field(default_factory=list, compare=False)

    @classmethod
    def from_vkeys(cls, vkeys: Sequence[str], quorum: int | None = None) -> WitnessPolicy:
        """Raises ConfigError (``bad_witness``, ``bad_quorum``) for a policy that cannot work."""
        named: list[tuple[str, CosignatureVerifier]] = []
        for vkey in vkeys:
            try:
                verifier = CosignatureVerifier.from_vkey(vkey)
            except (NoteError, ValueError) as exc:
                message = exc.message if isinstance(exc, NoteError) else str(exc)
                raise ConfigError(
                    f"--witness {vkey[:120]!r} is not a witness's cosignature/v1 vkey (what `duet witness key` prints): {message}",
                    code="bad_witness",
                ) from None
            for name, other in named:
                if name == verifier.name or other.public_key == verifier.public_key:
                    raise ConfigError(
                        f"--witness {verifier.name} and --witness {name} share a name or a key: a cosignature would count twice",
                        code="bad_witness",
                    )
            named.append((verifier.name, verifier))
        if not named:
            raise ConfigError("--witness-quorum needs at least one --witness VKEY", code="bad_quorum")
        k = len(named) if quorum is None else quorum
        if not 0 <= k <= len(named):
            raise ConfigError(
                f"--witness-quorum {k}: there are {len(named)} witnesses; give 0 to {len(named)}", code="bad_quorum"
            )
        notes = []
        if 2 * k <= len(named):
            notes.append(
                f"a witness quorum of {k} of {len(named)} does not rule out a split view: two histories can each be "
                f"cosigned by {k} different witnesses; ask for more than half of them"
            )
        return cls(tuple(named), k, notes)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.witnesses]

    def check(self, note: bytes, controller: str, public_key: keys.PublicKey, *, served: str = "latest") -> Witnessed:
        """``note`` held to the policy. Raises the note errors of ``verify_checkpoint_quorum``
        (not signed by the pinned key, altered, malformed); too few cosignatures is not raised
        but returned as ``refusal``, with the checkpoint (which the controller did sign)."""
        verifier = controller_log_verifier(controller, public_key)
        try:
            checkpoint, signed_by = verify_checkpoint_quorum(
                note, log_verifier=verifier, witnesses=list(self.witnesses), quorum=self.quorum
            )
        except QuorumNotMet as exc:
            return Witnessed(NoteHead.of(note, exc.checkpoint, controller), list(exc.signed_by), exc, served)
        return Witnessed(NoteHead.of(note, checkpoint, controller), signed_by, None, served)

    def record(self, witnessed: Witnessed) -> dict[str, Any]:
        """What the report says about it (``witnesses`` in ``duet audit --json``)."""
        return {
            "ok": witnessed.refusal is None,
            "quorum": self.quorum,
            "witnesses": self.names,
            "signed_by": list(witnessed.signed_by),
            "missing": [name for name in self.names if name not in witnessed.signed_by],
            "checkpoint": {"tree_size": witnessed.head.tree_size, "root_hash": witnessed.head.root_hash},
            "served": witnessed.served,
        }
