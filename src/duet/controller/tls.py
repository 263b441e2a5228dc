"""The controller's TLS key and self-signed certificate, created once inside the TEE and sealed.

Why self-signed: no CA is involved in trusting a duet controller. Clients learn the
certificate's SHA-256 from the *attested* identity document (design.md §4) and pin exactly
that certificate; a CA signature would add a party that could vouch for an impostor.

The certificate is valid until 9999-12-31 (RFC 5280's "no well-defined expiration") because
it is pinned by hash, not judged by dates: an expiring certificate would only force every
client to re-verify for no security gain. It is replaced only when the sealed key is lost,
which changes the controller's identity and is refused by every client that pinned it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from duet import keys
from duet.errors import ConfigError

TLS_KEY_FILE = "controller-tls.key"
TLS_CERT_FILE = "controller-tls.pem"
NOT_AFTER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@dataclass(frozen=True)
class TlsIdentity:
    """Where uvicorn finds the key and certificate, and the certificate's pin."""

    key_path: Path
    cert_path: Path
    cert_der: bytes

    @property
    def cert_sha256(self) -> str:
        return cert_sha256(self.cert_der)


def cert_sha256(cert_der: bytes) -> str:
    """The pin: SHA-256 of the certificate's DER bytes, lowercase hex."""
    return hashlib.sha256(cert_der).hexdigest()


def make_certificate(key: ec.EllipticCurvePrivateKey, controller_id: str) -> x509.Certificate:
    """A self-signed end-entity certificate (CA:FALSE, so a client that trusts it as its only
    anchor cannot be shown a certificate *issued* by it)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"duet controller {controller_id[:16]}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "duet"),
        ]
    )
    now = datetime.now(UTC).replace(microsecond=0)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))  # tolerate clients whose clock is behind
        .not_valid_after(NOT_AFTER)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def load_or_create_tls(sealed_dir: Path, controller_id: str) -> TlsIdentity:
    """Load the sealed TLS key and certificate; create both at first start.

    If only one of the two files is present the state is damaged: refuse rather than mint a
    new certificate silently (that would look like an impostor to every client).
    """
    key_path, cert_path = sealed_dir / TLS_KEY_FILE, sealed_dir / TLS_CERT_FILE
    if not key_path.exists() and not cert_path.exists():
        new_key = ec.generate_private_key(ec.SECP256R1())
        cert = make_certificate(new_key, controller_id)
        sealed_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys.write_private_key(key_path, new_key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if not (key_path.exists() and cert_path.exists()):
        missing = TLS_CERT_FILE if key_path.exists() else TLS_KEY_FILE
        raise ConfigError(
            f"the sealed TLS identity is incomplete ({missing} is missing in the sealed directory); "
            "restore it from backup, or remove both TLS files to create a new one (every client "
            "will then have to run `duet verify` again)",
            code="tls_identity_damaged",
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError:
        raise ConfigError("the sealed TLS key or certificate cannot be read", code="tls_identity_damaged") from None
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ConfigError("the sealed TLS certificate does not belong to the sealed TLS key", code="tls_identity_damaged")
    return TlsIdentity(key_path, cert_path, cert.public_bytes(serialization.Encoding.DER))
