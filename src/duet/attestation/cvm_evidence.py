"""One CVM evidence judgement for every caller: the kind's own steps, then the binding, the VM
identity and the policy, in that order (design §10).

The controller (at start, before ``mark in-service``, on ``duet cvm attest``), ``duet evidence
verify`` and the audit (re-verifying recorded evidence) all call :func:`judge`, so they cannot
disagree about what held. The order is fixed here, once:

1. the kind's steps (signatures and chains): nothing unverified evidence says means anything;
2. ``binding``: evidence for another SSH host key or an older nonce says nothing about the
   machine the controller is talking to (a machine in the middle, or a replay), whatever its
   measurements;
3. ``vm_identity``: where the evidence names the VM (Azure), it must be the one the cloud
   created for this CVM, or a genuine CVM of someone else's could answer in its place;
4. ``policy``: whether these measurements, this TCB and these settings may serve.

The first failure stops the rest, which are reported as not reached.
"""

from __future__ import annotations

from dataclasses import dataclass

from duet.attestation.cvm import CvmVerdict, binding
from duet.attestation.cvm_policy import DEFAULT_CVM_POLICY, CvmPolicy
from duet.attestation.steps import PolicyError, StepVerdict

STEP_BINDING = "binding"
STEP_VM_IDENTITY = "vm_identity"
STEP_POLICY = "policy"
JUDGEMENT_STEPS: tuple[str, ...] = (STEP_BINDING, STEP_VM_IDENTITY, STEP_POLICY)


@dataclass(frozen=True)
class Expected:
    """What the controller knows, independently of the evidence, about the CVM it asked."""

    host_key_blob: bytes | None
    """The SSH host key the CVM presented on this connection (wire format); None: not asked."""
    nonce: bytes | None
    """The controller's fresh 32 bytes for this attestation."""
    vm_id: str | None = None
    """The VM id the cloud API returned at creation (Azure), if any."""


def _not_reached(steps: tuple[str, ...]) -> tuple[StepVerdict, ...]:
    return tuple(StepVerdict(step, None, message="not reached") for step in steps)


def judge(verdict: CvmVerdict, expected: Expected, policy: CvmPolicy = DEFAULT_CVM_POLICY) -> CvmVerdict:
    """``verdict`` (a kind's signature steps) with the binding, identity and policy steps after
    it. Never raises for bad evidence: look at the returned verdict."""
    claims = verdict.claims
    if not verdict.ok or claims is None:
        return verdict.then(*_not_reached(JUDGEMENT_STEPS))

    if expected.host_key_blob is None or expected.nonce is None:
        bound = StepVerdict(STEP_BINDING, None, message="not asked (no host key and nonce to bind)")
    elif claims.report_data != binding(expected.host_key_blob, expected.nonce):
        failed = StepVerdict(
            STEP_BINDING,
            False,
            "binding_mismatch",
            "the evidence's report data does not bind the SSH host key this connection presented and "
            "this attestation's nonce: another machine's evidence relayed (a machine in the middle), "
            f"or older evidence replayed (report data {claims.report_data.hex()[:32]}…)",
        )
        return verdict.then(failed, *_not_reached(JUDGEMENT_STEPS[1:]))
    else:
        bound = StepVerdict(STEP_BINDING, True, message="the report data binds this connection's SSH host key and nonce")

    if expected.vm_id is None:
        identity = StepVerdict(STEP_VM_IDENTITY, None, message="not asked (the cloud gave no VM id)")
    elif claims.vm_id is None:
        identity = StepVerdict(STEP_VM_IDENTITY, None, message="this kind of evidence names no VM")
    elif claims.vm_id.lower() != expected.vm_id.lower():
        failed = StepVerdict(
            STEP_VM_IDENTITY,
            False,
            "vm_id_mismatch",
            f"the evidence comes from VM {claims.vm_id}, not from VM {expected.vm_id} that the cloud "
            "created for this CVM: another genuine CVM answered in its place",
        )
        return verdict.then(bound, failed, *_not_reached(JUDGEMENT_STEPS[2:]))
    else:
        identity = StepVerdict(STEP_VM_IDENTITY, True, message=f"the evidence names VM {claims.vm_id}, the one created")

    try:
        checks = policy.enforce(claims)
    except PolicyError as exc:
        return verdict.then(bound, identity, StepVerdict(STEP_POLICY, False, exc.code, exc.message), policy=exc.checks)
    held = StepVerdict(STEP_POLICY, True, message=f"every check of {policy.source} holds")
    return verdict.then(bound, identity, held, policy=tuple(checks))
