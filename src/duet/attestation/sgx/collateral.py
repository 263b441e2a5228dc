"""Intel's DCAP collateral, as named fields: the QE identity, TCB info, CRLs, and the PCK
certificate's SGX extension that TCB info is matched against.

A verified quote proves that *a* PCK key signed *some* quoting enclave's report. Which quoting
enclave is Intel's, and whether the platform's TCB is current, is said by Intel's collateral
(Intel PCS ``sgx/certification/v4/qe/identity``, ``tcb?fmspc=``, ``pckcrl``, and the root CA
CRL). Everything here is format and pure evaluation: JSON members and certificate-extension OIDs
as tables of named fields (names as in Intel's PCS and PCK certificate specifications),
parsing, and "which TCB level does this platform reach". Checking a quote against it is
:mod:`duet.attestation.sgx.verify`; deciding which TCB statuses are acceptable is
:mod:`duet.attestation.sgx.policy`.

The PCS JSON bodies are signed by the "Intel SGX TCB Signing" certificate, whose chain Intel
sends in an HTTP header, not in the body: a file holding only the body cannot be checked
against the Intel root, and the verdict says so (``signature not verified``). CRLs carry their
issuer's signature and are checked against the verified PCK chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from duet.attestation.sgx.abi import ReportBody
from duet.errors import ConfigError

TCB_STATUSES: tuple[str, ...] = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
"""The ``tcbStatus`` values of Intel's TCB info and QE identity (PCS v4)."""

COLLATERAL_SIGNATURE_NOTE = (
    "signature not verified: the file does not carry Intel's TCB signing certificate chain (PCS sends it in a response header)"
)


