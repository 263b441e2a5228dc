"""A simulated SGX TEE: real DCAP v3 quotes, signed by a locally generated, clearly fake root.

Why: the whole attestation path (controller evidence → client verification → pinning) should
run and be tested on machines without SGX, with exactly the bytes a real Gramine enclave would
send. Only the root differs: it is generated here, named "duet SIMULATED SGX Root CA — not
Intel", and a client accepts it only when told explicitly to trust it (``duet controller
sim-root`` prints it). The simulation gives **no** protection: whoever runs the controller has
every key in ``<state>/simulated-tee/``.

Generated once and reused on restart (``<state>/simulated-tee/``, mode 0700, keys 0600):

* root CA (self-signed) → intermediate "PCK Platform CA" → PCK leaf certificate, all P-256;
* a QE report (quoting enclave) signed by the PCK key, whose REPORTDATA binds the
  attestation key: SHA-256(attestation key ‖ QE auth data) ‖ 32 zero bytes;
* the attestation key, which signs each quote's header ‖ report body;
* a random per-installation MRSIGNER.

MRENCLAVE is SHA-256 of ``"duet simulated enclave <duet version>"``: stable across restarts
and installations of one version, changed by an upgrade, like a real measurement.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import struct
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from duet import __version__
from duet import keys as duet_keys
from duet.attestation import sgx as dcap
from duet.tee.base import TeeError, private_dir, require_report_data

SIM_DIR_NAME = "simulated-tee"
ROOT_CN = "duet SIMULATED SGX Root CA — not Intel"
INTERMEDIATE_CN = "duet SIMULATED SGX PCK Platform CA — not Intel"
PCK_CN = "duet SIMULATED SGX PCK Certificate — not Intel"
EVIDENCE_TYPE = "simulated-sgx"

SIM_ISV_PROD_ID = 1
SIM_ISV_SVN = 1
SIM_FLAGS = 0x05  # INIT | MODE64BIT; DEBUG (0x02) off
SIM_XFRM = 0x07
SIM_QE_SVN = 1
SIM_PCE_SVN = 1
SIM_QE_MRENCLAVE = hashlib.sha256(b"duet simulated quoting enclave").digest()
SIM_QE_MRSIGNER = hashlib.sha256(b"duet simulated quoting enclave signer").digest()

_KEY_FILES = ("root", "intermediate", "pck", "attestation")
_CERT_FILES = ("root", "intermediate", "pck")


def simulated_mrenclave(version: str = __version__) -> bytes:
    return hashlib.sha256(f"duet simulated enclave {version}".encode()).digest()


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-SHA256 as the quote encodes it: r ‖ s, 32 bytes each, big-endian."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_public_key(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """P-256 public key as the quote encodes it: X ‖ Y without the 0x04 prefix."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "duet (simulated, not Intel)"),
        ]
    )


