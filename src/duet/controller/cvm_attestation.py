"""Attesting a CVM (design §10): collect its evidence over SSH, judge it, say what to record.

The controller picks a fresh nonce and runs the collection program (``duet/guest/
collect_evidence.py``, sent with the command: the CVM needs only ``python3``) on the very
connection whose host key it will pin. The program binds the CVM's own host key and the nonce
into the hardware's report data; the judgement (:func:`~duet.attestation.cvm_evidence.judge`)
then checks the binding against the key *this connection presented*, so evidence relayed from
another machine, or replayed, fails. The service records the outcome (``cvm.attested``) and,
on the first pass, pins the key.

Nothing here writes: the service owns the transaction that stores the evidence blob, appends
the entry and pins the key together.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from duet.attestation.bundle import MAX_BUNDLE_BYTES, BundleFormatError, CvmRoots, parse_bundle, verify_bundle
from duet.attestation.cvm import CvmVerdict, EvidenceKind, Platform
from duet.attestation.cvm_evidence import Expected, judge
from duet.attestation.cvm_policy import CvmPolicy
from duet.attestation.steps import StepVerdict
from duet.protocol.canonical import timestamp
from duet.providers.base import EvidenceSource
from duet.remote.ssh import ExecResult, fingerprint, host_key_blob

STEP_COLLECT = "collect"
COLLECT_TIMEOUT_S = 60.0
"""The vTPM needs a few seconds to refresh its report; a simulated guest makes keys once."""
_SCRIPT = resources.files("duet.guest").joinpath("collect_evidence.py").read_bytes()
_LAUNCH = "import base64,sys;exec(base64.b64decode(sys.argv.pop(1)))"

SshRun = Callable[[str], Awaitable[ExecResult]]
"""Runs one command on the CVM being attested (on the connection to pin) and returns its result."""


def collection_command(source: EvidenceSource, nonce: bytes) -> str:
    """The shell command that runs the collection program on the CVM, the program inline."""
    args = ["--source", source.source, "--nonce", nonce.hex(), "--host-key-file", source.host_key_file]
    if source.simulator:
        args += ["--simulator", shlex.join(source.simulator)]
    program = base64.b64encode(_SCRIPT).decode("ascii")
    command = f"python3 -c {shlex.quote(_LAUNCH)} {program} {shlex.join(args)}"
    if source.privileged:
        return f'if [ "$(id -u)" = 0 ]; then {command}; else sudo -n {command}; fi'
    return command


@dataclass(frozen=True)
class Attestation:
    """One attempt, judged: what the ledger records and what the service decides from."""

    verdict: CvmVerdict
    evidence: bytes
    """The bundle as the CVM printed it (stored as a blob; empty when nothing usable came back)."""
    host_key: str
    """The host key the connection presented (OpenSSH line): pinned when the verdict passes."""
    nonce: bytes
    attested_at: datetime
    policy: CvmPolicy

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    @property
    def evidence_sha256(self) -> str | None:
        return hashlib.sha256(self.evidence).hexdigest() if self.evidence else None

    @property
    def valid_until(self) -> datetime:
        return self.attested_at + timedelta(seconds=self.policy.max_evidence_age_s)

    def entry_fields(self) -> dict[str, Any]:
        """The ``cvm.attested`` entry's fields (the service adds pinning and machine digest)."""
        claims = self.verdict.claims
        failure = self.verdict.failure
        fields: dict[str, Any] = {
            "ok": self.ok,
            "kind": self.verdict.kind,
            "simulated": bool(claims and claims.simulated),
            "evidence_sha256": self.evidence_sha256,
            "policy_sha256": self.policy.sha256,
            "nonce": self.nonce.hex(),
            "host_key": self.host_key or None,
            "steps": [[s.step, s.ok] for s in self.verdict.steps],
        }
        if claims is not None:
            summary = claims.summary()
            fields.update({k: summary[k] for k in ("measurements", "tcb", "debug", "migration_allowed", "signer", "vm_id")})
        if failure is not None:
            fields.update(step=failure.step, code=failure.code, reason=failure.message[:4000])
        else:
            fields["valid_until"] = timestamp(self.valid_until)
        return fields


def _failed(kind: EvidenceKind, code: str, message: str) -> CvmVerdict:
    return CvmVerdict(kind, (StepVerdict(STEP_COLLECT, False, code, message),))


def _kind_of(source: EvidenceSource, platform: Platform) -> EvidenceKind:
    if source.source == "azure-vtpm":
        return "azure-tdx" if platform == "tdx" else "azure-snp"
    return platform


async def attest(
    run: SshRun,
    source: EvidenceSource,
    *,
    platform: Platform,
    roots: CvmRoots,
    policy: CvmPolicy,
    vm_id: str | None,
    now: Callable[[], float],
) -> Attestation:
    """Collect and judge one attestation of a CVM of type ``platform``. Raises only what
    ``run`` raises (the CVM unreachable); bad or missing evidence is a failed verdict."""
    nonce = os.urandom(32)
    outcome = await run(collection_command(source, nonce))
    attested_at = datetime.fromtimestamp(now(), UTC)
    kind = _kind_of(source, platform)
    if outcome.exit_status != 0:
        said = outcome.stderr.decode(errors="replace").strip()[-500:] or "no message"
        ended = "timed out" if outcome.timed_out else f"exited {outcome.exit_status}"
        verdict = _failed(kind, "collection_failed", f"the evidence collection program {ended} on the CVM: {said}")
        return Attestation(verdict, b"", outcome.host_key, nonce, attested_at, policy)
    evidence = outcome.stdout.strip()
    if outcome.stdout_truncated:
        verdict = _failed(kind, "evidence_too_large", f"the CVM printed more than {MAX_BUNDLE_BYTES} bytes of evidence")
        return Attestation(verdict, b"", outcome.host_key, nonce, attested_at, policy)
    try:
        bundle = parse_bundle(evidence)
    except BundleFormatError as exc:
        return Attestation(_failed(kind, exc.code, exc.message), evidence, outcome.host_key, nonce, attested_at, policy)
    if not outcome.host_key:  # never judge without the key to bind: "not asked" would pass
        verdict = _failed(kind, "no_host_key", "the SSH layer did not say which host key the CVM presented")
        return Attestation(verdict, evidence, outcome.host_key, nonce, attested_at, policy)
    verified = await asyncio.to_thread(verify_bundle, bundle, roots=roots, now=attested_at, expected=platform)
    expected = Expected(host_key_blob(outcome.host_key), nonce, vm_id)
    return Attestation(judge(verified, expected, policy), evidence, outcome.host_key, nonce, attested_at, policy)


def host_key_fingerprint(attestation: Attestation) -> str | None:
    return fingerprint(attestation.host_key) if attestation.host_key else None
