"""C2SP signed notes (c2sp.org/signed-note): text signed by one or more named keys.

A signed note is the note text (ending in a newline), a blank line, then one or more signature
lines ``— <key name> <base64(key id (4 bytes, big-endian) ‖ signature)>``. Checkpoints
(``duet.ledger.checkpoint``) and witness cosignatures are signed notes, so every transparency
tool that speaks C2SP (Go's sumdb/note, Tessera, witnesses, monitors) can read what duet signs.

Parsing is apart from verification: ``parse_note`` checks only the syntax; ``open_note`` parses
and then applies the spec's rules with the verifiers the caller trusts:

* a signature line whose (key name, key id) is not one of the verifiers' is ignored, but kept
  (``OpenedNote.unverified``), so witness cosignatures can be passed along untouched;
* a line that names a known key is always verified, and one that fails rejects the whole note
  (the spec's SHOULD): a known key never "half-signs" a note;
* a note no known key signed is rejected (``NoteNotSigned``, which still carries the note);
* at most ``MAX_SIGNATURES`` lines (the spec asks verifiers for a limit of at least 16; Go's
  implementation uses 100, and so do we), so a note cannot make a verifier spend without bound.

Decided here, where the spec leaves room:

* Base64 must be canonical (RFC 4648 §4 with padding, zero pad bits), so one note has one
  encoding; real encoders never produce anything else.
* The key id in a vkey is lowercase hex, as the spec's conventions define its hex encoding.
* Ed25519 public keys of small order, or not canonically encoded, are refused wherever a key is
  accepted: under the identity point a signature (R = identity, S = 0) verifies for every message
  with OpenSSL, so such a vkey would let anyone sign in that key's name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from duet import keys
from duet.errors import VerificationError

__all__ = [
    "COSIGNATURE_V1",
    "ED25519",
    "MAX_SIGNATURES",
    "BadVerifierKey",
    "MalformedNote",
    "Note",
    "NoteError",
    "NoteNotSigned",
    "NoteSignature",
    "NoteSignatureInvalid",
    "NoteSigner",
    "NoteVerifier",
    "OpenedNote",
    "VerifiedSignature",
    "VerifierKey",
    "b64decode",
    "b64encode",
    "ed25519_key_problem",
    "is_key_name",
    "key_id",
    "open_note",
    "parse_note",
    "parse_signature_lines",
    "parse_vkey",
    "sign_note",
]

ED25519 = 0x01
"""Signature type of plain Ed25519 note signatures (signed-note)."""
COSIGNATURE_V1 = 0x04
"""Signature type of timestamped Ed25519 witness cosignatures (tlog-cosignature)."""

MAX_SIGNATURES = 100
"""Most signature lines ``parse_note`` reads; the spec requires accepting at least 16."""

SIGNATURE_PREFIX = "— "
"""Em dash (U+2014) and a space: how every signature line starts."""

_ED25519_SIGNATURE_SIZE = 64
_ED25519_KEY_SIZE = 32

# Go's unicode.IsSpace, which sumdb/note uses for "Unicode spaces": the Latin-1 spaces and every
# other character with the Unicode White_Space property. Spelled out so that Python's notion of
# whitespace (which differs at U+001C..U+001F) cannot change which names are valid.
_UNICODE_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


# --- errors ------------------------------------------------------------------------------------


class NoteError(VerificationError):
    """A signed note, or a key meant to verify one, is not acceptable."""

    code = "bad_note"


class MalformedNote(NoteError):
    """The bytes are not a signed note (``note_not_utf8``, ``note_control_character``,
    ``note_unsigned``, ``note_bad_signature_line``, ``note_too_many_signatures``,
    ``note_bad_text``)."""

    code = "malformed_note"


class BadVerifierKey(NoteError):
    """A verifier key (vkey), key name or public key is unusable (``bad_vkey``,
    ``bad_key_name``, ``vkey_key_id_mismatch``, ``unsupported_signature_type``, ``weak_key``,
    ``ambiguous_verifier``)."""

    code = "bad_vkey"


class NoteSignatureInvalid(NoteError):
    """A signature line names a known key, but its signature does not verify: the whole note is
    rejected, as the spec asks."""

    code = "bad_note_signature"

    def __init__(self, message: str, *, name: str, key_id: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.name = name
        self.key_id = key_id


class NoteNotSigned(NoteError):
    """The note is well formed but no known key signed it. ``note`` is the parsed note, so a
    caller can still say whose signatures it carried."""

    code = "note_not_signed"

    def __init__(self, message: str, *, note: Note) -> None:
        super().__init__(message)
        self.note = note


# --- base64, names, key ids ----------------------------------------------------------------------


def b64encode(data: bytes) -> str:
    """Standard base64 with padding (RFC 4648 §4), as every C2SP text format uses."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Strict, canonical base64: the only encoding ``b64encode`` could have produced.

    Raises ValueError otherwise (callers turn it into their own typed error)."""
    if not text or len(text) % 4 or not text.isascii():
        raise ValueError("not canonical base64")
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
    if b64encode(data) != text:  # non-zero pad bits: another string for the same bytes
        raise ValueError("not canonical base64")
    return data


def is_key_name(name: object) -> bool:
    """The spec's key names: non-empty, no Unicode spaces, no plus sign; and (for a note) no
    control characters, which a note may not contain at all."""
    if not isinstance(name, str) or not name or "+" in name:
        return False
    if any(ch in _UNICODE_SPACES or ord(ch) < 0x20 for ch in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form
        return False
    return True


def key_id(name: str, signature_type: int, public_key: bytes) -> int:
    """SHA-256(key name ‖ 0x0A ‖ signature type ‖ public key)[:4], big-endian: the spec's key id,
    which also separates the same key used with two signature types."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([signature_type]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


