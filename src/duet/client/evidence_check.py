"""The audit's check of a recorded CVM attestation: the evidence itself, verified again here.

A ``cvm.attested`` entry says what the controller concluded; the evidence blob it names lets
anyone check that conclusion offline, against the roots *they* trust. A passing entry must be
backed by evidence that verifies (signatures, chain to a trusted root) and binds the host key
and nonce the entry records, and the claims the entry shows must be the evidence's own. The
policy is not re-applied (an auditor has its hash, not the file): its verdict stands as the
controller recorded it, the claims it judged are checked.
"""

from __future__ import annotations

import hashlib
from typing import Any

from duet.attestation.bundle import BundleFormatError, CvmRoots, parse_bundle, verify_bundle
from duet.attestation.cvm import Platform
from duet.attestation.cvm_evidence import STEP_POLICY, STEP_VM_IDENTITY, Expected, judge
from duet.attestation.cvm_policy import CvmPolicy
from duet.errors import ConfigError
from duet.protocol.canonical import parse_timestamp
from duet.remote.ssh import host_key_blob

_ANY = CvmPolicy(allow_debug=True, allow_migration=True, source="no policy (the audit checks the claims instead)")
_CLAIMS = ("measurements", "tcb", "debug", "migration_allowed", "signer", "vm_id")


def recheck(entry: dict[str, Any], evidence: bytes, roots: CvmRoots) -> str | None:
    """What is wrong with a passing ``cvm.attested`` entry given its evidence; None if nothing."""
    if hashlib.sha256(evidence).hexdigest() != entry.get("evidence_sha256"):
        return "the evidence served does not hash to the SHA-256 the entry records"
    try:
        bundle = parse_bundle(evidence)
        nonce = bytes.fromhex(str(entry.get("nonce")))
        key = host_key_blob(str(entry.get("host_key")))
        when = parse_timestamp(str(entry.get("time")))
    except (BundleFormatError, ConfigError, ValueError) as exc:
        return f"the recorded attestation cannot be read: {exc}"
    platform: Platform = "tdx" if str(entry.get("kind", "")).endswith("tdx") else "snp"
    verdict = judge(verify_bundle(bundle, roots=roots, now=when, expected=platform), Expected(key, nonce), _ANY)
    failure = next((s for s in verdict.steps if s.ok is False and s.step not in (STEP_POLICY, STEP_VM_IDENTITY)), None)
    if failure is not None:
        simulated = " (SIMULATED evidence: pass its roots with --cvm-roots to trust it)" if entry.get("simulated") else ""
        return f"the evidence does not verify here: {failure.step} ({failure.code}): {failure.message}{simulated}"
    assert verdict.claims is not None
    shown = verdict.claims.summary()
    differing = [name for name in _CLAIMS if name in entry and entry[name] != shown[name]]
    if differing:
        return f"the entry's {', '.join(differing)} differ from what its evidence says"
    return None
