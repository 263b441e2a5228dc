"""The Intel SGX ECDSA (DCAP) quote, version 3, as bytes ↔ named fields: tables, parse, pack.

Everything here is layout: which bytes hold which field. The tables are ``(offset, size, name)``
rows with the names Intel's ``sgx_quote_3.h`` and ``sgx_report.h`` use, so a reader can hold
them against the header files, and :func:`~duet.attestation.layout.check_table` proves at import time that each table
tiles its structure without a gap or an overlap. Parsing trusts nothing and checks nothing
cryptographic (that is :mod:`duet.attestation.sgx.verify`); a malformed quote raises
:class:`QuoteFormatError` naming the field and its offset, because "bad quote" alone does not
tell anyone which producer to fix.

Parsing follows ``signature_data_len`` and the nested length fields, never the input size:
real quotes arrive padded. Packing (:func:`pack_fields`) is the inverse of reading a table, so
simulated quotes are laid out by the same rows that parse them.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from duet.attestation.layout import Field, LayoutError, check_table, fields_dict, read_fields


class QuoteFormatError(LayoutError):
    """The bytes are not a well-formed SGX DCAP v3 quote; ``field``/``offset`` say where."""

    code = "bad_quote"
    structure = "SGX DCAP v3 quote"


# --------------------------------------------------------------------------------------------
# Layout tables. Offsets are relative to the start of each structure.
# --------------------------------------------------------------------------------------------

HEADER_SIZE = 48
REPORT_BODY_SIZE = 384
SIGNATURE_DATA_LEN_OFFSET = HEADER_SIZE + REPORT_BODY_SIZE  # 432
SIGNATURE_DATA_OFFSET = SIGNATURE_DATA_LEN_OFFSET + 4  # 436
SIGNED_REGION_END = SIGNATURE_DATA_LEN_OFFSET  # the ISV signature covers quote[0:432]

QUOTE_VERSION = 3
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_SGX = 0
INTEL_QE_VENDOR_ID = bytes.fromhex("939A7233F79C4CA9940A0DB3957F0607")
CERT_TYPE_PCK_CHAIN = 5

HEADER_FIELDS: tuple[Field, ...] = (
    Field(0, 2, "version", "version", "u16"),
    Field(2, 2, "att_key_type", "att_key_type", "u16"),
    Field(4, 4, "att_key_data_0 (tee_type)", "tee_type", "u32"),
    Field(8, 2, "qe_svn", "qe_svn", "u16"),
    Field(10, 2, "pce_svn", "pce_svn", "u16"),
    Field(12, 16, "qe_vendor_id", "qe_vendor_id"),
    Field(28, 20, "user_data", "user_data"),
)

REPORT_BODY_FIELDS: tuple[Field, ...] = (
    Field(0, 16, "CPUSVN", "cpu_svn"),
    Field(16, 4, "MISCSELECT", "misc_select", "u32"),
    Field(20, 1, "CET_ATTRIBUTES", "cet_attributes"),
    Field(21, 11, "reserved1", "reserved1"),
    Field(32, 16, "ISVEXTPRODID", "isv_ext_prod_id"),
    Field(48, 8, "ATTRIBUTES.FLAGS", "flags", "u64"),
    Field(56, 8, "ATTRIBUTES.XFRM", "xfrm", "u64"),
    Field(64, 32, "MRENCLAVE", "mr_enclave"),
    Field(96, 32, "reserved2", "reserved2"),
    Field(128, 32, "MRSIGNER", "mr_signer"),
    Field(160, 32, "reserved3", "reserved3"),
    Field(192, 64, "CONFIGID", "config_id"),
    Field(256, 2, "ISVPRODID", "isv_prod_id", "u16"),
    Field(258, 2, "ISVSVN", "isv_svn", "u16"),
    Field(260, 2, "CONFIGSVN", "config_svn", "u16"),
    Field(262, 42, "reserved4", "reserved4"),
    Field(304, 16, "ISVFAMILYID", "isv_family_id"),
    Field(320, 64, "REPORTDATA", "report_data"),
)

# Fixed-size start of the signature data; the rest is located by its length fields.
SIGNATURE_DATA_FIELDS: tuple[Field, ...] = (
    Field(0, 64, "ISV report signature", "isv_signature"),
    Field(64, 64, "ECDSA attestation public key", "attestation_key"),
    Field(128, 384, "QE report body", "qe_report"),
    Field(512, 64, "QE report signature", "qe_report_signature"),
    Field(576, 2, "QE auth data size", "qe_auth_data_size", "u16"),
)
QE_AUTH_DATA_OFFSET = 578
CERT_DATA_HEADER_FIELDS: tuple[Field, ...] = (  # relative to the end of the QE auth data
    Field(0, 2, "certification data type", "type", "u16"),
    Field(2, 4, "certification data size", "size", "u32"),
)
CERT_DATA_HEADER_SIZE = 6
MIN_SIGNATURE_DATA_LEN = QE_AUTH_DATA_OFFSET + CERT_DATA_HEADER_SIZE  # 584

FLAG_DEBUG = 0x02


check_table(HEADER_FIELDS, HEADER_SIZE)
check_table(REPORT_BODY_FIELDS, REPORT_BODY_SIZE)
check_table(SIGNATURE_DATA_FIELDS, QE_AUTH_DATA_OFFSET)
check_table(CERT_DATA_HEADER_FIELDS, CERT_DATA_HEADER_SIZE)


# --------------------------------------------------------------------------------------------
# Parsed structures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    def to_dict(self) -> dict[str, Any]:
        return fields_dict(HEADER_FIELDS, self)


@dataclass(frozen=True)
class ReportBody:
    """An SGX report body (384 bytes): the ISV enclave's, or the quoting enclave's.

    Its MRENCLAVE, MRSIGNER, ISVPRODID, ISVSVN and debug bit are the claims an enclave policy
    judges (:class:`duet.attestation.sgx.policy.EnclaveClaims`).
    """

    cpu_svn: bytes
    misc_select: int
    cet_attributes: bytes
    reserved1: bytes
    isv_ext_prod_id: bytes
    flags: int
    xfrm: int
    mr_enclave: bytes
    reserved2: bytes
    mr_signer: bytes
    reserved3: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    reserved4: bytes
    isv_family_id: bytes
    report_data: bytes
    raw: bytes = field(repr=False)

    @property
    def attributes(self) -> bytes:
        """ATTRIBUTES as the 16 raw bytes (FLAGS ‖ XFRM)."""
        return self.raw[48:64]

    @property
    def debug(self) -> bool:
        """ATTRIBUTES.FLAGS bit 1: a debugger can read this enclave's memory."""
        return bool(self.flags & FLAG_DEBUG)

    def to_dict(self) -> dict[str, Any]:
        d = fields_dict(REPORT_BODY_FIELDS, self)
        d["debug"] = self.debug
        return d


