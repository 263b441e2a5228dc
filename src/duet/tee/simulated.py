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
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from duet import __version__
from duet.attestation import sgx as dcap
from duet.attestation.sgx.simulated import READ_ERRORS, PckPlatform, create_once, generate_platform, read_platform

# The quote primitives live in the attestation layer (the simulated TDX platform uses them too);
# re-exported: this module's API keeps its names.
from duet.attestation.sgx.simulated import make_certificate as make_certificate
from duet.attestation.sgx.simulated import qe_report_data as qe_report_data
from duet.attestation.sgx.simulated import raw_public_key as raw_public_key
from duet.attestation.sgx.simulated import raw_signature as raw_signature
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


def simulated_mrenclave(version: str = __version__) -> bytes:
    return hashlib.sha256(f"duet simulated enclave {version}".encode()).digest()


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


@dataclass(frozen=True)
class SimulatedPlatform(PckPlatform):
    """The persisted simulated keys, certificates and QE report, and this installation's MRSIGNER."""

    mr_signer: bytes


def _qe_report(attestation_key: ec.EllipticCurvePrivateKey, qe_auth_data: bytes) -> bytes:
    return build_report_body(
        cpu_svn=bytes(range(16)),
        flags=0x15,
        xfrm=0x03,
        mr_enclave=SIM_QE_MRENCLAVE,
        mr_signer=SIM_QE_MRSIGNER,
        isv_prod_id=1,
        isv_svn=SIM_QE_SVN,
        report_data=qe_report_data(attestation_key, qe_auth_data),
    )


def _generate(directory: Path) -> None:
    generate_platform(
        directory,
        (ROOT_CN, INTERMEDIATE_CN, PCK_CN),
        _qe_report,
        note="duet SIMULATED SGX platform: not Intel, gives no protection",
        mr_signer=hashlib.sha256(secrets.token_bytes(384)).hexdigest(),
    )


def _load(directory: Path) -> SimulatedPlatform:
    try:
        keys, certs, params = read_platform(directory)
        return SimulatedPlatform.from_files(keys, certs, params, mr_signer=bytes.fromhex(params["mr_signer"]))
    except READ_ERRORS as exc:
        raise TeeError(
            f"simulated TEE state in {directory} is damaged ({exc}); move the directory away to "
            "generate a new simulated platform (clients will then need the new sim-root)",
            code="simulated_tee_damaged",
        ) from None


def load_or_create_platform(state_dir: Path | str) -> SimulatedPlatform:
    """Load ``<state>/simulated-tee/``; create it first if absent (atomically: a crash or a second
    process never leaves a half-written platform)."""
    directory = Path(state_dir) / SIM_DIR_NAME
    create_once(directory, _generate, done=directory.exists)
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
        return self.platform.root_pem()

    def root_key(self) -> ec.EllipticCurvePublicKey:
        return self.platform.root_key()

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
    return load_or_create_platform(state_dir).root_pem()
