"""Simulated Intel PCK platforms: what the simulated SGX TEE and the simulated TDX platform share.

Both lay out real quotes (:mod:`duet.tee.simulated`: SGX DCAP v3 for the controller;
:mod:`duet.attestation.tdx.simulated`: TDX v4/v5 for CVMs) under a locally generated, clearly
fake Intel-style chain: a root named "… SIMULATED … — not Intel" → a PCK Platform CA → a PCK
leaf, all P-256, and an attestation key whose binding a quoting enclave report signed by the PCK
key carries. What they share lives here, in the attestation layer, because the TDX platform may
not import ``duet.tee``:

* the quote encodings: raw ``r‖s`` signatures, raw ``X‖Y`` public keys, the QE report's binding
  of the attestation key;
* certificates shaped like Intel's PCK chain (CA flags, key usage, key identifier), and the
  chain itself;
* the platform directory (mode 0700): ``<name>.key`` (0600) and ``<name>.pem`` files beside
  ``platform.json``, written once into a temporary sibling and renamed into place, so that a
  crash or a second process never leaves a half-written platform.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from duet import keys as duet_keys

ORGANIZATION = "duet (simulated, not Intel)"
KEY_NAMES = ("root", "intermediate", "pck", "attestation")
CERT_NAMES = ("root", "intermediate", "pck")
PLATFORM_FILE = "platform.json"
READ_ERRORS = (OSError, ValueError, KeyError, TypeError)
"""What reading a damaged platform directory (:func:`read_platform`, :meth:`PckPlatform.from_files`) may raise."""

Keys = dict[str, ec.EllipticCurvePrivateKey]
Certs = dict[str, x509.Certificate]


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-SHA256 as quotes encode it: r ‖ s, 32 bytes each, big-endian."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_public_key(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """A P-256 public key as quotes encode it: X ‖ Y without the 0x04 prefix."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]


def qe_report_data(attestation_key: ec.EllipticCurvePrivateKey, qe_auth_data: bytes) -> bytes:
    """The binding a quoting enclave puts in its own report: SHA-256(attestation key ‖ auth data) ‖ 32 zero bytes."""
    return hashlib.sha256(raw_public_key(attestation_key) + qe_auth_data).digest() + bytes(32)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)])


