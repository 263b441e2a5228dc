"""Which kind of attestation evidence some bytes are, told from the bytes alone.

``duet evidence show|verify FILE`` accepts every kind duet verifies, in the forms people have
them: raw binary as the hardware or the cloud wrote it, or the same as hex or base64 text, or
wrapped in JSON. This module only *recognises*; it trusts nothing and verifies nothing (a file
recognised as an SNP report may still be malformed or forged: the kind's parser and verifier
say so). The rules, in order:

1. ``HCLA`` at offset 0: an Azure vTPM attestation (HCL) report (its header signature);
2. an Intel DCAP quote header (u16 ``version``, u16 ``att_key_type``, u32 ``tee_type``, little
   endian): version 3 with att_key_type 2 (ECDSA P-256) is an SGX quote (the test the SGX reader
   has always used); version 4 or 5 with tee_type 0x81 a TDX quote; version 4 or 5 with
   tee_type 0 an SGX quote of a version duet does not read (refused, saying so);
3. u32 VERSION 2..5 at offset 0 and u32 SIGNATURE_ALGO 1 (ECDSA P-384) at 0x34: an SEV-SNP
   ATTESTATION_REPORT (its exact 1184-byte length is the parser's to check, so that a truncated
   report is reported as one, not as unknown bytes);
4. text starting with ``{``: JSON. ``"format": "duet-cvm-evidence/…"`` is a duet CVM evidence
   bundle; a ``quote`` (base64) or ``QuoteHex`` member holds a quote (then rule 2 on it); a
   ``token`` member holding a JWT is an MAA answer;
5. text of three base64url parts joined by dots, whose first part is a JSON object: a JWT (an
   Azure Attestation token);
6. other text that is hex or base64: decoded once, then rules 1–3 on the result.

Anything else is :class:`UndetectedEvidence`, whose message says what was seen. A kind given
by the user (``--type``) skips the recognition but not the unwrapping of text forms
(:func:`unwrap`). Inputs larger than :data:`MAX_EVIDENCE_BYTES` are refused before anything is
decoded: no evidence of any kind is that large, and a multi-megabyte file must not be parsed.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Final, Literal

from duet.attestation.azure.hcl import HCL_SIGNATURE
from duet.attestation.bundle import FORMAT as BUNDLE_FORMAT
from duet.attestation.bundle import MAX_BUNDLE_BYTES
from duet.attestation.sgx.abi import ATT_KEY_TYPE_ECDSA_P256, TEE_TYPE_SGX
from duet.attestation.sgx.abi import QUOTE_VERSION as SGX_QUOTE_VERSION
from duet.attestation.snp.abi import MAX_VERSION as SNP_MAX_VERSION
from duet.attestation.snp.abi import MIN_VERSION as SNP_MIN_VERSION
from duet.attestation.snp.abi import REPORT_SIZE as SNP_REPORT_SIZE
from duet.attestation.snp.abi import SIGNATURE_ALGO_ECDSA_P384_SHA384
from duet.attestation.tdx.abi import QUOTE_VERSIONS as TDX_QUOTE_VERSIONS
from duet.attestation.tdx.abi import TEE_TYPE_TDX
from duet.errors import VerificationError

EvidenceType = Literal["sgx", "snp", "tdx", "azure-hcl", "maa", "bundle"]
EVIDENCE_TYPES: Final[tuple[EvidenceType, ...]] = ("sgx", "snp", "tdx", "azure-hcl", "maa", "bundle")
DESCRIPTIONS: Final[dict[EvidenceType, str]] = {
    "sgx": "Intel SGX DCAP v3 quote",
    "snp": "AMD SEV-SNP attestation report",
    "tdx": "Intel TDX quote",
    "azure-hcl": "Azure vTPM attestation (HCL) report",
    "maa": "Azure Attestation (MAA) token",
    "bundle": f"duet CVM evidence bundle ({BUNDLE_FORMAT})",
}

MAX_EVIDENCE_BYTES: Final = MAX_BUNDLE_BYTES
"""1 MiB. The largest kind is a bundle (at most this); quotes are ~5 KB (padded to 8 KB in one
real file), reports 1–3 KB, tokens a few KB."""

_SNP_SIGNATURE_ALGO_OFFSET: Final = 0x34
_BUNDLE_FORMAT_PREFIX: Final = BUNDLE_FORMAT.rsplit("/", 1)[0] + "/"
_JWT: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_HEX: Final = re.compile(rb"[0-9a-fA-F\s]+")
_BASE64: Final = re.compile(rb"[A-Za-z0-9+/=_\-\s]+")


class UndetectedEvidence(VerificationError):
    """The bytes are no kind of evidence duet recognises (or too large to be any)."""

    code = "unknown_evidence_type"


@dataclass(frozen=True)
class Detected:
    type: EvidenceType
    data: bytes
    """The evidence itself: decoded from hex or base64, or taken out of its JSON wrapper, where it
    came so; a token as its ASCII text; a bundle as the JSON given."""
    how: str
    """Why: what in the bytes said so (for display)."""


def _quote_header(data: bytes) -> tuple[int, int, int] | None:
    if len(data) < 8:
        return None
    version, att_key_type, tee_type = struct.unpack_from("<HHI", data, 0)
    return version, att_key_type, tee_type


def _binary(data: bytes) -> Detected | None:
    """Rules 1–3; None if none applies. Raises for an SGX quote of a version duet does not read."""
    if data[:4] == HCL_SIGNATURE:
        return Detected("azure-hcl", data, f"{HCL_SIGNATURE.decode()} header signature")
    header = _quote_header(data)
    if header is not None:
        version, att_key_type, tee_type = header
        if version == SGX_QUOTE_VERSION and att_key_type == ATT_KEY_TYPE_ECDSA_P256:
            return Detected("sgx", data, f"quote header version 3, att_key_type {att_key_type}")
        if version in TDX_QUOTE_VERSIONS and tee_type == TEE_TYPE_TDX:
            return Detected("tdx", data, f"quote header version {version}, tee_type {tee_type:#x}")
        if version in TDX_QUOTE_VERSIONS and tee_type == TEE_TYPE_SGX and att_key_type == ATT_KEY_TYPE_ECDSA_P256:
            raise UndetectedEvidence(
                f"an SGX DCAP quote of version {version} (tee_type 0): duet reads SGX quotes of version 3 and TDX quotes "
                "of versions 4 and 5"
            )
    if len(data) >= _SNP_SIGNATURE_ALGO_OFFSET + 4:
        (version,) = struct.unpack_from("<I", data, 0)
        (algo,) = struct.unpack_from("<I", data, _SNP_SIGNATURE_ALGO_OFFSET)
        if SNP_MIN_VERSION <= version <= SNP_MAX_VERSION and algo == SIGNATURE_ALGO_ECDSA_P384_SHA384:
            size = "" if len(data) == SNP_REPORT_SIZE else f"; {len(data)} bytes, not {SNP_REPORT_SIZE}"
            return Detected("snp", data, f"VERSION {version}, SIGNATURE_ALGO 1 (ECDSA P-384){size}")
    return None


def _text(data: bytes) -> str | None:
    """The input as text, if it is printable UTF-8 text (line breaks and tabs allowed)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if all(c.isprintable() or c in "\r\n\t" for c in text) else None


