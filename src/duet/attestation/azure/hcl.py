"""The Azure CVM vTPM attestation report ("HCL report") as bytes ↔ named fields.

Azure does not hand a confidential VM's guest the SNP report or the TD report directly: the
paravisor (HCL) requests it with report data = a hash of its own *runtime data* (a JSON document
naming the vTPM's keys, the VM's configuration and identity, and up to 64 bytes of user data the
guest wrote to NV index 0x01400002), and stores report and runtime data together in NV index
0x01400001 (specs/attestation.md §5.1). This module is the layout of that blob: a 32-byte
header, the 1184-byte hardware-report area (an SNP report, or a 1024-byte TDREPORT and unused
bytes), the IGVM runtime-data block (five u32 and the variable data), and, for TDX, the TDREPORT
itself, whose MAC only the CPU that made it can check, so that a verifier has to compare it with
the quote made from it.

Parsing follows the report's own length fields and trusts none of them: each is checked against
the input and against the others, and a failure is an :class:`HclFormatError` that names the
field and its offset (the producer to fix is the paravisor, or whoever cut the NV read short).
The runtime data is parsed apart (:func:`parse_runtime_data`) because it is JSON, not layout,
and because it is only worth interpreting once its hash is known to be in the signed report.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from duet.attestation.layout import Field, LayoutError, check_table, fields_dict, pack_fields, read_fields
from duet.attestation.snp.abi import REPORT_FIELDS as SNP_REPORT_FIELDS
from duet.attestation.snp.abi import REPORT_SIZE as SNP_REPORT_SIZE
from duet.attestation.tdx.abi import TD_REPORT10_FIELDS, TD_REPORT15_FIELDS
from duet.errors import VerificationError

_SNP_REPORT_DATA = next(f for f in SNP_REPORT_FIELDS if f.name == "REPORT_DATA")

Platform = Literal["snp", "tdx"]


class HclFormatError(LayoutError):
    """The bytes are not a well-formed Azure HCL report; ``field``/``offset`` say where."""

    code = "hcl_malformed"
    structure = "Azure HCL report"


class RuntimeDataError(VerificationError):
    """The runtime data (the JSON the hardware report's report data hashes) cannot be used;
    ``field`` is the JSON path at fault (``$`` for the document itself)."""

    code = "hcl_runtime_data_bad_field"

    def __init__(self, message: str, *, field: str, code: str | None = None) -> None:
        super().__init__(f"{message} (runtime data {field})", code=code)
        self.field = field


# --------------------------------------------------------------------------------------------
# Layout tables. Offsets are relative to the start of each structure; names as in Azure's
# ATTESTATION_REPORT / IGVM_REQUEST_DATA and Intel's TDX module ABI (TDREPORT_STRUCT).
# --------------------------------------------------------------------------------------------

HCL_SIGNATURE: Final = b"HCLA"
HEADER_SIZE: Final = 32
HW_REPORT_OFFSET: Final = 32
HW_REPORT_SIZE: Final = SNP_REPORT_SIZE  # 1184
"""The hardware-report area: an SNP report fills it; a TDREPORT uses its first 1024 bytes."""
RUNTIME_DATA_OFFSET: Final = HW_REPORT_OFFSET + HW_REPORT_SIZE  # 1216 (0x4C0)
RUNTIME_DATA_HEADER_SIZE: Final = 20
VARIABLE_DATA_OFFSET: Final = RUNTIME_DATA_OFFSET + RUNTIME_DATA_HEADER_SIZE  # 1236 (0x4D4)

HCL_VERSIONS: Final = frozenset({1, 2})
"""Header versions seen (1 in the SNP sample, 2 in the TDX one); both have this layout."""
RUNTIME_DATA_VERSION: Final = 1

MAX_RUNTIME_DATA_SIZE: Final = 16 * 1024
"""Far above what Azure writes (~1.2 KB: two RSA JWKs, the configuration, 64 bytes of user data)."""
MAX_REPORT_SIZE: Final = 32 * 1024
"""The NV index holding the report is a few KB (the samples are 2600 bytes, zero-padded); an
input far larger is not a report, and refusing it early keeps hashing and JSON parsing bounded."""

REPORT_TYPE_SNP: Final = 2
REPORT_TYPE_TDX: Final = 4
REPORT_TYPES: Final[dict[int, Platform]] = {REPORT_TYPE_SNP: "snp", REPORT_TYPE_TDX: "tdx"}

HASH_TYPE_SHA256: Final = 1
HASH_TYPE_SHA384: Final = 2
HASH_TYPE_SHA512: Final = 3
HASH_TYPES: Final[dict[int, Callable[[bytes], Any]]] = {
    HASH_TYPE_SHA256: hashlib.sha256,
    HASH_TYPE_SHA384: hashlib.sha384,
    HASH_TYPE_SHA512: hashlib.sha512,
}
HASH_TYPE_NAMES: Final = {HASH_TYPE_SHA256: "SHA-256", HASH_TYPE_SHA384: "SHA-384", HASH_TYPE_SHA512: "SHA-512"}

HEADER_FIELDS: tuple[Field, ...] = (
    Field(0, 4, "signature", "signature"),
    Field(4, 4, "version", "version", "u32"),
    Field(8, 4, "report_size", "report_size", "u32"),
    Field(12, 4, "request_type", "request_type", "u32"),
    Field(16, 16, "reserved", "reserved"),
)

REPORT_FIELDS: tuple[Field, ...] = (
    Field(0, HEADER_SIZE, "header", "header"),
    Field(HW_REPORT_OFFSET, HW_REPORT_SIZE, "hw_report", "hw_report"),
    Field(RUNTIME_DATA_OFFSET, RUNTIME_DATA_HEADER_SIZE, "runtime_data", "runtime_data"),
)
"""The fixed part of the report; the variable data follows at :data:`VARIABLE_DATA_OFFSET`."""

RUNTIME_DATA_FIELDS: tuple[Field, ...] = (
    Field(0, 4, "data_size", "data_size", "u32"),
    Field(4, 4, "version", "version", "u32"),
    Field(8, 4, "report_type", "report_type", "u32"),
    Field(12, 4, "report_data_hash_type", "report_data_hash_type", "u32"),
    Field(16, 4, "variable_data_size", "variable_data_size", "u32"),
)

# SEV-SNP ATTESTATION_REPORT: where its report data is (duet.attestation.snp.abi's table).
SNP_REPORT_DATA_OFFSET: Final = _SNP_REPORT_DATA.offset  # 0x50
REPORT_DATA_SIZE: Final = _SNP_REPORT_DATA.size  # 64

# TDX module ABI: TDREPORT_STRUCT (1024 B) = REPORTMACSTRUCT ‖ TEE_TCB_INFO ‖ reserved ‖ TDINFO_STRUCT.
TDREPORT_SIZE: Final = 1024
TDREPORT_FIELDS: tuple[Field, ...] = (
    Field(0, 256, "REPORTMACSTRUCT", "report_mac"),
    Field(256, 239, "TEE_TCB_INFO", "tee_tcb_info"),
    Field(495, 17, "RESERVED", "reserved"),
    Field(512, 512, "TDINFO_STRUCT", "td_info"),
)
REPORTMACSTRUCT_FIELDS: tuple[Field, ...] = (
    Field(0, 1, "REPORTTYPE.TYPE", "report_type", "u8"),
    Field(1, 1, "REPORTTYPE.SUBTYPE", "report_subtype", "u8"),
    Field(2, 1, "REPORTTYPE.VERSION", "report_version", "u8"),
    Field(3, 1, "REPORTTYPE.RESERVED", "report_type_reserved", "u8"),
    Field(4, 12, "RESERVED", "reserved1"),
    Field(16, 16, "CPUSVN", "cpu_svn"),
    Field(32, 48, "TEE_TCB_INFO_HASH", "tee_tcb_info_hash"),
    Field(80, 48, "TEE_INFO_HASH", "tee_info_hash"),
    Field(128, 64, "REPORTDATA", "report_data"),
    Field(192, 32, "RESERVED", "reserved2"),
    Field(224, 32, "MAC", "mac"),
)
TEE_TCB_INFO_FIELDS: tuple[Field, ...] = (
    Field(0, 8, "VALID", "valid"),
    Field(8, 16, "TEE_TCB_SVN", "tee_tcb_svn"),
    Field(24, 48, "MRSEAM", "mr_seam"),
    Field(72, 48, "MRSIGNERSEAM", "mr_signer_seam"),
    Field(120, 8, "ATTRIBUTES", "attributes"),
    Field(128, 16, "TEE_TCB_SVN2", "tee_tcb_svn2"),
    Field(144, 95, "RESERVED", "reserved"),
)
TDINFO_FIELDS: tuple[Field, ...] = (
    Field(0, 8, "ATTRIBUTES", "attributes"),
    Field(8, 8, "XFAM", "xfam"),
    Field(16, 48, "MRTD", "mr_td"),
    Field(64, 48, "MRCONFIGID", "mr_config_id"),
    Field(112, 48, "MROWNER", "mr_owner"),
    Field(160, 48, "MROWNERCONFIG", "mr_owner_config"),
    Field(208, 48, "RTMR0", "rtmr0"),
    Field(256, 48, "RTMR1", "rtmr1"),
    Field(304, 48, "RTMR2", "rtmr2"),
    Field(352, 48, "RTMR3", "rtmr3"),
    Field(400, 48, "SERVTD_HASH", "servtd_hash"),
    Field(448, 64, "RESERVED", "reserved"),
)
TDX_REPORT_TYPE: Final = 0x81
"""REPORTTYPE.TYPE of a TD's report (0 would be SGX)."""
TDREPORT_REPORT_DATA_OFFSET: Final = 128

# The quote's TD report body (duet.attestation.tdx.abi's TD_REPORT10_FIELDS / TD_REPORT15_FIELDS)
# holds the TDREPORT's values in another order: where the TDREPORT holds each, by table attribute.
TD_QUOTE_BODY_SOURCE: Final[dict[str, str]] = {
    "tee_tcb_svn": "TEE_TCB_INFO.TEE_TCB_SVN",
    "mr_seam": "TEE_TCB_INFO.MRSEAM",
    "mr_signer_seam": "TEE_TCB_INFO.MRSIGNERSEAM",
    "seam_attributes": "TEE_TCB_INFO.ATTRIBUTES",
    "td_attributes": "TDINFO_STRUCT.ATTRIBUTES",
    "xfam": "TDINFO_STRUCT.XFAM",
    "mr_td": "TDINFO_STRUCT.MRTD",
    "mr_config_id": "TDINFO_STRUCT.MRCONFIGID",
    "mr_owner": "TDINFO_STRUCT.MROWNER",
    "mr_owner_config": "TDINFO_STRUCT.MROWNERCONFIG",
    "rtmr0": "TDINFO_STRUCT.RTMR0",
    "rtmr1": "TDINFO_STRUCT.RTMR1",
    "rtmr2": "TDINFO_STRUCT.RTMR2",
    "rtmr3": "TDINFO_STRUCT.RTMR3",
    "report_data": "REPORTMACSTRUCT.REPORTDATA",
    # TD report 1.5 (quote v5 body type 3) only:
    "tee_tcb_svn2": "TEE_TCB_INFO.TEE_TCB_SVN2",
    "mr_service_td": "TDINFO_STRUCT.SERVTD_HASH",
}

check_table(HEADER_FIELDS, HEADER_SIZE)
check_table(REPORT_FIELDS, VARIABLE_DATA_OFFSET)
check_table(RUNTIME_DATA_FIELDS, RUNTIME_DATA_HEADER_SIZE)
check_table(TDREPORT_FIELDS, TDREPORT_SIZE)
check_table(REPORTMACSTRUCT_FIELDS, 256)
check_table(TEE_TCB_INFO_FIELDS, 239)
check_table(TDINFO_FIELDS, 512)
assert set(TD_QUOTE_BODY_SOURCE) == {f.attr for f in TD_REPORT15_FIELDS}


# --------------------------------------------------------------------------------------------
# Parsed structures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HclHeader:
    signature: bytes
    version: int
    report_size: int
    """Header, hardware-report area, runtime-data block and variable data: what follows is padding."""
    request_type: int
    reserved: bytes


@dataclass(frozen=True)
class RuntimeDataHeader:
    """The IGVM_REQUEST_DATA fields ahead of the variable data."""

    data_size: int
    """This block: its 20-byte header plus the variable data."""
    version: int
    report_type: int
    report_data_hash_type: int
    variable_data_size: int


def _locate(source: str) -> tuple[int, int]:
    """``[start, end)`` in the TDREPORT of a ``STRUCTURE.FIELD`` name (:data:`TD_QUOTE_BODY_SOURCE`)."""
    group, name = source.split(".", 1)
    base, table = {
        "REPORTMACSTRUCT": (0, REPORTMACSTRUCT_FIELDS),
        "TEE_TCB_INFO": (256, TEE_TCB_INFO_FIELDS),
        "TDINFO_STRUCT": (512, TDINFO_FIELDS),
    }[group]
    f = next(f for f in table if f.name == name)
    return base + f.offset, base + f.offset + f.size


_TD_QUOTE_BODY_AT: Final = {attr: _locate(source) for attr, source in TD_QUOTE_BODY_SOURCE.items()}
"""Where, in the TDREPORT, each field of a quote's TD report body is (by table attribute)."""


@dataclass(frozen=True)
class TdReportStruct:
    """A TDREPORT_STRUCT: the TD's report as the TDX module wrote it, before a quote was made.

    Its MAC binds it only for the CPU that made it; offline, it is trusted only as far as it
    equals the signed quote's body (:meth:`quote_body_values`)."""

    report_mac: dict[str, Any]
    tee_tcb_info: dict[str, Any]
    reserved: bytes
    td_info: dict[str, Any]
    raw: bytes = field(repr=False)

    @property
    def report_data(self) -> bytes:
        return bytes(self.report_mac["report_data"])

    def quote_body_values(self) -> dict[str, bytes]:
        """The raw bytes each field of a quote's TD report body made from this report must hold,
        by table attribute (TD report 1.5's two extra fields included)."""
        return {attr: self.raw[start:end] for attr, (start, end) in _TD_QUOTE_BODY_AT.items()}

    def quote_body(self, *, td_report_15: bool = False) -> bytes:
        """The TD report body (1.0: 584 bytes; 1.5: 648) a quote made from this report carries."""
        values = self.quote_body_values()
        return b"".join(values[f.attr] for f in (TD_REPORT15_FIELDS if td_report_15 else TD_REPORT10_FIELDS))

    def to_dict(self) -> dict[str, Any]:
        return {
            "REPORTMACSTRUCT": fields_dict(REPORTMACSTRUCT_FIELDS, self.report_mac),
            "TEE_TCB_INFO": fields_dict(TEE_TCB_INFO_FIELDS, self.tee_tcb_info),
            "TDINFO_STRUCT": fields_dict(TDINFO_FIELDS, self.td_info),
        }


@dataclass(frozen=True)
class HclReport:
    header: HclHeader
    hw_report: bytes = field(repr=False)
    """The whole 1184-byte hardware-report area."""
    runtime: RuntimeDataHeader
    variable_data: bytes = field(repr=False)
    """The runtime data exactly as hashed into the hardware report's report data."""
    raw: bytes = field(repr=False)
    """The report up to ``report_size`` (padding excluded)."""
    trailing_bytes: int = 0
    td_report: TdReportStruct | None = None
    """For TDX: the TDREPORT at the start of the hardware-report area."""

    @property
    def platform(self) -> Platform:
        return REPORT_TYPES[self.runtime.report_type]

    @property
    def hardware_report(self) -> bytes:
        """The hardware evidence itself: the 1184-byte SNP report, or the 1024-byte TDREPORT."""
        return self.hw_report if self.platform == "snp" else self.hw_report[:TDREPORT_SIZE]

    @property
    def report_data(self) -> bytes:
        """The hardware report's 64 report-data bytes (SNP REPORT_DATA; TDREPORT REPORTDATA)."""
        if self.td_report is not None:
            return self.td_report.report_data
        return self.hw_report[SNP_REPORT_DATA_OFFSET : SNP_REPORT_DATA_OFFSET + REPORT_DATA_SIZE]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "header": fields_dict(HEADER_FIELDS, self.header),
            "runtime_data": dict(self.runtime.__dict__),
            "platform": self.platform,
            "report_data": self.report_data.hex(),
            "trailing_bytes": self.trailing_bytes,
        }
        if self.td_report is not None:
            d["td_report"] = self.td_report.to_dict()
        return d


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _need(buf: bytes, table: Sequence[Field], base: int, where: str) -> None:
    """Every field of ``table`` at ``base`` fits in ``buf``; else name the first that does not."""
    for f in table:
        end = base + f.offset + f.size
        if end > len(buf):
            raise HclFormatError(
                f"truncated: {where}.{f.name} needs bytes [{base + f.offset}, {end}), the input has {len(buf)}",
                field=f"{where}.{f.name}",
                offset=base + f.offset,
            )