_P25519 = 2**255 - 19
# y-coordinates of the eight points of small order on edwards25519 (sign bit cleared): 0 and
# p - 1 (orders 4 and 2), 1 (the identity) and the two of order 8. Same set as libsodium's
# ge25519_has_small_order.
_SMALL_ORDER_Y = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    )
)


def ed25519_key_problem(public_key: bytes) -> str | None:
    """Why these 32 bytes must not be trusted as an Ed25519 public key, or None.

    A small-order key lets anyone forge signatures; a non-canonical encoding (y ≥ p) is a
    second spelling of some other key. Any other key that is no curve point simply never
    verifies anything."""
    if len(public_key) != _ED25519_KEY_SIZE:
        return f"is {len(public_key)} bytes, not a 32-byte Ed25519 public key"
    cleared = public_key[:31] + bytes([public_key[31] & 0x7F])
    if int.from_bytes(cleared, "little") >= _P25519:
        return "is not a canonical Ed25519 encoding"
    if cleared in _SMALL_ORDER_Y:
        return "is an Ed25519 point of small order, under which anyone can forge signatures"
    return None


def _ed25519_public_bytes(public_key: keys.PublicKey | bytes, name: str) -> bytes:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    elif isinstance(public_key, (bytes, bytearray)):
        raw = bytes(public_key)
    else:
        raise BadVerifierKey(
            f"the key for {name!r} is {type(public_key).__name__}; signed notes here use Ed25519 keys",
            code="unsupported_signature_type",
        )
    problem = ed25519_key_problem(raw)
    if problem is not None:
        raise BadVerifierKey(f"the public key for {name!r} {problem}", code="weak_key")
    return raw


def _check_name(name: object) -> str:
    if not is_key_name(name):
        raise BadVerifierKey(
            f"{name!r} is not a key name: it must be non-empty, without spaces, '+' or control characters",
            code="bad_key_name",
        )
    assert isinstance(name, str)
    return name


# --- verifier keys -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifierKey:
    """A parsed vkey ``<name>+<hex key id>+<base64(signature type ‖ public key)>``: what a
    user configures to trust a log or a witness."""

    name: str
    key_id: int
    signature_type: int
    public_key: bytes

    def encode(self) -> str:
        return f"{self.name}+{self.key_id:08x}+{b64encode(bytes([self.signature_type]) + self.public_key)}"

    def __str__(self) -> str:
        return self.encode()


_SUPPORTED_TYPES = {ED25519: "Ed25519", COSIGNATURE_V1: "cosignature/v1 (timestamped Ed25519)"}


