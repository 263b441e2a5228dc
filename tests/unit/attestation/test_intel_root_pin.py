"""The Intel SGX root is pinned by key: every certificate for that key is accepted."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sgx_helpers import ASSETS, REPORT_DATA, verify_sim

from duet.attestation import sgx_dcap as dcap
from duet.tee.simulated import ROOT_CN, SimulatedSgxTee, assemble_quote, build_header, build_report_body, make_certificate

SHIPPED_PEM = resources.files("duet.attestation").joinpath("roots", dcap.INTEL_SGX_ROOT_CA_FILE).read_bytes()
DER_COPY = (ASSETS / "dcap-qvl_Intel_SGX_Root_CA.der").read_bytes()


def test_both_intel_root_certificates_hold_the_pinned_key() -> None:
    pem_cert = x509.load_pem_x509_certificate(SHIPPED_PEM)
    der_cert = x509.load_der_x509_certificate(DER_COPY)
    for cert in (pem_cert, der_cert):
        assert dcap.spki_sha256(cert.public_key()) == dcap.INTEL_SGX_ROOT_KEY_SHA256  # type: ignore[arg-type]
        assert (
            dcap.load_trust_root(cert.public_bytes(serialization.Encoding.PEM)).public_numbers()
            == dcap.intel_sgx_root_key().public_numbers()
        )
    # Recorded fact: in this evidence set the two files are the *same* certificate (go-tdx-guest PEM,
    # dcap-qvl DER). Should a copy of Intel's other certificate for this key be added, the key
    # assertions above still hold; this one documents what we have.
    assert pem_cert.public_bytes(serialization.Encoding.DER) == DER_COPY
    assert hashlib.sha256(DER_COPY).hexdigest() == "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"


def test_load_trust_root_accepts_der_certificates_and_public_keys() -> None:
    key = dcap.load_trust_root(DER_COPY)
    spki_pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert dcap.spki_sha256(dcap.load_trust_root(spki_pem)) == dcap.INTEL_SGX_ROOT_KEY_SHA256


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
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (p.certs["pck"], p.certs["intermediate"], reissued))
    quote = assemble_quote(
        header=build_header(),
        report_body=build_report_body(report_data=REPORT_DATA),
        attestation_key=p.keys["attestation"],
        qe_report=p.qe_report,
        qe_report_signature=p.qe_report_signature,
        qe_auth_data=p.qe_auth_data,
        pck_chain_pem=chain,
    )
    # Trust is given as the key taken from the *original* certificate.
    assert verify_sim(quote, sim_tee).ok
