"""The TDX quote layout: tables against the spec, real quotes parsed, packing, and hostile input."""

from __future__ import annotations

import random
import struct
import time

import pytest
from tdx_helpers import AZURE, COS, COS_REPORT_DATA, REAL, REAL_V4, REPORT_DATA, SPR, V5, Offsets, flip, put, verify_real

from duet.attestation import sgx, tdx
from duet.attestation.tdx import abi
from duet.attestation.tdx.simulated import SimulatedTdxPlatform

# --- tables --------------------------------------------------------------------------------------

# Spec §3.2 (absolute offsets in a v4 quote), written out independently of the table.
SPEC_TD_REPORT = {
    "TEE_TCB_SVN": (48, 64),
    "MRSEAM": (64, 112),
    "MRSIGNERSEAM": (112, 160),
    "SEAMATTRIBUTES": (160, 168),
    "TDATTRIBUTES": (168, 176),
    "XFAM": (176, 184),
    "MRTD": (184, 232),
    "MRCONFIGID": (232, 280),
    "MROWNER": (280, 328),
    "MROWNERCONFIG": (328, 376),
    "RTMR0": (376, 424),
    "RTMR1": (424, 472),
    "RTMR2": (472, 520),
    "RTMR3": (520, 568),
    "REPORTDATA": (568, 632),
}


def test_td_report_table_matches_the_spec() -> None:
    rows = {f.name: (48 + f.offset, 48 + f.offset + f.size) for f in tdx.TD_REPORT10_FIELDS}
    assert rows == SPEC_TD_REPORT
    extra = {f.name: (f.offset, f.size) for f in tdx.TD_REPORT15_FIELDS[len(tdx.TD_REPORT10_FIELDS) :]}
    assert extra == {"TEE_TCB_SVN2": (584, 16), "MRSERVICETD": (600, 48)}
    assert abi.TD_REPORT10_SIZE == 584 and abi.TD_REPORT15_SIZE == 648


def test_td_attribute_bits() -> None:
    assert dict(tdx.TD_ATTRIBUTES_BITS) == {
        0: "DEBUG",
        28: "SEPT_VE_DISABLE",
        29: "MIGRATABLE",
        30: "PKS",
        31: "KL",
        63: "PERFMON",
    }
    assert tdx.td_attribute_names(1 | 1 << 29 | 1 << 40 | 1 << 63) == ("DEBUG", "MIGRATABLE", "bit40", "PERFMON")


# --- real quotes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "size", "trailing", "td_attributes", "names"),
    [
        (SPR, 4935, 39, "0000004000000000", ("PKS",)),
        (COS, 4935, 3065, "0000001000000000", ("SEPT_VE_DISABLE",)),
        (AZURE, 4936, 70, "0000000000000000", ()),
        (V5, 5006, 0, "0000001000000000", ("SEPT_VE_DISABLE",)),
    ],
    ids=lambda v: v.name if hasattr(v, "name") else None,
)
def test_real_quotes_parse_by_their_length_fields(path, size, trailing, td_attributes, names) -> None:
    raw = path.read_bytes()
    q = tdx.parse_tdx_quote(raw)
    assert (len(q.raw), q.trailing_bytes) == (size, trailing)
    assert q.header.tee_type == 0x81 and q.header.qe_vendor_id == sgx.INTEL_QE_VENDOR_ID
    assert q.td_report.raw[120:128].hex() == td_attributes and q.td_report.td_attribute_names == names
    assert not q.td_report.debug and not q.td_report.migratable
    sd = q.signature_data
    assert (sd.certification_data_type, sd.qe_report_certification_data.certification_data.type) == (6, 5)
    assert sd.certification_data_size == q.signature_data_len - 134
    qe = sd.qe_report_certification_data.qe_report
    assert qe.mr_signer == tdx.INTEL_TD_QE_IDENTITY.mr_signer and qe.isv_prod_id == 2
    chain = sd.qe_report_certification_data.certification_data.certificates()
    assert [sgx.common_name(c.subject) for c in chain] == [
        "Intel SGX PCK Certificate",
        "Intel SGX PCK Platform CA",
        "Intel SGX Root CA",
    ]
    body = q.td_report.raw
    for f in tdx.TD_REPORT10_FIELDS:  # every field read where the spec says (v5: 6 bytes later)
        start, end = SPEC_TD_REPORT[f.name]
        shift = q.body_offset - 48
        assert body[start - 48 : end - 48] == raw[start + shift : end + shift]
    assert q.to_dict()["td_report"]["mr_td"] == q.td_report.mr_td.hex()


