"""The Intel TDX quote, versions 4 and 5, as bytes ↔ named fields: tables, parse, pack.

Everything here is layout. The tables are ``(offset, size, name)`` rows with the names of
Intel's ``sgx_quote_4.h`` / ``sgx_quote_5.h`` and of the TDX DCAP quote library's TD report
(TEE_TCB_SVN, MRSEAM, …, REPORTDATA), so a reader can hold them against those documents, and
:func:`~duet.attestation.layout.check_table` proves at import time that each tiles its structure.
What a TDX quote shares with an SGX v3 quote is taken from :mod:`duet.attestation.sgx.abi`,
not repeated: the quoting enclave's report is an SGX report body, and the PCK chain is the same
type-5 certification data, nested one level deeper (inside the type-6 "QE report certification
data").

Parsing trusts nothing and checks nothing cryptographic (that is :mod:`duet.attestation.tdx.verify`).
It follows the quote's own length fields, never the input size: real quotes arrive padded
(go-tdx-guest's has 39 trailing bytes, another is padded to 8000). Because every length must tile
the structure that holds it exactly, a wrong length is *located*: when ``signature_data_len``
and the certification data size disagree, the one that the nested structure does not fit is
named, and likewise for the QE auth data size and the inner certification data size. A malformed
quote raises :class:`TdxQuoteFormatError` with the field and its absolute offset, because "bad
quote" alone does not tell anyone which producer to fix.

Packing (:func:`pack_signed_region`, :func:`pack_signature_data`, …) uses the same rows, so
simulated quotes are laid out by the tables that parse real ones.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from duet.attestation.layout import Field, check_table, fields_dict, pack_fields, read_fields
from duet.attestation.sgx.abi import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_DATA_HEADER_FIELDS,
    CERT_DATA_HEADER_SIZE,
    CERT_TYPE_PCK_CHAIN,
    INTEL_QE_VENDOR_ID,
    REPORT_BODY_SIZE,
    CertificationData,
    QuoteFormatError,
    ReportBody,
    parse_report_body,
    pck_chain_pem,
)


class TdxQuoteFormatError(QuoteFormatError):
    """The bytes are not a well-formed TDX v4/v5 quote; ``field``/``offset`` say where.

    A :class:`~duet.attestation.sgx.abi.QuoteFormatError` (code ``bad_quote``), so code that
    handles malformed DCAP quotes handles these too; a quote that is well formed but carries
    certification data this verifier cannot use has the code ``unsupported_certification_data``."""

    structure = "Intel TDX quote"


# --------------------------------------------------------------------------------------------
# Layout tables. Offsets are relative to the start of each structure.
# --------------------------------------------------------------------------------------------

HEADER_SIZE = 48
BODY_DESCRIPTOR_SIZE = 6
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648

QUOTE_VERSION_4 = 4
QUOTE_VERSION_5 = 5
QUOTE_VERSIONS = (QUOTE_VERSION_4, QUOTE_VERSION_5)
TEE_TYPE_TDX = 0x81
BODY_TYPE_SGX_ENCLAVE_REPORT = 1
BODY_TYPE_TD_REPORT10 = 2
BODY_TYPE_TD_REPORT15 = 3
TD_REPORT_SIZES = {BODY_TYPE_TD_REPORT10: TD_REPORT10_SIZE, BODY_TYPE_TD_REPORT15: TD_REPORT15_SIZE}
CERT_TYPE_QE_REPORT = 6
"""``PCK_ID_QE_REPORT_CERTIFICATION_DATA``: the only outer certification data type of v4/v5 quotes."""
INNER_CERT_TYPES = range(1, 6)
"""Types Intel's QVL accepts inside the type-6 data (only 5, the PCK chain, can be verified offline)."""

HEADER_FIELDS: tuple[Field, ...] = (  # sgx_quote4_header_t
    Field(0, 2, "version", "version", "u16"),
    Field(2, 2, "att_key_type", "att_key_type", "u16"),
    Field(4, 4, "tee_type", "tee_type", "u32"),
    # One u32 "reserved" in sgx_quote_4.h; Intel's QVL reads QE SVN then PCE SVN, go-tdx-guest the
    # reverse; zero in every real quote seen. Kept opaque.
    Field(8, 4, "reserved", "reserved"),
    Field(12, 16, "qe_vendor_id", "qe_vendor_id"),
    Field(28, 20, "user_data", "user_data"),
)