def make_certificate(
    subject_cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_cn: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    path_length: int | None,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """One P-256 certificate shaped like Intel's PCK chain (CA flags, key usage)."""
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
    return builder.sign(issuer_key, hashes.SHA256())


def build_report_body(**fields: Any) -> bytes:
    """A 384-byte report body from field values named as in :data:`dcap.REPORT_BODY_FIELDS`."""
    return dcap.pack_fields(dcap.REPORT_BODY_FIELDS, fields)


def build_header(*, qe_svn: int = SIM_QE_SVN, pce_svn: int = SIM_PCE_SVN, user_data: bytes = b"") -> bytes:
    return dcap.pack_fields(
        dcap.HEADER_FIELDS,
        {
            "version": dcap.QUOTE_VERSION,
            "att_key_type": dcap.ATT_KEY_TYPE_ECDSA_P256,
            "tee_type": dcap.TEE_TYPE_SGX,
            "qe_svn": qe_svn,
            "pce_svn": pce_svn,
            "qe_vendor_id": dcap.INTEL_QE_VENDOR_ID,
            "user_data": user_data,
        },
    )


def assemble_quote(
    *,
    header: bytes,
    report_body: bytes,
    attestation_key: ec.EllipticCurvePrivateKey,
    qe_report: bytes,
    qe_report_signature: bytes,
    qe_auth_data: bytes,
    pck_chain_pem: bytes,
) -> bytes:
    """Lay out a DCAP v3 quote (spec §2.1, §2.4) and sign header ‖ body with the attestation key."""
    isv_signature = raw_signature(attestation_key, header + report_body)
    cert_data = pck_chain_pem + b"\0"
    sig_data = (
        dcap.pack_fields(
            dcap.SIGNATURE_DATA_FIELDS,
            {
                "isv_signature": isv_signature,
                "attestation_key": raw_public_key(attestation_key),
                "qe_report": qe_report,
                "qe_report_signature": qe_report_signature,
                "qe_auth_data_size": len(qe_auth_data),
            },
        )
        + qe_auth_data
        + dcap.pack_fields(dcap.CERT_DATA_HEADER_FIELDS, {"type": dcap.CERT_TYPE_PCK_CHAIN, "size": len(cert_data)})
        + cert_data
    )
    return header + report_body + struct.pack("<I", len(sig_data)) + sig_data


def qe_report_data(attestation_key: ec.EllipticCurvePrivateKey, qe_auth_data: bytes) -> bytes:
    """The binding the QE puts in its own report: SHA-256(attestation key ‖ auth data) ‖ zeros."""
    return hashlib.sha256(raw_public_key(attestation_key) + qe_auth_data).digest() + bytes(32)


@dataclass(frozen=True)
class SimulatedPlatform:
    """The persisted simulated keys, certificates and QE report."""

    keys: dict[str, ec.EllipticCurvePrivateKey]
    certs: dict[str, x509.Certificate]
    mr_signer: bytes
    qe_auth_data: bytes
    qe_report: bytes
    qe_report_signature: bytes

    def chain_pem(self) -> bytes:
        """Leaf → intermediate → root, as in production quotes."""
        return b"".join(self.certs[n].public_bytes(serialization.Encoding.PEM) for n in ("pck", "intermediate", "root"))


def _generate(directory: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=1)  # tolerate clock skew between controller and clients
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in _KEY_FILES}
    root = make_certificate(
        ROOT_CN,
        keys["root"],
        ROOT_CN,
        keys["root"],
        ca=True,
        path_length=1,
        not_before=start,
        not_after=datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
    )
    inter = make_certificate(
        INTERMEDIATE_CN,
        keys["intermediate"],
        ROOT_CN,
        keys["root"],
        ca=True,
        path_length=0,
        not_before=start,
        not_after=start + timedelta(days=15 * 365),
    )
    pck = make_certificate(
        PCK_CN,
        keys["pck"],
        INTERMEDIATE_CN,
        keys["intermediate"],
        ca=False,
        path_length=None,
        not_before=start,
        not_after=start + timedelta(days=7 * 365),
    )
    qe_auth = secrets.token_bytes(32)
    qe_report = build_report_body(
        cpu_svn=bytes(range(16)),
        flags=0x15,
        xfrm=0x03,
        mr_enclave=SIM_QE_MRENCLAVE,
        mr_signer=SIM_QE_MRSIGNER,
        isv_prod_id=1,
        isv_svn=SIM_QE_SVN,
        report_data=qe_report_data(keys["attestation"], qe_auth),
    )
    for n, k in keys.items():
        duet_keys.write_private_key(directory / f"{n}.key", k)
    for n, c in (("root", root), ("intermediate", inter), ("pck", pck)):
        (directory / f"{n}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    params = {
        "note": "duet SIMULATED SGX platform: not Intel, gives no protection",
        "mr_signer": hashlib.sha256(secrets.token_bytes(384)).hexdigest(),
        "qe_auth_data": qe_auth.hex(),
        "qe_report": qe_report.hex(),
        "qe_report_signature": raw_signature(keys["pck"], qe_report).hex(),
        "created": now.isoformat(),
    }
    (directory / "platform.json").write_text(json.dumps(params, indent=2) + "\n")