def parse_vkey(text: str) -> VerifierKey:
    """Parse a vkey of a type duet verifies (Ed25519, 0x01, or cosignature/v1, 0x04).

    Its key id must be the one the spec derives from the name, type and key, so a vkey cannot
    claim one key's id for another key; the key must not be a weak Ed25519 key."""
    if not isinstance(text, str):
        raise BadVerifierKey("a vkey is a string <name>+<hex key id>+<base64 key>")
    name, plus1, rest = text.partition("+")
    hex_id, plus2, key64 = rest.partition("+")
    if not (plus1 and plus2):
        raise BadVerifierKey(f"{text[:80]!r} is not a vkey <name>+<hex key id>+<base64 key>")
    _check_name(name)
    if len(hex_id) != 8 or any(c not in "0123456789abcdef" for c in hex_id):
        raise BadVerifierKey(f"the key id of vkey {name!r} is not 8 lowercase hex digits")
    try:
        material = b64decode(key64)
    except ValueError:
        raise BadVerifierKey(f"the key of vkey {name!r} is not canonical base64") from None
    if len(material) < 2:
        raise BadVerifierKey(f"vkey {name!r} carries no key")
    signature_type, public_key = material[0], material[1:]
    if signature_type not in _SUPPORTED_TYPES:
        raise BadVerifierKey(
            f"vkey {name!r} is of signature type 0x{signature_type:02x}; duet verifies "
            + " and ".join(f"0x{t:02x} ({label})" for t, label in _SUPPORTED_TYPES.items()),
            code="unsupported_signature_type",
        )
    problem = ed25519_key_problem(public_key)
    if problem is not None:
        raise BadVerifierKey(f"the key of vkey {name!r} {problem}", code="weak_key")
    expected = key_id(name, signature_type, public_key)
    if int(hex_id, 16) != expected:
        raise BadVerifierKey(
            f"vkey {name!r} names key id {hex_id}, but its name and key give {expected:08x}", code="vkey_key_id_mismatch"
        )
    return VerifierKey(name, expected, signature_type, public_key)


# --- verifiers and signers -----------------------------------------------------------------------