BODY_DESCRIPTOR_FIELDS: tuple[Field, ...] = (  # sgx_quote5_t, v5 only, right after the header
    Field(0, 2, "body type", "body_type", "u16"),
    Field(2, 4, "body size", "body_size", "u32"),
)

TD_REPORT10_FIELDS: tuple[Field, ...] = (  # "TD Quote Body" of the TDX DCAP quote library (TD report 1.0)
    Field(0, 16, "TEE_TCB_SVN", "tee_tcb_svn"),
    Field(16, 48, "MRSEAM", "mr_seam"),
    Field(64, 48, "MRSIGNERSEAM", "mr_signer_seam"),
    Field(112, 8, "SEAMATTRIBUTES", "seam_attributes"),
    Field(120, 8, "TDATTRIBUTES", "td_attributes", "u64"),
    Field(128, 8, "XFAM", "xfam", "u64"),
    Field(136, 48, "MRTD", "mr_td"),
    Field(184, 48, "MRCONFIGID", "mr_config_id"),
    Field(232, 48, "MROWNER", "mr_owner"),
    Field(280, 48, "MROWNERCONFIG", "mr_owner_config"),
    Field(328, 48, "RTMR0", "rtmr0"),
    Field(376, 48, "RTMR1", "rtmr1"),
    Field(424, 48, "RTMR2", "rtmr2"),
    Field(472, 48, "RTMR3", "rtmr3"),
    Field(520, 64, "REPORTDATA", "report_data"),
)
TD_REPORT15_FIELDS: tuple[Field, ...] = (  # TD report 1.5 (v5 body type 3) = 1.0 + two fields
    *TD_REPORT10_FIELDS,
    Field(584, 16, "TEE_TCB_SVN2", "tee_tcb_svn2"),
    Field(600, 48, "MRSERVICETD", "mr_service_td"),
)
TD_REPORT_FIELDS = {BODY_TYPE_TD_REPORT10: TD_REPORT10_FIELDS, BODY_TYPE_TD_REPORT15: TD_REPORT15_FIELDS}

SIGNATURE_DATA_FIELDS: tuple[Field, ...] = (  # sgx_ecdsa_sig_data_v4_t, then its certification data header
    Field(0, 64, "quote signature", "quote_signature"),
    Field(64, 64, "attestation public key", "attestation_key"),
    Field(128, 2, "certification data type", "certification_data_type", "u16"),
    Field(130, 4, "certification data size", "certification_data_size", "u32"),
)
SIGNATURE_DATA_HEAD_SIZE = 134
MIN_SIGNATURE_DATA_LEN = SIGNATURE_DATA_HEAD_SIZE

QE_REPORT_CERTIFICATION_DATA_FIELDS: tuple[Field, ...] = (  # sgx_qe_report_certification_data_t (type 6)
    Field(0, REPORT_BODY_SIZE, "QE report", "qe_report"),
    Field(384, 64, "QE report signature", "qe_report_signature"),
    Field(448, 2, "QE auth data size", "qe_auth_data_size", "u16"),
)
QE_AUTH_DATA_SIZE_OFFSET = 448
QE_AUTH_DATA_OFFSET = 450  # then the QE auth data, then the inner (QE) certification data: sgx CERT_DATA_HEADER_FIELDS
MIN_QE_REPORT_CERTIFICATION_DATA_SIZE = QE_AUTH_DATA_OFFSET + CERT_DATA_HEADER_SIZE  # 456

check_table(HEADER_FIELDS, HEADER_SIZE)
check_table(BODY_DESCRIPTOR_FIELDS, BODY_DESCRIPTOR_SIZE)
check_table(TD_REPORT10_FIELDS, TD_REPORT10_SIZE)
check_table(TD_REPORT15_FIELDS, TD_REPORT15_SIZE)
check_table(SIGNATURE_DATA_FIELDS, SIGNATURE_DATA_HEAD_SIZE)
check_table(QE_REPORT_CERTIFICATION_DATA_FIELDS, QE_AUTH_DATA_OFFSET)