def parse_td_report_struct(buf: bytes, base: int = 0) -> TdReportStruct:
    """The TDREPORT_STRUCT at ``base`` of ``buf``, its REPORTTYPE checked to be a TD's."""
    _need(buf, TDREPORT_FIELDS, base, "TDREPORT")
    mac = read_fields(REPORTMACSTRUCT_FIELDS, buf, base)
    if mac["report_type"] != TDX_REPORT_TYPE:
        raise HclFormatError(
            f"REPORTTYPE.TYPE is {mac['report_type']:#x}, not {TDX_REPORT_TYPE:#x} (a TD's report)",
            field="TDREPORT.REPORTMACSTRUCT.REPORTTYPE.TYPE",
            offset=base,
        )
    return TdReportStruct(
        report_mac=mac,
        tee_tcb_info=read_fields(TEE_TCB_INFO_FIELDS, buf, base + 256),
        reserved=bytes(buf[base + 495 : base + 512]),
        td_info=read_fields(TDINFO_FIELDS, buf, base + 512),
        raw=bytes(buf[base : base + TDREPORT_SIZE]),
    )


def parse_hcl_report(report: bytes) -> HclReport:
    """Parse an HCL report by its own length fields, each checked against the input and the others.

    The variable data is returned as bytes, not interpreted (:func:`parse_runtime_data`). The
    report-data hash type is read but not judged here: what a hash type means is the verifier's."""
    report = bytes(report)
    if len(report) > MAX_REPORT_SIZE:
        raise HclFormatError(
            f"the input is {len(report)} bytes; an HCL report is at most {MAX_REPORT_SIZE}", field="input", offset=0
        )
    _need(report, HEADER_FIELDS, 0, "header")
    h = read_fields(HEADER_FIELDS, report)
    if h["signature"] != HCL_SIGNATURE:
        raise HclFormatError(f"signature is {h['signature']!r}, not {HCL_SIGNATURE!r}", field="header.signature", offset=0)
    if h["version"] not in HCL_VERSIONS:
        raise HclFormatError(
            f"version is {h['version']}, expected one of {sorted(HCL_VERSIONS)}", field="header.version", offset=4
        )
    _need(report, REPORT_FIELDS, 0, "report")
    _need(report, RUNTIME_DATA_FIELDS, RUNTIME_DATA_OFFSET, "runtime_data")
    r = read_fields(RUNTIME_DATA_FIELDS, report, RUNTIME_DATA_OFFSET)
    at = {f.attr: RUNTIME_DATA_OFFSET + f.offset for f in RUNTIME_DATA_FIELDS}

    if r["version"] != RUNTIME_DATA_VERSION:
        raise HclFormatError(
            f"version is {r['version']}, expected {RUNTIME_DATA_VERSION}", field="runtime_data.version", offset=at["version"]
        )
    if r["report_type"] not in REPORT_TYPES:
        raise HclFormatError(
            f"report_type is {r['report_type']}, neither {REPORT_TYPE_SNP} (SEV-SNP) nor {REPORT_TYPE_TDX} (TDX)",
            field="runtime_data.report_type",
            offset=at["report_type"],
            code="hcl_unknown_report_type",
        )
    size = r["variable_data_size"]
    if size > MAX_RUNTIME_DATA_SIZE:
        raise HclFormatError(
            f"variable_data_size {size} is over the {MAX_RUNTIME_DATA_SIZE} bytes runtime data may take",
            field="runtime_data.variable_data_size",
            offset=at["variable_data_size"],
        )
    end = VARIABLE_DATA_OFFSET + size
    if end > len(report):
        raise HclFormatError(
            f"variable_data_size {size} runs past the end of the {len(report)}-byte input",
            field="runtime_data.variable_data_size",
            offset=at["variable_data_size"],
        )
    if r["data_size"] != RUNTIME_DATA_HEADER_SIZE + size:
        raise HclFormatError(
            f"data_size {r['data_size']} disagrees with variable_data_size {size} "
            f"(data_size counts the {RUNTIME_DATA_HEADER_SIZE}-byte block header and the variable data)",
            field="runtime_data.data_size",
            offset=at["data_size"],
        )
    if h["report_size"] != end:
        raise HclFormatError(
            f"report_size {h['report_size']} disagrees with the runtime data's end at {end} "
            f"({RUNTIME_DATA_OFFSET} + data_size {r['data_size']})",
            field="header.report_size",
            offset=8,
        )
    runtime = RuntimeDataHeader(**r)
    hw = report[HW_REPORT_OFFSET:RUNTIME_DATA_OFFSET]
    td_report = parse_td_report_struct(report, HW_REPORT_OFFSET) if runtime.report_type == REPORT_TYPE_TDX else None
    return HclReport(
        header=HclHeader(**h),
        hw_report=hw,
        runtime=runtime,
        variable_data=report[VARIABLE_DATA_OFFSET:end],
        raw=report[:end],
        trailing_bytes=len(report) - end,
        td_report=td_report,
    )


