"""A simulated TDX platform: real v4/v5 TDX quotes, signed under a locally generated, clearly fake
Intel-style chain.

Why: the TDX verifier (and whatever judges its claims) must run and be tested on machines
without TDX, on exactly the bytes a TD would send. Only the keys differ: a root named "duet
SIMULATED … — not Intel" → a PCK Platform CA → a PCK leaf carrying Intel's SGX extension (FMSPC
``SIMTDX``, PCEID, TCB), a TD quoting enclave report signed by the PCK key that binds the
attestation key, and the attestation key that signs each quote. A verifier accepts these quotes
only when told explicitly to trust the simulated root key, and then says ``simulated``. The
simulation protects nothing: whoever holds the directory holds every key.

The platform lives in a directory the caller names (created once, mode 0700, keys 0600, the
certificates as PEM files) and is reused afterwards, so that a root a user trusted stays valid.

This is the TDX twin of :mod:`duet.tee.simulated` (the controller's simulated SGX TEE): the two
share the quote primitives, the chain and the platform directory
(:mod:`duet.attestation.sgx.simulated`).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from duet.attestation.layout import pack_fields
from duet.attestation.sgx.abi import REPORT_BODY_FIELDS
from duet.attestation.sgx.collateral import SGX_EXTENSION_OID, PckSgxExtension, PckTcb, pack_pck_sgx_extension
from duet.attestation.sgx.simulated import (
    PLATFORM_FILE,
    READ_ERRORS,
    PckPlatform,
    create_once,
    generate_platform,
    qe_report_data,
    raw_public_key,
    raw_signature,
    read_platform,
)
from duet.attestation.tdx.abi import (
    BODY_TYPE_TD_REPORT10,
    BODY_TYPE_TD_REPORT15,
    CERT_TYPE_QE_REPORT,
    QUOTE_VERSION_4,
    pack_header,
    pack_qe_report_certification_data,
    pack_quote,
    pack_signature_data,
    pack_signed_region,
    pack_td_report,
)
from duet.attestation.tdx.verify import SIMULATED_TD_QE_IDENTITY
from duet.errors import ConfigError

ROOT_CN = "duet SIMULATED SGX Root CA (TDX) — not Intel"
INTERMEDIATE_CN = "duet SIMULATED SGX PCK Platform CA (TDX) — not Intel"
PCK_CN = "duet SIMULATED SGX PCK Certificate (TDX) — not Intel"
"""The leaf CN contains "SGX PCK Certificate", as Intel's QVL requires of a PCK leaf."""

SIM_FMSPC = b"SIMTDX"
SIM_PCE_ID = b"\0\0"
SIM_PCE_SVN = 11
SIM_SGX_TCB_COMPONENTS = (3, 3, 2, 2, 2, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0)
SIM_TEE_TCB_SVN = bytes([3, 0, 4]) + bytes(13)
"""TDX module SVN 3, major version 0 (judged by ``tdxModule`` alone), late microcode SVN 4."""
SIM_QE_MRENCLAVE = hashlib.sha256(b"duet simulated TD quoting enclave").digest()
SIM_QE_ISV_SVN = 4
SIM_MRSEAM = hashlib.sha384(b"duet simulated TDX module").digest()
SIM_MRTD = hashlib.sha384(b"duet simulated TD").digest()
SIM_TD_ATTRIBUTES = 1 << 28  # SEPT_VE_DISABLE, as on real production TDs; DEBUG off
SIM_XFAM = 0x600E7


def pck_extension(ppid: bytes) -> x509.UnrecognizedExtension:
    """Intel's SGX extension for the simulated PCK: what TDX TCB info is matched against."""
    ext = PckSgxExtension(
        ppid=ppid,
        tcb=PckTcb(comp_svns=SIM_SGX_TCB_COMPONENTS, pce_svn=SIM_PCE_SVN, cpu_svn=bytes(SIM_SGX_TCB_COMPONENTS)),
        pce_id=SIM_PCE_ID,
        fmspc=SIM_FMSPC,
        sgx_type=0,
    )
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), pack_pck_sgx_extension(ext))


def qe_report(attestation_key: ec.EllipticCurvePrivateKey, qe_auth_data: bytes, **fields: Any) -> bytes:
    """The simulated TD quoting enclave's report: its identity (:data:`SIMULATED_TD_QE_IDENTITY`)
    and, in REPORTDATA, SHA-256(attestation key ‖ QE auth data) ‖ 32 zero bytes. ``fields``
    override report body fields (tests: another MRSIGNER, a debug QE)."""
    values: dict[str, Any] = {
        "cpu_svn": bytes(SIM_SGX_TCB_COMPONENTS),
        "flags": 0x15,  # INIT | MODE64BIT | PROVISIONKEY, as Intel's TD QE
        "xfrm": 0xE7,
        "mr_enclave": SIM_QE_MRENCLAVE,
        "mr_signer": SIMULATED_TD_QE_IDENTITY.mr_signer,
        "isv_prod_id": SIMULATED_TD_QE_IDENTITY.isv_prod_id,
        "isv_svn": SIM_QE_ISV_SVN,
        "report_data": qe_report_data(attestation_key, qe_auth_data),
    }
    values.update(fields)
    return pack_fields(REPORT_BODY_FIELDS, values)