# TDATTRIBUTES bits, as the TDX module ABI names them (Linux arch/x86/include/asm/shared/tdx.h
# spells the same bits TDX_ATTR_*). go-tdx-guest names only 0, 28, 30 and 63; bit 29 is
# MIGRATABLE in the TDX module spec and in Linux (there once misspelt TDX_ATTR_MIGRTABLE).
TD_ATTRIBUTES_BITS: tuple[tuple[int, str], ...] = (
    (0, "DEBUG"),
    (28, "SEPT_VE_DISABLE"),
    (29, "MIGRATABLE"),
    (30, "PKS"),
    (31, "KL"),
    (63, "PERFMON"),
)
TD_ATTRIBUTE_DEBUG = 1 << 0
TD_ATTRIBUTE_MIGRATABLE = 1 << 29


# --------------------------------------------------------------------------------------------
# Parsed structures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TdxQuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    reserved: bytes
    qe_vendor_id: bytes
    user_data: bytes

    def to_dict(self) -> dict[str, Any]:
        return fields_dict(HEADER_FIELDS, self)


def td_attribute_names(td_attributes: int) -> tuple[str, ...]:
    """The set bits of TDATTRIBUTES by name; an unnamed bit is shown as ``bit<n>``."""
    names = dict(TD_ATTRIBUTES_BITS)
    return tuple(names.get(bit, f"bit{bit}") for bit in range(64) if td_attributes >> bit & 1)


@dataclass(frozen=True)
class TdReport:
    """A TD report as quoted (1.0: 584 bytes; 1.5: 648 bytes): what the TD measured and asked to
    have signed. MRTD and RTMR0–3 are the measurements, REPORTDATA the binding."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: int
    xfam: int
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    raw: bytes = field(repr=False)
    tee_tcb_svn2: bytes | None = None
    """TD report 1.5 only."""
    mr_service_td: bytes | None = None
    """TD report 1.5 only."""

    @property
    def body_type(self) -> int:
        return BODY_TYPE_TD_REPORT15 if self.tee_tcb_svn2 is not None else BODY_TYPE_TD_REPORT10

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    @property
    def debug(self) -> bool:
        """TDATTRIBUTES.DEBUG (bit 0): the host can read and change the TD's memory and state."""
        return bool(self.td_attributes & TD_ATTRIBUTE_DEBUG)

    @property
    def migratable(self) -> bool:
        """TDATTRIBUTES.MIGRATABLE (bit 29): the TD may be migrated (its keys leave this platform)."""
        return bool(self.td_attributes & TD_ATTRIBUTE_MIGRATABLE)

    @property
    def td_attribute_names(self) -> tuple[str, ...]:
        return td_attribute_names(self.td_attributes)

    def to_dict(self) -> dict[str, Any]:
        d = fields_dict(TD_REPORT_FIELDS[self.body_type], self)
        d["td_attributes"] = self.raw[120:128].hex()  # as the spec shows it: the 8 bytes
        d["xfam"] = self.raw[128:136].hex()
        d["td_attribute_names"] = list(self.td_attribute_names)
        return d