def runtime_data_digest(hash_type: int, variable_data: bytes) -> bytes:
    """The digest the hardware report's report data starts with, for ``report_data_hash_type``."""
    try:
        return bytes(HASH_TYPES[hash_type](variable_data).digest())
    except KeyError:
        raise HclFormatError(
            f"report_data_hash_type is {hash_type}, not 1 (SHA-256), 2 (SHA-384) or 3 (SHA-512)",
            field="runtime_data.report_data_hash_type",
            offset=RUNTIME_DATA_OFFSET + 12,
            code="hcl_unknown_hash_type",
        ) from None


def pack_hcl_report(
    hw_report: bytes,
    variable_data: bytes,
    *,
    report_type: int,
    hash_type: int = HASH_TYPE_SHA256,
    version: int = 1,
    request_type: int = 2,
    pad_to: int | None = None,
) -> bytes:
    """The inverse of :func:`parse_hcl_report`, laid out by the same tables (simulated reports)."""
    runtime = pack_fields(
        RUNTIME_DATA_FIELDS,
        {
            "data_size": RUNTIME_DATA_HEADER_SIZE + len(variable_data),
            "version": RUNTIME_DATA_VERSION,
            "report_type": report_type,
            "report_data_hash_type": hash_type,
            "variable_data_size": len(variable_data),
        },
    )
    header = pack_fields(
        HEADER_FIELDS,
        {
            "signature": HCL_SIGNATURE,
            "version": version,
            "report_size": VARIABLE_DATA_OFFSET + len(variable_data),
            "request_type": request_type,
        },
    )
    out = pack_fields(REPORT_FIELDS, {"header": header, "hw_report": hw_report, "runtime_data": runtime}) + variable_data
    return out.ljust(pad_to, b"\0") if pad_to is not None else out


