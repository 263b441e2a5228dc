"""Parsing SEV-SNP reports: the layout table, real reports, the bit fields, and typed format errors."""

from __future__ import annotations

import struct
import uuid

import pytest
from snp_helpers import CHIP_ID, MILAN_MEASUREMENT, MILAN_REPORT, VLEK_REPORT, flip

from duet.attestation import snp
from duet.attestation.snp import abi
from duet.errors import VerificationError

OFFSETS = {f.attr: f.offset for f in abi.REPORT_FIELDS}


def test_the_table_has_the_spec_offsets() -> None:
    # Rows a reader checks first against ABI 56860; check_table already proved the tiling.
    expected = {
        "VERSION": 0x000,
        "POLICY": 0x008,
        "VMPL": 0x030,
        "SIGNATURE_ALGO": 0x034,
        "CURRENT_TCB": 0x038,
        "REPORT_DATA": 0x050,
        "MEASUREMENT": 0x090,
        "HOST_DATA": 0x0C0,
        "REPORT_ID": 0x140,
        "REPORTED_TCB": 0x180,
        "CPUID_FAM_ID": 0x188,
        "CHIP_ID": 0x1A0,
        "COMMITTED_TCB": 0x1E0,
        "LAUNCH_TCB": 0x1F0,
        "LAUNCH_MIT_VECTOR": 0x1F8,
        "SIGNATURE.R": 0x2A0,
        "SIGNATURE.S": 0x2E8,
    }
    by_name = {f.name: f.offset for f in abi.REPORT_FIELDS}
    assert {name: by_name[name] for name in expected} == expected
    assert abi.REPORT_SIZE == 1184 and abi.SIGNED_REGION_END == 0x2A0


def test_real_milan_v2_report() -> None:
    r = snp.parse_report(MILAN_REPORT)
    assert (r.version, r.guest_svn, r.policy, r.vmpl, r.signature_algo) == (2, 0, 0xB0000, 0, 1)
    assert r.measurement.hex() == MILAN_MEASUREMENT
    assert r.report_data == bytes([1, 2, 3, 4, 5]) + bytes(59)
    assert r.debug and not r.migration_allowed
    assert r.signer == snp.SignerInfo(author_key_en=False, mask_chip_key=False, signing_key=0)
    assert r.signer.kind == "VCEK" and not r.chip_id_masked
    assert r.product is None  # VERSION 2 has no CPUID fields
    assert r.tcb() == snp.TcbVersion(bl_spl=2, tee_spl=0, snp_spl=5, ucode_spl=68)
    assert r.reported_tcb == r.current_tcb == r.committed_tcb == r.launch_tcb == 0x4405000000000002
    assert (r.current_major, r.current_minor, r.current_build) == (1, 49, 3)
    assert r.signed_region == MILAN_REPORT[:0x2A0]
    assert r.signature_r[48:] == bytes(24) and r.signature_s[48:] == bytes(24)  # P-384 uses 48 of 72 bytes
    d = r.to_dict()
    assert d["policy"]["debug"] is True and d["policy"]["smt_allowed"] is True and d["policy"]["raw"] == "0xb0000"
    assert d["reported_tcb"] == {"raw": "0x4405000000000002", "bl_spl": 2, "tee_spl": 0, "snp_spl": 5, "ucode_spl": 68}
    assert d["signer_info"]["signing_key"] == "VCEK" and d["current_firmware"] == "1.49.3"
    assert d["platform_info"]["smt_en"] is True and d["product"] is None
    assert not set(d) & set(abi.MBZ_FIELDS)


def test_real_milan_v3_vlek_report() -> None:
    r = snp.parse_report(VLEK_REPORT)
    assert (r.version, r.vmpl, r.policy) == (3, 1, 0x30000)
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (0x19, 0x01, 0x01)
    assert r.product == "Milan"
    assert r.signer.kind == "VLEK" and r.chip_id == bytes(64) and r.chip_id_masked
    assert not r.debug
    assert r.tcb().to_dict() == {"bl_spl": 4, "tee_spl": 0, "snp_spl": 24, "ucode_spl": 217}
    assert r.to_dict()["platform_info"] == {
        "raw": "0x27",
        "smt_en": True,
        "tsme_en": True,
        "ecc_en": True,
        "rapl_dis": False,
        "ciphertext_hiding_dram_en": False,
        "alias_check_complete": True,
        "tio_en": False,
    }