@dataclass(frozen=True)
class CertificationData:
    type: int
    size: int
    data: bytes = field(repr=False)
    pck_chain_pem: tuple[str, ...] = ()
    """For type 5: each certificate as PEM, in the order found in the quote."""

    def certificates(self) -> list[x509.Certificate]:
        return [x509.load_pem_x509_certificate(p.encode()) for p in self.pck_chain_pem]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "size": self.size}
        if self.pck_chain_pem:
            d["pck_chain"] = [
                {
                    "subject": c.subject.rfc4514_string(),
                    "issuer": c.issuer.rfc4514_string(),
                    "not_valid_before": c.not_valid_before_utc.isoformat(),
                    "not_valid_after": c.not_valid_after_utc.isoformat(),
                    "sha256": c.fingerprint(hashes.SHA256()).hex(),
                }
                for c in self.certificates()
            ]
        else:
            d["data"] = self.data.hex()
        return d


@dataclass(frozen=True)
class SignatureData:
    isv_signature: bytes
    attestation_key: bytes
    qe_report: ReportBody
    qe_report_signature: bytes
    qe_auth_data_size: int
    qe_auth_data: bytes
    certification_data: CertificationData
    unparsed_tail: int = 0
    """Bytes inside ``signature_data_len`` after the certification data (normally 0)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "isv_signature": self.isv_signature.hex(),
            "attestation_key": self.attestation_key.hex(),
            "qe_report": self.qe_report.to_dict(),
            "qe_report_signature": self.qe_report_signature.hex(),
            "qe_auth_data_size": self.qe_auth_data_size,
            "qe_auth_data": self.qe_auth_data.hex(),
            "certification_data": self.certification_data.to_dict(),
            "unparsed_tail": self.unparsed_tail,
        }


@dataclass(frozen=True)
class ParsedQuote:
    header: QuoteHeader
    report_body: ReportBody
    signature_data_len: int
    signature_data: SignatureData
    raw: bytes = field(repr=False)
    """The quote bytes up to the end of the signature data (trailing padding excluded)."""
    trailing_bytes: int = 0
    """Bytes after the signature data in the input (padding seen in real files)."""

    @property
    def signed_region(self) -> bytes:
        """header ‖ report body: what the attestation key signs."""
        return self.raw[:SIGNED_REGION_END]

    def to_dict(self) -> dict[str, Any]:
        return {
            "header": self.header.to_dict(),
            "report_body": self.report_body.to_dict(),
            "signature_data_len": self.signature_data_len,
            "signature_data": self.signature_data.to_dict(),
            "size": len(self.raw),
            "trailing_bytes": self.trailing_bytes,
        }


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)


def parse_report_body(buf: bytes, base: int = 0, *, what: str = "report body") -> ReportBody:
    if len(buf) < base + REPORT_BODY_SIZE:
        raise QuoteFormatError(f"{what} is truncated: need {REPORT_BODY_SIZE} bytes", field=what, offset=base)
    values = read_fields(REPORT_BODY_FIELDS, buf, base)
    return ReportBody(**values, raw=bytes(buf[base : base + REPORT_BODY_SIZE]))


def _split_der(data: bytes) -> list[bytes]:
    """Split concatenated DER SEQUENCEs (Intel's *sample* quotes carry the chain as DER)."""
    out, pos = [], 0
    while pos < len(data):
        if data[pos] != 0x30 or pos + 2 > len(data):
            raise ValueError("not a DER SEQUENCE")
        length, hdr = data[pos + 1], 2
        if length & 0x80:
            n = length & 0x7F
            if n == 0 or n > 4 or pos + 2 + n > len(data):
                raise ValueError("bad DER length")
            length, hdr = int.from_bytes(data[pos + 2 : pos + 2 + n], "big"), 2 + n
        end = pos + hdr + length
        if end > len(data):
            raise ValueError("truncated DER")
        out.append(data[pos:end])
        pos = end
    return out


def pck_chain_pem(data: bytes) -> tuple[str, ...]:
    """PEM blocks of a type-5 certification data (NUL-terminated PEM; DER fallback), in the order
    found; raises ``ValueError`` when a certificate does not parse. TDX quotes nest the same
    type-5 data inside their type-6 certification data, so the TDX parser calls this too."""
    text = data.rstrip(b"\0")
    blocks = _PEM_CERT.findall(text)
    try:
        if blocks:
            return tuple(x509.load_pem_x509_certificate(b).public_bytes(serialization.Encoding.PEM).decode() for b in blocks)
        return tuple(
            x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM).decode() for d in _split_der(text)
        )
    except x509.InvalidVersion as exc:
        raise ValueError(str(exc)) from None


