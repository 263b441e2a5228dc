"""Helpers for the SNP tests: the real evidence, AMD's shipped chains, tampering."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning

from duet.attestation import snp
from duet.attestation.cvm import CvmVerdict

ASSETS = Path(__file__).resolve().parents[3] / "assets" / "snp"
MILAN_REPORT = (ASSETS / "go-sev-guest_milan_attestation.bin").read_bytes()
MILAN_VCEK = (ASSETS / "go-sev-guest_milan_vcek.der").read_bytes()
VLEK_REPORT = (ASSETS / "trustee_milan_vlek_report.bin").read_bytes()
VLEK = (ASSETS / "trustee_milan_vlek.der").read_bytes()
REAL_NOW = datetime(2025, 6, 1, tzinfo=UTC)
"""Inside the validity of both real leaves (VCEK 2022-09-24 – 2029-09-24, VLEK 2024-12-10 – 2025-12-10)."""

MILAN_MEASUREMENT = "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
VLEK_MEASUREMENT = "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0"
CHIP_ID = bytes(range(64))
SERIAL_ZERO_WARNING = "ignore:Parsed a serial number which wasn't positive"
"""AMD's VCEKs and VLEKs have serial number 0: cryptography warns and loads them."""


def root(product: str) -> snp.AmdRoot:
    return next(r for r in snp.amd_roots() if r.product == product)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def load_der(data: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(data)


def intermediate(product: str, role: str) -> x509.Certificate:
    cn = f"SEV-{product}" if role == "ASK" else f"SEV-VLEK-{product}"
    return next(c for c in root(product).intermediates if snp.roots.common_name(c) == cn)


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    """The same bytes with one bit changed at ``offset`` (negative: from the end)."""
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def verify_milan(report: bytes = MILAN_REPORT, **kwargs: object) -> CvmVerdict:
    args: dict[str, object] = {"vcek": MILAN_VCEK, "now": REAL_NOW, **kwargs}
    return snp.verify_snp_report(report, **args)  # type: ignore[arg-type]


def failed(v: CvmVerdict, step: str, code: str) -> str:
    """Assert that ``step`` failed with ``code``, every earlier step held and every later one was
    not reached; return the message."""
    assert not v.ok
    assert v.failure is not None, v.steps
    assert (v.failure.step, v.failure.code) == (step, code), v.failure
    names = [s.step for s in v.steps]
    assert names == list(snp.SNP_STEPS)
    at = names.index(step)
    assert all(s.ok is True for s in v.steps[:at]), v.steps
    assert all(s.ok is None and s.message == "not reached" for s in v.steps[at + 1 :]), v.steps
    assert v.failure.message
    return v.failure.message