def test_the_v5_sample_is_a_td_report_15() -> None:
    q = tdx.parse_tdx_quote(V5.read_bytes())
    assert q.version == 5 and q.td_report.body_type == tdx.BODY_TYPE_TD_REPORT15
    assert q.td_report.tee_tcb_svn2 is not None and q.td_report.mr_service_td is not None
    assert len(q.signed_region) == 48 + 6 + 648
    assert q.to_dict()["body"] == {"body_type": 3, "body_size": 648}


def test_the_cos_quote_reports_its_nonce() -> None:
    assert tdx.parse_tdx_quote(COS.read_bytes()).td_report.report_data == COS_REPORT_DATA.read_bytes()


# --- packing: the same tables lay out simulated quotes -------------------------------------------


@pytest.mark.parametrize(("version", "body_type"), [(4, 2), (5, 2), (5, 3)])
def test_simulated_quotes_round_trip(sim: SimulatedTdxPlatform, version: int, body_type: int) -> None:
    quote = sim.quote(REPORT_DATA, version=version, body_type=body_type, td_report={"mr_owner": b"owner"})
    q = tdx.parse_tdx_quote(quote)
    assert (q.version, q.td_report.body_type, q.trailing_bytes) == (version, body_type, 0)
    assert q.td_report.report_data == REPORT_DATA and q.td_report.mr_owner == b"owner".ljust(48, b"\0")
    assert tdx.pack_signed_region(q.raw[:48], q.td_report.raw) == q.signed_region
    assert q.signature_data.qe_report_certification_data.certification_data.data.endswith(b"\0")


def test_packing_refuses_what_cannot_be_laid_out() -> None:
    with pytest.raises(ValueError):
        tdx.pack_signed_region(tdx.pack_header(), bytes(100))
    with pytest.raises(ValueError):  # a v4 quote has no body descriptor, hence no TD report 1.5
        tdx.pack_signed_region(tdx.pack_header(), bytes(648))
    with pytest.raises(ValueError):
        tdx.pack_td_report({"mr_td": bytes(49)})


# --- hostile input: a format error naming the field, never another exception --------------------


def _format_error(quote: bytes) -> tdx.TdxQuoteFormatError:
    with pytest.raises(tdx.TdxQuoteFormatError) as err:
        tdx.parse_tdx_quote(quote)
    verdict = verify_real(quote)
    assert verdict.failure is not None and verdict.failure.step == "parse"
    assert verdict.failure.message == err.value.message and verdict.claims is None
    return err.value


def _named(error: tdx.TdxQuoteFormatError, field: str, offset: int) -> None:
    assert (error.field, error.offset, error.code) == (field, offset, "bad_quote"), error.message
    assert f"(field {field} at offset {offset})" in error.message
    assert error.message.startswith("malformed Intel TDX quote: ")


@pytest.mark.parametrize(
    ("cut", "field", "offset"),
    [
        (0, "header", 0),
        (47, "header", 0),
        (48, "TD report body", 48),
        (631, "TD report body", 48),
        (632, "signature_data_len", 632),
    ],
)
def test_truncated_quotes(cut: int, field: str, offset: int) -> None:
    _named(_format_error(SPR.read_bytes()[:cut]), field, offset)


@pytest.mark.parametrize("cut", [636, 700, 770, 1500, 4934])
def test_truncated_signature_data(cut: int) -> None:
    _named(_format_error(SPR.read_bytes()[:cut]), "signature_data_len", 632)


def test_truncated_v5_quotes() -> None:
    raw = V5.read_bytes()
    _named(_format_error(raw[:50]), "body type", 48)
    _named(_format_error(raw[:600]), "TD report body", 54)
    _named(_format_error(raw[:703]), "signature_data_len", 702)


def test_garbage_and_ten_megabytes() -> None:
    noise = random.Random(7).randbytes(10_000_000)
    assert noise[:2] not in (b"\x04\x00", b"\x05\x00")
    _named(_format_error(noise), "version", 0)
    _named(_format_error(b"\x04\x00\x02\x00" + noise[:5000]), "tee_type", 4)
    quote = SPR.read_bytes()[:4935]
    ten_mb = put(quote, 632, "<I", 10_000_000) + bytes(10_000_000)
    _named(_format_error(ten_mb), "signature_data_len", 632)  # the certification data says 4165 bytes
    started = time.monotonic()
    padded = tdx.parse_tdx_quote(quote + bytes(10_000_000))  # padding is allowed, and not scanned
    assert padded.trailing_bytes == 10_000_000 and time.monotonic() - started < 1


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "field"),
    [
        (0, "<H", 3, "version"),
        (0, "<H", 6, "version"),
        (2, "<H", 3, "att_key_type"),
        (4, "<I", 0, "tee_type"),
        (12, "<I", 0, "qe_vendor_id"),
    ],
)
def test_header_values(offset: int, fmt: str, value: int, field: str) -> None:
    error = _format_error(put(SPR.read_bytes(), offset, fmt, value))
    _named(error, field, offset)
    if value == 3 and field == "version":
        assert "an SGX DCAP quote" in error.message