def test_pack_is_the_inverse_of_parse() -> None:
    r = snp.parse_report(MILAN_REPORT)
    values = {f.attr: getattr(r, f.attr) for f in abi.REPORT_FIELDS}
    assert snp.pack_report(values) == MILAN_REPORT
    with pytest.raises(ValueError, match="unknown fields"):
        snp.pack_report({"no_such_field": 1})


def test_policy_bits() -> None:
    p = snp.decode_policy(0x0003_1F07 | 1 << 19 | 1 << 25)
    assert (p["abi_major"], p["abi_minor"]) == (0x1F, 0x07)
    assert p["smt_allowed"] and p["reserved_mbo"] and p["debug"] and p["page_swap_disable"]
    assert not p["migrate_ma"] and not p["single_socket"]
    assert [bit for bit, _, _ in snp.POLICY_BITS] == list(range(16, 26))


@pytest.mark.parametrize(
    ("product", "raw", "expected"),
    [
        ("Milan", 0x4405000000000002, snp.TcbVersion(2, 0, 5, 0x44)),
        ("Genoa", 0x1716000000000309, snp.TcbVersion(9, 3, 0x16, 0x17)),
        ("Turin", 0x4800000003050201, snp.TcbVersion(bl_spl=2, tee_spl=5, snp_spl=3, ucode_spl=0x48, fmc_spl=1)),
    ],
)
def test_tcb_version_layouts(product: snp.Product, raw: int, expected: snp.TcbVersion) -> None:
    assert snp.TcbVersion.decode(raw, product) == expected
    assert expected.encode(product) == raw


def test_fmc_spl_exists_only_on_turin() -> None:
    with pytest.raises(ValueError, match="Turin"):
        snp.TcbVersion(1, 2, 3, 4, fmc_spl=5).encode("Milan")
    assert snp.TcbVersion(1, 2, 3, 4).encode("Turin") == snp.TcbVersion(1, 2, 3, 4, fmc_spl=0).encode("Turin")


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x01, "Milan"),
        (0x19, 0x11, "Genoa"),
        (0x19, 0xA0, "Genoa"),
        (0x1A, 0x02, "Turin"),
        (0x19, 0x21, None),
        (0x17, 0x31, None),
    ],
)
def test_product_from_cpuid(family: int, model: int, product: str | None) -> None:
    assert snp.product_from_cpuid(family, model) == product


def test_signer_info_round_trips() -> None:
    for value in (0, 1, 2, 3, 4, 5, 6, 7, 0x1C, 0x1F):
        assert snp.SignerInfo.from_int(value).to_int() == value


# --- hostile input: a typed format error naming the field, never another exception ----------------


def _format_error(data: object) -> snp.SnpReportFormatError:
    with pytest.raises(snp.SnpReportFormatError) as info:
        snp.parse_report(data)  # type: ignore[arg-type]
    assert info.value.code == "bad_snp_report" and isinstance(info.value, VerificationError)
    return info.value


