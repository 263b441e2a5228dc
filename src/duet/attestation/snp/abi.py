"""The AMD SEV-SNP ATTESTATION_REPORT (1184 bytes) and the GHCB certificate table, as named fields.

Everything here is layout: which bytes hold which field, and what the bits of a field mean. The
tables are ``(offset, size, name)`` rows with the names of AMD's SEV-SNP ABI specification 56860
(``ATTESTATION_REPORT``, ``TCB_VERSION``, ``GUEST_POLICY``, ``PLATFORM_INFO``) and of the GHCB
specification 56421 (the certificate table), so a reader can hold each row against the PDF;
:func:`~duet.attestation.layout.check_table` proves at import time that they tile their
structures. Parsing trusts nothing and checks nothing cryptographic (that is
:mod:`duet.attestation.snp.verify`); a malformed report raises :class:`SnpReportFormatError`
naming the field and its offset, because "bad report" alone does not tell anyone which producer
to fix.

Integers are little-endian. The signature's r and s are 72-byte *little-endian* fields (unlike
the big-endian raw signatures of SGX and TDX quotes).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from duet.attestation.layout import Field, LayoutError, check_table, fields_dict, pack_fields, read_fields
from duet.errors import VerificationError

Product = Literal["Milan", "Genoa", "Turin"]
PRODUCTS: tuple[Product, ...] = ("Milan", "Genoa", "Turin")
SignerKind = Literal["VCEK", "VLEK"]


class SnpReportFormatError(LayoutError):
    """The bytes are not a well-formed SNP attestation report; ``field``/``offset`` say where."""

    code = "bad_snp_report"
    structure = "SEV-SNP attestation report"
    offset_format = "#05x"  # as ABI 56860's tables write offsets


class CertTableFormatError(VerificationError):
    """The GHCB certificate table (configfs-tsm ``auxblob``) is malformed."""

    code = "bad_snp_cert_table"


# --------------------------------------------------------------------------------------------
# ATTESTATION_REPORT (ABI 56860, "ATTESTATION_REPORT Structure")
# --------------------------------------------------------------------------------------------

REPORT_SIZE = 0x4A0
SIGNED_REGION_END = 0x2A0
"""The VCEK/VLEK signs report[0:0x2A0]: everything before SIGNATURE."""
MIN_VERSION, MAX_VERSION = 2, 5
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
SIGNATURE_COMPONENT_SIZE = 72

REPORT_FIELDS: tuple[Field, ...] = (
    Field(0x000, 4, "VERSION", "version", "u32"),
    Field(0x004, 4, "GUEST_SVN", "guest_svn", "u32"),
    Field(0x008, 8, "POLICY", "policy", "u64"),
    Field(0x010, 16, "FAMILY_ID", "family_id"),
    Field(0x020, 16, "IMAGE_ID", "image_id"),
    Field(0x030, 4, "VMPL", "vmpl", "u32"),
    Field(0x034, 4, "SIGNATURE_ALGO", "signature_algo", "u32"),
    Field(0x038, 8, "CURRENT_TCB", "current_tcb", "u64"),
    Field(0x040, 8, "PLATFORM_INFO", "platform_info", "u64"),
    Field(0x048, 4, "SIGNER_INFO (AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY)", "signer_info", "u32"),
    Field(0x04C, 4, "reserved (0x04C)", "reserved0"),
    Field(0x050, 64, "REPORT_DATA", "report_data"),
    Field(0x090, 48, "MEASUREMENT", "measurement"),
    Field(0x0C0, 32, "HOST_DATA", "host_data"),
    Field(0x0E0, 48, "ID_KEY_DIGEST", "id_key_digest"),
    Field(0x110, 48, "AUTHOR_KEY_DIGEST", "author_key_digest"),
    Field(0x140, 32, "REPORT_ID", "report_id"),
    Field(0x160, 32, "REPORT_ID_MA", "report_id_ma"),
    Field(0x180, 8, "REPORTED_TCB", "reported_tcb", "u64"),
    Field(0x188, 1, "CPUID_FAM_ID", "cpuid_fam_id", "u8"),  # VERSION >= 3
    Field(0x189, 1, "CPUID_MOD_ID", "cpuid_mod_id", "u8"),  # VERSION >= 3
    Field(0x18A, 1, "CPUID_STEP", "cpuid_step", "u8"),  # VERSION >= 3
    Field(0x18B, 21, "reserved (0x18B)", "reserved1"),
    Field(0x1A0, 64, "CHIP_ID", "chip_id"),
    Field(0x1E0, 8, "COMMITTED_TCB", "committed_tcb", "u64"),
    Field(0x1E8, 1, "CURRENT_BUILD", "current_build", "u8"),
    Field(0x1E9, 1, "CURRENT_MINOR", "current_minor", "u8"),
    Field(0x1EA, 1, "CURRENT_MAJOR", "current_major", "u8"),
    Field(0x1EB, 1, "reserved (0x1EB)", "reserved2"),
    Field(0x1EC, 1, "COMMITTED_BUILD", "committed_build", "u8"),
    Field(0x1ED, 1, "COMMITTED_MINOR", "committed_minor", "u8"),
    Field(0x1EE, 1, "COMMITTED_MAJOR", "committed_major", "u8"),
    Field(0x1EF, 1, "reserved (0x1EF)", "reserved3"),
    Field(0x1F0, 8, "LAUNCH_TCB", "launch_tcb", "u64"),
    Field(0x1F8, 8, "LAUNCH_MIT_VECTOR", "launch_mit_vector", "u64"),  # VERSION >= 5
    Field(0x200, 8, "CURRENT_MIT_VECTOR", "current_mit_vector", "u64"),  # VERSION >= 5
    Field(0x208, 0x98, "reserved (0x208)", "reserved4"),
    Field(0x2A0, 72, "SIGNATURE.R", "signature_r"),
    Field(0x2E8, 72, "SIGNATURE.S", "signature_s"),
    Field(0x330, 0x170, "SIGNATURE reserved (0x330)", "signature_reserved"),
)
check_table(REPORT_FIELDS, REPORT_SIZE)

_BY_ATTR = {f.attr: f for f in REPORT_FIELDS}
MBZ_FIELDS: tuple[str, ...] = ("reserved0", "reserved1", "reserved2", "reserved3", "reserved4", "signature_reserved")
"""Reserved areas that must be zero (ABI 56860: reserved, MBZ)."""

# --- SIGNER_INFO (u32 at 0x048) ---------------------------------------------------------------

SIGNER_AUTHOR_KEY_EN = 1 << 0
SIGNER_MASK_CHIP_KEY = 1 << 1
SIGNING_KEY_SHIFT, SIGNING_KEY_MASK = 2, 0x7
SIGNING_KEYS: dict[int, SignerKind] = {0: "VCEK", 1: "VLEK"}
SIGNING_KEY_NONE = 7
SIGNER_INFO_MBZ = ~0x1F & 0xFFFFFFFF  # bits 5-31

# --- POLICY (u64 at 0x008) -------------------------------------------------------------------

POLICY_ABI_MINOR_MASK, POLICY_ABI_MAJOR_SHIFT = 0xFF, 8
POLICY_BITS: tuple[tuple[int, str, str], ...] = (
    (16, "SMT", "smt_allowed"),
    (17, "reserved (must be one)", "reserved_mbo"),
    (18, "MIGRATE_MA", "migrate_ma"),
    (19, "DEBUG", "debug"),
    (20, "SINGLE_SOCKET", "single_socket"),
    (21, "CXL_ALLOW", "cxl_allow"),
    (22, "MEM_AES_256_XTS", "mem_aes_256_xts"),
    (23, "RAPL_DIS", "rapl_dis"),
    (24, "CIPHERTEXT_HIDING_DRAM", "ciphertext_hiding_dram"),
    (25, "PAGE_SWAP_DISABLE", "page_swap_disable"),
)
POLICY_RESERVED_MBO = 1 << 17
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_MBZ = ~((1 << 26) - 1) & 0xFFFFFFFFFFFFFFFF  # bits 26-63

# --- PLATFORM_INFO (u64 at 0x040) --------------------------------------------------------------

PLATFORM_INFO_BITS: tuple[tuple[int, str, str], ...] = (
    (0, "SMT_EN", "smt_en"),
    (1, "TSME_EN", "tsme_en"),
    (2, "ECC_EN", "ecc_en"),
    (3, "RAPL_DIS", "rapl_dis"),
    (4, "CIPHERTEXT_HIDING_DRAM_EN", "ciphertext_hiding_dram_en"),
    (5, "ALIAS_CHECK_COMPLETE", "alias_check_complete"),
    (7, "TIO_EN", "tio_en"),
)

# --- TCB_VERSION (u64 at 0x038, 0x180, 0x1E0, 0x1F0): the byte layout depends on the product ----

TCB_FIELDS_MILAN_GENOA: tuple[Field, ...] = (
    Field(0, 1, "BOOT_LOADER", "bl_spl", "u8"),
    Field(1, 1, "TEE", "tee_spl", "u8"),
    Field(2, 4, "reserved", "reserved"),
    Field(6, 1, "SNP", "snp_spl", "u8"),
    Field(7, 1, "MICROCODE", "ucode_spl", "u8"),
)
TCB_FIELDS_TURIN: tuple[Field, ...] = (
    Field(0, 1, "FMC", "fmc_spl", "u8"),
    Field(1, 1, "BOOT_LOADER", "bl_spl", "u8"),
    Field(2, 1, "TEE", "tee_spl", "u8"),
    Field(3, 1, "SNP", "snp_spl", "u8"),
    Field(4, 3, "reserved", "reserved"),
    Field(7, 1, "MICROCODE", "ucode_spl", "u8"),
)
check_table(TCB_FIELDS_MILAN_GENOA, 8)
check_table(TCB_FIELDS_TURIN, 8)


def _bits(value: int, table: tuple[tuple[int, str, str], ...]) -> dict[str, bool]:
    return {attr: bool(value >> bit & 1) for bit, _, attr in table}


def decode_policy(policy: int) -> dict[str, Any]:
    """POLICY by name: ``abi_major``/``abi_minor`` and one bool per defined bit."""
    return {
        "abi_major": policy >> POLICY_ABI_MAJOR_SHIFT & 0xFF,
        "abi_minor": policy & POLICY_ABI_MINOR_MASK,
        **_bits(policy, POLICY_BITS),
    }


def decode_platform_info(platform_info: int) -> dict[str, bool]:
    return _bits(platform_info, PLATFORM_INFO_BITS)


@dataclass(frozen=True)
class SignerInfo:
    """SIGNER_INFO: which key signed the report, and whether CHIP_ID was masked."""

    author_key_en: bool
    mask_chip_key: bool
    signing_key: int
    """0 VCEK, 1 VLEK, 7 none (a report nobody can verify)."""

    @classmethod
    def from_int(cls, value: int) -> SignerInfo:
        return cls(
            author_key_en=bool(value & SIGNER_AUTHOR_KEY_EN),
            mask_chip_key=bool(value & SIGNER_MASK_CHIP_KEY),
            signing_key=value >> SIGNING_KEY_SHIFT & SIGNING_KEY_MASK,
        )

    def to_int(self) -> int:
        return (
            (SIGNER_AUTHOR_KEY_EN if self.author_key_en else 0)
            | (SIGNER_MASK_CHIP_KEY if self.mask_chip_key else 0)
            | (self.signing_key & SIGNING_KEY_MASK) << SIGNING_KEY_SHIFT
        )

    @property
    def kind(self) -> SignerKind:
        """The key kind; only defined once :func:`parse_report` accepted the value."""
        return SIGNING_KEYS[self.signing_key]


@dataclass(frozen=True)
class TcbVersion:
    """One TCB_VERSION by component: the security patch levels the VCEK is derived from."""

    bl_spl: int
    tee_spl: int
    snp_spl: int
    ucode_spl: int
    fmc_spl: int | None = None
    """Turin only (its firmware has an FMC stage); None on Milan and Genoa."""

    @classmethod
    def decode(cls, raw: int, product: Product | None) -> TcbVersion:
        """``product`` picks the byte layout; None means Milan/Genoa (every pre-Turin report)."""
        values = read_fields(tcb_fields(product), struct.pack("<Q", raw))
        values.pop("reserved")
        return cls(**values)

    def encode(self, product: Product | None) -> int:
        values: dict[str, Any] = dict(self.to_dict())
        if product == "Turin":
            values.setdefault("fmc_spl", 0)
        elif self.fmc_spl is not None:
            raise ValueError("FMC_SPL exists only in Turin's TCB_VERSION")
        (raw,) = struct.unpack("<Q", pack_fields(tcb_fields(product), values))
        return int(raw)

    def to_dict(self) -> dict[str, int]:
        d = {"bl_spl": self.bl_spl, "tee_spl": self.tee_spl, "snp_spl": self.snp_spl, "ucode_spl": self.ucode_spl}
        if self.fmc_spl is not None:
            d["fmc_spl"] = self.fmc_spl
        return d


def tcb_fields(product: Product | None) -> tuple[Field, ...]:
    return TCB_FIELDS_TURIN if product == "Turin" else TCB_FIELDS_MILAN_GENOA


def product_from_cpuid(family: int, model: int) -> Product | None:
    """The product a (family, model) pair names: 19h models 0xh Milan, 19h models 1xh/Axh Genoa
    (and its Bergamo/Siena siblings, which share Genoa's keys), 1Ah Turin; None if unknown."""
    if family == 0x19 and model >> 4 == 0x0:
        return "Milan"
    if family == 0x19 and model >> 4 in (0x1, 0xA):
        return "Genoa"
    if family == 0x1A:
        return "Turin"
    return None


# --------------------------------------------------------------------------------------------
# Parsed report
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnpReport:
    """A parsed ATTESTATION_REPORT; attributes are named after :data:`REPORT_FIELDS`' ``attr``."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    signer_info: int
    reserved0: bytes
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_fam_id: int
    cpuid_mod_id: int
    cpuid_step: int
    reserved1: bytes
    chip_id: bytes
    committed_tcb: int
    current_build: int
    current_minor: int
    current_major: int
    reserved2: bytes
    committed_build: int
    committed_minor: int
    committed_major: int
    reserved3: bytes
    launch_tcb: int
    launch_mit_vector: int
    current_mit_vector: int
    reserved4: bytes
    signature_r: bytes
    signature_s: bytes
    signature_reserved: bytes
    raw: bytes = field(repr=False)

    @property
    def signed_region(self) -> bytes:
        return self.raw[:SIGNED_REGION_END]

    @property
    def signer(self) -> SignerInfo:
        return SignerInfo.from_int(self.signer_info)

    @property
    def debug(self) -> bool:
        """POLICY.DEBUG: the hypervisor may read and change this guest's memory."""
        return bool(self.policy & POLICY_DEBUG)

    @property
    def migration_allowed(self) -> bool:
        """POLICY.MIGRATE_MA: a migration agent may move the guest to another machine."""
        return bool(self.policy & POLICY_MIGRATE_MA)

    @property
    def chip_id_masked(self) -> bool:
        """MASK_CHIP_KEY set, or CHIP_ID all zero: the report names no chip."""
        return self.signer.mask_chip_key or not any(self.chip_id)

    @property
    def product(self) -> Product | None:
        """From the CPUID fields (VERSION >= 3); None for older reports (never Turin)."""
        if self.version < 3:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    def tcb(self, which: str = "reported_tcb", product: Product | None = None) -> TcbVersion:
        """A TCB_VERSION field decoded with the product's layout (the report's own by default)."""
        return TcbVersion.decode(getattr(self, which), product or self.product)

    def to_dict(self, product: Product | None = None) -> dict[str, Any]:
        """Every non-reserved field, JSON-ready (hex for bytes), with bit fields and TCBs decoded."""
        product = product or self.product
        d = fields_dict([f for f in REPORT_FIELDS if f.attr not in MBZ_FIELDS], self)
        for name in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
            d[name] = {"raw": f"{getattr(self, name):#018x}", **self.tcb(name, product).to_dict()}
        d["policy"] = {"raw": f"{self.policy:#x}", **decode_policy(self.policy)}
        d["platform_info"] = {"raw": f"{self.platform_info:#x}", **decode_platform_info(self.platform_info)}
        s = self.signer
        d["signer_info"] = {
            "raw": f"{self.signer_info:#x}",
            "author_key_en": s.author_key_en,
            "mask_chip_key": s.mask_chip_key,
            "signing_key": s.kind,
        }
        d["current_firmware"] = f"{self.current_major}.{self.current_minor}.{self.current_build}"
        d["committed_firmware"] = f"{self.committed_major}.{self.committed_minor}.{self.committed_build}"
        d["product"] = product
        return d


def _field_error(attr: str, message: str) -> SnpReportFormatError:
    f = _BY_ATTR[attr]
    return SnpReportFormatError(message, field=f.name, offset=f.offset)


def parse_report(report: bytes) -> SnpReport:
    """Parse exactly 1184 bytes; reject what no AMD firmware of report versions 2-5 produces."""
    if not isinstance(report, bytes | bytearray | memoryview):
        raise SnpReportFormatError(f"expected bytes, got {type(report).__name__}")
    report = bytes(report)
    if len(report) != REPORT_SIZE:
        raise SnpReportFormatError(
            f"the report is {len(report)} bytes; an ATTESTATION_REPORT is exactly {REPORT_SIZE} (0x4A0)",
            field="ATTESTATION_REPORT",
        )
    v = read_fields(REPORT_FIELDS, report)
    if not MIN_VERSION <= v["version"] <= MAX_VERSION:
        raise _field_error("version", f"VERSION is {v['version']}; versions {MIN_VERSION}-{MAX_VERSION} are understood")
    if v["signature_algo"] != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise _field_error(
            "signature_algo", f"SIGNATURE_ALGO is {v['signature_algo']:#x}; only 1 (ECDSA P-384 with SHA-384) is defined"
        )
    for attr in MBZ_FIELDS:
        if any(v[attr]):
            raise _field_error(attr, f"reserved bytes must be zero, found {v[attr].hex()}")
    if v["policy"] & POLICY_MBZ:
        raise _field_error("policy", f"POLICY {v['policy']:#x} sets reserved bits 26-63, which must be zero")
    if not v["policy"] & POLICY_RESERVED_MBO:
        raise _field_error("policy", f"POLICY {v['policy']:#x} clears bit 17, which must be one")
    if v["signer_info"] & SIGNER_INFO_MBZ:
        raise _field_error("signer_info", f"SIGNER_INFO {v['signer_info']:#x} sets reserved bits 5-31")
    key = SignerInfo.from_int(v["signer_info"]).signing_key
    if key == SIGNING_KEY_NONE:
        raise _field_error("signer_info", "SIGNING_KEY is 7: the firmware signed this report with no key, so it proves nothing")
    if key not in SIGNING_KEYS:
        raise _field_error("signer_info", f"SIGNING_KEY is {key}; only 0 (VCEK) and 1 (VLEK) are defined")
    return SnpReport(**v, raw=report)


def pack_report(values: Mapping[str, Any]) -> bytes:
    """Inverse of :func:`parse_report` (by attribute name; missing fields zero). No checks, so
    that tests can build malformed reports too; sign it with :mod:`duet.attestation.snp.simulated`."""
    return pack_fields(REPORT_FIELDS, dict(values))


# --------------------------------------------------------------------------------------------
# GHCB certificate table (GHCB 56421 "Certificate table"; configfs-tsm auxblob)
# --------------------------------------------------------------------------------------------

CERT_TABLE_ENTRY_FIELDS: tuple[Field, ...] = (
    Field(0, 16, "GUID", "guid"),
    Field(16, 4, "OFFSET", "offset", "u32"),
    Field(20, 4, "LENGTH", "length", "u32"),
)
CERT_TABLE_ENTRY_SIZE = 24
check_table(CERT_TABLE_ENTRY_FIELDS, CERT_TABLE_ENTRY_SIZE)

CERT_TABLE_GUIDS: dict[str, uuid.UUID] = {
    "vcek": uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"),
    "vlek": uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"),
    "ask": uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"),  # the ASK, or the ASVK in a VLEK table
    "ark": uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"),
    "crl": uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea"),
}
# Producers disagree on the GUID byte order (RFC 4122 vs. the mixed-endian EFI form), and the two
# forms of these GUIDs never collide, so both are recognised; packing writes RFC 4122 order.
_GUID_NAMES: dict[bytes, str] = {
    **{g.bytes: name for name, g in CERT_TABLE_GUIDS.items()},
    **{g.bytes_le: name for name, g in CERT_TABLE_GUIDS.items()},
}


@dataclass(frozen=True)
class CertTable:
    """The certificates the host handed the guest with its report, by name (``vcek``, ``vlek``,
    ``ask``, ``ark``, ``crl``; an unknown GUID by its string form)."""

    entries: Mapping[str, bytes]

    def get(self, name: str) -> bytes | None:
        return self.entries.get(name)


def parse_cert_table(data: bytes) -> CertTable:
    """Entries of (GUID, offset, length) up to an all-zero one; offsets count from the table start.
    An empty input is an empty table (the host supplied no certificates)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CertTableFormatError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    entries: dict[str, bytes] = {}
    if not any(data):
        return CertTable(entries)
    pos = 0
    while True:
        if pos + CERT_TABLE_ENTRY_SIZE > len(data):
            raise CertTableFormatError(f"the certificate table has no all-zero terminating entry (entry at offset {pos})")
        e = read_fields(CERT_TABLE_ENTRY_FIELDS, data, pos)
        if not any(data[pos : pos + CERT_TABLE_ENTRY_SIZE]):
            return CertTable(entries)
        name = _GUID_NAMES.get(e["guid"], str(uuid.UUID(bytes=e["guid"])))
        if e["offset"] + e["length"] > len(data) or e["length"] == 0:
            raise CertTableFormatError(
                f"certificate table entry {name} (at offset {pos}) points at bytes {e['offset']}..{e['offset'] + e['length']}"
                f", outside the {len(data)}-byte table"
            )
        if name in entries:
            raise CertTableFormatError(f"the certificate table names {name} twice")
        entries[name] = data[e["offset"] : e["offset"] + e["length"]]
        pos += CERT_TABLE_ENTRY_SIZE


def pack_cert_table(certs: Mapping[str, bytes]) -> bytes:
    """Inverse of :func:`parse_cert_table` (names as in :data:`CERT_TABLE_GUIDS`), for simulated guests."""
    unknown = set(certs) - set(CERT_TABLE_GUIDS)
    if unknown:
        raise ValueError(f"unknown certificate names {sorted(unknown)}")
    offset = CERT_TABLE_ENTRY_SIZE * (len(certs) + 1)
    header, body = b"", b""
    for name, blob in certs.items():
        header += pack_fields(
            CERT_TABLE_ENTRY_FIELDS, {"guid": CERT_TABLE_GUIDS[name].bytes, "offset": offset + len(body), "length": len(blob)}
        )
        body += blob
    return header + bytes(CERT_TABLE_ENTRY_SIZE) + body