def _b64url_json(part: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None


def is_jwt(text: str) -> bool:
    """Three base64url parts joined by dots, the first a JSON object (a JWS header)."""
    return bool(_JWT.fullmatch(text)) and isinstance(_b64url_json(text.split(".", 1)[0]), dict)


def _json(data: bytes) -> Detected:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise UndetectedEvidence("the input looks like JSON but does not parse") from None
    if not isinstance(doc, dict):
        raise UndetectedEvidence(f"the input is a JSON {type(doc).__name__}, not an object")
    fmt = doc.get("format")
    if isinstance(fmt, str) and fmt.startswith(_BUNDLE_FORMAT_PREFIX):
        return Detected("bundle", data, f"JSON with format {fmt!r}")
    token = doc.get("token")
    if isinstance(token, str) and is_jwt(token.strip()):
        return Detected("maa", token.strip().encode(), "JSON with a JWT in 'token'")
    for name, decode in (("quote", _b64decode), ("QuoteHex", _hexdecode)):
        value = doc.get(name)
        if isinstance(value, str):
            inner = decode(value.encode())
            found = _binary(inner) if inner is not None else None
            if inner is None or found is None or found.type not in ("sgx", "tdx"):
                raise UndetectedEvidence(f"the JSON's {name!r} member does not hold an SGX or TDX quote")
            return Detected(found.type, inner if found.type == "tdx" else data, f"JSON '{name}': {found.how}")
    raise UndetectedEvidence(
        f"JSON, but neither a {BUNDLE_FORMAT} bundle (its 'format') nor a quote ('quote', 'QuoteHex') nor an MAA answer ('token')"
    )


def _hexdecode(text: bytes) -> bytes | None:
    if not _HEX.fullmatch(text):
        return None
    try:
        return bytes.fromhex(text.decode("ascii"))
    except ValueError:
        return None


def _b64decode(text: bytes) -> bytes | None:
    compact = b"".join(text.split())
    if not _BASE64.fullmatch(text) or not compact:
        return None
    try:
        if b"-" in compact or b"_" in compact:
            return base64.urlsafe_b64decode(compact + b"=" * (-len(compact) % 4))
        return base64.b64decode(compact, validate=True)
    except (ValueError, binascii.Error):
        return None


def _decoded(text: bytes) -> tuple[bytes, str] | None:
    """Text that is hex or base64, decoded (hex first: hex digits are also base64 letters)."""
    stripped = text.strip()
    for decode, what in ((_hexdecode, "hex"), (_b64decode, "base64")):
        raw = decode(stripped)
        if raw:
            return raw, what
    return None


def _too_large(data: bytes) -> None:
    if len(data) > MAX_EVIDENCE_BYTES:
        raise UndetectedEvidence(
            f"the input is {len(data)} bytes; no evidence duet reads is larger than {MAX_EVIDENCE_BYTES} (1 MiB)"
        )


def _preview(data: bytes) -> str:
    return data[:16].hex() + ("…" if len(data) > 16 else "")


def detect(data: bytes) -> Detected:
    """The kind of evidence ``data`` is, by the module docstring's rules; raises
    :class:`UndetectedEvidence` saying what was seen."""
    data = bytes(data)
    _too_large(data)
    if not data.strip():
        raise UndetectedEvidence("the input is empty")
    found = _binary(data)
    if found is not None:
        return found
    text = _text(data)
    if text is not None:
        stripped = text.strip()
        if stripped.startswith("{"):
            return _json(data)
        if is_jwt(stripped):
            return Detected("maa", stripped.encode(), "a JWT (three base64url parts)")
        decoded = _decoded(data)
        if decoded is not None:
            raw, what = decoded
            inner = _binary(raw)
            if inner is not None:
                return Detected(inner.type, raw, f"{what} text: {inner.how}")
            raise UndetectedEvidence(
                f"{what} text of {len(raw)} bytes that are no known kind of evidence (they start {_preview(raw)})"
            )
    kinds = ", ".join(f"{t} ({d})" for t, d in DESCRIPTIONS.items())
    raise UndetectedEvidence(
        f"{len(data)} bytes that are no known kind of evidence (they start {_preview(data)}); known: {kinds}. "
        "If you know the kind, say it with --type"
    )


def unwrap(data: bytes, evidence_type: EvidenceType) -> Detected:
    """``data`` as the kind the user named: text forms decoded where the kind is binary, nothing
    recognised or judged (the kind's parser says what is wrong with it)."""
    data = bytes(data)
    _too_large(data)
    how = "named with --type"
    if evidence_type in ("bundle", "sgx"):  # the SGX reader decodes its own text forms
        return Detected(evidence_type, data, how)
    if evidence_type == "maa":
        text = data.strip()
        if text.startswith(b"{"):
            try:
                token = json.loads(text).get("token")
            except (ValueError, AttributeError, RecursionError):
                token = None
            if isinstance(token, str):
                return Detected(evidence_type, token.strip().encode(), how + " (JSON 'token')")
        return Detected(evidence_type, text, how)
    if _binary(data) is None and _text(data) is not None:
        if data.strip().startswith(b"{"):
            try:
                return Detected(evidence_type, _json(data).data, how + " (JSON)")
            except UndetectedEvidence:
                return Detected(evidence_type, data, how)
        decoded = _decoded(data)
        if decoded is not None:
            return Detected(evidence_type, decoded[0], f"{how} ({decoded[1]} text)")
    return Detected(evidence_type, data, how)


class MalformedToken(VerificationError):
    """A token whose parts do not decode (shown by ``duet evidence show``; the verifier says the same)."""

    code = "maa_malformed_token"


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """A JWT's header, claims and signature bytes, decoded but NOT verified: for display only
    (:func:`duet.attestation.azure.maa_cvm.verify_maa_cvm_token` is what checks a token)."""
    text = token.strip()
    if not _JWT.fullmatch(text):
        raise MalformedToken("the token is not three base64url parts joined by dots")
    head, body, signature = text.split(".")
    header, claims = _b64url_json(head), _b64url_json(body)
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise MalformedToken("the token's header or claims are not a base64url-encoded JSON object")
    try:
        raw_signature = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (ValueError, binascii.Error):
        raise MalformedToken("the token's signature is not base64url") from None
    return header, claims, raw_signature
