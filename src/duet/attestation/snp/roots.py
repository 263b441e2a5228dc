"""The roots SNP evidence may chain to: AMD's ARKs, pinned by key per product, or ones the user names.

Each product line (Milan, Genoa, Turin) has its own AMD Root Key (ARK). duet ships AMD's ARK
certificates with the intermediates AMD's Key Distribution Service hands out beside them (the ASK
that signs VCEKs and the ASVK that signs VLEKs), and pins each ARK by the SHA-256 of its public
key, so that a replaced ``attestation/roots/`` file is refused instead of trusted. A root the
user passes (a simulated AMD, for development) is an :class:`AmdRoot` too; whether a verified
chain ended at one of AMD's is decided by key, never by a name or a flag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from duet.attestation.snp.abi import PRODUCTS, Product
from duet.errors import VerificationError

AMD_ARK_KEY_SHA256: dict[Product, str] = {
    "Milan": "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
    "Genoa": "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831",
    "Turin": "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08",
}
"""SHA-256 of the DER SubjectPublicKeyInfo of each AMD ARK (see ``roots/README.md``)."""

AMD_ROOT_FILES: dict[Product, tuple[str, ...]] = {
    "Milan": ("amd_milan_ask_ark_vcek.pem", "amd_milan_ask_ark_vlek.pem"),
    "Genoa": ("amd_genoa_ask_ark_vcek.pem", "amd_genoa_ask_ark_vlek.pem"),
    "Turin": ("amd_turin_ask_ark_vcek.pem",),
}
"""KDS ``cert_chain`` bundles (ASK or ASVK, then ARK) shipped in ``duet/attestation/roots/``."""

SIMULATED_MARK = "SIMULATED"


def key_sha256(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else cert.subject.rfc4514_string()


def cn_is(cert: x509.Certificate, expected: str) -> bool:
    """AMD's CN exactly, or the simulated chain's ``<CN> SIMULATED``."""
    return common_name(cert) in (expected, f"{expected} {SIMULATED_MARK}")


def _product_of_ark(cert: x509.Certificate) -> Product | None:
    return next((p for p in PRODUCTS if cn_is(cert, f"ARK-{p}")), None)


def load_certificates(data: bytes, source: str = "certificates") -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, or the one certificate of a DER blob."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except (ValueError, TypeError) as exc:
        raise VerificationError(f"{source} do not parse as X.509 certificates: {exc}", code="bad_certificate") from None


@dataclass(frozen=True)
class AmdRoot:
    """An ARK one may trust for ``product``, with the ASK/ASVK it issued (used when the evidence
    carries no intermediate)."""

    product: Product
    ark: x509.Certificate
    intermediates: tuple[x509.Certificate, ...] = ()

    @property
    def key_sha256(self) -> str:
        return key_sha256(self.ark)

    @property
    def is_amd(self) -> bool:
        """The ARK's key is one of AMD's pinned keys: chains ending here are not simulated."""
        return self.key_sha256 in AMD_ARK_KEY_SHA256.values()


def load_amd_root(
    data: bytes | Sequence[x509.Certificate], *, product: Product | None = None, source: str = "AMD root"
) -> AmdRoot:
    """A root from a PEM bundle or certificates: the self-issued one is the ARK, the rest its
    intermediates. The product comes from the ARK's CN (``ARK-Milan``, ``ARK-Milan SIMULATED``)
    unless given."""
    certs = load_certificates(data, source) if isinstance(data, bytes) else list(data)
    arks = [c for c in certs if c.subject == c.issuer]
    if len(arks) != 1:
        raise VerificationError(
            f"{source} must hold exactly one self-issued ARK certificate, found {len(arks)}", code="bad_trust_root"
        )
    ark = arks[0]
    product = product or _product_of_ark(ark)
    if product is None:
        raise VerificationError(
            f"{source}: cannot tell the product from the ARK's CN {common_name(ark)!r}; name it (Milan, Genoa or Turin)",
            code="bad_trust_root",
        )
    return AmdRoot(product, ark, tuple(c for c in certs if c is not ark and c.issuer == ark.subject))


@lru_cache(maxsize=1)
def amd_roots() -> tuple[AmdRoot, ...]:
    """AMD's roots shipped with duet, each ARK checked against its pin."""
    out = []
    for product, files in AMD_ROOT_FILES.items():
        certs: list[x509.Certificate] = []
        for name in files:
            pem = resources.files("duet.attestation").joinpath("roots", name).read_bytes()
            certs += [c for c in load_certificates(pem, name) if all(c != seen for seen in certs)]
        root = load_amd_root(certs, product=product, source=f"shipped {product} roots")
        if root.key_sha256 != AMD_ARK_KEY_SHA256[product]:
            raise VerificationError(
                f"the shipped ARK-{product} certificate does not hold the pinned AMD key", code="bad_pinned_root"
            )
        out.append(root)
    return tuple(out)