@dataclass(frozen=True)
class QeReportCertificationData:
    """The type-6 certification data: the quoting enclave's report, signed by the PCK key, the
    QE auth data it binds, and the (type-5) PCK certificate chain."""

    qe_report: ReportBody
    qe_report_signature: bytes
    qe_auth_data_size: int
    qe_auth_data: bytes
    certification_data: CertificationData
    """The inner ("QE") certification data, type 5 in every real quote."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "qe_report": self.qe_report.to_dict(),
            "qe_report_signature": self.qe_report_signature.hex(),
            "qe_auth_data_size": self.qe_auth_data_size,
            "qe_auth_data": self.qe_auth_data.hex(),
            "certification_data": self.certification_data.to_dict(),
        }


@dataclass(frozen=True)
class TdxSignatureData:
    quote_signature: bytes
    attestation_key: bytes
    certification_data_type: int
    certification_data_size: int
    qe_report_certification_data: QeReportCertificationData

    def to_dict(self) -> dict[str, Any]:
        return {
            "quote_signature": self.quote_signature.hex(),
            "attestation_key": self.attestation_key.hex(),
            "certification_data_type": self.certification_data_type,
            "certification_data_size": self.certification_data_size,
            "qe_report_certification_data": self.qe_report_certification_data.to_dict(),
        }


@dataclass(frozen=True)
class ParsedTdxQuote:
    header: TdxQuoteHeader
    td_report: TdReport
    signature_data_len: int
    signature_data: TdxSignatureData
    raw: bytes = field(repr=False)
    """The quote bytes up to the end of the signature data (trailing padding excluded)."""
    trailing_bytes: int = 0
    """Bytes after the signature data in the input (padding seen in real files)."""

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def body_offset(self) -> int:
        return HEADER_SIZE + (BODY_DESCRIPTOR_SIZE if self.version == QUOTE_VERSION_5 else 0)

    @property
    def signed_region(self) -> bytes:
        """header (‖ body descriptor, v5) ‖ TD report: what the attestation key signs."""
        return self.raw[: self.body_offset + len(self.td_report.raw)]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"header": self.header.to_dict()}
        if self.version == QUOTE_VERSION_5:
            d["body"] = {"body_type": self.td_report.body_type, "body_size": len(self.td_report.raw)}
        d.update(
            td_report=self.td_report.to_dict(),
            signature_data_len=self.signature_data_len,
            signature_data=self.signature_data.to_dict(),
            size=len(self.raw),
            trailing_bytes=self.trailing_bytes,
        )
        return d


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_MAX_QE_AUTH_DATA_SIZE = 0xFFFF


def parse_td_report(buf: bytes, base: int = 0, *, body_type: int = BODY_TYPE_TD_REPORT10) -> TdReport:
    """A TD report (1.0 or 1.5 by ``body_type``) at ``buf[base:]``."""
    table, size = TD_REPORT_FIELDS[body_type], TD_REPORT_SIZES[body_type]
    if len(buf) < base + size:
        raise TdxQuoteFormatError(
            f"the quote ends inside the TD report: {size} bytes needed from offset {base}, {len(buf) - base} present",
            field="TD report body",
            offset=base,
        )
    return TdReport(**read_fields(table, buf, base), raw=bytes(buf[base : base + size]))


def _u16(buf: bytes, pos: int) -> int:
    return int(struct.unpack_from("<H", buf, pos)[0])


def _u32(buf: bytes, pos: int) -> int:
    return int(struct.unpack_from("<I", buf, pos)[0])


def _auth_sizes_that_fit(buf: bytes, start: int, length: int) -> list[int]:
    """QE auth data sizes with which the inner certification data header would be well formed and
    fill the type-6 data exactly: how a wrong QE auth data size is told from a wrong inner size."""
    fits = []
    for n in range(min(_MAX_QE_AUTH_DATA_SIZE, length - MIN_QE_REPORT_CERTIFICATION_DATA_SIZE) + 1):
        at = start + QE_AUTH_DATA_OFFSET + n
        if _u16(buf, at) in INNER_CERT_TYPES and MIN_QE_REPORT_CERTIFICATION_DATA_SIZE + n + _u32(buf, at + 2) == length:
            fits.append(n)
    return fits


def _qe_report_certification_layout(buf: bytes, start: int, length: int) -> TdxQuoteFormatError | None:
    """Why the type-6 data at ``buf[start:start+length]`` is not laid out by its own length fields
    (None: it is). ``buf`` holds at least ``start + length`` bytes."""
    if length < MIN_QE_REPORT_CERTIFICATION_DATA_SIZE:
        return TdxQuoteFormatError(
            f"certification data size {length} cannot hold a QE report, its signature and the QE auth and QE "
            f"certification data headers ({MIN_QE_REPORT_CERTIFICATION_DATA_SIZE} bytes)",
            field="certification data size",
            offset=start - 4,
        )
    auth_size = _u16(buf, start + QE_AUTH_DATA_SIZE_OFFSET)
    inner = start + QE_AUTH_DATA_OFFSET + auth_size
    if QE_AUTH_DATA_OFFSET + auth_size + CERT_DATA_HEADER_SIZE > length:
        return TdxQuoteFormatError(
            f"QE auth data size {auth_size} leaves no room for the QE certification data header in the "
            f"{length}-byte certification data",
            field="QE auth data size",
            offset=start + QE_AUTH_DATA_SIZE_OFFSET,
        )
    inner_type, inner_size = _u16(buf, inner), _u32(buf, inner + 2)
    rest = length - MIN_QE_REPORT_CERTIFICATION_DATA_SIZE - auth_size
    if inner_type in INNER_CERT_TYPES and inner_size == rest:
        return None
    fits = _auth_sizes_that_fit(buf, start, length)
    if fits:
        return TdxQuoteFormatError(
            f"QE auth data size {auth_size} does not fit the certification data: with {fits[0]} the QE certification "
            f"data that follows would be well formed and fill it exactly",
            field="QE auth data size",
            offset=start + QE_AUTH_DATA_SIZE_OFFSET,
        )
    if inner_type not in INNER_CERT_TYPES:
        return TdxQuoteFormatError(
            f"QE certification data type {inner_type} is not one of 1..5 (5: PCK certificate chain)",
            field="QE certification data type",
            offset=inner,
        )
    if inner_size > rest:
        problem = f"runs past the end of the {length}-byte certification data ({rest} bytes left for it)"
    else:
        problem = f"leaves {rest - inner_size} bytes of the {length}-byte certification data unaccounted for"
    return TdxQuoteFormatError(
        f"QE certification data size {inner_size} {problem}", field="QE certification data size", offset=inner + 2
    )


def _parse_qe_report_certification_data(buf: bytes, start: int, length: int) -> QeReportCertificationData:
    error = _qe_report_certification_layout(buf, start, length)
    if error is not None:
        raise error
    v = read_fields(QE_REPORT_CERTIFICATION_DATA_FIELDS, buf, start)
    qe_report = parse_report_body(buf, start, what="QE report")
    auth_end = start + QE_AUTH_DATA_OFFSET + v["qe_auth_data_size"]
    c = read_fields(CERT_DATA_HEADER_FIELDS, buf, auth_end)
    data_start = auth_end + CERT_DATA_HEADER_SIZE
    data = bytes(buf[data_start : data_start + c["size"]])
    chain: tuple[str, ...] = ()
    if c["type"] == CERT_TYPE_PCK_CHAIN:
        try:
            chain = pck_chain_pem(data)
        except ValueError as exc:
            raise TdxQuoteFormatError(
                f"the PCK certificate chain does not parse: {exc}", field="QE certification data", offset=data_start
            ) from None
    return QeReportCertificationData(
        qe_report=qe_report,
        qe_report_signature=v["qe_report_signature"],
        qe_auth_data_size=v["qe_auth_data_size"],
        qe_auth_data=bytes(buf[start + QE_AUTH_DATA_OFFSET : auth_end]),
        certification_data=CertificationData(type=c["type"], size=c["size"], data=data, pck_chain_pem=chain),
    )


def _check_header(h: Mapping[str, Any]) -> None:
    version = h["version"]
    if version not in QUOTE_VERSIONS:
        hint = ": an SGX DCAP quote, not a TDX one" if version == 3 else ""
        raise TdxQuoteFormatError(f"version is {version}, expected 4 or 5{hint}", field="version", offset=0)
    if h["att_key_type"] != ATT_KEY_TYPE_ECDSA_P256:
        raise TdxQuoteFormatError(
            f"att_key_type is {h['att_key_type']}, only 2 (ECDSA P-256) is supported", field="att_key_type", offset=2
        )
    if h["tee_type"] != TEE_TYPE_TDX:
        hint = " (0 is SGX)" if h["tee_type"] == 0 else ""
        raise TdxQuoteFormatError(f"tee_type is {h['tee_type']:#x}{hint}, expected 0x81 (TDX)", field="tee_type", offset=4)
    if h["qe_vendor_id"] != INTEL_QE_VENDOR_ID:
        raise TdxQuoteFormatError(
            f"qe_vendor_id is {h['qe_vendor_id'].hex()}, not Intel's quoting enclave", field="qe_vendor_id", offset=12
        )


def _body_type(quote: bytes) -> int:
    """v5: the body descriptor's type, checked against its size; raises naming the field."""
    if len(quote) < HEADER_SIZE + BODY_DESCRIPTOR_SIZE:
        raise TdxQuoteFormatError(
            f"only {len(quote)} bytes; a v5 quote's header and body descriptor need {HEADER_SIZE + BODY_DESCRIPTOR_SIZE}",
            field="body type",
            offset=HEADER_SIZE,
        )
    d = read_fields(BODY_DESCRIPTOR_FIELDS, quote, HEADER_SIZE)
    body_type, size = d["body_type"], d["body_size"]
    if body_type not in TD_REPORT_SIZES:
        what = "an SGX enclave report" if body_type == BODY_TYPE_SGX_ENCLAVE_REPORT else "not defined"
        raise TdxQuoteFormatError(
            f"body type {body_type} is {what}; a TDX quote has 2 (TD report 1.0) or 3 (TD report 1.5)",
            field="body type",
            offset=HEADER_SIZE,
        )
    if size != TD_REPORT_SIZES[body_type]:
        raise TdxQuoteFormatError(
            f"body size {size} does not match body type {body_type} (TD report 1.{0 if body_type == 2 else 5} "
            f"is {TD_REPORT_SIZES[body_type]} bytes)",
            field="body size",
            offset=HEADER_SIZE + 2,
        )
    return int(body_type)


