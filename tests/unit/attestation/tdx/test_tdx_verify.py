"""Verifying TDX quotes: real Intel chains, simulated ones, and one tampered input per step."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from sgx_helpers import tamper_leaf_certificate_signature
from tdx_helpers import (
    AZURE,
    COS,
    COS_REPORT_DATA,
    REAL,
    REAL_NOW,
    REPORT_DATA,
    SPR,
    V5,
    Offsets,
    failure,
    flip,
    put,
    steps,
    verify_real,
    verify_sim,
)

from duet.attestation import sgx, tdx
from duet.attestation.cvm import CvmVerdict
from duet.attestation.tdx import simulated
from duet.attestation.tdx.simulated import SimulatedTdxPlatform

MRTD = {
    SPR: "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb",
    COS: "dae67181d3d65e073ad8f95b7907d5e927bfe9761c9ff3e9b89734a45d8954dba41394c7717cb2735396c1d04231f94a",
    AZURE: "024a32b070383331181619fa387cb4d55d1e38879f989933055ccad5bc2db795d1737b66205949d15469dc8c1ba7ab7b",
    V5: "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876",
}
REPORTDATA = {
    SPR: "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545"
    "eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113",
    COS: COS_REPORT_DATA.read_bytes().hex(),
    # SHA-256 of the variable data of trustee's az-tdx-vtpm HCL report, then zeros (tests/assets/tdx/SOURCES.md)
    AZURE: "9734504f161d104c74e3165c15f779b06a9bb40dfa71937817d7eee68e593839" + "00" * 32,
    V5: "945eaacf5abc1f719d8666a942fda03d1edcb4490277396093dc5a5289ab9f1e"
    "094aed63060cd4a4933a4dd537ed1255c9c79ecb3ed82cd1b486233e31c25c3a",
}


# --- real quotes --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_quotes_verify_to_the_pinned_intel_root(path) -> None:
    raw = path.read_bytes()
    v = verify_real(raw)
    assert isinstance(v, CvmVerdict) and v.kind == "tdx"
    assert v.ok, v.failure
    assert [s.step for s in v.steps] == list(tdx.TDX_STEPS)
    s = steps(v)
    assert all(s[n].ok is True for n in ("parse", "pck_chain", "qe_report_signature", "attestation_key_binding"))
    assert all(s[n].ok is True for n in ("qe_identity", "quote_signature"))
    assert "Intel's pinned root key" in s["pck_chain"].message
    assert "built-in Intel TD QE identity" in s["qe_identity"].message
    assert s["pck_revocation"].ok is None and "not evaluated (no PCK CRL given)" in s["pck_revocation"].message
    assert s["tcb_level"].ok is None and "not evaluated (no TCB info given)" in s["tcb_level"].message

    c = v.claims
    assert c is not None
    assert (c.kind, c.platform, c.signer, c.simulated, c.debug, c.migration_allowed) == ("tdx", "tdx", "PCK", False, False, False)
    assert c.measurements["mrtd"] == MRTD[path]
    assert c.report_data.hex() == REPORTDATA[path] and len(c.report_data) == 64
    q = tdx.parse_tdx_quote(raw)
    shift = q.body_offset
    for i in range(4):  # spec §3.2: RTMRn at 328 + 48 n in the TD report
        assert c.measurements[f"rtmr{i}"] == raw[shift + 328 + 48 * i : shift + 376 + 48 * i].hex()
    assert set(c.measurements) == {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"}
    assert all(m == m.lower() for m in c.measurements.values())
    assert list(c.tcb) == list(tdx.TCB_COMPONENT_NAMES) and bytes(c.tcb.values()) == q.td_report.tee_tcb_svn
    assert c.fields["mrseam"] == q.td_report.mr_seam.hex() and c.fields["qe"]["isvprodid"] == 2
    assert c.summary()["report_data"] == REPORTDATA[path]


def test_the_v5_claims_carry_the_td_report_15_fields() -> None:
    v = verify_real(V5.read_bytes())
    assert v.claims is not None
    assert (v.claims.fields["quote_version"], v.claims.fields["body_type"]) == (5, 3)
    assert v.claims.fields["tee_tcb_svn2"] == "0d010400000000000000000000000000"
    assert "tee_tcb_svn2" not in verify_real(SPR.read_bytes()).claims.fields  # type: ignore[union-attr]


def test_claims_name_the_td_attributes() -> None:
    fields = {p: verify_real(p.read_bytes()).claims.fields for p in (SPR, COS, AZURE)}  # type: ignore[union-attr]
    assert fields[SPR]["tdattributes"] == "0000004000000000" and fields[SPR]["td_attributes"] == ["PKS"]
    assert fields[COS]["td_attributes"] == ["SEPT_VE_DISABLE"]
    assert fields[AZURE]["td_attributes"] == []


# --- v5 and simulated quotes ----------------------------------------------------------------------


@pytest.mark.parametrize(("version", "body_type"), [(4, 2), (5, 2), (5, 3)])
def test_simulated_quotes_verify_only_with_the_simulated_root(sim: SimulatedTdxPlatform, version: int, body_type: int) -> None:
    quote = sim.quote(REPORT_DATA, version=version, body_type=body_type)
    v = verify_sim(quote, sim)
    assert v.ok, v.failure
    assert v.claims is not None and v.claims.simulated and v.claims.report_data == REPORT_DATA
    assert v.claims.measurements["mrtd"] == simulated.SIM_MRTD.hex()
    assert "(not Intel's)" in steps(v)["pck_chain"].message
    assert "simulated TD QE identity" in steps(v)["qe_identity"].message

    intel_only = tdx.verify_tdx_quote(quote, now=datetime.now(UTC))
    assert failure(intel_only) == ("pck_chain", "untrusted_root")
    assert intel_only.claims is not None and intel_only.claims.simulated  # shown, though not verified
    both = [sgx.intel_sgx_root_key(), sim.root_key()]
    assert tdx.verify_tdx_quote(quote, trusted_root_keys=both, now=datetime.now(UTC)).ok


def test_trusting_the_simulated_root_too_does_not_make_intel_quotes_simulated(sim: SimulatedTdxPlatform) -> None:
    v = verify_real(COS.read_bytes(), trusted_root_keys=[sim.root_key(), sgx.intel_sgx_root_key()])
    assert v.ok and v.claims is not None and not v.claims.simulated


def test_debug_and_migratable_tds_still_verify_and_say_so(sim: SimulatedTdxPlatform) -> None:
    """Signatures say nothing about debug or migration: the claims do, and a policy judges them."""
    debug = verify_sim(sim.quote(REPORT_DATA, td_report={"td_attributes": 1}), sim)
    assert debug.ok and debug.claims is not None and debug.claims.debug and not debug.claims.migration_allowed
    migratable = verify_sim(sim.quote(REPORT_DATA, td_report={"td_attributes": 1 << 29 | 1 << 28}), sim)
    assert migratable.ok and migratable.claims is not None and migratable.claims.migration_allowed
    assert not migratable.claims.debug and migratable.claims.fields["td_attributes"] == ["SEPT_VE_DISABLE", "MIGRATABLE"]


def test_a_chain_without_its_root_certificate_verifies_against_the_pinned_key(sim: SimulatedTdxPlatform) -> None:
    quote = sim.quote(REPORT_DATA, chain=[sim.certs["pck"], sim.certs["intermediate"]])
    assert verify_sim(quote, sim).ok
    assert failure(tdx.verify_tdx_quote(quote, now=datetime.now(UTC))) == ("pck_chain", "untrusted_root")


def test_verify_accepts_a_parsed_quote_and_refuses_a_naive_time() -> None:
    q = tdx.parse_tdx_quote(SPR.read_bytes())
    assert tdx.verify_tdx_quote(q, now=REAL_NOW).ok
    with pytest.raises(ValueError):
        tdx.verify_tdx_quote(q, now=datetime(2026, 1, 1))


# --- one failure per step, each with its own code and a message that says what to look at --------

SOURCES = ["intel-v4", "intel-v5", "simulated-v5"]


def _quote_and_verifier(source: str, sim: SimulatedTdxPlatform):
    if source == "intel-v4":
        return SPR.read_bytes(), verify_real
    if source == "intel-v5":
        return V5.read_bytes(), verify_real
    return sim.quote(REPORT_DATA, version=5, body_type=3), lambda q: verify_sim(q, sim)


def _only_failed(v: CvmVerdict, step: str) -> None:
    """Steps before ``step`` held (or were not evaluated), the rest were not reached."""
    order = list(tdx.TDX_STEPS)
    for s in v.steps:
        if order.index(s.step) < order.index(step):
            assert s.ok is not False, s
        elif s.step != step:
            assert (s.ok, s.message) == (None, "not reached"), s
    assert v.claims is not None  # the quote parsed: claims are there for display


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("where", ["header", "mrtd", "rtmr3", "reportdata", "tdattributes"])
def test_a_flipped_bit_in_the_signed_region(source: str, where: str, sim: SimulatedTdxPlatform) -> None:
    quote, verify = _quote_and_verifier(source, sim)
    body = Offsets(quote).body
    offset = {"header": 30, "mrtd": body + 136, "rtmr3": body + 519, "reportdata": body + 583, "tdattributes": body + 120}[where]
    v = verify(flip(quote, offset))
    assert failure(v) == ("quote_signature", "bad_quote_signature")
    assert "quote signature does not verify with the attestation key" in v.failure.message  # type: ignore[union-attr]
    _only_failed(v, "quote_signature")


@pytest.mark.parametrize("source", SOURCES)
def test_a_flipped_bit_in_the_quote_signature(source: str, sim: SimulatedTdxPlatform) -> None:
    quote, verify = _quote_and_verifier(source, sim)
    v = verify(flip(quote, Offsets(quote).quote_signature + 40))
    assert failure(v) == ("quote_signature", "bad_quote_signature")


def test_the_v5_body_descriptor_is_signed() -> None:
    """Intel's QVL signs header ‖ body descriptor ‖ TD report for v5; the real v5 quote confirms it."""
    q = tdx.parse_tdx_quote(V5.read_bytes())
    key = sgx.attestation_public_key(q.signature_data.attestation_key)
    sig = q.signature_data.quote_signature
    assert len(q.signed_region) == 48 + 6 + 648
    assert sgx.raw_signature_ok(key, sig, q.signed_region)
    assert not sgx.raw_signature_ok(key, sig, q.raw[:48] + q.td_report.raw)