def pack_td_report_struct(report_mac: dict[str, Any], tee_tcb_info: dict[str, Any], td_info: dict[str, Any]) -> bytes:
    """A TDREPORT_STRUCT from its three parts' values (missing fields zero; REPORTTYPE.TYPE a TD's)."""
    mac = {"report_type": TDX_REPORT_TYPE, **report_mac}
    return pack_fields(
        TDREPORT_FIELDS,
        {
            "report_mac": pack_fields(REPORTMACSTRUCT_FIELDS, mac),
            "tee_tcb_info": pack_fields(TEE_TCB_INFO_FIELDS, tee_tcb_info),
            "td_info": pack_fields(TDINFO_FIELDS, td_info),
        },
    )


def td_report_struct_from_quote_body(body: bytes, **report_mac: Any) -> bytes:
    """The TDREPORT a quote with TD report ``body`` (1.0 or 1.5) was made from: for simulated HCL
    reports, where a simulated quote exists before its TD report does."""
    table = TD_REPORT15_FIELDS if len(body) >= TD_REPORT15_FIELDS[-1].offset + TD_REPORT15_FIELDS[-1].size else TD_REPORT10_FIELDS
    raw = bytearray(pack_td_report_struct(report_mac, {}, {}))
    for f in table:
        start, end = _TD_QUOTE_BODY_AT[f.attr]
        raw[start:end] = body[f.offset : f.offset + f.size]
    return bytes(raw)