def make_certificate(
    subject_cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_cn: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    path_length: int | None = None,
    not_before: datetime,
    not_after: datetime,
    extensions: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    """One P-256 certificate shaped like Intel's PCK chain (CA flags, key usage); ``extensions``
    are added, not critical, after the subject key identifier (the PCK leaf's SGX extension)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(_name(issuer_cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def issue_chain(
    root_cn: str,
    intermediate_cn: str,
    pck_cn: str,
    *,
    now: datetime,
    pck_extensions: Sequence[x509.ExtensionType] = (),
) -> tuple[Keys, Certs]:
    """New keys (:data:`KEY_NAMES`) and the chain root → PCK Platform CA → PCK leaf
    (:data:`CERT_NAMES`): the root valid until 2049, the CA 15 years, the leaf 7, all from a day
    before ``now`` (clocks of producers and verifiers differ)."""
    start = now - timedelta(days=1)
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in KEY_NAMES}
    root = make_certificate(
        root_cn,
        keys["root"],
        root_cn,
        keys["root"],
        ca=True,
        path_length=1,
        not_before=start,
        not_after=datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
    )
    intermediate = make_certificate(
        intermediate_cn,
        keys["intermediate"],
        root_cn,
        keys["root"],
        ca=True,
        path_length=0,
        not_before=start,
        not_after=start + timedelta(days=15 * 365),
    )
    pck = make_certificate(
        pck_cn,
        keys["pck"],
        intermediate_cn,
        keys["intermediate"],
        ca=False,
        not_before=start,
        not_after=start + timedelta(days=7 * 365),
        extensions=pck_extensions,
    )
    return keys, {"root": root, "intermediate": intermediate, "pck": pck}


@dataclass(frozen=True)
class PckPlatform:
    """A simulated platform as its directory keeps it: the keys (:data:`KEY_NAMES`), the chain
    (:data:`CERT_NAMES`), and the quoting enclave's report, signed by the PCK key, that binds the
    attestation key through the QE auth data. Each kind adds its own fields."""

    keys: Keys
    certs: Certs
    qe_auth_data: bytes
    qe_report: bytes
    qe_report_signature: bytes

    @classmethod
    def from_files(cls, keys: Keys, certs: Certs, params: Mapping[str, Any], **extra: Any) -> Self:
        """The platform :func:`read_platform` read, with the kind's own fields ``extra``."""
        return cls(
            keys=keys,
            certs=certs,
            qe_auth_data=bytes.fromhex(params["qe_auth_data"]),
            qe_report=bytes.fromhex(params["qe_report"]),
            qe_report_signature=bytes.fromhex(params["qe_report_signature"]),
            **extra,
        )

    def root_key(self) -> ec.EllipticCurvePublicKey:
        """The key a verifier must be given, explicitly, to accept this platform's quotes."""
        return self.keys["root"].public_key()

    def root_pem(self) -> bytes:
        return self.certs["root"].public_bytes(serialization.Encoding.PEM)

    def chain_pem(self, chain: Sequence[x509.Certificate] | None = None) -> bytes:
        """Leaf → intermediate → root (as in production quotes), or ``chain`` in its order."""
        certs = chain if chain is not None else [self.certs[n] for n in ("pck", "intermediate", "root")]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def generate_platform(
    directory: Path,
    cns: tuple[str, str, str],
    qe_report: Callable[[ec.EllipticCurvePrivateKey, bytes], bytes],
    *,
    note: str,
    pck_extensions: Sequence[x509.ExtensionType] = (),
    **params: str,
) -> None:
    """Fill ``directory`` with a new platform: keys and the chain named ``cns`` (root,
    intermediate, PCK leaf; :func:`issue_chain`), 32 bytes of QE auth data, and the QE report
    ``qe_report(attestation key, QE auth data)`` makes, signed by the PCK key. Keys are written
    mode 0600, certificates as PEM, the rest with ``note`` and ``params`` in :data:`PLATFORM_FILE`."""
    now = datetime.now(UTC).replace(microsecond=0)
    keys, certs = issue_chain(*cns, now=now, pck_extensions=pck_extensions)
    qe_auth = secrets.token_bytes(32)
    qe = qe_report(keys["attestation"], qe_auth)
    for n, key in keys.items():
        duet_keys.write_private_key(directory / f"{n}.key", key)
    for n, cert in certs.items():
        (directory / f"{n}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    platform = {
        "note": note,
        **params,
        "qe_auth_data": qe_auth.hex(),
        "qe_report": qe.hex(),
        "qe_report_signature": raw_signature(keys["pck"], qe).hex(),
        "created": now.isoformat(),
    }
    (directory / PLATFORM_FILE).write_text(json.dumps(platform, indent=2) + "\n")


def read_platform(directory: Path) -> tuple[Keys, Certs, dict[str, Any]]:
    """The keys, certificates and :data:`PLATFORM_FILE` values :func:`generate_platform` wrote
    (for :meth:`PckPlatform.from_files`); raises one of :data:`READ_ERRORS` when they are damaged."""
    keys = {}
    for n in KEY_NAMES:
        key = serialization.load_pem_private_key((directory / f"{n}.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{n}.key is not an EC key")
        keys[n] = key
    certs = {n: x509.load_pem_x509_certificate((directory / f"{n}.pem").read_bytes()) for n in CERT_NAMES}
    params = json.loads((directory / PLATFORM_FILE).read_text())
    if not isinstance(params, dict):
        raise ValueError(f"{PLATFORM_FILE} is not a JSON object")
    return keys, certs, params


def create_once(directory: Path, generate: Callable[[Path], None], *, done: Callable[[], bool]) -> None:
    """Unless ``done()``, create ``directory`` (its parents mode 0700): ``generate`` fills a new
    temporary sibling, which is then renamed into place. An empty ``directory`` is replaced, one
    holding anything is left alone; raises :class:`OSError` when nothing could be put in place
    and ``done()`` still says no (a second process that won the race is no error)."""
    if done():
        return
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        generate(tmp)
        os.rename(tmp, directory)  # replaces an empty directory; fails on a non-empty one
    except OSError:
        if not done():
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