class NoteVerifier:
    """A trusted key: Ed25519 signatures (type 0x01) by ``name`` over the note text.

    Subclasses change the signature type and the signed message (cosignature/v1 in
    ``duet.ledger.checkpoint``); ``open_note`` treats them all alike, by (name, key id)."""

    signature_type: ClassVar[int] = ED25519

    def __init__(self, name: str, public_key: keys.PublicKey | bytes) -> None:
        self.name = _check_name(name)
        self.public_key = _ed25519_public_bytes(public_key, name)
        self.key_id = key_id(self.name, self.signature_type, self.public_key)
        self._key = ed25519.Ed25519PublicKey.from_public_bytes(self.public_key)

    @classmethod
    def from_vkey(cls, vkey: str | VerifierKey) -> Self:
        parsed = parse_vkey(vkey) if isinstance(vkey, str) else vkey
        if parsed.signature_type != cls.signature_type:
            raise BadVerifierKey(
                f"vkey {parsed.name!r} is of signature type 0x{parsed.signature_type:02x}, "
                f"not 0x{cls.signature_type:02x} as a {cls.__name__} needs",
                code="unsupported_signature_type",
            )
        return cls(parsed.name, parsed.public_key)

    @property
    def vkey(self) -> str:
        return VerifierKey(self.name, self.key_id, self.signature_type, self.public_key).encode()

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (the bytes after the key id) signs ``text``. Never raises."""
        return len(signature) == _ED25519_SIGNATURE_SIZE and self._ed25519_verify(signature, text)

    def _ed25519_verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NoteVerifier):
            return NotImplemented
        return (self.signature_type, self.name, self.public_key) == (other.signature_type, other.name, other.public_key)

    def __hash__(self) -> int:
        return hash((self.signature_type, self.name, self.public_key))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.vkey!r})"


class NoteSigner:
    """Signs note text with an Ed25519 key (type 0x01) under ``name``: for duet, the controller's
    signing key under its log origin."""

    signature_type: ClassVar[int] = ED25519

    def __init__(self, name: str, private_key: keys.PrivateKey) -> None:
        if not isinstance(private_key, ed25519.Ed25519PrivateKey):
            raise BadVerifierKey(
                f"the key for {name!r} is {type(private_key).__name__}; signed notes here use Ed25519 keys",
                code="unsupported_signature_type",
            )
        self.name = _check_name(name)
        self._private_key = private_key
        self.public_key = _ed25519_public_bytes(private_key.public_key(), name)
        self.key_id = key_id(self.name, self.signature_type, self.public_key)

    def sign(self, text: bytes) -> bytes:
        """The signature over ``text``, without the key id."""
        return self._private_key.sign(text)

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        return VerifierKey(self.name, self.key_id, self.signature_type, self.public_key).encode()


# --- notes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    """One signature line, verified or not."""

    name: str
    key_id: int
    signature: bytes
    """The signature bytes after the 4-byte key id."""

    def line(self) -> str:
        """The line as it appears in a note, final newline included."""
        return f"{SIGNATURE_PREFIX}{self.name} {b64encode(self.key_id.to_bytes(4, 'big') + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A parsed signed note: its text (final newline included) and every signature line, in
    order. ``to_bytes`` gives back exactly the note it was parsed from."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def to_bytes(self) -> bytes:
        return (self.text + "\n" + "".join(sig.line() for sig in self.signatures)).encode("utf-8")


@dataclass(frozen=True)
class VerifiedSignature:
    verifier: NoteVerifier
    signature: NoteSignature


@dataclass(frozen=True)
class OpenedNote:
    """A note at least one trusted key signed.

    ``verified`` has one signature per trusted key that signed (the first of its lines),
    ``unverified`` the lines of keys the caller did not name, kept so they can be passed on."""

    note: Note
    verified: tuple[VerifiedSignature, ...]
    unverified: tuple[NoteSignature, ...]

    @property
    def text(self) -> str:
        return self.note.text

    @property
    def signed_by(self) -> tuple[NoteVerifier, ...]:
        return tuple(v.verifier for v in self.verified)


def _check_text(text: str) -> None:
    if any(ord(ch) < 0x20 and ch != "\n" for ch in text):
        raise MalformedNote("the note contains a control character other than newline", code="note_control_character")


def parse_note(data: bytes, *, max_signatures: int = MAX_SIGNATURES) -> Note:
    """The syntax of a signed note, nothing more (no signature is checked).

    Valid UTF-8 with no control character but newline (so CR-LF line endings are refused);
    the text is everything up to and including the newline before the last blank line; after
    it, one or more signature lines, each ending in a newline."""
    if isinstance(data, str):
        raise TypeError("parse_note takes the note's bytes")
    try:
        message = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedNote("the note is not valid UTF-8", code="note_not_utf8") from None
    _check_text(message)
    split = message.rfind("\n\n")
    if split < 0:
        raise MalformedNote("the note has no blank line before its signatures", code="note_unsigned")
    text, block = message[: split + 1], message[split + 2 :]
    if not block:
        raise MalformedNote("the note has no signature lines", code="note_unsigned")
    if not block.endswith("\n"):
        raise MalformedNote("the note's last signature line does not end in a newline", code="note_bad_signature_line")
    lines = block[:-1].split("\n")
    if len(lines) > max_signatures:
        raise MalformedNote(
            f"the note has {len(lines)} signature lines; at most {max_signatures} are read", code="note_too_many_signatures"
        )
    return Note(text, tuple(_parse_signature_line(line) for line in lines))


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise MalformedNote(f"{line[:60]!r} is not a signature line (— name signature)", code="note_bad_signature_line")
    name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not is_key_name(name):
        raise MalformedNote(f"the signature line {line[:60]!r} has no valid key name", code="note_bad_signature_line")
    try:
        raw = b64decode(encoded)
    except ValueError:
        raise MalformedNote(f"the signature of {name!r} is not canonical base64", code="note_bad_signature_line") from None
    if len(raw) < 5:
        raise MalformedNote(f"the signature of {name!r} is shorter than a key id and a signature", code="note_bad_signature_line")
    return NoteSignature(name, int.from_bytes(raw[:4], "big"), raw[4:])


def parse_signature_lines(data: bytes, *, max_signatures: int = MAX_SIGNATURES) -> tuple[NoteSignature, ...]:
    """Signature lines alone, each ending in a newline: what a witness answers to
    add-checkpoint (tlog-witness), to be added to the checkpoint it cosigned."""
    try:
        block = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedNote("the signature lines are not valid UTF-8", code="note_not_utf8") from None
    _check_text(block)
    if not block or not block.endswith("\n"):
        raise MalformedNote("signature lines must each end in a newline", code="note_bad_signature_line")
    lines = block[:-1].split("\n")
    if len(lines) > max_signatures:
        raise MalformedNote(f"{len(lines)} signature lines; at most {max_signatures} are read", code="note_too_many_signatures")
    return tuple(_parse_signature_line(line) for line in lines)


def _index(verifiers: Iterable[NoteVerifier]) -> dict[tuple[str, int], NoteVerifier]:
    known: dict[tuple[str, int], NoteVerifier] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_id)
        other = known.setdefault(slot, verifier)
        if other != verifier:  # two keys under one name and id: a signature could not say which
            raise BadVerifierKey(
                f"two different trusted keys share the name {verifier.name!r} and key id {verifier.key_id:08x}",
                code="ambiguous_verifier",
            )
    return known


def open_note(data: bytes | Note, verifiers: Iterable[NoteVerifier], *, max_signatures: int = MAX_SIGNATURES) -> OpenedNote:
    """Parse ``data`` and verify it with the keys the caller trusts (see the module docstring
    for the rules). Raises MalformedNote, NoteSignatureInvalid, NoteNotSigned or, for an
    ambiguous set of verifiers, BadVerifierKey."""
    known = _index(verifiers)
    # A Note built by hand is checked as if it had come as bytes: one set of rules for both.
    note = parse_note(data.to_bytes() if isinstance(data, Note) else data, max_signatures=max_signatures)
    text = note.text.encode("utf-8")
    verified: dict[NoteVerifier, NoteSignature] = {}
    unverified: dict[NoteSignature, None] = {}  # ordered set: identical repeated lines once
    for sig in note.signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            unverified.setdefault(sig)
            continue
        if not verifier.verify(text, sig.signature):
            raise NoteSignatureInvalid(
                f"the signature of {sig.name!r} (key id {sig.key_id:08x}) does not verify: the note was altered "
                "or the signature forged",
                name=sig.name,
                key_id=sig.key_id,
            )
        verified.setdefault(verifier, sig)
    if not verified:
        names = ", ".join(sorted({f"{s.name}+{s.key_id:08x}" for s in note.signatures}))
        raise NoteNotSigned(f"no trusted key signed the note (it is signed by {names})", note=note)
    return OpenedNote(
        note,
        tuple(VerifiedSignature(v, s) for v, s in verified.items()),
        tuple(unverified),
    )


def sign_note(text: str, signers: Sequence[NoteSigner], *, keep: Sequence[NoteSignature] = ()) -> bytes:
    """The signed note of ``text`` by every signer, after the signatures in ``keep`` (as Go's
    note.Sign: a kept signature of a key that signs again is replaced)."""
    if not isinstance(text, str) or not text.endswith("\n"):
        raise MalformedNote("the note text must end in a newline", code="note_bad_text")
    _check_text(text)
    try:
        message = text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedNote("the note text has no UTF-8 form (a lone surrogate)", code="note_not_utf8") from None
    if not signers and not keep:
        raise MalformedNote("a signed note needs at least one signature", code="note_unsigned")
    fresh: list[NoteSignature] = []
    for signer in signers:
        if any((s.name, s.key_id) == (signer.name, signer.key_id) for s in fresh):
            raise BadVerifierKey(f"two signers share the name {signer.name!r} and key id", code="ambiguous_verifier")
        fresh.append(NoteSignature(signer.name, signer.key_id, signer.sign(message)))
    replaced = {(s.name, s.key_id) for s in fresh}
    kept = [s for s in keep if (s.name, s.key_id) not in replaced]
    for sig in kept:
        if not is_key_name(sig.name) or not 0 <= sig.key_id < 2**32 or not sig.signature:
            raise MalformedNote(
                f"the kept signature of {sig.name!r} is not a valid signature line", code="note_bad_signature_line"
            )
    return Note(text, (*kept, *fresh)).to_bytes()
