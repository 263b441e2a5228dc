"""An auditor's checks of a controller's C2SP checkpoint: signed by the controller, cosigned by
enough witnesses the auditor knows, and the same tree as the head the audit verified.

A controller that shows two audiences two histories must show them two checkpoints of one size
(or of sizes that are not consistent). A witness cosigns a checkpoint only if it is consistent
with every one it cosigned before, so when an auditor requires cosignatures of ``quorum`` of its
``n`` witnesses, and ``quorum > n / 2``, at most one of the two histories can pass: the
witnesses in common refuse the second.

Pure functions of bytes and keys, no I/O: ``duet audit`` calls them with the note
``DuetClient.checkpoint()`` returned::

    witnesses = witness_keys(vkeys)  # from --witness VKEY ...
    checkpoint, signed_by = verify_checkpoint_quorum(
        note, log_verifier=controller_log_verifier(pin.controller, pin.public_key()), witnesses=witnesses, quorum=k
    )
    check_checkpoint_matches_head(checkpoint, head, proof=proof_from_checkpoint_to_head)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from duet import keys
from duet.errors import VerificationError
from duet.ledger.checkpoint import (
    Checkpoint,
    Cosignature,
    CosignatureVerifier,
    WitnessQuorumNotMet,
    controller_origin,
    parse_checkpoint,
    verify_cosigned_checkpoint,
)
from duet.ledger.heads import SignedHead, parse_head
from duet.ledger.merkle import verify_consistency
from duet.ledger.note import BadVerifierKey, NoteVerifier, parse_note

__all__ = [
    "CheckpointHeadMismatch",
    "QuorumNotMet",
    "WitnessKey",
    "check_checkpoint_matches_head",
    "controller_log_verifier",
    "verify_checkpoint_quorum",
    "witness_keys",
]

WitnessKey = tuple[str, str | CosignatureVerifier]
"""(the name an auditor reports a witness by, its cosignature/v1 vkey or verifier)."""


class QuorumNotMet(WitnessQuorumNotMet):
    """Fewer of the known witnesses than the policy asks cosigned the checkpoint.

    ``signed_by`` names those that did (in the order the policy lists them), ``missing`` the
    others, ``quorum`` the number required; ``checkpoint`` is the checkpoint the controller
    signed (it verified; only its witnessing falls short)."""

    code = "witness_quorum_not_met"

    def __init__(
        self,
        message: str,
        *,
        checkpoint: Checkpoint,
        signed_by: list[str],
        missing: list[str],
        quorum: int,
        cosigned: tuple[Cosignature, ...] = (),
    ) -> None:
        super().__init__(message, cosigned=cosigned)
        self.checkpoint = checkpoint
        self.signed_by = signed_by
        self.missing = missing
        self.quorum = quorum


class CheckpointHeadMismatch(VerificationError):
    """The checkpoint is not the tree of the signed head the audit verified (another size or
    root, without a proof that one extends the other): the controller showed two trees."""

    code = "checkpoint_head_mismatch"


def controller_log_verifier(controller_id: str, public_key: keys.PublicKey | bytes) -> NoteVerifier:
    """The controller's checkpoint key: its (pinned) signing key under its origin."""
    return NoteVerifier(controller_origin(controller_id), public_key)


def witness_keys(vkeys: Iterable[str]) -> list[tuple[str, CosignatureVerifier]]:
    """The witnesses of ``--witness VKEY`` options, each named by its vkey's key name.

    Raises BadVerifierKey for a vkey that is not a usable cosignature/v1 (0x04) key."""
    return [(verifier.name, verifier) for verifier in (CosignatureVerifier.from_vkey(vkey) for vkey in vkeys)]


def _verifiers(witnesses: Sequence[WitnessKey]) -> list[tuple[str, CosignatureVerifier]]:
    named: list[tuple[str, CosignatureVerifier]] = []
    for label, key in witnesses:
        verifier = key if isinstance(key, CosignatureVerifier) else CosignatureVerifier.from_vkey(key)
        if any(label == other for other, _ in named):
            raise BadVerifierKey(f"two witnesses of the policy are both named {label!r}", code="ambiguous_verifier")
        named.append((label, verifier))
    return named