# --------------------------------------------------------------------------------------------
# Runtime data (the JSON document)
# --------------------------------------------------------------------------------------------

USER_DATA_SIZE: Final = 64
_HEX128 = re.compile(r"[0-9a-fA-F]{128}")


@dataclass(frozen=True)
class RuntimeKey:
    """One JWK of ``keys``: the vTPM's attestation key (``HCLAkPub``), its EK (``HCLEkPub``), …"""

    kid: str
    kty: str
    key_ops: tuple[str, ...]
    jwk: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class VmConfiguration:
    vm_unique_id: str
    """``vmUniqueId``: the VM's id as Azure's API reports it (design §10 compares the two)."""
    secure_boot: bool | None
    tpm_enabled: bool | None
    console_enabled: bool | None
    other: dict[str, Any] = field(default_factory=dict)
    """Every other setting (TDX adds ``root-cert-thumbprint``, ``tpm-persisted``), as given."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "vmUniqueId": self.vm_unique_id,
            "secure-boot": self.secure_boot,
            "tpm-enabled": self.tpm_enabled,
            "console-enabled": self.console_enabled,
            **self.other,
        }


@dataclass(frozen=True)
class RuntimeData:
    keys: tuple[RuntimeKey, ...]
    vm_configuration: VmConfiguration
    user_data: str | None
    """``user-data`` as written (hex text); :func:`decode_user_data` checks and decodes it."""
    document: dict[str, Any] = field(repr=False)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(k.kid for k in self.keys)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a key twice are refused: parsers disagree on which value wins, and the
    hash covers both, so a second ``user-data`` could say something other than the one checked."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _optional_bool(config: dict[str, Any], key: str) -> bool | None:
    value = config.get(key)
    if value is not None and not isinstance(value, bool):
        raise RuntimeDataError(f"{key} is {type(value).__name__}, not a boolean", field=f"vm-configuration.{key}")
    return value


def parse_runtime_data(data: bytes) -> RuntimeData:
    """The runtime data's ``keys``, ``vm-configuration`` and ``user-data``, each type-checked.

    Unknown members are kept (``document``) but not interpreted: Azure adds settings over time,
    and only those duet relies on are required."""
    if len(data) > MAX_RUNTIME_DATA_SIZE:
        raise RuntimeDataError(
            f"{len(data)} bytes, over the {MAX_RUNTIME_DATA_SIZE} runtime data may take",
            field="$",
            code="hcl_runtime_data_too_large",
        )
    try:
        doc = json.loads(bytes(data).decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise RuntimeDataError(f"the member {exc} appears twice", field="$", code="hcl_runtime_data_not_json") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise RuntimeDataError(f"not UTF-8 JSON: {reason}", field="$", code="hcl_runtime_data_not_json") from None
    if not isinstance(doc, dict):
        raise RuntimeDataError(f"the document is a JSON {type(doc).__name__}, not an object", field="$")

    raw_keys = doc.get("keys")
    if not isinstance(raw_keys, list):
        raise RuntimeDataError("keys is missing or not a list of JWKs", field="keys")
    keys: list[RuntimeKey] = []
    for i, jwk in enumerate(raw_keys):
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or not isinstance(jwk.get("kty"), str):
            raise RuntimeDataError("a key is not a JWK with string kid and kty", field=f"keys[{i}]")
        ops = jwk.get("key_ops", [])
        if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
            raise RuntimeDataError("key_ops is not a list of strings", field=f"keys[{i}].key_ops")
        keys.append(RuntimeKey(kid=jwk["kid"], kty=jwk["kty"], key_ops=tuple(ops), jwk=jwk))

    config = doc.get("vm-configuration")
    if not isinstance(config, dict):
        raise RuntimeDataError("vm-configuration is missing or not an object", field="vm-configuration")
    vm_id = config.get("vmUniqueId")
    if not isinstance(vm_id, str) or not vm_id:
        raise RuntimeDataError("vmUniqueId is missing or not a string", field="vm-configuration.vmUniqueId")
    known = ("vmUniqueId", "secure-boot", "tpm-enabled", "console-enabled")
    vm_configuration = VmConfiguration(
        vm_unique_id=vm_id,
        secure_boot=_optional_bool(config, "secure-boot"),
        tpm_enabled=_optional_bool(config, "tpm-enabled"),
        console_enabled=_optional_bool(config, "console-enabled"),
        other={k: v for k, v in config.items() if k not in known},
    )

    user_data = doc.get("user-data")
    if user_data is not None and not isinstance(user_data, str):
        raise RuntimeDataError(f"user-data is {type(user_data).__name__}, not hex text", field="user-data")
    return RuntimeData(keys=tuple(keys), vm_configuration=vm_configuration, user_data=user_data, document=doc)


def decode_user_data(runtime: RuntimeData) -> bytes:
    """The 64 bytes of ``user-data``: what duet's binding (design §10) is checked against."""
    if runtime.user_data is None:
        raise RuntimeDataError(
            "user-data is missing (the guest wrote nothing to NV index 0x01400002 before this report)",
            field="user-data",
            code="hcl_user_data_missing",
        )
    if not _HEX128.fullmatch(runtime.user_data):
        raise RuntimeDataError(
            f"user-data is not {USER_DATA_SIZE} bytes of hex ({len(runtime.user_data)} characters)",
            field="user-data",
            code="hcl_user_data_malformed",
        )
    return bytes.fromhex(runtime.user_data)
