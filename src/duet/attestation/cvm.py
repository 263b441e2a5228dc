"""What every kind of CVM evidence yields, so that the controller, the CLI and the audit treat
an SNP report, a TDX quote, an Azure vTPM (HCL) report and an Azure Attestation token alike.

Each kind (``snp/``, ``tdx/``, ``azure/``) verifies its own signatures and chains and returns a
:class:`CvmVerdict`: its steps in order (:class:`StepVerdict`, the same type the SGX pipeline
reports) and, once the evidence parsed, its :class:`CvmClaims`. What the kinds do *not* decide
is done once, in :mod:`duet.attestation.cvm_evidence`: whether the report data binds the SSH
host key and nonce the controller expected (:func:`binding`), whether the VM is the one the
cloud created, and whether the policy accepts the measurements.

Claims are plain values (hex strings, ints, bools) so that they go into the ledger's
``cvm.attested`` entry and the CLI's tables as they are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from duet.attestation.steps import PolicyCheck, StepsVerdict, StepVerdict

EvidenceKind = Literal["snp", "tdx", "azure-snp", "azure-tdx", "maa-cvm"]
EVIDENCE_KINDS: tuple[EvidenceKind, ...] = ("snp", "tdx", "azure-snp", "azure-tdx", "maa-cvm")
Platform = Literal["snp", "tdx"]

BINDING_CONTEXT = b"duet-cvm-attestation/v1"
NONCE_SIZE = 32
REPORT_DATA_SIZE = 64


def binding(host_key_blob: bytes, nonce: bytes) -> bytes:
    """The 64 report-data bytes that bind evidence to one SSH host key and one nonce (design §10):
    SHA-512("duet-cvm-attestation/v1" ‖ 0x00 ‖ SHA-256(host key blob) ‖ nonce).

    ``host_key_blob`` is the key in SSH wire format (the base64-decoded second field of an
    OpenSSH public key line); ``nonce`` is the controller's fresh 32 bytes."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"the nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    return hashlib.sha512(BINDING_CONTEXT + b"\x00" + hashlib.sha256(host_key_blob).digest() + nonce).digest()


@dataclass(frozen=True)
class CvmClaims:
    """What verified evidence says about the CVM, in the same words for every kind."""

    kind: EvidenceKind
    platform: Platform
    measurements: dict[str, str]
    """Lowercase hex by name: SNP ``measurement``; TDX ``mrtd``, ``rtmr0`` … ``rtmr3``."""
    report_data: bytes
    """The 64 bytes the binding is checked against (Azure: the runtime data's ``user-data``)."""
    debug: bool
    """SNP POLICY.DEBUG; TDX TDATTRIBUTES.DEBUG; the token's is-debuggable claim."""
    migration_allowed: bool
    """SNP POLICY.MIGRATE_MA; TDX TDATTRIBUTES.MIGRATABLE (bit 29)."""
    tcb: dict[str, int]
    """Named TCB components (SNP: ``bl_spl``, ``tee_spl``, ``snp_spl``, ``ucode_spl``,
    ``fmc_spl`` on Turin; TDX: ``tee_tcb_svn`` bytes by name), compared by the policy's minimum."""
    signer: str
    """Who signed the hardware evidence: ``VCEK``, ``VLEK``, ``PCK``, or ``MAA`` for a token."""
    simulated: bool
    """Signed by a locally made root that the user trusted explicitly: SIMULATED everywhere shown."""
    vmpl: int | None = None
    """SNP: the VMPL the report was requested at (0 is the guest's most privileged level)."""
    vm_id: str | None = None
    """Azure: ``vmUniqueId`` from the signed runtime data or token; None where the platform has none."""
    fields: dict[str, Any] = field(default_factory=dict)
    """Every other parsed field, for display (``duet evidence show``), values JSON-ready."""

    def summary(self) -> dict[str, Any]:
        """The claims as the ledger and the state answer carry them (JSON-ready)."""
        return {
            "kind": self.kind,
            "platform": self.platform,
            "measurements": dict(self.measurements),
            "report_data": self.report_data.hex(),
            "debug": self.debug,
            "migration_allowed": self.migration_allowed,
            "tcb": dict(self.tcb),
            "signer": self.signer,
            "simulated": self.simulated,
            "vmpl": self.vmpl,
            "vm_id": self.vm_id,
        }


@dataclass(frozen=True)
class CvmVerdict(StepsVerdict):
    """Every step of one evidence check, in order; ``ok`` only if none failed."""

    kind: EvidenceKind
    steps: tuple[StepVerdict, ...]
    claims: CvmClaims | None = None
    """Present whenever the evidence parsed, also when a later step failed (for display)."""
    policy: tuple[PolicyCheck, ...] = ()
    """Every policy check, once the policy step was reached (held or not)."""

    def then(self, *more: StepVerdict, policy: tuple[PolicyCheck, ...] = ()) -> CvmVerdict:
        """This verdict with ``more`` steps after its own (the binding, identity and policy)."""
        return CvmVerdict(self.kind, (*self.steps, *more), self.claims, policy or self.policy)
