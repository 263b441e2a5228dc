"""Tests for duet.ledger.note: C2SP signed notes, against the spec's and Go's vectors and tlog-scales."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from duet import keys
from duet.errors import VerificationError
from duet.ledger.note import (
    COSIGNATURE_V1,
    ED25519,
    MAX_SIGNATURES,
    BadVerifierKey,
    MalformedNote,
    Note,
    NoteNotSigned,
    NoteSignature,
    NoteSignatureInvalid,
    NoteSigner,
    NoteVerifier,
    b64decode,
    ed25519_key_problem,
    is_key_name,
    key_id,
    open_note,
    parse_note,
    parse_signature_lines,
    parse_vkey,
    sign_note,
)

VECTORS = json.loads((Path(__file__).parents[2] / "assets" / "c2sp" / "vectors.json").read_text())
SPEC = VECTORS["signed_note_spec"]
GO = VECTORS["go_sumdb_note"]


def go_private_key(skey: str) -> tuple[str, ed25519.Ed25519PrivateKey]:
    """Go's ``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 ‖ seed)>`` (sumdb/note's signer key)."""
    name, _, rest = skey.removeprefix("PRIVATE+KEY+").partition("+")
    _, _, encoded = rest.partition("+")
    raw = base64.b64decode(encoded)
    assert raw[0] == ED25519 and len(raw) == 33
    return name, ed25519.Ed25519PrivateKey.from_private_bytes(raw[1:])


def peter() -> NoteVerifier:
    return NoteVerifier.from_vkey(GO["peter_vkey"])


def enoch() -> NoteVerifier:
    return NoteVerifier.from_vkey(GO["enoch_vkey"])


def go_note(*sig_lines: str) -> bytes:
    return (GO["text"] + "\n" + "".join(line + "\n" for line in sig_lines)).encode()


# --- the spec's example ------------------------------------------------------------------------


def test_the_spec_example_vkey_parses_and_encodes_back() -> None:
    vkey = parse_vkey(SPEC["vkey"])
    assert (vkey.name, vkey.key_id, vkey.signature_type) == ("example.com/foo", 0x530D903A, ED25519)
    assert vkey.public_key == bytes.fromhex("e932791ae6e7a840a46164c904786426d5e7821dd8b29a00d61cae72afdd4da4")
    assert vkey.encode() == SPEC["vkey"]
    assert key_id(vkey.name, ED25519, vkey.public_key) == vkey.key_id
    assert NoteVerifier.from_vkey(SPEC["vkey"]).vkey == SPEC["vkey"]


def test_the_spec_example_note_verifies() -> None:
    verifier = NoteVerifier.from_vkey(SPEC["vkey"])
    opened = open_note(SPEC["note"].encode(), [verifier])
    assert opened.text == "This is an example message.\n"
    assert opened.signed_by == (verifier,)
    assert opened.unverified == ()
    assert opened.note.to_bytes() == SPEC["note"].encode()


def test_a_note_signed_only_by_unknown_keys_is_refused_but_its_signatures_are_kept() -> None:
    with pytest.raises(NoteNotSigned) as caught:
        open_note(SPEC["unknown_key_note"].encode(), [NoteVerifier.from_vkey(SPEC["vkey"])])
    assert caught.value.code == "note_not_signed"
    assert isinstance(caught.value, VerificationError)
    note = caught.value.note
    assert note.text.endswith("ed è subito sera.\n") and "\n\n" in note.text  # the text may hold blank lines
    assert [s.name for s in note.signatures] == ["quasimodo.example/salvatore"]
    assert note.to_bytes() == SPEC["unknown_key_note"].encode()


# --- Go's sumdb/note vectors ----------------------------------------------------------------------


def test_signing_reproduces_gos_note_byte_for_byte() -> None:
    name, private_key = go_private_key(GO["peter_skey"])
    signer = NoteSigner(name, private_key)
    assert signer.vkey == GO["peter_vkey"]
    assert sign_note(GO["text"], [signer]) == go_note(GO["peter_sig"])
    # an existing signature of the same key is replaced, as Go's note.Sign does
    stale = NoteSignature("PeterNeumann", 0xC74F20A3, b"stale")
    assert sign_note(GO["text"], [signer], keep=[stale]) == go_note(GO["peter_sig"])


def test_one_known_key_verifies_and_the_unknown_signature_is_kept() -> None:
    opened = open_note(go_note(GO["peter_sig"], GO["enoch_sig"]), [peter()])
    assert [v.signature.name for v in opened.verified] == ["PeterNeumann"]
    assert [(s.name, s.key_id) for s in opened.unverified] == [("EnochRoot", 0xAF0CFE78)]
    both = open_note(go_note(GO["peter_sig"], GO["enoch_sig"]), [peter(), enoch()])
    assert both.signed_by == (peter(), enoch()) and both.unverified == ()


def test_repeated_signatures_count_once_and_a_bad_unknown_one_is_only_kept() -> None:
    enoch_abcd = GO["enoch_sig"][:60] + "ABCD" + GO["enoch_sig"][60:]
    note = go_note(GO["peter_sig"], GO["peter_sig"], GO["enoch_sig"], GO["enoch_sig"], enoch_abcd)
    opened = open_note(note, [peter()])
    assert len(opened.verified) == 1
    assert len(opened.unverified) == 2  # identical unknown lines once; the altered one is just another unknown line


def test_a_known_keys_bad_signature_rejects_the_whole_note() -> None:
    tampered = GO["peter_sig"][:60] + "ABCD" + GO["peter_sig"][60:]
    with pytest.raises(NoteSignatureInvalid) as caught:
        open_note(go_note(GO["enoch_sig"], tampered), [peter(), enoch()])
    assert (caught.value.code, caught.value.name, caught.value.key_id) == ("bad_note_signature", "PeterNeumann", 0xC74F20A3)
    # a repeated line of a known key is verified too: a valid first line does not excuse a bad second one
    with pytest.raises(NoteSignatureInvalid):
        open_note(go_note(GO["peter_sig"], tampered), [peter()])


def test_too_many_signatures_are_refused_before_any_is_checked() -> None:
    with pytest.raises(MalformedNote) as caught:
        open_note(go_note(*[GO["peter_sig"]] * (MAX_SIGNATURES + 1)), [peter()])
    assert caught.value.code == "note_too_many_signatures"
    assert open_note(go_note(*[GO["peter_sig"]] * MAX_SIGNATURES), [peter()]).signed_by == (peter(),)


def test_at_least_sixteen_signatures_are_accepted_as_the_spec_requires() -> None:
    others = [f"— other{i} {base64.b64encode(bytes([i] * 68)).decode()}" for i in range(16)]
    assert len(open_note(go_note(*others, GO["peter_sig"]), [peter()]).unverified) == 16


@pytest.mark.parametrize(
    "message",
    [
        GO["text"],  # no signatures
        GO["text"] + "\n",  # a blank line and nothing after it
        GO["text"] + "\n" + GO["peter_sig"],  # the last line has no newline
        "\x01" + GO["text"] + "\n" + GO["peter_sig"] + "\n",  # a control character
        GO["text"]
        + "\n"
        + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n",
        GO["text"] + "\n" + GO["peter_sig"] + "\nUnexpected line.\n",
        GO["text"].replace("\n", "\r\n") + "\r\n" + GO["peter_sig"] + "\r\n",  # CR LF line endings
        GO["text"] + "\n" + "— a+b " + GO["peter_sig"].split(" ")[2] + "\n",  # a plus sign in the name
        GO["text"] + "\n" + "— PeterNeumann\u3000x " + GO["peter_sig"].split(" ")[2] + "\n",  # a Unicode space
        GO["text"] + "\n" + "— PeterNeumann AAAAAA==\n",  # a key id and no signature
        GO["text"] + "\n" + "— PeterNeumann " + GO["peter_sig"].split(" ")[2].rstrip("=") + "\n",  # no padding
        GO["text"] + "\n" + "— PeterNeumann " + GO["peter_sig"].split(" ")[2][:-2] + "N=\n",  # non-zero pad bits
        GO["text"] + "\n" + "- PeterNeumann " + GO["peter_sig"].split(" ")[2] + "\n",  # a hyphen, not an em dash
        GO["text"] + "\n" + "—  PeterNeumann " + GO["peter_sig"].split(" ")[2] + "\n",  # an empty name
    ],
)
def test_malformed_notes_are_refused_with_a_typed_error(message: str) -> None:
    with pytest.raises(MalformedNote) as caught:
        open_note(message.encode(), [peter()])
    assert caught.value.code.startswith("note_")


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(MalformedNote) as caught:
        parse_note(b"\xff" + go_note(GO["peter_sig"]))
    assert caught.value.code == "note_not_utf8"


def test_gos_vkey_manglings_are_all_refused() -> None:
    vkey = GO["peter_vkey"]
    parse_vkey(vkey)
    for i in range(len(vkey) + 1):
        for j in range(i + 1, len(vkey) + 1):
            if (i, j) != (0, len(vkey)):
                with pytest.raises(BadVerifierKey):
                    parse_vkey(vkey[i:j])
    for i in range(len(vkey)):
        with pytest.raises(BadVerifierKey):
            parse_vkey(vkey[:i] + chr(ord(vkey[i]) + 1) + vkey[i + 1 :])


def test_gos_wrong_length_and_unknown_algorithm_vkeys_are_refused() -> None:
    with pytest.raises(BadVerifierKey) as caught:
        parse_vkey("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
    assert caught.value.code == "bad_vkey"  # not even canonical base64, and 37 bytes would be no Ed25519 key
    with pytest.raises(BadVerifierKey) as caught:
        parse_vkey("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    assert caught.value.code == "unsupported_signature_type"


def test_a_vkey_whose_id_is_not_derived_from_its_key_is_refused() -> None:
    vkey = parse_vkey(GO["peter_vkey"])
    forged = f"PeterNeumann+{vkey.key_id ^ 1:08x}+" + GO["peter_vkey"].split("+", 2)[2]
    with pytest.raises(BadVerifierKey) as caught:
        parse_vkey(forged)
    assert caught.value.code == "vkey_key_id_mismatch"
    with pytest.raises(BadVerifierKey):  # the spec's hex is lowercase
        parse_vkey(GO["peter_vkey"].replace("c74f20a3", "C74F20A3"))


def test_a_signature_of_another_type_from_the_same_key_is_another_key() -> None:
    # same name, same Ed25519 key, but type 0x04: another key id, so an unknown signature
    name, private_key = go_private_key(GO["peter_skey"])
    assert key_id(name, COSIGNATURE_V1, peter().public_key) != peter().key_id
    stranger = NoteSignature(name, key_id(name, COSIGNATURE_V1, peter().public_key), b"x" * 72)
    with pytest.raises(NoteNotSigned):
        open_note(sign_note(GO["text"], [], keep=[stranger]), [peter()])


def test_signatures_sharing_only_a_name_or_only_an_id_with_a_known_key_are_ignored() -> None:
    sig = parse_note(go_note(GO["peter_sig"])).signatures[0]
    same_name = NoteSignature(sig.name, sig.key_id ^ 0xFF, sig.signature)
    same_id = NoteSignature("PeterNeumann2", sig.key_id, sig.signature)
    opened = open_note(sign_note(GO["text"], [], keep=[same_name, same_id, sig]), [peter()])
    assert opened.signed_by == (peter(),) and opened.unverified == (same_name, same_id)


def test_two_different_trusted_keys_under_one_name_and_id_are_refused() -> None:
    class Impostor(NoteVerifier):
        pass

    impostor = Impostor(peter().name, ed25519.Ed25519PrivateKey.generate().public_key())
    impostor.key_id = peter().key_id
    with pytest.raises(BadVerifierKey) as caught:
        open_note(go_note(GO["peter_sig"]), [peter(), impostor])
    assert caught.value.code == "ambiguous_verifier"
    assert open_note(go_note(GO["peter_sig"]), [peter(), peter()]).signed_by == (peter(),)  # the same key twice is fine


# --- keys and names ----------------------------------------------------------------------------


def test_a_small_order_key_is_refused_because_it_would_verify_forgeries() -> None:
    identity = bytes([1]) + bytes(31)
    forged = identity + bytes(32)  # R = identity, S = 0
    ed25519.Ed25519PublicKey.from_public_bytes(identity).verify(forged, b"any message at all")  # OpenSSL accepts it
    with pytest.raises(BadVerifierKey) as caught:
        NoteVerifier("example.com/identity", identity)
    assert caught.value.code == "weak_key"
    vkey = (
        f"example.com/identity+{key_id('example.com/identity', ED25519, identity):08x}+"
        + base64.b64encode(bytes([ED25519]) + identity).decode()
    )
    with pytest.raises(BadVerifierKey):
        parse_vkey(vkey)
    for bad in (bytes(32), bytes([0xEC]) + b"\xff" * 30 + b"\x7f", b"\xed" + b"\xff" * 30 + b"\x7f", identity[:31] + b"\x80"):
        assert ed25519_key_problem(bad) is not None
    assert ed25519_key_problem(peter().public_key) is None


def test_only_ed25519_keys_sign_or_verify_notes() -> None:
    ecdsa = keys.generate("ecdsa")
    with pytest.raises(BadVerifierKey) as caught:
        NoteSigner("example.com/log", ecdsa)
    assert caught.value.code == "unsupported_signature_type"
    with pytest.raises(BadVerifierKey):
        NoteVerifier("example.com/log", ecdsa.public_key())


@pytest.mark.parametrize("name", ["", "a+b", "a b", "a\u00a0b", "a\u2003b", "a\u3000b", "a\tb", "a\x00b", "a\ud800b"])
def test_invalid_key_names(name: str) -> None:
    assert not is_key_name(name)
    with pytest.raises(BadVerifierKey) as caught:
        NoteSigner(name, ed25519.Ed25519PrivateKey.generate())
    assert caught.value.code == "bad_key_name"


@pytest.mark.parametrize("name", ["example.com/log", "PeterNeumann", "oid/1.3.6.1.4.1.44363.47.1", "é", "a\x7fb"])
def test_valid_key_names(name: str) -> None:
    assert is_key_name(name)


def test_base64_must_be_canonical() -> None:
    assert b64decode("AQ==") == b"\x01"
    for bad in ("AR==", "AQ", "AQ=", "A Q==", "", "AQ==\n", "ÀQ=="):
        with pytest.raises(ValueError):
            b64decode(bad)


# --- signing -----------------------------------------------------------------------------------


def test_sign_note_refuses_text_that_is_no_note_text() -> None:
    signer = NoteSigner("example.com/log", ed25519.Ed25519PrivateKey.generate())
    for text in ("no final newline", "a\x01b\n", "carriage\r\n"):
        with pytest.raises(MalformedNote):
            sign_note(text, [signer])
    with pytest.raises(MalformedNote):
        sign_note("text\n", [])


def test_a_note_with_blank_lines_in_its_text_round_trips() -> None:
    signer = NoteSigner("example.com/log", ed25519.Ed25519PrivateKey.generate())
    for text in ("\n", "Note\n\n", "a\n\n\nb\n"):
        data = sign_note(text, [signer])
        opened = open_note(data, [signer.verifier()])
        assert opened.text == text and opened.note.to_bytes() == data


def test_signature_lines_alone_parse_as_a_witness_answer() -> None:
    lines = parse_signature_lines((GO["peter_sig"] + "\n" + GO["enoch_sig"] + "\n").encode())
    assert [s.name for s in lines] == ["PeterNeumann", "EnochRoot"]
    assert "".join(s.line() for s in lines) == GO["peter_sig"] + "\n" + GO["enoch_sig"] + "\n"
    for bad in (b"", GO["peter_sig"].encode(), b"not a line\n"):
        with pytest.raises(MalformedNote):
            parse_signature_lines(bad)


@settings(max_examples=50, deadline=None)
@given(
    lines=st.lists(st.text(st.characters(blacklist_categories=("Cs",), min_codepoint=0x20), max_size=40), min_size=1, max_size=6),
    names=st.lists(st.from_regex(r"[a-z0-9./:_-]{1,20}", fullmatch=True), min_size=1, max_size=4, unique=True),
)
def test_any_note_text_signs_opens_and_round_trips(lines: list[str], names: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    signers = [NoteSigner(name, ed25519.Ed25519PrivateKey.generate()) for name in names]
    data = sign_note(text, signers)
    opened = open_note(data, [s.verifier() for s in signers])
    assert opened.text == text and len(opened.signed_by) == len(signers)
    assert parse_note(data).to_bytes() == data
    assert open_note(data, [signers[0].verifier()]).unverified == parse_note(data).signatures[1:]


def test_opening_a_note_object_applies_the_same_rules_as_bytes() -> None:
    with pytest.raises(MalformedNote):
        open_note(Note("no newline", parse_note(go_note(GO["peter_sig"])).signatures), [peter()])


# --- an independent implementation: tlog-scales (PyPI) ---------------------------------------------


def test_vkeys_and_signature_lines_match_tlog_scales() -> None:
    signing = pytest.importorskip("tlog_scales.signing")
    seed = bytes(range(32))
    private_key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    theirs = signing.PlainEd25519Signer("example.com/duet", seed)
    mine = NoteSigner("example.com/duet", private_key)
    assert theirs.vkey.serialize() == mine.vkey
    assert theirs.vkey.key_id == mine.key_id
    parsed = signing.Vkey.from_string(mine.vkey)
    assert (parsed.name, parsed.key_id, parsed.sig_type, parsed.pubkey) == (mine.name, mine.key_id, ED25519, mine.public_key)
    line = parse_note(sign_note("hello\n", [mine])).signatures[0]
    theirs_line = signing.NoteSignature.from_line(line.line().rstrip("\n"))
    assert (theirs_line.name, theirs_line.key_id, theirs_line.payload) == (line.name, line.key_id, line.signature)
    assert theirs_line.serialize() + "\n" == line.line()
    assert NoteVerifier.from_vkey(theirs.vkey.serialize()) == mine.verifier()
