"""The pinned roots: the Intel SGX root is pinned by key, so every certificate for that key is accepted."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sgx_helpers import ASSETS, sim_quote_with, verify_sim

from duet.attestation.sgx import roots
from duet.tee.simulated import ROOT_CN, SimulatedSgxTee, make_certificate

SHIPPED_PEM = resources.files("duet.attestation").joinpath("roots", roots.INTEL_SGX_ROOT_CA_FILE).read_bytes()
DER_COPY = (ASSETS / "dcap-qvl_Intel_SGX_Root_CA.der").read_bytes()


def test_both_intel_root_certificates_hold_the_pinned_key() -> None:
    pem_cert = x509.load_pem_x509_certificate(SHIPPED_PEM)
    der_cert = x509.load_der_x509_certificate(DER_COPY)
    for cert in (pem_cert, der_cert):
        assert roots.spki_sha256(cert.public_key()) == roots.INTEL_SGX_ROOT_KEY_SHA256  # type: ignore[arg-type]
        assert (
            roots.load_trust_root(cert.public_bytes(serialization.Encoding.PEM)).public_numbers()
            == roots.intel_sgx_root_key().public_numbers()
        )
    # Recorded fact: in this evidence set the two files are the *same* certificate (go-tdx-guest PEM,
    # dcap-qvl DER). Should a copy of Intel's other certificate for this key be added, the key
    # assertions above still hold; this one documents what we have.
    assert pem_cert.public_bytes(serialization.Encoding.DER) == DER_COPY
    assert hashlib.sha256(DER_COPY).hexdigest() == "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"


def test_load_trust_root_accepts_der_certificates_and_public_keys() -> None:
    key = roots.load_trust_root(DER_COPY)
    spki_pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert roots.spki_sha256(roots.load_trust_root(spki_pem)) == roots.INTEL_SGX_ROOT_KEY_SHA256


def test_a_reissued_root_certificate_for_the_same_key_is_accepted(sim_tee: SimulatedSgxTee) -> None:
    """What happens with Intel's two root certificates, reproduced with the simulated root key."""
    p = sim_tee.platform
    now = datetime.now(UTC)
    reissued = make_certificate(
        ROOT_CN,
        p.keys["root"],
        ROOT_CN,
        p.keys["root"],
        ca=True,
        path_length=1,
        not_before=now - timedelta(days=3),
        not_after=now + timedelta(days=3650),
    )
    assert reissued.public_bytes(serialization.Encoding.DER) != p.certs["root"].public_bytes(serialization.Encoding.DER)
    quote = sim_quote_with(sim_tee, chain=(p.certs["pck"], p.certs["intermediate"], reissued))
    # Trust is given as the key taken from the *original* certificate.
    assert verify_sim(quote, sim_tee).ok