def _bad(source: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {message}", code="bad_collateral")


# --------------------------------------------------------------------------------------------
# JSON member tables
# --------------------------------------------------------------------------------------------

JsonKind = Literal["str", "int", "time", "hex", "list", "dict"]


@dataclass(frozen=True)
class JsonField:
    """One member of a PCS JSON object: ``name`` as Intel spells it, the attribute holding it,
    its kind, the byte size of a hex value, and whether it may be absent."""

    name: str
    attr: str
    kind: JsonKind
    size: int = 0
    optional: bool = False


QE_IDENTITY_FIELDS: tuple[JsonField, ...] = (  # "enclaveIdentity", PCS qe/identity v2
    JsonField("id", "id", "str"),
    JsonField("version", "version", "int"),
    JsonField("issueDate", "issue_date", "time"),
    JsonField("nextUpdate", "next_update", "time"),
    JsonField("tcbEvaluationDataNumber", "tcb_evaluation_data_number", "int"),
    JsonField("miscselect", "miscselect", "hex", 4),
    JsonField("miscselectMask", "miscselect_mask", "hex", 4),
    JsonField("attributes", "attributes", "hex", 16),
    JsonField("attributesMask", "attributes_mask", "hex", 16),
    JsonField("mrsigner", "mr_signer", "hex", 32),
    JsonField("isvprodid", "isv_prod_id", "int"),
    JsonField("tcbLevels", "tcb_levels", "list"),
)
QE_TCB_LEVEL_FIELDS: tuple[JsonField, ...] = (
    JsonField("tcb", "tcb", "dict"),
    JsonField("tcbDate", "tcb_date", "time"),
    JsonField("tcbStatus", "tcb_status", "str"),
    JsonField("advisoryIDs", "advisory_ids", "list", optional=True),
)
TCB_INFO_FIELDS: tuple[JsonField, ...] = (  # "tcbInfo", PCS tcb v2 (PCS v3) and v3 (PCS v4)
    JsonField("id", "id", "str", optional=True),  # v3 only: "SGX"
    JsonField("version", "version", "int"),
    JsonField("issueDate", "issue_date", "time"),
    JsonField("nextUpdate", "next_update", "time"),
    JsonField("fmspc", "fmspc", "hex", 6),
    JsonField("pceId", "pce_id", "hex", 2),
    JsonField("tcbType", "tcb_type", "int"),
    JsonField("tcbEvaluationDataNumber", "tcb_evaluation_data_number", "int"),
    JsonField("tcbLevels", "tcb_levels", "list"),
)
TCB_LEVEL_FIELDS: tuple[JsonField, ...] = QE_TCB_LEVEL_FIELDS
TCB_COMPONENT_COUNT = 16
TDX_MODULE_FIELDS: tuple[JsonField, ...] = (  # "tdxModule", TDX TCB info v3 only
    JsonField("mrsigner", "mr_signer", "hex", 48),
    JsonField("attributes", "attributes", "hex", 8),
    JsonField("attributesMask", "attributes_mask", "hex", 8),
)
TDX_MODULE_IDENTITY_FIELDS: tuple[JsonField, ...] = (  # "tdxModuleIdentities[]", TDX TCB info v3 only
    JsonField("id", "id", "str"),
    *TDX_MODULE_FIELDS,
    JsonField("tcbLevels", "tcb_levels", "list"),
)


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return parsed


def read_json_fields(table: Sequence[JsonField], obj: Any, source: str, where: str) -> dict[str, Any]:
    """Read every member of ``table`` from ``obj``, checking its kind; raise ``bad_collateral``."""
    if not isinstance(obj, dict):
        raise _bad(source, f"{where} is not a JSON object")
    out: dict[str, Any] = {}
    for f in table:
        if f.name not in obj:
            if f.optional:
                out[f.attr] = None
                continue
            raise _bad(source, f"{where} has no {f.name!r}")
        value = obj[f.name]
        try:
            out[f.attr] = _convert(f, value)
        except (ValueError, TypeError) as exc:
            raise _bad(source, f"{where}.{f.name} = {value!r} is not a valid {f.kind} ({exc})") from None
    return out


def _convert(f: JsonField, value: Any) -> Any:
    if f.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("not an integer")
        return value
    if f.kind == "list":
        if not isinstance(value, list):
            raise TypeError("not a list")
        return value
    if f.kind == "dict":
        if not isinstance(value, dict):
            raise TypeError("not an object")
        return value
    if not isinstance(value, str):
        raise TypeError("not a string")
    if f.kind == "time":
        return _parse_time(value)
    if f.kind == "hex":
        raw = bytes.fromhex(value)
        if len(raw) != f.size:
            raise ValueError(f"{len(raw)} bytes, expected {f.size}")
        return raw
    return value


def _tcb_status(value: str, source: str, where: str) -> str:
    if value not in TCB_STATUSES:
        raise _bad(source, f"{where}.tcbStatus {value!r} is not one of {', '.join(TCB_STATUSES)}")
    return value


def _signed_body(data: bytes, member: str, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(source, f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or member not in doc:
        raise _bad(source, f"not an Intel PCS document: no {member!r} member")
    return doc


# --------------------------------------------------------------------------------------------
# QE identity
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QeTcbLevel:
    isv_svn: int
    tcb_date: datetime | None
    tcb_status: str
    advisory_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class QeIdentity:
    """Which quoting enclave is genuine: Intel's ``enclaveIdentity`` (or a built-in one)."""

    source: str
    """Where it comes from, for messages: a file name, or which built-in identity."""
    mr_signer: bytes
    isv_prod_id: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    min_isv_svn: int
    """The lowest ISVSVN accepted (the lowest TCB level's, for a file)."""
    tcb_levels: tuple[QeTcbLevel, ...] = ()
    """Empty for a built-in identity: the QE's TCB status is then not evaluated."""
    id: str = "QE"
    version: int = 2
    issue_date: datetime | None = None
    next_update: datetime | None = None
    tcb_evaluation_data_number: int | None = None
    signature_note: str = ""

    @classmethod
    def from_json(cls, data: bytes, source: str = "QE identity", *, expected_id: str = "QE") -> QeIdentity:
        """Parse Intel PCS ``qe/identity`` (v2 format, ``{"enclaveIdentity": ..., "signature": ...}``).

        ``expected_id`` is the quoting enclave the file must describe: ``QE`` (SGX's, from
        ``sgx/certification/v4/qe/identity``) or ``TD_QE`` (TDX's, from ``tdx/certification/v4/qe/identity``)."""
        doc = _signed_body(data, "enclaveIdentity", source)
        v = read_json_fields(QE_IDENTITY_FIELDS, doc["enclaveIdentity"], source, "enclaveIdentity")
        if v["id"] != expected_id:
            raise _bad(
                source,
                f"enclaveIdentity.id is {v['id']!r}; this quote's quoting enclave is {expected_id!r} ({_QE_IDS.get(expected_id, '?')})",
            )
        if v["version"] != 2:
            raise _bad(source, f"enclaveIdentity.version is {v['version']}; only version 2 is supported")
        levels = _isvsvn_levels(v["tcb_levels"], source, "enclaveIdentity.tcbLevels")
        return cls(
            source=source,
            mr_signer=v["mr_signer"],
            isv_prod_id=v["isv_prod_id"],
            miscselect=int.from_bytes(v["miscselect"], "big"),
            miscselect_mask=int.from_bytes(v["miscselect_mask"], "big"),
            attributes=v["attributes"],
            attributes_mask=v["attributes_mask"],
            min_isv_svn=min(lv.isv_svn for lv in levels),
            tcb_levels=tuple(levels),
            id=v["id"],
            version=v["version"],
            issue_date=v["issue_date"],
            next_update=v["next_update"],
            tcb_evaluation_data_number=v["tcb_evaluation_data_number"],
            signature_note=COLLATERAL_SIGNATURE_NOTE,
        )

    def mismatches(self, qe_report: ReportBody) -> list[str]:
        """Every way ``qe_report`` differs from this identity (empty: it matches)."""
        out = []
        if qe_report.mr_signer != self.mr_signer:
            out.append(f"MRSIGNER is {qe_report.mr_signer.hex()}, expected {self.mr_signer.hex()}")
        if qe_report.isv_prod_id != self.isv_prod_id:
            out.append(f"ISVPRODID is {qe_report.isv_prod_id}, expected {self.isv_prod_id}")
        if qe_report.misc_select & self.miscselect_mask != self.miscselect & self.miscselect_mask:
            out.append(
                f"MISCSELECT is {qe_report.misc_select:08x}, expected {self.miscselect:08x} under mask {self.miscselect_mask:08x}"
            )
        masked = bytes(a & m for a, m in zip(qe_report.attributes, self.attributes_mask, strict=True))
        expected = bytes(a & m for a, m in zip(self.attributes, self.attributes_mask, strict=True))
        if masked != expected:
            debug = " (the DEBUG bit is set)" if qe_report.debug else ""
            out.append(
                f"ATTRIBUTES are {qe_report.attributes.hex()}{debug}, expected {self.attributes.hex()} "
                f"under mask {self.attributes_mask.hex()}"
            )
        if qe_report.isv_svn < self.min_isv_svn:
            out.append(f"ISVSVN is {qe_report.isv_svn}, below the lowest accepted {self.min_isv_svn}")
        return out

    def tcb_level(self, isv_svn: int) -> QeTcbLevel | None:
        """The first (highest) TCB level the QE's ISVSVN reaches, as Intel's QVL picks it."""
        return next((lv for lv in self.tcb_levels if isv_svn >= lv.isv_svn), None)


_QE_IDS = {"QE": "Intel's SGX quoting enclave", "TD_QE": "Intel's TDX quoting enclave"}


def _isvsvn_levels(raw_levels: list[Any], source: str, where: str) -> tuple[QeTcbLevel, ...]:
    """``tcbLevels`` keyed by one ISVSVN (QE identity; TDX module identity), highest first."""
    levels = []
    for i, raw in enumerate(raw_levels):
        at = f"{where}[{i}]"
        lv = read_json_fields(QE_TCB_LEVEL_FIELDS, raw, source, at)
        svn = lv["tcb"].get("isvsvn")
        if isinstance(svn, bool) or not isinstance(svn, int):
            raise _bad(source, f"{at}.tcb.isvsvn is not an integer")
        levels.append(QeTcbLevel(svn, lv["tcb_date"], _tcb_status(lv["tcb_status"], source, at), tuple(lv["advisory_ids"] or ())))
    if not levels:
        raise _bad(source, f"{where} is empty")
    return tuple(levels)


_QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")  # INIT | PROVISIONKEY; not DEBUG
_QE_ATTRIBUTES_MASK = bytes.fromhex("FBFFFFFFFFFFFFFF0000000000000000")

INTEL_QE_IDENTITY = QeIdentity(
    source="built-in Intel QE identity",
    mr_signer=bytes.fromhex("8C4F5775D796503E96137F77C68A829A0056AC8DED70140B081B094490C57BFF"),
    isv_prod_id=1,
    miscselect=0,
    miscselect_mask=0xFFFFFFFF,
    attributes=_QE_ATTRIBUTES,
    attributes_mask=_QE_ATTRIBUTES_MASK,
    min_isv_svn=1,
)
"""Intel's SGX quoting enclave as PCS ``qe/identity`` describes it (MRSIGNER, ISVPRODID 1,
attributes and masks; the lowest TCB level there is ISVSVN 1). Without a QE identity file the
QE's TCB status is not evaluated."""

SIMULATED_QE_IDENTITY = QeIdentity(
    source="simulated QE identity (the simulated root was trusted explicitly)",
    mr_signer=hashlib.sha256(b"duet simulated quoting enclave signer").digest(),  # duet.tee.simulated
    isv_prod_id=1,
    miscselect=0,
    miscselect_mask=0xFFFFFFFF,
    attributes=_QE_ATTRIBUTES,
    attributes_mask=_QE_ATTRIBUTES_MASK,
    min_isv_svn=1,
)
"""The quoting enclave of duet's simulated TEE (``duet.tee.simulated``): Intel's identity with
its own MRSIGNER. It is accepted only for chains ending at a root the user trusted explicitly
(``--trust-root``), never for chains ending at Intel's root."""


# --------------------------------------------------------------------------------------------
# TCB info
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcbLevel:
    comp_svns: tuple[int, ...]
    """SGX TCB component SVNs 01..16."""
    pce_svn: int
    tcb_date: datetime | None
    tcb_status: str
    advisory_ids: tuple[str, ...] = ()
    tdx_comp_svns: tuple[int, ...] = ()
    """TDX TCB info only: the ``tdxtcbcomponents`` SVNs, compared with a TD report's TEE_TCB_SVN."""


@dataclass(frozen=True)
class TdxModuleIdentity:
    """A TDX module Intel signed, from TDX TCB info: ``tdxModule`` (id ``""``), or one of
    ``tdxModuleIdentities`` (id ``TDX_<major version as two hex digits>``, with TCB levels keyed
    by the module's ISVSVN)."""

    id: str
    mr_signer: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[QeTcbLevel, ...] = ()


@dataclass(frozen=True)
class TcbInfo:
    """Intel's TCB levels for one platform model (FMSPC), highest first."""

    source: str
    version: int
    fmspc: bytes
    pce_id: bytes
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    tcb_levels: tuple[TcbLevel, ...]
    signature_note: str = COLLATERAL_SIGNATURE_NOTE
    id: str = "SGX"
    """``SGX`` (``sgx/certification/v4/tcb``) or ``TDX`` (``tdx/certification/v4/tcb``)."""
    tdx_module: TdxModuleIdentity | None = None
    """TDX TCB info only: the ``tdxModule`` member."""
    tdx_module_identities: tuple[TdxModuleIdentity, ...] = ()
    """TDX TCB info only: ``tdxModuleIdentities`` (absent in older files)."""

    @classmethod
    def from_json(cls, data: bytes, source: str = "TCB info", *, expected_id: str = "SGX") -> TcbInfo:
        """Parse Intel PCS ``tcb?fmspc=``: for SGX, ``tcbInfo`` version 2 (``sgxtcbcompNNsvn``
        members) or 3 (``sgxtcbcomponents`` list, ``id`` "SGX"); for TDX (``expected_id`` "TDX"),
        version 3 with ``id`` "TDX", ``tdxtcbcomponents`` in every level and the TDX module's
        identity, which a TDX quote is judged by as well."""
        doc = _signed_body(data, "tcbInfo", source)
        v = read_json_fields(TCB_INFO_FIELDS, doc["tcbInfo"], source, "tcbInfo")
        tdx = expected_id == "TDX"
        if v["version"] not in ((3,) if tdx else (2, 3)):
            raise _bad(
                source, f"tcbInfo.version is {v['version']}; {'version 3 is' if tdx else 'versions 2 and 3 are'} supported"
            )
        if v["version"] == 3 and v["id"] != expected_id:
            raise _bad(source, f"tcbInfo.id is {v['id']!r}; this quote needs {expected_id} TCB info")
        if v["tcb_type"] != 0:
            raise _bad(source, f"tcbInfo.tcbType is {v['tcb_type']}; only 0 is defined")
        levels = []
        for i, raw in enumerate(v["tcb_levels"]):
            where = f"tcbInfo.tcbLevels[{i}]"
            lv = read_json_fields(TCB_LEVEL_FIELDS, raw, source, where)
            comps, pce = _level_svns(lv["tcb"], v["version"], source, where)
            levels.append(
                TcbLevel(
                    comps,
                    pce,
                    lv["tcb_date"],
                    _tcb_status(lv["tcb_status"], source, where),
                    tuple(lv["advisory_ids"] or ()),
                    _components(lv["tcb"], "tdxtcbcomponents", source, where) if tdx else (),
                )
            )
        if not levels:
            raise _bad(source, "tcbInfo.tcbLevels is empty")
        module: TdxModuleIdentity | None = None
        identities: tuple[TdxModuleIdentity, ...] = ()
        if tdx:
            raw_info = doc["tcbInfo"]
            m = read_json_fields(TDX_MODULE_FIELDS, raw_info.get("tdxModule"), source, "tcbInfo.tdxModule")
            module = TdxModuleIdentity("", m["mr_signer"], m["attributes"], m["attributes_mask"])
            raw_ids = raw_info.get("tdxModuleIdentities", [])
            if not isinstance(raw_ids, list):
                raise _bad(source, "tcbInfo.tdxModuleIdentities is not a list")
            identities = tuple(
                _tdx_module_identity(raw, source, f"tcbInfo.tdxModuleIdentities[{i}]") for i, raw in enumerate(raw_ids)
            )
        return cls(
            source=source,
            version=v["version"],
            fmspc=v["fmspc"],
            pce_id=v["pce_id"],
            issue_date=v["issue_date"],
            next_update=v["next_update"],
            tcb_evaluation_data_number=v["tcb_evaluation_data_number"],
            tcb_levels=tuple(levels),
            id=v["id"] or "SGX",
            tdx_module=module,
            tdx_module_identities=identities,
        )

    def tcb_level(self, comp_svns: Sequence[int], pce_svn: int) -> TcbLevel | None:
        """The first (highest) level every component SVN and the PCESVN reach (Intel's QVL rule)."""
        for level in self.tcb_levels:
            if pce_svn >= level.pce_svn and all(a >= b for a, b in zip(comp_svns, level.comp_svns, strict=True)):
                return level
        return None


def _svn(value: Any, source: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise _bad(source, f"{where} is not an SVN")
    return value


def _components(tcb: dict[str, Any], member: str, source: str, where: str) -> tuple[int, ...]:
    """The SVNs of a v3 component list (``sgxtcbcomponents`` / ``tdxtcbcomponents``)."""
    comps = tcb.get(member)
    if not isinstance(comps, list) or len(comps) != TCB_COMPONENT_COUNT:
        raise _bad(source, f"{where}.tcb.{member} must list {TCB_COMPONENT_COUNT} components")
    return tuple(
        _svn(c.get("svn") if isinstance(c, dict) else None, source, f"{where}.tcb.{member}[{i}].svn") for i, c in enumerate(comps)
    )


def _tdx_module_identity(raw: Any, source: str, where: str) -> TdxModuleIdentity:
    v = read_json_fields(TDX_MODULE_IDENTITY_FIELDS, raw, source, where)
    levels = _isvsvn_levels(v["tcb_levels"], source, f"{where}.tcbLevels")
    return TdxModuleIdentity(v["id"], v["mr_signer"], v["attributes"], v["attributes_mask"], levels)


def _level_svns(tcb: dict[str, Any], version: int, source: str, where: str) -> tuple[tuple[int, ...], int]:
    if version == 3:
        svns = _components(tcb, "sgxtcbcomponents", source, where)
    else:
        svns = tuple(
            _svn(tcb.get(f"sgxtcbcomp{i:02d}svn"), source, f"{where}.tcb.sgxtcbcomp{i:02d}svn")
            for i in range(1, TCB_COMPONENT_COUNT + 1)
        )
    return svns, _svn(tcb.get("pcesvn"), source, f"{where}.tcb.pcesvn")


@dataclass(frozen=True)
class TcbEvaluation:
    """What the collateral said about this quote's TCB; ``None`` means not evaluated."""

    platform_status: str | None
    """The platform's TCB level status from TCB info (FMSPC of the PCK certificate)."""
    qe_status: str | None
    """The quoting enclave's TCB level status from the QE identity."""
    platform_tcb_date: datetime | None = None
    advisory_ids: tuple[str, ...] = ()
    fmspc: bytes | None = None


# --------------------------------------------------------------------------------------------
# The PCK certificate's SGX extension (OID 1.2.840.113741.1.13.1)
# --------------------------------------------------------------------------------------------

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
DerKind = Literal["octets", "integer", "enumerated", "sequence"]


@dataclass(frozen=True)
class OidField:
    """One ``SEQUENCE { OID, value }`` of the SGX extension: its OID, Intel's name, the attribute."""

    oid: str
    name: str
    attr: str
    kind: DerKind
    size: int = 0
    optional: bool = False


SGX_EXTENSION_FIELDS: tuple[OidField, ...] = (
    OidField(SGX_EXTENSION_OID + ".1", "PPID", "ppid", "octets", 16),
    OidField(SGX_EXTENSION_OID + ".2", "TCB", "tcb", "sequence"),
    OidField(SGX_EXTENSION_OID + ".3", "PCE-ID", "pce_id", "octets", 2),
    OidField(SGX_EXTENSION_OID + ".4", "FMSPC", "fmspc", "octets", 6),
    OidField(SGX_EXTENSION_OID + ".5", "SGX Type", "sgx_type", "enumerated"),
)
"""Fields every PCK certificate carries; others (platform instance id, configuration) are skipped."""
PCK_TCB_FIELDS: tuple[OidField, ...] = (
    *(OidField(f"{SGX_EXTENSION_OID}.2.{i}", f"SGX TCB Comp{i:02d} SVN", f"comp{i:02d}", "integer") for i in range(1, 17)),
    OidField(SGX_EXTENSION_OID + ".2.17", "PCESVN", "pce_svn", "integer"),
    OidField(SGX_EXTENSION_OID + ".2.18", "CPUSVN", "cpu_svn", "octets", 16),
)


@dataclass(frozen=True)
class PckTcb:
    comp_svns: tuple[int, ...]
    pce_svn: int
    cpu_svn: bytes


@dataclass(frozen=True)
class PckSgxExtension:
    ppid: bytes
    tcb: PckTcb
    pce_id: bytes
    fmspc: bytes
    sgx_type: int


class DerError(ValueError):
    pass


_TAGS = {"octets": 0x04, "integer": 0x02, "enumerated": 0x0A, "sequence": 0x30}


def _der_items(buf: bytes) -> list[tuple[int, bytes]]:
    """Split DER TLVs (definite lengths only)."""
    out, pos = [], 0
    while pos < len(buf):
        if pos + 2 > len(buf):
            raise DerError("truncated TLV")
        tag, length, pos = buf[pos], buf[pos + 1], pos + 2
        if length & 0x80:
            n = length & 0x7F
            if not 0 < n <= 4 or pos + n > len(buf):
                raise DerError("bad length")
            length, pos = int.from_bytes(buf[pos : pos + n], "big"), pos + n
        if pos + length > len(buf):
            raise DerError("value runs past the end")
        out.append((tag, buf[pos : pos + length]))
        pos += length
    return out


def _der_oid(content: bytes) -> str:
    if not content:
        raise DerError("empty OID")
    arcs, value = [], 0
    for b in content:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def _oid_der(oid: str) -> bytes:
    arcs = [int(a) for a in oid.split(".")]
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _read_oid_table(table: Sequence[OidField], content: bytes, where: str) -> dict[str, Any]:
    by_oid = {f.oid: f for f in table}
    out: dict[str, Any] = {}
    for tag, item in _der_items(content):
        if tag != 0x30:
            raise DerError(f"{where}: an entry is not a SEQUENCE")
        parts = _der_items(item)
        if len(parts) != 2 or parts[0][0] != 0x06:
            raise DerError(f"{where}: an entry is not SEQUENCE {{ OID, value }}")
        f = by_oid.get(_der_oid(parts[0][1]))
        if f is None:
            continue
        vtag, value = parts[1]
        if vtag != _TAGS[f.kind]:
            raise DerError(f"{f.name}: tag {vtag:#x}, expected {_TAGS[f.kind]:#x}")
        if f.kind in ("integer", "enumerated"):
            out[f.attr] = int.from_bytes(value, "big", signed=True)
        elif f.kind == "octets":
            if len(value) != f.size:
                raise DerError(f"{f.name} is {len(value)} bytes, expected {f.size}")
            out[f.attr] = value
        else:
            out[f.attr] = value
    missing = [f.name for f in table if f.attr not in out and not f.optional]
    if missing:
        raise DerError(f"{where}: missing {', '.join(missing)}")
    return out


def _write_oid_table(table: Sequence[OidField], values: dict[str, Any]) -> bytes:
    out = b""
    for f in table:
        v = values[f.attr]
        if f.kind in ("integer", "enumerated"):
            content = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big", signed=True)
        else:
            content = v
        out += _tlv(0x30, _oid_der(f.oid) + _tlv(_TAGS[f.kind], content))
    return out


def parse_pck_sgx_extension(der: bytes) -> PckSgxExtension:
    """The SGX extension's DER value (a SEQUENCE of ``SEQUENCE { OID, value }``) → named fields."""
    items = _der_items(der)
    if len(items) != 1 or items[0][0] != 0x30:
        raise DerError("the SGX extension is not one SEQUENCE")
    v = _read_oid_table(SGX_EXTENSION_FIELDS, items[0][1], "SGX extension")
    t = _read_oid_table(PCK_TCB_FIELDS, v["tcb"], "TCB")
    tcb = PckTcb(tuple(t[f"comp{i:02d}"] for i in range(1, 17)), t["pce_svn"], t["cpu_svn"])
    return PckSgxExtension(ppid=v["ppid"], tcb=tcb, pce_id=v["pce_id"], fmspc=v["fmspc"], sgx_type=v["sgx_type"])


def pack_pck_sgx_extension(ext: PckSgxExtension) -> bytes:
    """Inverse of :func:`parse_pck_sgx_extension`, by the same tables (for simulated PCKs and tests)."""
    tcb: dict[str, Any] = {f"comp{i + 1:02d}": svn for i, svn in enumerate(ext.tcb.comp_svns)}
    tcb.update(pce_svn=ext.tcb.pce_svn, cpu_svn=ext.tcb.cpu_svn)
    values = {
        "ppid": ext.ppid,
        "tcb": _write_oid_table(PCK_TCB_FIELDS, tcb),
        "pce_id": ext.pce_id,
        "fmspc": ext.fmspc,
        "sgx_type": ext.sgx_type,
    }
    return _tlv(0x30, _write_oid_table(SGX_EXTENSION_FIELDS, values))


def pck_sgx_extension(cert: x509.Certificate) -> PckSgxExtension:
    """The SGX extension of a PCK certificate; raises :class:`DerError` when absent or malformed."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID)).value
    except x509.ExtensionNotFound:
        raise DerError(f"the certificate has no SGX extension ({SGX_EXTENSION_OID})") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise DerError("unexpected SGX extension type")
    return parse_pck_sgx_extension(ext.value)


# --------------------------------------------------------------------------------------------
# Collateral as given by the user
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Collateral:
    """Optional Intel collateral; whatever is absent is reported as not evaluated."""

    qe_identity: QeIdentity | None = None
    """Replaces :data:`INTEL_QE_IDENTITY` for chains ending at Intel's root."""
    tcb_info: TcbInfo | None = None
    pck_crl: x509.CertificateRevocationList | None = None
    """Issued by the PCK Platform or Processor CA."""
    root_crl: x509.CertificateRevocationList | None = None
    """Issued by the root CA: revokes intermediate CAs."""


NO_COLLATERAL = Collateral()


def load_crl(data: bytes, source: str = "CRL") -> x509.CertificateRevocationList:
    """A CRL, DER (as PCS serves it with ``encoding=der``) or PEM."""
    loaders: tuple[Callable[[bytes], x509.CertificateRevocationList], ...] = (
        x509.load_der_x509_crl,
        x509.load_pem_x509_crl,
    )
    for loader in loaders:
        try:
            return loader(data)
        except ValueError:
            pass
    try:  # PCS v3 served CRLs hex-encoded
        return x509.load_der_x509_crl(bytes.fromhex(data.decode().strip()))
    except (ValueError, UnicodeDecodeError):
        raise _bad(source, "not a CRL (DER, PEM or hex DER)") from None


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read collateral {path}: {exc.strerror}", code="collateral_unreadable") from None


def load_collateral(
    *,
    qe_identity: Path | None = None,
    tcb_info: Path | None = None,
    pck_crl: Path | None = None,
    root_crl: Path | None = None,
    tee: Literal["SGX", "TDX"] = "SGX",
) -> Collateral:
    """Collateral from files (Intel PCS formats) for an SGX or a TDX quote (``tee``: which QE
    identity, ``QE`` or ``TD_QE``, and which TCB info the files must be); raises ``ConfigError``
    (``collateral_unreadable``, ``bad_collateral``)."""
    qe_id = "TD_QE" if tee == "TDX" else "QE"
    return Collateral(
        qe_identity=QeIdentity.from_json(_read(qe_identity), str(qe_identity), expected_id=qe_id) if qe_identity else None,
        tcb_info=TcbInfo.from_json(_read(tcb_info), str(tcb_info), expected_id=tee) if tcb_info else None,
        pck_crl=load_crl(_read(pck_crl), str(pck_crl)) if pck_crl else None,
        root_crl=load_crl(_read(root_crl), str(root_crl)) if root_crl else None,
    )
