"""Verifying SGX DCAP v3 quotes: real Intel chains, simulated chains, and one tampered input per step."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sgx_helpers import (
    DEBUG,
    OCCLUM,
    REAL_NOW,
    REAL_QUOTES,
    RELEASE,
    REPORT_DATA,
    flip,
    sim_quote_with,
    tamper_leaf_certificate_signature,
    verify_real,
    verify_sim,
)

from duet.attestation import sgx
from duet.tee.simulated import SimulatedSgxTee

QE_REPORT = 436 + 128
QE_AUTH_DATA = 436 + 578
ATTESTATION_KEY = 436 + 64


@pytest.mark.parametrize("path", REAL_QUOTES, ids=lambda p: p.name)
def test_real_quotes_verify_to_the_pinned_intel_root(path) -> None:
    v = verify_real(path.read_bytes())
    assert v.ok, v.message
    assert v.failed_step is None and v.code is None
    assert v.pck_chain[0].endswith("CN=Intel SGX PCK Certificate") and v.pck_chain[-1].endswith("CN=Intel SGX Root CA")
    assert v.raise_for_failure() is v.quote


def test_simulated_quote_verifies_only_with_the_simulated_root_trusted(sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    assert verify_sim(sim_quote, sim_tee).ok
    v = sgx.verify_quote(sim_quote, trusted_root_keys=[sgx.intel_sgx_root_key()], now=datetime.now(UTC))
    assert not v.ok and v.code == "untrusted_root"


def test_verify_accepts_a_parsed_quote(sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    assert sgx.verify_quote(sgx.parse_quote(sim_quote), trusted_root_keys=[sim_tee.root_key()], now=datetime.now(UTC)).ok


# --- one tampered input per step; each run on a real Intel quote and on a simulated one -----------

SOURCES = ["intel", "simulated"]


def _quote_and_verifier(source: str, sim_tee: SimulatedSgxTee, sim_quote: bytes):
    if source == "intel":
        return RELEASE.read_bytes(), verify_real
    return sim_quote, lambda q: verify_sim(q, sim_tee)


@pytest.mark.parametrize("source", SOURCES)
def test_unknown_root(source: str, sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    quote, _ = _quote_and_verifier(source, sim_tee, sim_quote)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    v = sgx.verify_quote(quote, trusted_root_keys=[other], now=REAL_NOW if source == "intel" else datetime.now(UTC))
    assert (v.ok, v.failed_step, v.code) == (False, "pck_chain", "untrusted_root")
    assert "is not a trusted root key" in v.message and sgx.spki_sha256(other) in v.message
    with pytest.raises(sgx.QuoteVerificationError) as err:
        v.raise_for_failure()
    assert err.value.code == "untrusted_root" and err.value.step == "pck_chain"


@pytest.mark.parametrize("source", SOURCES)
def test_bad_pck_signature(source: str, sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    quote, verify = _quote_and_verifier(source, sim_tee, sim_quote)
    v = verify(tamper_leaf_certificate_signature(quote))
    assert (v.ok, v.failed_step, v.code) == (False, "pck_chain", "bad_pck_signature")
    assert "signature on" in v.message and "PCK Certificate" in v.message and "does not verify" in v.message


@pytest.mark.parametrize("source", SOURCES)
def test_bad_qe_report_signature(source: str, sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    quote, verify = _quote_and_verifier(source, sim_tee, sim_quote)
    v = verify(flip(quote, QE_REPORT + 64))  # one bit of the QE's MRENCLAVE
    assert (v.ok, v.failed_step, v.code) == (False, "qe_report_signature", "bad_qe_report_signature")
    assert "QE report signature does not verify with the PCK leaf key" in v.message


@pytest.mark.parametrize("source", SOURCES)
def test_attestation_key_not_bound(source: str, sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    quote, verify = _quote_and_verifier(source, sim_tee, sim_quote)
    v = verify(flip(quote, QE_AUTH_DATA))
    assert (v.ok, v.failed_step, v.code) == (False, "attestation_key_binding", "attestation_key_not_bound")
    assert "is not SHA-256(attestation key ‖ QE auth data)" in v.message


@pytest.mark.parametrize("source", SOURCES)
def test_substituted_attestation_key_is_not_bound(source: str, sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    quote, verify = _quote_and_verifier(source, sim_tee, sim_quote)
    v = verify(flip(quote, ATTESTATION_KEY + 5))
    assert v.code == "attestation_key_not_bound"


@pytest.mark.parametrize("source", SOURCES)
def test_bad_enclave_report_signature(source: str, sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    quote, verify = _quote_and_verifier(source, sim_tee, sim_quote)
    v = verify(flip(quote, 306))  # ISVSVN
    assert (v.ok, v.failed_step, v.code) == (False, "enclave_signature", "bad_enclave_signature")
    assert "ISV enclave report signature does not verify with the attestation key" in v.message


def test_nonzero_upper_qe_report_data_is_refused(sim_tee: SimulatedSgxTee) -> None:
    qe = bytearray(sim_tee.platform.qe_report)
    qe[320 + 40] = 1  # QE REPORTDATA[40]
    quote = sim_quote_with(sim_tee, qe_report=bytes(qe))
    v = verify_sim(quote, sim_tee)
    assert v.code == "attestation_key_not_bound" and "REPORTDATA[32:64] must be zero" in v.message


def test_parse_failure_is_a_verdict_not_an_exception(sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    v = verify_sim(sim_quote[:500], sim_tee)
    assert (v.ok, v.failed_step, v.code, v.quote) == (False, "parse", "bad_quote", None)


# --- time ---------------------------------------------------------------------------------------


def test_expired_and_not_yet_valid_certificates() -> None:
    quote = OCCLUM.read_bytes()
    root = [sgx.intel_sgx_root_key()]
    late = sgx.verify_quote(quote, trusted_root_keys=root, now=datetime(2030, 4, 27, tzinfo=UTC))
    assert late.code == "certificate_expired" and "'Intel SGX PCK Certificate' expired at 2030-04-26" in late.message
    early = sgx.verify_quote(quote, trusted_root_keys=root, now=datetime(2023, 4, 1, tzinfo=UTC))
    assert early.code == "certificate_not_yet_valid" and "valid only from 2023-04-26" in early.message
    assert sgx.verify_quote(quote, trusted_root_keys=root, now=datetime(2023, 4, 27, tzinfo=UTC)).ok


def test_naive_time_is_refused(sim_quote: bytes, sim_tee: SimulatedSgxTee) -> None:
    with pytest.raises(ValueError):
        sgx.verify_quote(sim_quote, trusted_root_keys=[sim_tee.root_key()], now=datetime.now())


# --- report data binding ------------------------------------------------------------------------


def test_report_data_matches_the_azure_enclave_held_data() -> None:
    q = sgx.parse_quote(RELEASE.read_bytes())
    sgx.check_report_data(q, hashlib.sha256(bytes.fromhex("010203040506")).digest() + bytes(32))


def test_report_data_mismatch(sim_quote: bytes) -> None:
    q = sgx.parse_quote(sim_quote)
    sgx.check_report_data(q, REPORT_DATA)
    other = flip(REPORT_DATA, 63)
    with pytest.raises(sgx.QuoteVerificationError) as err:
        sgx.check_report_data(q, other)
    assert err.value.code == "report_data_mismatch"
    assert f"expected {other.hex()}, quote has {REPORT_DATA.hex()}" in err.value.message
    with pytest.raises(ValueError):
        sgx.check_report_data(q, b"short")


def test_debug_quote_signatures_still_verify() -> None:
    """Signature checks say nothing about debug: that is the policy's job (see test_sgx_policy)."""
    assert verify_real(DEBUG.read_bytes()).ok


def test_chain_without_root_certificate_verifies_against_the_pinned_key(sim_tee: SimulatedSgxTee) -> None:
    """Pinning the key means the root certificate itself need not be in the quote."""
    p = sim_tee.platform
    quote = sim_quote_with(sim_tee, chain=(p.certs["pck"], p.certs["intermediate"]))
    assert verify_sim(quote, sim_tee).ok
    v = sgx.verify_quote(quote, trusted_root_keys=[sgx.intel_sgx_root_key()], now=datetime.now(UTC) + timedelta(seconds=1))
    assert v.code == "untrusted_root"
