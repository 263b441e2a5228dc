"""One SGX evidence check for every front end: signatures, then report data, then policy.

``duet verify`` (the client judging a controller) and ``duet evidence verify`` (a quote
offline) both call :func:`verify_evidence`, so they cannot disagree about what held: each gets
the same step verdicts and only words them for its reader. The order is fixed here, once:

1. the verification steps (:data:`~duet.attestation.sgx.verify.SIGNATURE_STEPS`: signatures,
   chain, revocation, quoting enclave identity, TCB level): nothing an unverified quote says
   means anything; a step whose collateral was not given is reported as not evaluated;
2. ``report_data``: evidence about another identity (a replay) says nothing about this one,
   whatever its measurements, so the binding is checked before the measurements are judged;
3. ``policy``: whether this enclave, and the TCB status the collateral gave, are acceptable.

The first failure stops the rest, which are reported as not reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Union

import duet.attestation.sgx.verify as quote_checks
from duet.attestation.sgx.abi import ParsedQuote
from duet.attestation.sgx.collateral import NO_COLLATERAL, Collateral
from duet.attestation.sgx.policy import DEFAULT_POLICY, Policy, PolicyCheck, PolicyError
from duet.attestation.steps import StepsVerdict, StepVerdict
from duet.keys import PublicKey

STEP_REPORT_DATA = "report_data"
STEP_POLICY = "policy"
EVIDENCE_STEPS: tuple[str, ...] = (*quote_checks.SIGNATURE_STEPS, STEP_REPORT_DATA, STEP_POLICY)

_HELD = {
    quote_checks.STEP_PARSE: "a well-formed SGX DCAP v3 quote",
    quote_checks.STEP_PCK_CHAIN: "the PCK certificate chain ends at a trusted root key",
    quote_checks.STEP_QE_REPORT_SIGNATURE: "the PCK key signed the quoting enclave's report",
    quote_checks.STEP_ATTESTATION_KEY_BINDING: "the quoting enclave's report binds the attestation key",
    quote_checks.STEP_PCK_REVOCATION: "no certificate of the PCK chain is revoked",
    quote_checks.STEP_QE_IDENTITY: "the quoting enclave is the expected one",
    quote_checks.STEP_ENCLAVE_SIGNATURE: "the attestation key signed the enclave's report",
    quote_checks.STEP_TCB_LEVEL: "the collateral gives the TCB level",
    STEP_REPORT_DATA: "REPORTDATA is the expected binding",
    STEP_POLICY: "every check of the policy holds",
}


@dataclass(frozen=True)
class EvidenceVerdict(StepsVerdict):
    """Every step of :data:`EVIDENCE_STEPS`, in order; ``ok`` only if none failed."""

    steps: tuple[StepVerdict, ...]
    signatures: quote_checks.Verdict = field(repr=False)
    """The signature verdict (parsed quote, verified PCK chain)."""
    policy: tuple[PolicyCheck, ...] = ()
    """Every policy check, once the policy step was reached (held or not)."""

    @property
    def quote(self) -> ParsedQuote | None:
        """The parsed quote, whenever it parsed (also when a later step failed)."""
        return self.signatures.quote


def check_report_data(quote: ParsedQuote, expected: bytes) -> None:
    """Require REPORTDATA == ``expected`` (64 bytes); raises ``report_data_mismatch`` otherwise."""
    if len(expected) != 64:
        raise ValueError(f"expected report data must be 64 bytes, got {len(expected)}")
    actual = quote.report_body.report_data
    if actual != expected:
        raise quote_checks.QuoteVerificationError(
            f"REPORTDATA does not match the expected binding: expected {expected.hex()}, quote has {actual.hex()}",
            code="report_data_mismatch",
            step=STEP_REPORT_DATA,
        )


def _signature_steps(signatures: quote_checks.Verdict) -> list[StepVerdict]:
    failed = (
        len(quote_checks.SIGNATURE_STEPS) if signatures.ok else quote_checks.SIGNATURE_STEPS.index(signatures.failed_step or "")
    )
    notes = {step: (evaluated, message) for step, evaluated, message in signatures.notes}
    out = []
    for i, step in enumerate(quote_checks.SIGNATURE_STEPS):
        if i < failed:
            evaluated, message = notes.get(step, (True, _HELD[step]))
            out.append(StepVerdict(step, True if evaluated else None, message=message))
        elif i == failed:
            out.append(StepVerdict(step, False, signatures.code, signatures.message))
        else:
            out.append(StepVerdict(step, None, message="not reached"))
    return out


def verify_evidence(
    quote: Union[bytes, ParsedQuote],
    *,
    trusted_root_keys: Sequence[PublicKey],
    now: datetime,
    report_data: bytes | None = None,
    policy: Policy = DEFAULT_POLICY,
    collateral: Collateral = NO_COLLATERAL,
) -> EvidenceVerdict:
    """Judge an SGX quote in the order of the module docstring, at time ``now``.

    ``report_data`` (64 bytes) is what REPORTDATA must be; without it that step is not asked.
    ``collateral`` (Intel's QE identity, TCB info, CRLs) is optional; what it lacks is reported
    as not evaluated. Never raises for bad evidence: look at the verdict.
    """
    signatures = quote_checks.verify_quote(quote, trusted_root_keys=trusted_root_keys, now=now, collateral=collateral)
    steps = _signature_steps(signatures)
    if not signatures.ok or signatures.quote is None:
        steps += [StepVerdict(s, None, message="not reached") for s in (STEP_REPORT_DATA, STEP_POLICY)]
        return EvidenceVerdict(tuple(steps), signatures)
    parsed = signatures.quote

    if report_data is None:
        steps.append(StepVerdict(STEP_REPORT_DATA, None, message="not asked"))
    else:
        try:
            check_report_data(parsed, report_data)
        except quote_checks.QuoteVerificationError as exc:
            steps += [
                StepVerdict(STEP_REPORT_DATA, False, exc.code, exc.message),
                StepVerdict(STEP_POLICY, None, message="not reached"),
            ]
            return EvidenceVerdict(tuple(steps), signatures)
        steps.append(StepVerdict(STEP_REPORT_DATA, True, message=_HELD[STEP_REPORT_DATA]))

    try:
        checks = policy.enforce(parsed, tcb=signatures.tcb)
    except PolicyError as exc:
        steps.append(StepVerdict(STEP_POLICY, False, exc.code, exc.message))
        return EvidenceVerdict(tuple(steps), signatures, exc.checks)
    steps.append(StepVerdict(STEP_POLICY, True, message=_HELD[STEP_POLICY]))
    return EvidenceVerdict(tuple(steps), signatures, tuple(checks))