def parse_tdx_quote(quote: bytes) -> ParsedTdxQuote:
    """Parse a TDX v4 or v5 quote by its own length fields; trailing bytes are allowed.

    Raises :class:`TdxQuoteFormatError` naming the field (and its offset) that is wrong."""
    quote = bytes(quote)
    if len(quote) < HEADER_SIZE:
        raise TdxQuoteFormatError(f"only {len(quote)} bytes; the header alone needs {HEADER_SIZE}", field="header", offset=0)
    h = read_fields(HEADER_FIELDS, quote)
    _check_header(h)
    header = TdxQuoteHeader(**h)

    if header.version == QUOTE_VERSION_5:
        body_type, body_at = _body_type(quote), HEADER_SIZE + BODY_DESCRIPTOR_SIZE
    else:
        body_type, body_at = BODY_TYPE_TD_REPORT10, HEADER_SIZE
    td_report = parse_td_report(quote, body_at, body_type=body_type)

    len_at = body_at + TD_REPORT_SIZES[body_type]
    sig_at = len_at + 4
    if len(quote) < sig_at:
        raise TdxQuoteFormatError(
            f"only {len(quote)} bytes; the quote ends before signature_data_len", field="signature_data_len", offset=len_at
        )
    sig_len = _u32(quote, len_at)
    if sig_len < MIN_SIGNATURE_DATA_LEN:
        raise TdxQuoteFormatError(
            f"signature_data_len {sig_len} is below the minimum {MIN_SIGNATURE_DATA_LEN}",
            field="signature_data_len",
            offset=len_at,
        )
    end = sig_at + sig_len
    if end > len(quote):
        raise TdxQuoteFormatError(
            f"signature_data_len {sig_len} runs past the end of the {len(quote)}-byte quote",
            field="signature_data_len",
            offset=len_at,
        )
    s = read_fields(SIGNATURE_DATA_FIELDS, quote, sig_at)
    if s["certification_data_type"] != CERT_TYPE_QE_REPORT:
        raise TdxQuoteFormatError(
            f"certification data type is {s['certification_data_type']}; a v4/v5 quote carries type 6 (QE report "
            "certification data: the QE report, its signature and the PCK chain), without which it cannot be verified",
            field="certification data type",
            offset=sig_at + 128,
            code="unsupported_certification_data",
        )
    start, declared = sig_at + SIGNATURE_DATA_HEAD_SIZE, s["certification_data_size"]
    room = sig_len - SIGNATURE_DATA_HEAD_SIZE
    if declared != room:
        fits_declared = start + declared <= len(quote) and _qe_report_certification_layout(quote, start, declared) is None
        if fits_declared:
            raise TdxQuoteFormatError(
                f"signature_data_len {sig_len} does not match the signature data it holds "
                f"({SIGNATURE_DATA_HEAD_SIZE + declared} bytes, by the certification data size)",
                field="signature_data_len",
                offset=len_at,
            )
        if declared > room or _qe_report_certification_layout(quote, start, room) is None:
            raise TdxQuoteFormatError(
                f"certification data size {declared} does not match signature_data_len {sig_len}, which leaves {room} bytes for it",
                field="certification data size",
                offset=sig_at + 130,
            )
    qe_cert = _parse_qe_report_certification_data(quote, start, declared)
    signature_data = TdxSignatureData(
        quote_signature=s["quote_signature"],
        attestation_key=s["attestation_key"],
        certification_data_type=s["certification_data_type"],
        certification_data_size=declared,
        qe_report_certification_data=qe_cert,
    )
    return ParsedTdxQuote(
        header=header,
        td_report=td_report,
        signature_data_len=sig_len,
        signature_data=signature_data,
        raw=quote[:end],
        trailing_bytes=len(quote) - end,
    )