def _load(directory: Path) -> SimulatedPlatform:
    try:
        keys = {}
        for n in _KEY_FILES:
            k = serialization.load_pem_private_key((directory / f"{n}.key").read_bytes(), password=None)
            if not isinstance(k, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{n}.key is not an EC key")
            keys[n] = k
        certs = {n: x509.load_pem_x509_certificate((directory / f"{n}.pem").read_bytes()) for n in _CERT_FILES}
        p = json.loads((directory / "platform.json").read_text())
        return SimulatedPlatform(
            keys=keys,
            certs=certs,
            mr_signer=bytes.fromhex(p["mr_signer"]),
            qe_auth_data=bytes.fromhex(p["qe_auth_data"]),
            qe_report=bytes.fromhex(p["qe_report"]),
            qe_report_signature=bytes.fromhex(p["qe_report_signature"]),
        )
    except (OSError, ValueError, KeyError) as exc:
        raise TeeError(
            f"simulated TEE state in {directory} is damaged ({exc}); move the directory away to "
            "generate a new simulated platform (clients will then need the new sim-root)",
            code="simulated_tee_damaged",
        ) from None


def load_or_create_platform(state_dir: Path | str) -> SimulatedPlatform:
    """Load ``<state>/simulated-tee/``; create it first if absent (atomically: a crash or a second
    process never leaves a half-written platform)."""
    state = Path(state_dir)
    directory = state / SIM_DIR_NAME
    if not directory.exists():
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{SIM_DIR_NAME}.", dir=state))
        try:
            _generate(tmp)
            os.rename(tmp, directory)
        except OSError:
            if not directory.exists():
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return _load(directory)


class SimulatedSgxTee:
    """TEE backend producing DCAP v3 quotes under the simulated root (see module docstring)."""

    name = EVIDENCE_TYPE

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.platform = load_or_create_platform(self.state_dir)

    @property
    def mr_enclave(self) -> bytes:
        return simulated_mrenclave()

    @property
    def mr_signer(self) -> bytes:
        return self.platform.mr_signer

    def root_pem(self) -> bytes:
        return self.platform.certs["root"].public_bytes(serialization.Encoding.PEM)

    def root_key(self) -> ec.EllipticCurvePublicKey:
        return self.platform.keys["root"].public_key()

    def quote_bytes(self, report_data: bytes, **report_fields: Any) -> bytes:
        """A quote over ``report_data``; ``report_fields`` override report body fields (for tests,
        e.g. ``flags=0x07`` for a debug enclave or ``isv_svn=0``)."""
        p = self.platform
        fields: dict[str, Any] = {
            "cpu_svn": bytes(range(16)),
            "flags": SIM_FLAGS,
            "xfrm": SIM_XFRM,
            "mr_enclave": self.mr_enclave,
            "mr_signer": p.mr_signer,
            "isv_prod_id": SIM_ISV_PROD_ID,
            "isv_svn": SIM_ISV_SVN,
            "report_data": require_report_data(report_data),
        }
        fields.update(report_fields)
        user_data = hashlib.sha256(raw_public_key(p.keys["pck"])).digest()[:16]
        return assemble_quote(
            header=build_header(user_data=user_data),
            report_body=build_report_body(**fields),
            attestation_key=p.keys["attestation"],
            qe_report=p.qe_report,
            qe_report_signature=p.qe_report_signature,
            qe_auth_data=p.qe_auth_data,
            pck_chain_pem=p.chain_pem(),
        )

    def quote(self, report_data: bytes) -> dict[str, Any]:
        return {
            "type": self.name,
            "quote": base64.b64encode(self.quote_bytes(report_data)).decode(),
            "simulated_root_key_sha256": dcap.spki_sha256(self.root_key()),
            "warning": "SIMULATED SGX evidence: signed by a locally generated root, not by Intel; no protection",
        }

    def sealed_dir(self) -> Path:
        """Not sealed at all: an ordinary 0700 directory, as for ``none``."""
        return private_dir(self.state_dir / "sealed")


def simulated_root_pem(state_dir: Path | str) -> bytes:
    """The simulated root certificate of the installation in ``state_dir`` (created if absent),
    for ``duet controller sim-root`` and for clients told to trust it."""
    return load_or_create_platform(state_dir).certs["root"].public_bytes(serialization.Encoding.PEM)