@pytest.mark.parametrize("size", [0, 1, 0x2A0, 1183, 1185, 4000, 10 * 1024 * 1024])
def test_wrong_length(size: int) -> None:
    data = (MILAN_REPORT * (size // 1184 + 1))[:size]
    e = _format_error(data)
    assert e.field == "ATTESTATION_REPORT" and f"{size} bytes" in e.message and "1184" in e.message


def test_not_bytes() -> None:
    assert "expected bytes" in _format_error(12345).message


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_version_out_of_range(version: int) -> None:
    e = _format_error(struct.pack("<I", version) + MILAN_REPORT[4:])
    assert (e.field, e.offset) == ("VERSION", 0) and "2-5" in e.message


@pytest.mark.parametrize("algo", [0, 2, 0x102])  # 0x102 is the wrong value one Azure header defines
def test_signature_algo_other_than_one(algo: int) -> None:
    data = MILAN_REPORT[:0x34] + struct.pack("<I", algo) + MILAN_REPORT[0x38:]
    e = _format_error(data)
    assert (e.field, e.offset) == ("SIGNATURE_ALGO", 0x34) and "offset 0x034" in e.message


@pytest.mark.parametrize("attr", abi.MBZ_FIELDS)
@pytest.mark.parametrize("where", ["first", "last"])
def test_every_reserved_area_must_be_zero(attr: str, where: str) -> None:
    f = next(f for f in abi.REPORT_FIELDS if f.attr == attr)
    e = _format_error(flip(MILAN_REPORT, f.offset if where == "first" else f.offset + f.size - 1, 0x80))
    assert (e.field, e.offset) == (f.name, f.offset) and "must be zero" in e.message
    assert f"{f.offset:#05x}" in e.message


@pytest.mark.parametrize("bit", [26, 40, 63])
def test_reserved_policy_bits(bit: int) -> None:
    (policy,) = struct.unpack_from("<Q", MILAN_REPORT, 8)
    e = _format_error(MILAN_REPORT[:8] + struct.pack("<Q", policy | 1 << bit) + MILAN_REPORT[16:])
    assert e.field == "POLICY" and "26-63" in e.message


def test_policy_bit_17_must_be_one() -> None:
    e = _format_error(flip(MILAN_REPORT, 8 + 2, 0x02))
    assert e.field == "POLICY" and "bit 17" in e.message


@pytest.mark.parametrize("bit", [5, 17, 31])
def test_reserved_signer_info_bits(bit: int) -> None:
    e = _format_error(flip(MILAN_REPORT, 0x48 + bit // 8, 1 << bit % 8))
    assert e.field.startswith("SIGNER_INFO") and e.offset == 0x48


def test_signing_key_seven_is_refused() -> None:
    e = _format_error(MILAN_REPORT[:0x48] + struct.pack("<I", 7 << 2) + MILAN_REPORT[0x4C:])
    assert "SIGNING_KEY is 7" in e.message and "proves nothing" in e.message


@pytest.mark.parametrize("key", [2, 3, 6])
def test_undefined_signing_keys_are_refused(key: int) -> None:
    e = _format_error(MILAN_REPORT[:0x48] + struct.pack("<I", key << 2) + MILAN_REPORT[0x4C:])
    assert f"SIGNING_KEY is {key}" in e.message


def test_garbage() -> None:
    assert _format_error(bytes([0xA5]) * 1184).field == "VERSION"


# --- the GHCB certificate table -------------------------------------------------------------


def test_cert_table_round_trips() -> None:
    certs = {"vcek": b"V" * 100, "ask": b"A" * 7, "ark": b"R" * 3}
    table = snp.pack_cert_table(certs)
    assert len(table) == 24 * 4 + 110
    parsed = snp.parse_cert_table(table)
    assert dict(parsed.entries) == certs and parsed.get("vlek") is None
    assert table[:16] == uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes
    assert table[72:96] == bytes(24)  # the terminating entry


def test_cert_table_accepts_mixed_endian_guids_and_keeps_unknown_ones() -> None:
    other = uuid.UUID("12345678-1234-5678-1234-567812345678")
    body = b"certificate"
    entries = [(snp.CERT_TABLE_GUIDS["vlek"].bytes_le, 72), (other.bytes, 72)]
    table = b"".join(g + struct.pack("<II", off, len(body)) for g, off in entries) + bytes(24) + body
    assert dict(snp.parse_cert_table(table).entries) == {"vlek": body, str(other): body}


def test_empty_cert_tables() -> None:
    assert dict(snp.parse_cert_table(b"").entries) == {}
    assert dict(snp.parse_cert_table(bytes(4096)).entries) == {}


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (snp.CERT_TABLE_GUIDS["vcek"].bytes + struct.pack("<II", 0, 10), "terminating"),
        (snp.CERT_TABLE_GUIDS["vcek"].bytes + struct.pack("<II", 48, 1000) + bytes(24), "outside"),
        (snp.CERT_TABLE_GUIDS["vcek"].bytes + struct.pack("<II", 0xFFFFFFFF, 0xFFFFFFFF) + bytes(24), "outside"),
        (snp.CERT_TABLE_GUIDS["vcek"].bytes + struct.pack("<II", 48, 0) + bytes(24), "outside"),
        ((snp.CERT_TABLE_GUIDS["ark"].bytes + struct.pack("<II", 72, 1)) * 2 + bytes(25), "twice"),
        (b"\x01" * 23, "terminating"),
    ],
)
def test_malformed_cert_tables(table: bytes, match: str) -> None:
    with pytest.raises(snp.CertTableFormatError, match=match) as info:
        snp.parse_cert_table(table)
    assert info.value.code == "bad_snp_cert_table"


def test_pack_cert_table_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown certificate names"):
        snp.pack_cert_table({"pck": b"x"})


def test_chip_id_constant_is_sixty_four_bytes() -> None:
    assert len(CHIP_ID) == 64