# --------------------------------------------------------------------------------------------
# Packing (simulated quotes, tests): the inverse of parsing, by the same tables
# --------------------------------------------------------------------------------------------


def pack_header(**values: Any) -> bytes:
    """A quote header; unnamed fields are a TDX v4 quote's (ECDSA P-256, tee_type 0x81, Intel's QE)."""
    defaults: dict[str, Any] = {
        "version": QUOTE_VERSION_4,
        "att_key_type": ATT_KEY_TYPE_ECDSA_P256,
        "tee_type": TEE_TYPE_TDX,
        "qe_vendor_id": INTEL_QE_VENDOR_ID,
    }
    return pack_fields(HEADER_FIELDS, {**defaults, **values})


def pack_td_report(values: Mapping[str, Any], *, body_type: int = BODY_TYPE_TD_REPORT10) -> bytes:
    """A TD report 1.0 or 1.5 from field values named as the table's attributes; missing ones are zero."""
    return pack_fields(TD_REPORT_FIELDS[body_type], dict(values))


def pack_signed_region(header: bytes, td_report: bytes) -> bytes:
    """header (‖ body descriptor when the header says version 5) ‖ TD report: what the attestation
    key signs. A v4 quote can only carry a TD report 1.0."""
    version = _u16(header, 0)
    body_type = next((t for t, size in TD_REPORT_SIZES.items() if size == len(td_report)), None)
    if body_type is None:
        raise ValueError(f"a TD report is 584 or 648 bytes, not {len(td_report)}")
    if version == QUOTE_VERSION_5:
        descriptor = pack_fields(BODY_DESCRIPTOR_FIELDS, {"body_type": body_type, "body_size": len(td_report)})
        return header + descriptor + td_report
    if body_type != BODY_TYPE_TD_REPORT10:
        raise ValueError("a v4 quote carries a TD report 1.0 (584 bytes); use version 5 for TD report 1.5")
    return header + td_report