def verify_checkpoint_quorum(
    note_bytes: bytes,
    *,
    log_verifier: NoteVerifier,
    witnesses: Sequence[WitnessKey],
    quorum: int,
) -> tuple[Checkpoint, list[str]]:
    """The checkpoint in ``note_bytes`` and the names of the known witnesses that cosigned it,
    if the controller's key ``log_verifier`` signed it (under its own name as origin) and at
    least ``quorum`` of ``witnesses`` did.

    Raises :class:`QuorumNotMet` (``witness_quorum_not_met``, naming who signed) when too few
    cosigned, and the errors of :func:`duet.ledger.checkpoint.verify_cosigned_checkpoint`
    otherwise: not signed by the controller (``note_not_signed``), a known key's signature that
    fails (``bad_note_signature``, the note was altered), another origin (``wrong_origin``),
    malformed (``malformed_note``, ``malformed_checkpoint``), an unusable policy (``bad_quorum``,
    ``duplicate_witness_key``, ``bad_vkey``). Cosignatures of witnesses not in the policy are
    ignored."""
    named = _verifiers(witnesses)
    label_of = {verifier.public_key: label for label, verifier in named}
    try:
        cosigned = verify_cosigned_checkpoint(note_bytes, log_verifier, [v for _, v in named], quorum=quorum)
    except QuorumNotMet:
        raise
    except WitnessQuorumNotMet as exc:
        signers = {c.witness.public_key for c in exc.cosigned}
        signed_by = [label for label, verifier in named if verifier.public_key in signers]
        missing = [label for label, verifier in named if verifier.public_key not in signers]
        # Only the quorum failed: the controller's signature and the checkpoint were checked before it.
        checkpoint = parse_checkpoint(parse_note(note_bytes).text)
        raise QuorumNotMet(
            f"the checkpoint of size {checkpoint.size} is cosigned by {len(signed_by)} of the {len(named)} known "
            f"witnesses ({', '.join(signed_by) or 'none'}); {quorum} are required. Not cosigned by: "
            f"{', '.join(missing) or 'none'}. A witness cosigns only checkpoints consistent with those it saw: "
            "one that is missing may be down, or may have seen another history of this log",
            checkpoint=checkpoint,
            signed_by=signed_by,
            missing=missing,
            quorum=quorum,
            cosigned=exc.cosigned,
        ) from None
    return cosigned.checkpoint, [label_of[c.witness.public_key] for c in cosigned.cosignatures]


def check_checkpoint_matches_head(
    checkpoint: Checkpoint,
    head: SignedHead | Mapping[str, Any],
    *,
    proof: Sequence[bytes] | None = None,
) -> None:
    """Hold ``checkpoint`` to the signed head the audit verified (a ``SignedHead`` or its JSON).

    Same size: the roots must be equal. A checkpoint older than the head (the log grew between
    the two reads, or ``?witnessed=true`` served an older one): ``proof``, the consistency proof
    from the checkpoint's size to the head's (``/v1/ledger/proof/consistency``), must show that
    the head extends it. Anything else raises :class:`CheckpointHeadMismatch`."""
    signed = head if isinstance(head, SignedHead) else parse_head(dict(head))
    if checkpoint.size == signed.tree_size:
        if checkpoint.root != signed.root:
            raise CheckpointHeadMismatch(
                f"the checkpoint and the signed head both have {signed.tree_size} entries but different roots "
                f"({checkpoint.root_hash[:16]}… and {signed.root_hash[:16]}…): the controller signed two trees of one size"
            )
        return
    if checkpoint.size > signed.tree_size:
        raise CheckpointHeadMismatch(
            f"the checkpoint has {checkpoint.size} entries, more than the {signed.tree_size} of the signed head the "
            "audit verified: audit up to the checkpoint's size (fetch the head again), then compare"
        )
    if proof is None:
        raise CheckpointHeadMismatch(
            f"the checkpoint has {checkpoint.size} entries and the signed head {signed.tree_size}: a consistency proof "
            "between them is needed to tie one to the other"
        )
    if not verify_consistency(checkpoint.size, signed.tree_size, checkpoint.root, signed.root, list(proof)):
        raise CheckpointHeadMismatch(
            f"the signed head of {signed.tree_size} entries does not extend the checkpoint of {checkpoint.size}: "
            "the consistency proof between them fails, so the controller showed two histories"
        )
