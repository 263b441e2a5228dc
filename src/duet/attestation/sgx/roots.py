"""The roots SGX evidence may chain to: Intel's, pinned by key, or one the user names.

The Intel SGX Root CA is pinned by the SHA-256 of its public key (SubjectPublicKeyInfo), not
by certificate bytes: Intel has issued more than one certificate for the same root key, and a
replaced ``attestation/roots/`` file must be detected rather than silently trusted. A root the
user passes (the simulated TEE's, for development) is likewise reduced to its key. TDX quotes
chain to the same Intel root, so the TDX verifier takes it from here.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from duet.errors import VerificationError
from duet.keys import PublicKey

INTEL_SGX_ROOT_CA_FILE = "Intel_SGX_Root_CA.pem"
INTEL_SGX_ROOT_KEY_SHA256 = "a0af031289f5d5d4132f9186068a7fc13628633ba235777472e29b6b6c67a49e"
"""SHA-256 of the DER SubjectPublicKeyInfo of the Intel SGX Root CA key (see ``roots/README.md``).
Pinned in code so that a replaced roots/ file is detected, not silently trusted."""


def spki_sha256(key: PublicKey) -> str:
    return hashlib.sha256(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).hexdigest()


@lru_cache(maxsize=1)
def intel_sgx_root_key() -> ec.EllipticCurvePublicKey:
    """The Intel SGX Root CA public key shipped in ``duet/attestation/roots/``, checked against the pin."""
    pem = resources.files("duet.attestation").joinpath("roots", INTEL_SGX_ROOT_CA_FILE).read_bytes()
    key = x509.load_pem_x509_certificate(pem).public_key()
    if spki_sha256(key) != INTEL_SGX_ROOT_KEY_SHA256:  # type: ignore[arg-type]
        raise VerificationError(
            f"the shipped {INTEL_SGX_ROOT_CA_FILE} does not hold the pinned Intel SGX root key", code="bad_pinned_root"
        )
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def load_trust_root(data: bytes, source: str = "trust root") -> PublicKey:
    """A root given as a PEM/DER certificate or a PEM public key; only its key is kept."""
    for loader in (x509.load_pem_x509_certificate, x509.load_der_x509_certificate):
        try:
            return loader(data).public_key()  # type: ignore[return-value]
        except ValueError:
            pass
    try:
        return serialization.load_pem_public_key(data)  # type: ignore[return-value]
    except ValueError:
        raise VerificationError(f"{source} is neither a certificate nor a PEM public key", code="bad_trust_root") from None