@pytest.mark.parametrize("source", SOURCES)
def test_a_flipped_bit_in_the_qe_report(source: str, sim: SimulatedTdxPlatform) -> None:
    quote, verify = _quote_and_verifier(source, sim)
    v = verify(flip(quote, Offsets(quote).qe_report + 64))  # the QE's MRENCLAVE
    assert failure(v) == ("qe_report_signature", "bad_qe_report_signature")
    assert "QE report signature does not verify with the PCK leaf key" in v.failure.message  # type: ignore[union-attr]
    _only_failed(v, "qe_report_signature")
    assert steps(v)["pck_chain"].ok is True


@pytest.mark.parametrize("source", SOURCES)
def test_a_flipped_bit_in_the_qe_report_signature(source: str, sim: SimulatedTdxPlatform) -> None:
    quote, verify = _quote_and_verifier(source, sim)
    v = verify(flip(quote, Offsets(quote).qe_report_signature + 3))
    assert failure(v) == ("qe_report_signature", "bad_qe_report_signature")


@pytest.mark.parametrize("source", SOURCES)
def test_a_flipped_bit_in_the_pck_leaf(source: str, sim: SimulatedTdxPlatform) -> None:
    quote, verify = _quote_and_verifier(source, sim)
    v = verify(tamper_leaf_certificate_signature(quote))
    assert failure(v) == ("pck_chain", "bad_pck_signature")
    assert "SGX PCK Certificate" in v.failure.message and "does not verify" in v.failure.message  # type: ignore[union-attr]
    _only_failed(v, "pck_chain")


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("field", ["qe_auth_data", "attestation_key"])
def test_qe_report_data_that_does_not_bind_the_attestation_key(source: str, field: str, sim: SimulatedTdxPlatform) -> None:
    quote, verify = _quote_and_verifier(source, sim)
    v = verify(flip(quote, getattr(Offsets(quote), field) + 5))
    assert failure(v) == ("attestation_key_binding", "attestation_key_not_bound")
    assert "is not SHA-256(attestation key ‖ QE auth data)" in v.failure.message  # type: ignore[union-attr]
    _only_failed(v, "attestation_key_binding")
    assert steps(v)["qe_report_signature"].ok is True


