"""Tests for duet.ledger.checkpoint: C2SP checkpoints and cosignature/v1, against real logs' and
witnesses' vectors (Tessera, transparency-dev/witness, a CT log cosigned by a public witness) and
the independent implementation tlog-scales."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from duet import keys
from duet.ledger.checkpoint import (
    MAX_TIMESTAMP,
    Checkpoint,
    CheckpointError,
    CosignatureSigner,
    CosignatureVerifier,
    MalformedCheckpoint,
    WitnessQuorumNotMet,
    controller_origin,
    cosign,
    cosignature_message,
    log_signer,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
    verify_cosignature,
    verify_cosigned_checkpoint,
    witness_vkey,
)
from duet.ledger.merkle import EMPTY_ROOT, MerkleTree, leaf_hash, verify_consistency
from duet.ledger.note import (
    COSIGNATURE_V1,
    BadVerifierKey,
    NoteNotSigned,
    NoteSignature,
    NoteSignatureInvalid,
    NoteSigner,
    NoteVerifier,
    is_key_name,
    open_note,
    parse_note,
    parse_vkey,
)

ASSETS = Path(__file__).parents[2] / "assets" / "c2sp"
VECTORS = json.loads((ASSETS / "vectors.json").read_text())
TESSERA = VECTORS["tessera_log"]
REAL = VECTORS["real_cosigned_checkpoint"]
MONKEYS = VECTORS["witness_monkeys"]
ROOT = bytes(range(32))


def go_private_key(skey: str) -> tuple[str, ed25519.Ed25519PrivateKey]:
    name, _, rest = skey.removeprefix("PRIVATE+KEY+").partition("+")
    raw = base64.b64decode(rest.partition("+")[2])
    return name, ed25519.Ed25519PrivateKey.from_private_bytes(raw[1:])


# --- the note text -----------------------------------------------------------------------------


def test_the_body_is_origin_size_and_base64_root_each_on_its_line() -> None:
    checkpoint = Checkpoint(
        "example.com/behind-the-sofa", 20852163, base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    )
    assert checkpoint.body() == "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    assert parse_checkpoint(checkpoint.body()) == checkpoint
    assert parse_note(VECTORS["checkpoint_spec"]["note"].encode()).text == checkpoint.body()
    with_ext = Checkpoint("o", 0, EMPTY_ROOT, ("ext one", "ext two"))
    assert with_ext.body() == f"o\n0\n{base64.b64encode(EMPTY_ROOT).decode()}\next one\next two\n"
    assert parse_checkpoint(with_ext.body()) == with_ext


@pytest.mark.parametrize(
    "text",
    [
        "o\n5\n" + base64.b64encode(ROOT).decode(),  # no final newline
        "o\n5\n",  # two lines
        "\n5\n" + base64.b64encode(ROOT).decode() + "\n",  # empty origin
        "o\n05\n" + base64.b64encode(ROOT).decode() + "\n",  # leading zero
        "o\n+5\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n 5\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n5 \n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n1_000\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n\u0665\n" + base64.b64encode(ROOT).decode() + "\n",  # an Arabic-Indic five is no ASCII decimal
        "o\n-1\n" + base64.b64encode(ROOT).decode() + "\n",
        f"o\n{2**64}\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n0x5\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n5\n" + base64.b64encode(ROOT[:31]).decode() + "\n",  # not a SHA-256
        "o\n5\n" + base64.b64encode(ROOT).decode().rstrip("=") + "\n",  # no padding
        "o\n5\n" + base64.b64encode(ROOT).decode()[:-2] + "J=\n",  # non-zero pad bits
        "o\n5\n" + base64.b64encode(ROOT).decode() + "\n\n",  # an empty extension line
        "Log\n123\nYmFuYW5hcw==\n",  # transparency-dev/formats's "bananas" hash: not 32 bytes
    ],
)
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(MalformedCheckpoint) as caught:
        parse_checkpoint(text)
    assert caught.value.code == "malformed_checkpoint"


def test_the_largest_size_is_two_to_the_64_minus_one() -> None:
    assert parse_checkpoint(f"o\n{2**64 - 1}\n{base64.b64encode(ROOT).decode()}\n").size == 2**64 - 1
    with pytest.raises(MalformedCheckpoint):
        Checkpoint("o", -1, ROOT)
    with pytest.raises(MalformedCheckpoint):
        Checkpoint("o\nforged", 1, ROOT)  # an origin cannot smuggle a line in


def test_the_controller_origin_is_a_schema_less_name_from_the_controller_id() -> None:
    key = keys.generate()
    controller = keys.key_id(key.public_key())
    origin = controller_origin(controller)
    assert origin == f"duet.controller/{controller}"
    assert is_key_name(origin) and " " not in origin and "+" not in origin and "://" not in origin
    assert log_signer(key, controller).name == origin
    for bad in ("", "C" * 64, "c" * 63, "../" + "c" * 61):
        with pytest.raises(ValueError):
            controller_origin(bad)


# --- signing and verifying ---------------------------------------------------------------------


def test_the_controllers_checkpoint_signs_and_verifies() -> None:
    key = keys.generate()
    controller = keys.key_id(key.public_key())
    tree = MerkleTree([leaf_hash(b"entry %d" % i) for i in range(13)])
    checkpoint = Checkpoint(controller_origin(controller), tree.size, tree.root())
    note = sign_checkpoint(checkpoint, log_signer(key, controller))
    assert note == sign_checkpoint(checkpoint, key)  # a bare key signs under the origin
    assert note.decode().startswith(checkpoint.body() + "\n— " + controller_origin(controller) + " ")
    verifier = NoteVerifier(controller_origin(controller), key.public_key())
    assert verify_checkpoint(note, verifier) == checkpoint
    assert verify_checkpoint(note, NoteVerifier.from_vkey(verifier.vkey)) == checkpoint


def test_a_checkpoint_of_another_origin_or_key_or_altered_is_refused() -> None:
    key, other = keys.generate(), keys.generate()
    checkpoint = Checkpoint("example.com/log", 3, ROOT)
    note = sign_checkpoint(checkpoint, key)
    with pytest.raises(CheckpointError) as caught:
        verify_checkpoint(note, NoteVerifier("example.com/log", key.public_key()), origin="example.com/other")
    assert caught.value.code == "wrong_origin"
    other_log = sign_checkpoint(Checkpoint("example.com/other", 3, ROOT), NoteSigner("example.com/log", key))
    with pytest.raises(CheckpointError) as caught:  # the key signed another log's checkpoint under the right name
        verify_checkpoint(other_log, NoteVerifier("example.com/log", key.public_key()))
    assert caught.value.code == "wrong_origin"
    with pytest.raises(NoteNotSigned):
        verify_checkpoint(note, NoteVerifier("example.com/log", other.public_key()))
    with pytest.raises(NoteSignatureInvalid):
        verify_checkpoint(note.replace(b"\n3\n", b"\n4\n"), NoteVerifier("example.com/log", key.public_key()))


def test_an_empty_log_must_have_the_empty_root() -> None:
    key = keys.generate()
    verifier = NoteVerifier("example.com/log", key.public_key())
    assert verify_checkpoint(sign_checkpoint(Checkpoint("example.com/log", 0, EMPTY_ROOT), key), verifier).size == 0
    with pytest.raises(CheckpointError) as caught:
        verify_checkpoint(sign_checkpoint(Checkpoint("example.com/log", 0, ROOT), key), verifier)
    assert caught.value.code == "bad_empty_root"


def test_signing_reproduces_every_tessera_checkpoint_byte_for_byte() -> None:
    name, private_key = go_private_key(TESSERA["private_key"])
    verifier = NoteVerifier.from_vkey(TESSERA["vkey"])
    tree = MerkleTree()
    for size in range(len(TESSERA["leaves"]) + 1):
        note = (ASSETS / "tessera-log" / f"checkpoint.{size}").read_bytes()
        checkpoint = verify_checkpoint(note, verifier)
        assert (checkpoint.origin, checkpoint.size, checkpoint.root) == (TESSERA["origin"], size, tree.root())
        assert sign_checkpoint(checkpoint, NoteSigner(name, private_key)) == note
        if size < len(TESSERA["leaves"]):
            tree.append(leaf_hash(TESSERA["leaves"][size].encode()))


def test_the_witness_test_checkpoints_verify_and_are_consistent() -> None:
    log = NoteVerifier.from_vkey(MONKEYS["log_vkey"])
    old = verify_checkpoint(MONKEYS["checkpoint_5"].encode(), log)
    new = verify_checkpoint(MONKEYS["checkpoint_8"].encode(), log)
    proof = [bytes.fromhex(h) for h in MONKEYS["consistency_5_8"]]
    assert (old.size, new.size) == (5, 8)
    assert verify_consistency(5, 8, old.root, new.root, proof)
    assert not verify_consistency(5, 8, old.root, new.root, proof[::-1])


# --- cosignature/v1 ------------------------------------------------------------------------------


def test_a_real_checkpoint_cosigned_by_a_public_witness_verifies() -> None:
    log = NoteVerifier.from_vkey(REAL["log_vkey"])
    witness = CosignatureVerifier.from_vkey(REAL["witness_vkey"])
    cosigned = verify_cosigned_checkpoint(REAL["note"].encode(), log, [witness], quorum=1)
    assert cosigned.checkpoint.origin == "arche2025h1.staging.ct.transparency.dev"
    assert cosigned.checkpoint.size == 1432088532
    assert cosigned.witnesses == ("remora.n621.de",)
    assert cosigned.cosignatures[0].timestamp == 1779573024
    line = next(s for s in cosigned.note.signatures if s.name == "remora.n621.de")
    assert verify_cosignature(cosigned.checkpoint, line.line(), witness) == 1779573024
    # the log's RFC 6962 TreeHeadSignature (type 0x05) has the log's name but another key id: ignored
    opened = open_note(REAL["note"].encode(), [log])
    assert len(opened.unverified) == 5 and any(s.name == log.name for s in opened.unverified)
    with pytest.raises(NoteSignatureInvalid):
        verify_cosignature(Checkpoint(cosigned.checkpoint.origin, 42, cosigned.checkpoint.root), line, witness)


def test_cosignature_vectors_of_transparency_dev_formats_and_the_spec() -> None:
    formats = VECTORS["formats_cosignature"]
    raw = base64.b64decode(formats["cosignature_base64"])
    sig = NoteSignature("any", int.from_bytes(raw[:4], "big"), raw[4:])
    assert CosignatureVerifier.timestamp(sig) == formats["timestamp"]
    remora = parse_vkey(formats["cosignature_vkey"])
    assert remora.signature_type == COSIGNATURE_V1 and remora.encode() == formats["cosignature_vkey"]
    spec = VECTORS["cosignature_spec"]
    witness_line = parse_note(spec["note"].encode()).signatures[-1]
    assert (witness_line.name, len(witness_line.signature)) == ("witness.example.com/w1", 72)
    assert CosignatureVerifier.timestamp(witness_line) == spec["witness_timestamp"]
    # the spec's own illustration of the signed message
    body = parse_note(spec["note"].encode()).text.encode()
    assert cosignature_message(1679315147, body) == (
        b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )


def test_cosign_and_verify_a_cosignature() -> None:
    witness_key = ed25519.Ed25519PrivateKey.generate()
    witness = CosignatureVerifier.from_vkey(witness_vkey("witness.example/w1", witness_key.public_key()))
    checkpoint = Checkpoint("example.com/log", 7, ROOT)
    line = cosign(checkpoint, witness_key, "witness.example/w1", 1700000000)
    assert line.startswith("— witness.example/w1 ") and line.endswith("\n")
    assert verify_cosignature(checkpoint, line, witness) == 1700000000
    raw = base64.b64decode(line.split(" ")[2])
    assert raw[:4] == witness.key_id.to_bytes(4, "big") and raw[4:12] == (1700000000).to_bytes(8, "big") and len(raw) == 76
    with pytest.raises(NoteSignatureInvalid):  # another checkpoint
        verify_cosignature(Checkpoint("example.com/log", 8, ROOT), line, witness)
    other = CosignatureVerifier("witness.example/w2", ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(CheckpointError) as caught:
        verify_cosignature(checkpoint, line, other)
    assert caught.value.code == "wrong_witness"
    for bad in (0, -1, MAX_TIMESTAMP + 1, True):
        with pytest.raises(ValueError):
            cosign(checkpoint, witness_key, "witness.example/w1", bad)
    assert verify_cosignature(checkpoint, cosign(checkpoint, witness_key, "witness.example/w1", MAX_TIMESTAMP), witness)


def test_a_cosignature_is_not_a_log_signature_even_with_the_same_key() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    checkpoint = Checkpoint("example.com/log", 1, ROOT)
    line = cosign(checkpoint, key, "example.com/log", 1700000000)
    note = (checkpoint.body() + "\n" + line).encode()
    with pytest.raises(NoteNotSigned):
        verify_checkpoint(note, NoteVerifier("example.com/log", key.public_key()))


def test_a_cosignature_signer_uses_its_clock() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    signer = CosignatureSigner("witness.example/w1", key, clock=lambda: 1700000123.9)
    checkpoint = Checkpoint("example.com/log", 1, ROOT)
    log_key = keys.generate()
    note = sign_checkpoint(checkpoint, log_key)
    signed = parse_note(note)
    cosigned = verify_cosigned_checkpoint(
        _with_cosigner(note, signer), NoteVerifier("example.com/log", log_key.public_key()), [signer.verifier()], quorum=1
    )
    assert cosigned.cosignatures[0].timestamp == 1700000123
    assert signed.signatures[0] in cosigned.note.signatures


def _with_cosigner(note: bytes, signer: NoteSigner) -> bytes:
    parsed = parse_note(note)
    sig = NoteSignature(signer.name, signer.key_id, signer.sign(parsed.text.encode()))
    return note + sig.line().encode()


# --- witness quorum ----------------------------------------------------------------------------


def _witnesses(count: int) -> list[tuple[str, ed25519.Ed25519PrivateKey, CosignatureVerifier]]:
    out = []
    for i in range(count):
        key = ed25519.Ed25519PrivateKey.generate()
        out.append((f"witness.example/w{i}", key, CosignatureVerifier(f"witness.example/w{i}", key.public_key())))
    return out


def test_a_quorum_of_known_witnesses_is_required_and_reported() -> None:
    log_key = keys.generate()
    log = NoteVerifier("example.com/log", log_key.public_key())
    checkpoint = Checkpoint("example.com/log", 10, ROOT)
    witnesses = _witnesses(3)
    stranger = _witnesses(1)[0]
    note = (
        sign_checkpoint(checkpoint, log_key)
        + "".join(
            cosign(checkpoint, key, name, 1700000000 + i)
            for i, (name, key, _) in enumerate([witnesses[0], witnesses[2], stranger])
        ).encode()
    )
    verifiers = [v for _, _, v in witnesses]
    cosigned = verify_cosigned_checkpoint(note, log, verifiers, quorum=2)
    assert cosigned.checkpoint == checkpoint
    assert cosigned.witnesses == ("witness.example/w0", "witness.example/w2")
    assert [c.timestamp for c in cosigned.cosignatures] == [1700000000, 1700000001]
    with pytest.raises(WitnessQuorumNotMet) as caught:
        verify_cosigned_checkpoint(note, log, verifiers, quorum=3)
    assert caught.value.code == "witness_quorum"
    assert [c.witness.name for c in caught.value.cosigned] == ["witness.example/w0", "witness.example/w2"]
    with pytest.raises(CheckpointError) as caught_quorum:
        verify_cosigned_checkpoint(note, log, verifiers, quorum=4)
    assert caught_quorum.value.code == "bad_quorum"


def test_two_views_of_one_size_cannot_both_reach_the_quorum() -> None:
    log_key = keys.generate()
    log = NoteVerifier("example.com/log", log_key.public_key())
    witnesses = _witnesses(3)
    seen: dict[str, Checkpoint] = {}

    def witness_cosigns(name: str, key: ed25519.Ed25519PrivateKey, checkpoint: Checkpoint) -> str:
        """A witness cosigns one checkpoint per size (the consistency check of tlog-witness)."""
        if seen.setdefault(name, checkpoint) != checkpoint:
            return ""
        return cosign(checkpoint, key, name, 1700000000)

    views = [Checkpoint("example.com/log", 10, bytes([n]) * 32) for n in (1, 2)]
    # the controller shows view 1 to witnesses 0 and 1 first, then tries view 2 on all three
    notes = {
        1: sign_checkpoint(views[0], log_key) + "".join(witness_cosigns(n, k, views[0]) for n, k, _ in witnesses[:2]).encode(),
    }
    notes[2] = sign_checkpoint(views[1], log_key) + "".join(witness_cosigns(n, k, views[1]) for n, k, _ in witnesses).encode()
    verifiers = [v for _, _, v in witnesses]
    assert verify_cosigned_checkpoint(notes[1], log, verifiers, quorum=2).checkpoint == views[0]
    with pytest.raises(WitnessQuorumNotMet):
        verify_cosigned_checkpoint(notes[2], log, verifiers, quorum=2)


def test_a_witness_policy_may_not_give_one_key_two_names() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    twins = [
        CosignatureVerifier("witness.example/a", key.public_key()),
        CosignatureVerifier("witness.example/b", key.public_key()),
    ]
    log_key = keys.generate()
    note = sign_checkpoint(Checkpoint("example.com/log", 1, ROOT), log_key)
    with pytest.raises(CheckpointError) as caught:
        verify_cosigned_checkpoint(note, NoteVerifier("example.com/log", log_key.public_key()), twins, quorum=1)
    assert caught.value.code == "duplicate_witness_key"
    with pytest.raises(BadVerifierKey):
        plain = NoteVerifier("witness.example/c", key.public_key())  # a type 0x01 key is no witness key
        verify_cosigned_checkpoint(note, NoteVerifier("example.com/log", log_key.public_key()), [plain], quorum=0)


def test_a_note_cosigned_but_not_signed_by_the_log_is_refused() -> None:
    checkpoint = Checkpoint("example.com/log", 1, ROOT)
    (name, key, verifier) = _witnesses(1)[0]
    note = (checkpoint.body() + "\n" + cosign(checkpoint, key, name, 1700000000)).encode()
    log = NoteVerifier("example.com/log", keys.generate().public_key())
    with pytest.raises(NoteNotSigned):
        verify_cosigned_checkpoint(note, log, [verifier], quorum=1)


def test_a_forged_cosignature_of_a_known_witness_rejects_the_note() -> None:
    log_key = keys.generate()
    checkpoint = Checkpoint("example.com/log", 1, ROOT)
    (name, key, verifier) = _witnesses(1)[0]
    line = cosign(Checkpoint("example.com/log", 2, ROOT), key, name, 1700000000)  # signs another checkpoint
    note = sign_checkpoint(checkpoint, log_key) + line.encode()
    with pytest.raises(NoteSignatureInvalid):
        verify_cosigned_checkpoint(note, NoteVerifier("example.com/log", log_key.public_key()), [verifier], quorum=0)


def test_a_zero_timestamp_is_no_cosignature() -> None:
    (name, key, verifier) = _witnesses(1)[0]
    checkpoint = Checkpoint("example.com/log", 1, ROOT)
    signature = (0).to_bytes(8, "big") + key.sign(cosignature_message(0, checkpoint.body().encode()))
    assert not verifier.verify(checkpoint.body().encode(), signature)


# --- an independent implementation: tlog-scales (PyPI) ---------------------------------------------


def test_checkpoints_and_cosignatures_match_tlog_scales() -> None:
    signing = pytest.importorskip("tlog_scales.signing")
    tlog = pytest.importorskip("tlog_scales.tlog")
    seed, witness_seed = bytes(range(32)), bytes(range(32, 64))
    log_key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    witness_key = ed25519.Ed25519PrivateKey.from_private_bytes(witness_seed)
    tree = MerkleTree([leaf_hash(b"%d" % i) for i in range(1000)])
    checkpoint = Checkpoint("example.com/duet", tree.size, tree.root())

    # their signer, our verifier; byte-identical notes (Ed25519 is deterministic)
    theirs = tlog.Checkpoint.make_signed(
        checkpoint.origin, checkpoint.size, checkpoint.root, [signing.PlainEd25519Signer(checkpoint.origin, seed)]
    )
    assert theirs.serialize_body() == checkpoint.body()
    assert theirs.serialize().encode() == sign_checkpoint(checkpoint, log_key)
    assert verify_checkpoint(theirs.serialize().encode(), NoteVerifier(checkpoint.origin, log_key.public_key())) == checkpoint

    # our note and cosignature, their parser and verifiers
    note = sign_checkpoint(checkpoint, log_key) + cosign(checkpoint, witness_key, "witness.example/w1", 1700000000).encode()
    parsed = tlog.Checkpoint.from_text(note.decode())
    assert (parsed.origin, parsed.size, parsed.root_hash) == (checkpoint.origin, checkpoint.size, checkpoint.root)
    their_witness = signing.Vkey("witness.example/w1", None, COSIGNATURE_V1, witness_key.public_key().public_bytes_raw())
    assert their_witness.serialize() == witness_vkey("witness.example/w1", witness_key.public_key())
    their_log = signing.Vkey(checkpoint.origin, None, 1, log_key.public_key().public_bytes_raw())
    parsed.verify(their_log)
    parsed.verify(their_witness)
    assert signing.Ed25519CosignatureVerifier.get_timestamp(parsed.signatures[1].payload) == 1700000000
    valid = signing.VkeySet(their_log, their_witness).verify(parsed.signatures, parsed)
    assert len(valid) == 2