# Every length field, one byte too long and one too short, its maximum and zero: the error names that field.
LENGTH_CASES = [
    ("signature_data_len", "<I"),
    ("certification_data_size", "<I"),
    ("qe_auth_data_size", "<H"),
    ("inner_size", "<I"),
]
FIELD_NAMES = {
    "signature_data_len": "signature_data_len",
    "certification_data_size": "certification data size",
    "qe_auth_data_size": "QE auth data size",
    "inner_size": "QE certification data size",
}


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
@pytest.mark.parametrize(("attr", "fmt"), LENGTH_CASES, ids=[c[0] for c in LENGTH_CASES])
def test_wrong_length_fields_are_named(path, attr: str, fmt: str) -> None:
    raw = path.read_bytes()
    at = getattr(Offsets(raw), attr)
    (current,) = struct.unpack_from(fmt, raw, at)
    for value in (current + 1, current - 1, 2 ** (8 * struct.calcsize(fmt)) - 1, 0):
        _named(_format_error(put(raw, at, fmt, value)), FIELD_NAMES[attr], at)


def test_qe_auth_data_size_zero_is_named() -> None:
    raw = SPR.read_bytes()
    at = Offsets(raw).qe_auth_data_size
    error = _format_error(put(raw, at, "<H", 0))
    _named(error, "QE auth data size", at)
    assert "with 32 the QE certification data that follows would be well formed" in error.message


@pytest.mark.parametrize(
    ("value", "field", "offset"), [(583, "body size", 50), (649, "body size", 50), (1, "body type", 48), (4, "body type", 48)]
)
def test_v5_body_descriptor(value: int, field: str, offset: int) -> None:
    raw = V5.read_bytes()
    mutated = put(raw, offset, "<I" if field == "body size" else "<H", value)
    error = _format_error(mutated)
    _named(error, field, offset)
    if value == 1:
        assert "an SGX enclave report" in error.message


def test_a_v4_quote_relabelled_v5_is_refused_by_its_body_descriptor() -> None:
    _named(_format_error(put(SPR.read_bytes(), 0, "<H", 5)), "body size", 50)


@pytest.mark.parametrize("path", REAL_V4[:1] + (V5,), ids=lambda p: p.name)
@pytest.mark.parametrize("value", [5, 1, 0, 7])
def test_outer_certification_data_other_than_type_6(path, value: int) -> None:
    raw = path.read_bytes()
    at = Offsets(raw).certification_data_type
    error = _format_error(put(raw, at, "<H", value))
    assert (error.field, error.offset, error.code) == ("certification data type", at, "unsupported_certification_data")
    assert "type 6" in error.message


def test_inner_certification_data_type_out_of_range_is_named() -> None:
    raw = SPR.read_bytes()
    at = Offsets(raw).inner_type
    _named(_format_error(put(raw, at, "<H", 9)), "QE certification data type", at)


def test_a_pck_chain_that_does_not_parse_is_named() -> None:
    raw = SPR.read_bytes()
    at = Offsets(raw).pck_chain
    damaged = raw[: at + 100] + b"!" + raw[at + 101 :]  # a non-base64 character inside the leaf's PEM
    error = _format_error(damaged)
    assert (error.field, error.offset) == ("QE certification data", at)
    assert "PCK certificate chain does not parse" in error.message


def test_a_format_error_is_an_sgx_quote_format_error_too() -> None:
    """Code that handles malformed DCAP quotes (the CLI, the evidence pipeline) handles TDX ones."""
    error = _format_error(b"")
    assert isinstance(error, sgx.QuoteFormatError)


def test_flipping_any_single_bit_of_the_length_fields_never_escapes(sim: SimulatedTdxPlatform) -> None:
    quote = sim.quote(REPORT_DATA, version=5, body_type=3)
    o = Offsets(quote)
    fields = [(50, 4), (o.signature_data_len, 4), (o.certification_data_size, 4), (o.qe_auth_data_size, 2), (o.inner_size, 4)]
    for start, size in fields:
        for bit in range(size * 8):
            mutated = flip(quote, start + bit // 8, 1 << bit % 8)
            try:
                tdx.parse_tdx_quote(mutated)
            except tdx.TdxQuoteFormatError as exc:
                assert exc.field is not None and exc.offset is not None