def test_another_attestation_key_with_its_own_valid_signature_is_not_bound(sim: SimulatedTdxPlatform) -> None:
    """A forger's own key signs the quote perfectly; only the QE's binding tells it apart."""
    quote = sim.quote(REPORT_DATA)
    q, o = tdx.parse_tdx_quote(quote), Offsets(quote)
    forger = ec.generate_private_key(ec.SECP256R1())
    r, s = decode_dss_signature(forger.sign(q.signed_region, ec.ECDSA(hashes.SHA256())))
    point = forger.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    forged = tdx.pack_quote(
        q.signed_region,
        tdx.pack_signature_data(
            quote_signature=r.to_bytes(32, "big") + s.to_bytes(32, "big"),
            attestation_key=point[1:],
            certification_data=quote[o.qe_report :],
        ),
    )
    v = verify_sim(forged, sim)
    assert failure(v) == ("attestation_key_binding", "attestation_key_not_bound")


@pytest.mark.parametrize("source", ["intel-v4", "simulated-v5"])
def test_a_chain_to_another_root(source: str, sim: SimulatedTdxPlatform) -> None:
    quote, _ = _quote_and_verifier(source, sim)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    v = tdx.verify_tdx_quote(quote, trusted_root_keys=[other], now=REAL_NOW if source == "intel-v4" else datetime.now(UTC))
    assert failure(v) == ("pck_chain", "untrusted_root")
    assert "is not a trusted root key" in v.failure.message and sgx.spki_sha256(other) in v.failure.message  # type: ignore[union-attr]