def pack_qe_report_certification_data(
    *,
    qe_report: bytes,
    qe_report_signature: bytes,
    qe_auth_data: bytes,
    certification_data: bytes,
    certification_data_type: int = 5,
) -> bytes:
    """The type-6 certification data: QE report ‖ its signature ‖ QE auth data ‖ inner certification data."""
    head = pack_fields(
        QE_REPORT_CERTIFICATION_DATA_FIELDS,
        {"qe_report": qe_report, "qe_report_signature": qe_report_signature, "qe_auth_data_size": len(qe_auth_data)},
    )
    inner = pack_fields(CERT_DATA_HEADER_FIELDS, {"type": certification_data_type, "size": len(certification_data)})
    return head + qe_auth_data + inner + certification_data


def pack_signature_data(
    *,
    quote_signature: bytes,
    attestation_key: bytes,
    certification_data: bytes,
    certification_data_type: int = CERT_TYPE_QE_REPORT,
) -> bytes:
    return (
        pack_fields(
            SIGNATURE_DATA_FIELDS,
            {
                "quote_signature": quote_signature,
                "attestation_key": attestation_key,
                "certification_data_type": certification_data_type,
                "certification_data_size": len(certification_data),
            },
        )
        + certification_data
    )


def pack_quote(signed_region: bytes, signature_data: bytes) -> bytes:
    """signed region ‖ signature_data_len ‖ signature data."""
    return signed_region + struct.pack("<I", len(signature_data)) + signature_data