def _pck_chain(data: bytes, offset: int) -> tuple[str, ...]:
    try:
        return pck_chain_pem(data)
    except ValueError as exc:
        raise QuoteFormatError(
            f"PCK certificate chain does not parse: {exc}", field="certification data", offset=offset
        ) from None


def parse_quote(quote: bytes) -> ParsedQuote:
    """Parse an SGX DCAP v3 quote by its own length fields; trailing bytes are allowed."""
    quote = bytes(quote)
    if len(quote) < SIGNATURE_DATA_OFFSET:
        raise QuoteFormatError(
            f"only {len(quote)} bytes; header, report body and length need {SIGNATURE_DATA_OFFSET}",
            field="signature_data_len",
            offset=SIGNATURE_DATA_LEN_OFFSET,
        )
    h = read_fields(HEADER_FIELDS, quote)
    if h["version"] != QUOTE_VERSION:
        raise QuoteFormatError(f"version is {h['version']}, expected {QUOTE_VERSION}", field="version", offset=0)
    if h["att_key_type"] != ATT_KEY_TYPE_ECDSA_P256:
        raise QuoteFormatError(
            f"att_key_type is {h['att_key_type']}, only 2 (ECDSA P-256) is supported", field="att_key_type", offset=2
        )
    if h["tee_type"] != TEE_TYPE_SGX:
        raise QuoteFormatError(f"tee_type is {h['tee_type']:#x}, expected 0 (SGX)", field="tee_type", offset=4)
    if h["qe_vendor_id"] != INTEL_QE_VENDOR_ID:
        raise QuoteFormatError(
            f"qe_vendor_id is {h['qe_vendor_id'].hex()}, not Intel's quoting enclave", field="qe_vendor_id", offset=12
        )
    header = QuoteHeader(**h)
    body = parse_report_body(quote, HEADER_SIZE, what="ISV enclave report body")

    (sig_len,) = struct.unpack_from("<I", quote, SIGNATURE_DATA_LEN_OFFSET)
    end = SIGNATURE_DATA_OFFSET + sig_len
    if sig_len < MIN_SIGNATURE_DATA_LEN:
        raise QuoteFormatError(
            f"signature_data_len {sig_len} is below the minimum {MIN_SIGNATURE_DATA_LEN}",
            field="signature_data_len",
            offset=SIGNATURE_DATA_LEN_OFFSET,
        )
    if end > len(quote):
        raise QuoteFormatError(
            f"signature_data_len {sig_len} runs past the end of the {len(quote)}-byte quote",
            field="signature_data_len",
            offset=SIGNATURE_DATA_LEN_OFFSET,
        )
    sig = quote[SIGNATURE_DATA_OFFSET:end]
    base = SIGNATURE_DATA_OFFSET
    s = read_fields(SIGNATURE_DATA_FIELDS, sig)
    qe_report = parse_report_body(sig, 128, what="QE report body")

    auth_len = s["qe_auth_data_size"]
    cert_hdr = QE_AUTH_DATA_OFFSET + auth_len
    if cert_hdr + CERT_DATA_HEADER_SIZE > sig_len:
        raise QuoteFormatError(
            f"QE auth data size {auth_len} leaves no room for the certification data header",
            field="QE auth data size",
            offset=base + 576,
        )
    qe_auth = sig[QE_AUTH_DATA_OFFSET:cert_hdr]
    c = read_fields(CERT_DATA_HEADER_FIELDS, sig, cert_hdr)
    cert_start = cert_hdr + CERT_DATA_HEADER_SIZE
    if cert_start + c["size"] > sig_len:
        raise QuoteFormatError(
            f"certification data size {c['size']} runs past signature_data_len {sig_len}",
            field="certification data size",
            offset=base + cert_hdr + 2,
        )
    cert_data = sig[cert_start : cert_start + c["size"]]
    chain = _pck_chain(cert_data, base + cert_start) if c["type"] == CERT_TYPE_PCK_CHAIN else ()

    signature_data = SignatureData(
        isv_signature=s["isv_signature"],
        attestation_key=s["attestation_key"],
        qe_report=qe_report,
        qe_report_signature=s["qe_report_signature"],
        qe_auth_data_size=auth_len,
        qe_auth_data=qe_auth,
        certification_data=CertificationData(type=c["type"], size=c["size"], data=cert_data, pck_chain_pem=chain),
        unparsed_tail=sig_len - (cert_start + c["size"]),
    )
    return ParsedQuote(
        header=header,
        report_body=body,
        signature_data_len=sig_len,
        signature_data=signature_data,
        raw=quote[:end],
        trailing_bytes=len(quote) - end,
    )


def decode_quote_text(data: bytes) -> bytes:
    """Accept a quote as raw bytes, base64, hex, duet evidence JSON (``quote``) or Azure sample JSON
    (``QuoteHex``); people paste quotes in all of these forms."""
    if data[:4] == struct.pack("<HH", QUOTE_VERSION, ATT_KEY_TYPE_ECDSA_P256):
        return data
    text = data.strip()
    if text.startswith(b"{"):
        try:
            obj = json.loads(text)
        except ValueError:
            raise QuoteFormatError("input looks like JSON but does not parse") from None
        if isinstance(obj, dict) and isinstance(obj.get("quote"), str):
            return base64.b64decode(obj["quote"], validate=False)
        if isinstance(obj, dict) and isinstance(obj.get("QuoteHex"), str):
            return bytes.fromhex(obj["QuoteHex"])
        raise QuoteFormatError("JSON input has neither a 'quote' (base64) nor a 'QuoteHex' field")
    if re.fullmatch(rb"[0-9a-fA-F\s]+", text) and len(re.sub(rb"\s", b"", text)) % 2 == 0:
        return bytes.fromhex(text.decode())
    try:
        return base64.b64decode(b"".join(text.split()), validate=True)
    except ValueError:
        return data