def td_report_fields(report_data: bytes, *, body_type: int = BODY_TYPE_TD_REPORT10, **overrides: Any) -> dict[str, Any]:
    """A simulated TD's report fields (named as :data:`~duet.attestation.tdx.abi.TD_REPORT15_FIELDS`'s attributes)."""
    values: dict[str, Any] = {
        "tee_tcb_svn": SIM_TEE_TCB_SVN,
        "mr_seam": SIM_MRSEAM,
        "td_attributes": SIM_TD_ATTRIBUTES,
        "xfam": SIM_XFAM,
        "mr_td": SIM_MRTD,
        **{f"rtmr{i}": hashlib.sha384(f"duet simulated RTMR{i}".encode()).digest() for i in range(4)},
        "report_data": report_data,
    }
    if body_type == BODY_TYPE_TD_REPORT15:
        values["tee_tcb_svn2"] = SIM_TEE_TCB_SVN
    values.update(overrides)
    return values


@dataclass(frozen=True)
class SimulatedTdxPlatform(PckPlatform):
    """The persisted simulated keys, certificates and TD quoting enclave report, and where they are."""

    directory: Path

    def quote(
        self,
        report_data: bytes,
        *,
        version: int = QUOTE_VERSION_4,
        body_type: int = BODY_TYPE_TD_REPORT10,
        td_report: Mapping[str, Any] | None = None,
        qe_report: bytes | None = None,
        chain: Sequence[x509.Certificate] | None = None,
        certification_data_type: int = CERT_TYPE_QE_REPORT,
    ) -> bytes:
        """A TDX quote over ``report_data`` (64 bytes): v4, or v5 with a TD report 1.0 (body type
        2) or 1.5 (3). For tests: ``td_report`` overrides TD report fields (e.g. a debug TD),
        ``qe_report`` replaces the QE report (re-signed with the PCK key), ``chain`` the PCK chain,
        ``certification_data_type`` the outer type (6 in every genuine quote)."""
        if len(report_data) != 64:
            raise ValueError(f"report data must be 64 bytes, got {len(report_data)}")
        header = pack_header(version=version, user_data=hashlib.sha256(raw_public_key(self.keys["pck"])).digest()[:16])
        body = pack_td_report(td_report_fields(report_data, body_type=body_type, **(td_report or {})), body_type=body_type)
        signed = pack_signed_region(header, body)
        qe = self.qe_report if qe_report is None else qe_report
        qe_signature = self.qe_report_signature if qe_report is None else raw_signature(self.keys["pck"], qe)
        certification = pack_qe_report_certification_data(
            qe_report=qe,
            qe_report_signature=qe_signature,
            qe_auth_data=self.qe_auth_data,
            certification_data=self.chain_pem(chain) + b"\0",
        )
        signature_data = pack_signature_data(
            quote_signature=raw_signature(self.keys["attestation"], signed),
            attestation_key=raw_public_key(self.keys["attestation"]),
            certification_data=certification,
            certification_data_type=certification_data_type,
        )
        return pack_quote(signed, signature_data)


def _generate(directory: Path) -> None:
    generate_platform(
        directory,
        (ROOT_CN, INTERMEDIATE_CN, PCK_CN),
        qe_report,
        note="duet SIMULATED TDX platform: not Intel, gives no protection",
        pck_extensions=[pck_extension(secrets.token_bytes(16))],
    )


def _load(directory: Path) -> SimulatedTdxPlatform:
    try:
        keys, certs, params = read_platform(directory)
        return SimulatedTdxPlatform.from_files(keys, certs, params, directory=directory)
    except READ_ERRORS as exc:
        raise ConfigError(
            f"simulated TDX platform in {directory} is damaged ({exc}); move the directory away to generate a new one "
            "(verifiers will then need the new simulated root)",
            code="simulated_tdx_damaged",
        ) from None


def load_or_create_platform(directory: Path | str) -> SimulatedTdxPlatform:
    """Load the simulated TDX platform in ``directory``; create it first if absent (atomically: a
    crash or a second process never leaves a half-written platform). An existing empty directory
    is filled; one holding anything else is refused rather than overwritten."""
    directory = Path(directory)
    try:
        create_once(directory, _generate, done=(directory / PLATFORM_FILE).exists)
    except OSError as exc:
        raise ConfigError(
            f"cannot create a simulated TDX platform in {directory}: {exc.strerror}", code="simulated_tdx_unwritable"
        ) from None
    return _load(directory)
