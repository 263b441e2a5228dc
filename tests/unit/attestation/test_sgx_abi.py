"""Parsing SGX DCAP v3 quotes: every field, real quotes, padding, and typed format errors."""

from __future__ import annotations

import base64
import hashlib
import json
import struct

import pytest
from sgx_helpers import ASSETS, DEBUG, OCCLUM, REAL_QUOTES, RELEASE, REPORT_DATA

from duet.attestation.sgx import abi
from duet.tee.simulated import SimulatedSgxTee, raw_public_key, simulated_mrenclave


def test_every_report_body_field_round_trips(sim_tee: SimulatedSgxTee) -> None:
    fields = dict(
        cpu_svn=bytes(range(1, 17)),
        misc_select=0x11223344,
        cet_attributes=b"\x05",
        isv_ext_prod_id=b"E" * 16,
        flags=0x0405,
        xfrm=0xE7,
        mr_enclave=b"\xaa" * 32,
        mr_signer=b"\xbb" * 32,
        config_id=bytes(range(64)),
        isv_prod_id=0x1234,
        isv_svn=0x0506,
        config_svn=0x0708,
        isv_family_id=b"F" * 16,
    )
    q = abi.parse_quote(sim_tee.quote_bytes(REPORT_DATA, **fields))
    assert q.report_body.report_data == REPORT_DATA
    for name, value in fields.items():
        assert getattr(q.report_body, name) == value, name
    assert q.report_body.reserved1 == bytes(11) and q.report_body.reserved4 == bytes(42)
    assert q.report_body.attributes == struct.pack("<QQ", 0x0405, 0xE7)
    assert not q.report_body.debug