def test_an_expired_pck_at_now() -> None:
    v = verify_real(COS.read_bytes(), now=datetime(2031, 7, 3, tzinfo=UTC))
    assert failure(v) == ("pck_chain", "certificate_expired")
    assert "'Intel SGX PCK Certificate' expired at 2031-07-02" in v.failure.message  # type: ignore[union-attr]
    early = verify_real(SPR.read_bytes(), now=datetime(2022, 9, 1, tzinfo=UTC))
    assert failure(early) == ("pck_chain", "certificate_not_yet_valid")


def test_an_expired_simulated_pck(sim: SimulatedTdxPlatform) -> None:
    later = sim.certs["pck"].not_valid_after_utc + timedelta(days=1)
    v = verify_sim(sim.quote(REPORT_DATA), sim, now=later)
    assert failure(v) == ("pck_chain", "certificate_expired") and simulated.PCK_CN in v.failure.message  # type: ignore[union-attr]


def test_inner_certification_data_other_than_a_pck_chain() -> None:
    raw = SPR.read_bytes()
    v = verify_real(put(raw, Offsets(raw).inner_type, "<H", 4))
    assert failure(v) == ("pck_chain", "bad_pck_chain") and "only type 5" in v.failure.message  # type: ignore[union-attr]


@pytest.mark.parametrize("source", ["intel-v4", "simulated-v5"])
def test_outer_certification_data_other_than_type_6(source: str, sim: SimulatedTdxPlatform) -> None:
    quote, verify = _quote_and_verifier(source, sim)
    v = verify(put(quote, Offsets(quote).certification_data_type, "<H", 5))
    assert failure(v) == ("parse", "unsupported_certification_data")
    assert v.claims is None and all(s.message == "not reached" for s in v.steps[1:])
    sim_v = verify_sim(sim.quote(REPORT_DATA, certification_data_type=1), sim)
    assert failure(sim_v) == ("parse", "unsupported_certification_data")


def _qe(sim: SimulatedTdxPlatform, **fields) -> bytes:
    return simulated.qe_report(sim.keys["attestation"], sim.qe_auth_data, **fields)


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"mr_signer": hashlib.sha256(b"another signer").digest()}, "MRSIGNER"),
        ({"isv_prod_id": 1}, "ISVPRODID is 1, expected 2"),  # SGX's quoting enclave, not the TD QE
        ({"flags": 0x17}, "the DEBUG bit is set"),
        ({"misc_select": 1}, "MISCSELECT"),
        ({"isv_svn": 0}, "ISVSVN is 0"),
    ],
    ids=["mrsigner", "isvprodid", "debug", "miscselect", "isvsvn"],
)
def test_a_foreign_quoting_enclave_signed_by_the_pck_key(sim: SimulatedTdxPlatform, fields, said: str) -> None:
    v = verify_sim(sim.quote(REPORT_DATA, qe_report=_qe(sim, **fields)), sim)
    assert failure(v) == ("qe_identity", "qe_identity_mismatch")
    assert said in v.failure.message and "simulated TD QE identity" in v.failure.message  # type: ignore[union-attr]
    _only_failed(v, "qe_identity")
    assert steps(v)["attestation_key_binding"].ok is True


def test_the_built_in_td_qe_identities() -> None:
    intel, sim = tdx.INTEL_TD_QE_IDENTITY, tdx.SIMULATED_TD_QE_IDENTITY
    assert intel.mr_signer.hex() == "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
    assert (intel.id, intel.isv_prod_id, intel.min_isv_svn, intel.tcb_levels) == ("TD_QE", 2, 4, ())
    assert (sim.id, sim.isv_prod_id) == ("TD_QE", 2) and sim.mr_signer == sgx.SIMULATED_QE_IDENTITY.mr_signer
    assert intel.mr_signer != sgx.INTEL_QE_IDENTITY.mr_signer  # the SGX QE's identity is not the TD QE's


# --- never raises for bad evidence ------------------------------------------------------------------


def test_a_damaged_pck_certificate_is_a_verdict() -> None:
    raw = SPR.read_bytes()
    at = Offsets(raw).pck_chain
    for offset in range(at + 40, at + 1200, 37):  # one base64 character of the leaf at a time
        character = b"A" if raw[offset] != ord("A") else b"B"
        v = verify_real(raw[:offset] + character + raw[offset + 1 :])
        assert isinstance(v, CvmVerdict) and not v.ok