def test_simulated_quote_header_and_signature_data(sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    q = abi.parse_quote(sim_quote)
    p = sim_tee.platform
    assert (q.header.version, q.header.att_key_type, q.header.tee_type) == (3, 2, 0)
    assert (q.header.qe_svn, q.header.pce_svn) == (1, 1)
    assert q.header.qe_vendor_id == abi.INTEL_QE_VENDOR_ID
    assert q.report_body.mr_enclave == simulated_mrenclave() == sim_tee.mr_enclave
    assert q.report_body.mr_signer == p.mr_signer
    assert q.report_body.report_data == REPORT_DATA
    sd = q.signature_data
    assert sd.attestation_key == raw_public_key(p.keys["attestation"])
    assert sd.qe_report.raw == p.qe_report and sd.qe_report_signature == p.qe_report_signature
    assert sd.qe_auth_data_size == 32 and sd.qe_auth_data == p.qe_auth_data
    cd = sd.certification_data
    assert cd.type == 5 and len(cd.pck_chain_pem) == 3
    assert [c.subject for c in cd.certificates()] == [p.certs[n].subject for n in ("pck", "intermediate", "root")]
    assert q.signature_data_len == len(sim_quote) - 436 and q.trailing_bytes == 0 and sd.unparsed_tail == 0
    assert q.signed_region == sim_quote[:432]
    d = q.to_dict()
    assert d["report_body"]["mr_enclave"] == simulated_mrenclave().hex()
    assert d["signature_data"]["certification_data"]["pck_chain"][2]["subject"].endswith("Root CA — not Intel")
    json.dumps(d)  # display form is plain JSON


@pytest.mark.parametrize("path", REAL_QUOTES, ids=lambda p: p.name)
def test_real_quotes_parse_at_the_spec_offsets(path) -> None:
    raw = path.read_bytes()
    q = abi.parse_quote(raw)
    # Anchor the tables to the absolute offsets Gramine's own script uses (spec §1.1).
    assert q.report_body.flags == struct.unpack("<Q", raw[96:104])[0]
    assert q.report_body.mr_enclave == raw[112:144]
    assert q.report_body.mr_signer == raw[176:208]
    assert (q.report_body.isv_prod_id, q.report_body.isv_svn) == struct.unpack("<HH", raw[304:308])
    assert q.report_body.report_data == raw[368:432]
    assert q.report_body.debug == bool(raw[96] & 2)
    assert q.signature_data.qe_auth_data_size == 32
    assert q.signature_data.certification_data.type == 5
    cns = [c.subject.rfc4514_string() for c in q.signature_data.certification_data.certificates()]
    assert "CN=Intel SGX PCK Certificate" in cns[0] and "CN=Intel SGX Root CA" in cns[2]


@pytest.mark.parametrize("kind", ["release", "debug"])
def test_azure_sample_fields_match_their_json(kind: str) -> None:
    info = json.loads((ASSETS / f"azure-samples_intelsdk_enclave.info.{kind}.json").read_text())
    q = abi.parse_quote(bytes.fromhex(info["QuoteHex"]))
    assert q.raw == (RELEASE if kind == "release" else DEBUG).read_bytes()
    assert q.report_body.mr_enclave.hex().upper() == info["MrEnclaveHex"]
    assert q.report_body.mr_signer.hex().upper() == info["MrSignerHex"]
    assert q.report_body.isv_svn == info["SecurityVersion"]
    assert q.report_body.isv_prod_id == int.from_bytes(bytes.fromhex(info["ProductIdHex"]), "little")
    assert q.report_body.report_data == hashlib.sha256(bytes.fromhex(info["EnclaveHeldDataHex"])).digest() + bytes(32)
    assert q.report_body.debug is (kind == "debug")


def test_padded_quote_parses_by_its_length_fields() -> None:
    raw = OCCLUM.read_bytes()
    q = abi.parse_quote(raw + bytes(39))
    assert q.trailing_bytes == 39 and q.raw == raw


def test_decode_quote_text_accepts_base64_hex_and_json(sim_quote: bytes) -> None:
    assert abi.decode_quote_text(sim_quote) == sim_quote
    assert abi.decode_quote_text(base64.b64encode(sim_quote) + b"\n") == sim_quote
    assert abi.decode_quote_text(sim_quote.hex().encode()) == sim_quote
    assert (
        abi.decode_quote_text(json.dumps({"type": "simulated-sgx", "quote": base64.b64encode(sim_quote).decode()}).encode())
        == sim_quote
    )
    assert (
        abi.decode_quote_text((ASSETS / "azure-samples_intelsdk_enclave.info.release.json").read_bytes()) == RELEASE.read_bytes()
    )


def _set(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda q: q[:400], "signature_data_len", "only 400 bytes"),
        (lambda q: _set(q, 0, "<H", 4), "version", "version is 4"),
        (lambda q: _set(q, 2, "<H", 3), "att_key_type", "only 2 (ECDSA P-256)"),
        (lambda q: _set(q, 4, "<I", 0x81), "tee_type", "expected 0 (SGX)"),
        (lambda q: q[:12] + bytes(16) + q[28:], "qe_vendor_id", "not Intel's quoting enclave"),
        (lambda q: _set(q, 432, "<I", len(q)), "signature_data_len", "runs past the end"),
        (lambda q: _set(q, 432, "<I", 100), "signature_data_len", "below the minimum"),
        (lambda q: _set(q, 436 + 576, "<H", 0xFFFF), "QE auth data size", "no room"),
        (lambda q: _set(q, 436 + 578 + 32 + 2, "<I", 0xFFFFFF), "certification data size", "runs past"),
    ],
    ids=["truncated", "version", "att_key_type", "tee_type", "vendor", "siglen_long", "siglen_short", "auth_size", "cert_size"],
)
def test_format_errors_are_typed_and_name_the_field(sim_quote: bytes, mutate, field: str, words: str) -> None:
    with pytest.raises(abi.QuoteFormatError) as err:
        abi.parse_quote(mutate(sim_quote))
    assert err.value.code == "bad_quote"
    assert err.value.field == field
    assert words in err.value.message and f"field {field}" in err.value.message


def test_unparseable_certificate_chain_is_a_format_error(sim_quote: bytes) -> None:
    i = sim_quote.index(b"-----BEGIN CERTIFICATE-----\n") + 40
    broken = sim_quote[:i] + b"!" + sim_quote[i + 1 :]
    with pytest.raises(abi.QuoteFormatError) as err:
        abi.parse_quote(broken)
    assert err.value.field == "certification data" and "does not parse" in err.value.message


def test_layout_tables_tile_their_structures() -> None:
    assert sum(f.size for f in abi.HEADER_FIELDS) == 48
    assert sum(f.size for f in abi.REPORT_BODY_FIELDS) == 384
    assert {f.name for f in abi.REPORT_BODY_FIELDS} >= {"MRENCLAVE", "MRSIGNER", "ISVPRODID", "ISVSVN", "REPORTDATA"}
