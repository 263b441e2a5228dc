"""The lifecycle's vocabulary and its rules, replayed from ledger entries (design.md §5, §6).

One replay serves two readers. The controller derives what it enforces (each CVM's mode,
final flag, lockdown, key, jobs, commands in flight) from its own verified ledger at start,
so no row of the database decides anything. The auditor replays the same entries and
reports every entry the rules forbid: a log that hashes correctly but shows a command
started while the CVM was in service is a finding, not a pass.

Pure: no I/O, no clock. Entries are fed in ledger order with ``apply``; unknown events are
kept in the chain but change nothing, so older auditors read newer ledgers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

# --- what a CVM is and where it runs --------------------------------------------------------

CvmType = Literal["snp", "tdx"]
CVM_TYPES: Final[tuple[CvmType, ...]] = ("snp", "tdx")
"""AMD SEV-SNP and Intel TDX."""

ProviderName = Literal["local", "azure", "aws", "gcp"]
PROVIDER_NAMES: Final[tuple[ProviderName, ...]] = ("local", "azure", "aws", "gcp")

# --- modes ---------------------------------------------------------------------------------

PROVISIONING: Final = "provisioning"
IN_UPDATE: Final = "in-update"
IN_SERVICE: Final = "in-service"
STOPPING: Final = "stopping"
STOPPED: Final = "stopped"
FAILED: Final = "failed"

ACTIVE_MODES: Final = (IN_UPDATE, IN_SERVICE)
MarkableMode = Literal["in-update", "in-service"]
MARKABLE_MODES: Final[tuple[MarkableMode, ...]] = (IN_UPDATE, IN_SERVICE)

# --- events --------------------------------------------------------------------------------

CVM_PROVISIONING: Final = "cvm.provisioning"
CVM_CREATED: Final = "cvm.created"
CVM_READY: Final = "cvm.ready"
CVM_FAILED: Final = "cvm.failed"
CVM_RESUMED: Final = "cvm.resumed"
CVM_ATTESTED: Final = "cvm.attested"
"""The controller judged the CVM's hardware evidence (design §10): ``ok``, the evidence kind,
its SHA-256 (the evidence is a blob), the claims, the policy's SHA-256, ``valid_until`` (when
``mark in-service`` must re-attest) and, on the attestation that pins it, the host key's
fingerprint. A failure (``ok`` false) voids the previous pass."""
CVM_LOCKED: Final = "cvm.locked"
CVM_STOPPING: Final = "cvm.stopping"
CVM_STOPPED: Final = "cvm.stopped"
CVM_STOP_FAILED: Final = "cvm.stop_failed"
MODE_CHANGED: Final = "mode.changed"
HOSTKEY_MISMATCH: Final = "hostkey.mismatch"
COMMAND_STARTED: Final = "command.started"
COMMAND_FINISHED: Final = "command.finished"
COMMAND_FAILED: Final = "command.failed"
COMMAND_INTERRUPTED: Final = "command.interrupted"
CONTROLLER_STARTED: Final = "controller.started"
CONTROLLER_OWNERS: Final = "controller.owners"
CONTROLLER_OWNERS_REFUSED: Final = "controller.owners_refused"
CONTROLLER_RECOVERY_FAILED: Final = "controller.recovery_failed"
"""A step of the recovery at start failed (``step``: reconcile, resume, stop; ``provider``,
``reason``); the controller started all the same. Changes no mode."""

PROPOSAL_CREATED: Final = "proposal.created"
PROPOSAL_APPROVED: Final = "proposal.approved"
PROPOSAL_REJECTED: Final = "proposal.rejected"
PROPOSAL_WITHDRAWN: Final = "proposal.withdrawn"
PROPOSAL_EXPIRED: Final = "proposal.expired"
PROPOSAL_EXECUTED: Final = "proposal.executed"
PROPOSAL_FAILED: Final = "proposal.failed"
PROPOSAL_EVENTS: Final = frozenset(
    {
        PROPOSAL_CREATED,
        PROPOSAL_APPROVED,
        PROPOSAL_REJECTED,
        PROPOSAL_WITHDRAWN,
        PROPOSAL_EXPIRED,
        PROPOSAL_EXECUTED,
        PROPOSAL_FAILED,
    }
)
"""A proposal's life (protocol/approvals.py says what each carries): named here, where the rules
of a CVM's entries are, because they may follow a lockdown (a stop may be proposed) and change
no mode; ``ProposalReplay`` recounts their votes."""

COMMAND_OUTCOMES: Final = (COMMAND_FINISHED, COMMAND_FAILED, COMMAND_INTERRUPTED)
OWNER_EVENTS: Final = frozenset({CVM_PROVISIONING, COMMAND_STARTED, MODE_CHANGED, CVM_STOPPING})
"""Events only an owner's signed request causes: their actor is an owner key, never the controller."""

CONTROLLER_SCOPE: Final = "controller"
"""The ``cvm`` filter of ledger reads for the entries about no CVM (the controller's own: starts,
owner sets, approval policies, proposals to start a CVM or change owners): a CVM's audit replays
them with the CVM's entries, in order."""

CONTROLLER_ACTOR: Final = "controller"
"""The ledger actor for what the controller does on its own; every other actor is an owner key id."""

# --- the transition table --------------------------------------------------------------------

MODE_AFTER: Final[dict[str, str]] = {
    CVM_PROVISIONING: PROVISIONING,
    CVM_READY: IN_UPDATE,
    CVM_FAILED: FAILED,
    CVM_STOPPING: STOPPING,
    CVM_STOPPED: STOPPED,
}
"""Events that move a CVM to a fixed mode (``mode.changed`` names its own)."""

ALLOWED_IN: Final[dict[str, tuple[str, ...]]] = {
    CVM_CREATED: (PROVISIONING,),
    CVM_READY: (PROVISIONING,),
    CVM_FAILED: (PROVISIONING,),
    CVM_RESUMED: ACTIVE_MODES,
    CVM_ATTESTED: (PROVISIONING, *ACTIVE_MODES),
    MODE_CHANGED: MARKABLE_MODES,
    COMMAND_STARTED: (IN_UPDATE,),
    CVM_STOPPING: (IN_UPDATE, IN_SERVICE, FAILED, STOPPING),
    CVM_STOPPED: (STOPPING,),
    CVM_STOP_FAILED: (STOPPING,),
    CVM_LOCKED: (IN_SERVICE, STOPPING),
}
"""The modes a CVM must be in for each event; anything else is a forbidden sequence.
``cvm.stopping`` in ``stopping`` is a retry, allowed only as ``RETRY_AFTER`` says."""

RETRY_AFTER: Final[dict[tuple[str, str], str]] = {(CVM_STOPPING, STOPPING): CVM_STOP_FAILED}
"""(event, mode) pairs allowed only when the CVM's last job ended with the given failure: a stop
is asked again only once the previous one ended in ``cvm.stop_failed`` (never while a stop job
runs, and once per failure). ``CvmFacts.stop_failed`` is that condition."""

MODE_CHANGES: Final = frozenset({(IN_UPDATE, IN_SERVICE), (IN_SERVICE, IN_UPDATE), (IN_SERVICE, IN_SERVICE)})
"""(previous, new) pairs ``mark`` may record; in-service → in-service only to add ``final``."""

AFTER_LOCKDOWN: Final = frozenset({CVM_STOPPING, CVM_STOPPED, CVM_STOP_FAILED})
"""Once the controller has locked itself out of a CVM, only stopping it remains."""

KEY_DESTROYING: Final = frozenset({CVM_FAILED, CVM_STOPPED})
"""Events after which the controller holds no key for the CVM (``cvm.locked`` with ok too)."""


ATTESTATION_REQUIRED: Final = "required"
ATTESTATION_OFF: Final = "off"
"""``cvm.provisioning`` says which applies to the CVM (``attestation``; absent in ledgers older than
CVM attestation: off). Off is the owner's explicit opt-out, shown to every user as unattested."""


# --- lockdown states -------------------------------------------------------------------------

LOCKDOWN_PENDING: Final = "pending"
LOCKDOWN_DONE: Final = "done"


@dataclass(frozen=True)
class Violation:
    """An entry the rules forbid: a stable code, a plain message, the entry's seq."""

    code: str
    message: str
    seq: int | None


@dataclass
class JobFacts:
    id: str
    kind: str
    """``start`` or ``stop``."""
    cvm_id: str
    status: str = "running"
    error: dict[str, str] | None = None
    created_at: str = ""
    updated_at: str = ""


@dataclass
class CvmFacts:
    """What the ledger says of one CVM, entry by entry."""

    id: str
    type: str
    provider: str
    mode: str
    created_at: str
    updated_at: str
    final: bool = False
    failure: str | None = None
    machine_sha256: str | None = None
    host_key_fingerprint: str | None = None
    key_destroyed: bool = False
    lockdown: str | None = None
    """None, ``pending`` (final, lockdown not verified yet) or ``done``."""
    lockdown_error: str | None = None
    lockdown_failures: int = 0
    """``cvm.locked`` entries with ``ok: false`` so far."""
    stop_failed: bool = False
    """The last stop ended in ``cvm.stop_failed`` and no stop was asked since: one may be (a retry)."""
    running: dict[int, str] = field(default_factory=dict)
    attestation: str = ATTESTATION_OFF
    """``required`` or ``off``, as the CVM's ``cvm.provisioning`` entry said."""
    attested: dict[str, Any] | None = None
    """The last ``cvm.attested`` entry, passing or not (None: never attested)."""
    attested_until: str | None = None
    """When the last passing attestation stops counting for ``mark in-service``; None: none counts."""
    request_digest: str | None = None
    """The signed owner request whose entries come last, and the digests of those before it."""
    past_requests: set[str] = field(default_factory=set)
    """Commands started and not yet ended: started seq → command."""


def stop_allowed(cvm: CvmFacts) -> bool:
    """Whether a ``cvm.stopping`` may be recorded for ``cvm`` now (the service's test, the replay's rule)."""
    return cvm.mode in ALLOWED_IN[CVM_STOPPING] and ((CVM_STOPPING, cvm.mode) not in RETRY_AFTER or cvm.stop_failed)


@dataclass
class LifecycleReplay:
    """Feeds ledger entries in order; keeps the derived state and the violations found.

    ``owners`` is the owner set in force; it starts as ``initial_owners`` (e.g. the attested
    identity's set, for an audit that does not see the controller's own entries) and follows
    ``controller.owners`` entries. None means not known yet: actors are then not checked.
    """

    initial_owners: Iterable[str] | None = None
    cvms: dict[str, CvmFacts] = field(default_factory=dict)
    jobs: dict[str, JobFacts] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    owners: frozenset[str] | None = None
    _owners_from_ledger: bool = field(default=False, init=False, repr=False)
    _start_requests: set[str] = field(default_factory=set, init=False, repr=False)
    _executing: dict[str | None, str] = field(default_factory=dict, init=False, repr=False)
    """Per CVM (None: operations on no CVM), the last proposal executed: its operation's entries
    carry the proposer as actor, who may have been removed since it proposed; the approvals of
    the owners in force are what let it run (``ProposalReplay`` recounts them)."""

    def __post_init__(self) -> None:
        if self.initial_owners is not None:
            self.owners = frozenset(self.initial_owners)

    def apply_all(self, entries: Iterable[dict[str, Any]]) -> LifecycleReplay:
        for entry in entries:
            self.apply(entry)
        return self

    def apply(self, entry: dict[str, Any]) -> list[Violation]:
        """Apply one entry; returns the violations it adds (also kept in ``violations``)."""
        found: list[Violation] = []
        seq = entry.get("seq") if isinstance(entry.get("seq"), int) else None
        event = entry.get("event")
        if not isinstance(event, str):
            return found

        def violation(code: str, message: str) -> None:
            found.append(Violation(code, message, seq))

        actor, cvm, digest = entry.get("actor"), entry.get("cvm"), entry.get("request_digest")
        if event == PROPOSAL_EXECUTED and isinstance(digest, str):
            self._executing[cvm if isinstance(cvm, str) else None] = digest
        executes = isinstance(digest, str) and digest in (
            self._executing.get(cvm if isinstance(cvm, str) else None),
            self._executing.get(None),
        )
        if event in OWNER_EVENTS and actor == CONTROLLER_ACTOR:
            violation("unknown_actor", f"{event} names the controller as its actor; only an owner's signed request causes it")
        if actor != CONTROLLER_ACTOR and self.owners is not None and actor not in self.owners and not executes:
            violation("unknown_actor", f"{event} was signed by {str(actor)[:16]}…, which is not in the owner set in force")
        if event == CONTROLLER_STARTED:
            resumed = entry.get("resumed_from")
            if resumed != seq:
                violation(
                    "resumed_elsewhere",
                    f"the controller says it resumed from {resumed!r} entries, but its start entry is entry {seq}: "
                    "entries were added or removed between two runs",
                )
        elif event == CONTROLLER_OWNERS:
            owners = entry.get("owners")
            new = frozenset(o for o in owners if isinstance(o, str)) if isinstance(owners, list) else frozenset()
            governed = actor != CONTROLLER_ACTOR  # an owner's signed owners.change: ProposalReplay recounts its approvals
            if self.owners is not None and self._owners_from_ledger and new != self.owners and not governed:
                violation(
                    "owners_changed",
                    "the owner set changed without a governed change: the ledger shows "
                    f"{len(self.owners)} owner(s) before and {len(new)} after, with no approvals",
                )
            self.owners, self._owners_from_ledger = new, True
        cvm_id = entry.get("cvm")
        if isinstance(cvm_id, str):
            self._apply_cvm(cvm_id, event, entry, seq, violation)
        self.violations.extend(found)
        return found

    def _apply_cvm(self, cvm_id: str, event: str, entry: dict[str, Any], seq: int | None, violation: Any) -> None:
        time = str(entry.get("time") or "")
        cvm = self.cvms.get(cvm_id)
        if event == CVM_PROVISIONING:
            if cvm is not None:
                violation("cvm_reused", f"CVM {cvm_id[:16]}… is provisioned a second time")
            digest = entry.get("request_digest")
            if isinstance(digest, str) and entry.get("protocol") != "seed":
                if digest in self._start_requests:
                    violation("request_replayed", f"the owner's start request {digest[:16]}… started a second CVM (a replay)")
                self._start_requests.add(digest)
            self.cvms[cvm_id] = CvmFacts(
                id=cvm_id,
                type=str(entry.get("type")),
                provider=str(entry.get("provider")),
                mode=PROVISIONING,
                created_at=time,
                updated_at=time,
                attestation=ATTESTATION_REQUIRED if entry.get("attestation") == ATTESTATION_REQUIRED else ATTESTATION_OFF,
            )
            job = entry.get("job")
            if isinstance(job, str):
                self.jobs[job] = JobFacts(job, "start", cvm_id, created_at=time, updated_at=time)
            return
        if cvm is None:
            violation("unknown_cvm", f"{event} about CVM {cvm_id[:16]}…, which was never provisioned")
            return
        if cvm.lockdown == LOCKDOWN_DONE and event not in AFTER_LOCKDOWN and event not in PROPOSAL_EVENTS:
            violation(
                "after_lockdown", f"{event} after the controller locked itself out of CVM {cvm_id[:16]}…; only a stop may follow"
            )
        allowed = ALLOWED_IN.get(event)
        if allowed is not None and cvm.mode not in allowed:
            what = "a command started" if event == COMMAND_STARTED else event
            violation(
                "forbidden_in_mode" if event != COMMAND_STARTED else "command_outside_update",
                f"{what} while CVM {cvm_id[:16]}… was {cvm.mode} (allowed only in {', '.join(allowed)})",
            )
        if (event, cvm.mode) in RETRY_AFTER and not cvm.stop_failed:
            violation(
                "forbidden_in_mode",
                f"{event} while CVM {cvm_id[:16]}… was {cvm.mode} and its last job had not ended in "
                f"{RETRY_AFTER[event, cvm.mode]}: only a failed stop may be retried, once per failure",
            )
        if event == CVM_STOPPING and entry.get("previous") != cvm.mode:
            violation("forbidden_transition", f"cvm.stopping says the CVM was {entry.get('previous')!r}, but it was {cvm.mode}")
        if event in (MODE_CHANGED, CVM_STOPPING) and cvm.running:
            violation(
                "changed_during_command",
                f"{event} while command entry {min(cvm.running)} of CVM {cvm_id[:16]}… was still running: the per-CVM "
                "lock lets no mode change overtake a command",
            )
        if event in OWNER_EVENTS and entry.get("protocol") != "seed":
            self._check_once(cvm, entry.get("request_digest"), violation)
        if cvm.attestation == ATTESTATION_REQUIRED:
            self._check_attested(cvm, event, entry, time, violation)
        if event in MODE_AFTER:
            cvm.mode = MODE_AFTER[event]
            cvm.updated_at = time
        if event == CVM_RESUMED and cvm.host_key_fingerprint not in (None, entry.get("host_key_fingerprint")):
            violation(
                "host_key_changed",
                f"CVM {cvm_id[:16]}… resumed with host key {entry.get('host_key_fingerprint')}, not the pinned "
                f"{cvm.host_key_fingerprint}: the controller would be talking to another machine",
            )
        if event == CVM_CREATED or event == CVM_RESUMED:
            cvm.machine_sha256 = _str(entry.get("machine_sha256"))
            cvm.host_key_fingerprint = _str(entry.get("host_key_fingerprint"))
        elif event == CVM_READY:
            self._end_job(cvm_id, "start", "succeeded", None, time)
        elif event == CVM_ATTESTED:
            self._attested(cvm, entry, violation)
        elif event == CVM_FAILED:
            cvm.failure = _str(entry.get("reason"))
            code = _str(entry.get("code")) or "start_failed"
            self._end_job(cvm_id, "start", "failed", {"code": code, "message": cvm.failure or ""}, time)
        elif event == MODE_CHANGED:
            self._mode_changed(cvm, entry, violation)
            cvm.updated_at = time
        elif event == CVM_LOCKED:
            if not cvm.final:
                violation("forbidden_in_mode", f"cvm.locked on CVM {cvm_id[:16]}…, which was never marked final")
            if entry.get("ok") is True:
                cvm.lockdown, cvm.lockdown_error = LOCKDOWN_DONE, None
            else:
                cvm.lockdown_error = _str(entry.get("error")) or "unknown"
                cvm.lockdown_failures += 1
        elif event == CVM_STOPPING:
            cvm.stop_failed = False
            job = entry.get("job")
            if isinstance(job, str):
                self.jobs[job] = JobFacts(job, "stop", cvm_id, created_at=time, updated_at=time)
        elif event == CVM_STOPPED:
            self._end_job(cvm_id, "stop", "succeeded", None, time)
        elif event == CVM_STOP_FAILED:
            cvm.stop_failed = True
            self._end_job(cvm_id, "stop", "failed", {"code": "stop_failed", "message": _str(entry.get("reason")) or ""}, time)
        elif event == COMMAND_STARTED and seq is not None:
            cvm.running[seq] = str(entry.get("command"))
        elif event in COMMAND_OUTCOMES:
            started = entry.get("started_seq")
            if not isinstance(started, int) or cvm.running.pop(started, None) is None:
                violation(
                    "orphan_outcome", f"{event} names command entry {started!r}, which is not a running command of this CVM"
                )
        if event in KEY_DESTROYING or (event == CVM_LOCKED and entry.get("ok") is True) or entry.get("key_destroyed") is True:
            cvm.key_destroyed = True

    @staticmethod
    def _check_attested(cvm: CvmFacts, event: str, entry: dict[str, Any], time: str, violation: Any) -> None:
        """A CVM under attestation reaches in-update, and goes in-service, only on a passing
        attestation that still counts (design §10, the gate)."""
        if event == CVM_READY and cvm.attested_until is None:
            violation("unattested_ready", f"CVM {cvm.id[:16]}… became ready without a passing attestation")
        if event == MODE_CHANGED and entry.get("mode") == IN_SERVICE and cvm.mode == IN_UPDATE:
            if cvm.attested_until is None or time > cvm.attested_until:
                when = (
                    "without a passing attestation"
                    if cvm.attested_until is None
                    else f"after its attestation expired ({cvm.attested_until})"
                )
                violation("unattested_service", f"CVM {cvm.id[:16]}… went in-service {when}")

    @staticmethod
    def _attested(cvm: CvmFacts, entry: dict[str, Any], violation: Any) -> None:
        cvm.attested = entry
        if entry.get("ok") is not True:
            cvm.attested_until = None
            return
        cvm.attested_until = _str(entry.get("valid_until"))
        if entry.get("pinned") is True:  # the machine record now holds the key the evidence bound
            cvm.machine_sha256 = _str(entry.get("machine_sha256"))
        presented = _str(entry.get("host_key_fingerprint"))
        if presented is None:
            return
        if cvm.host_key_fingerprint is None:
            cvm.host_key_fingerprint = presented  # born in the CVM, pinned by this evidence
        elif presented != cvm.host_key_fingerprint:
            violation(
                "host_key_changed",
                f"CVM {cvm.id[:16]}… attested with host key {presented}, not the pinned {cvm.host_key_fingerprint}: "
                "the controller would be talking to another machine",
            )

    @staticmethod
    def _mode_changed(cvm: CvmFacts, entry: dict[str, Any], violation: Any) -> None:
        previous, new, final = entry.get("previous"), entry.get("mode"), entry.get("final") is True
        if previous != cvm.mode:
            violation("forbidden_transition", f"mode.changed says the CVM was {previous!r}, but it was {cvm.mode}")
        if cvm.mode in MARKABLE_MODES and (cvm.mode, new) not in MODE_CHANGES:
            violation("forbidden_transition", f"mode change {cvm.mode} → {new!r} is not allowed")
        if cvm.final and new == IN_UPDATE:
            violation("final_reopened", f"CVM {cvm.id[:16]}… was marked final, yet returned to in-update")
        if cvm.final and not final:
            violation("final_reopened", f"CVM {cvm.id[:16]}… lost its final flag")
        if final and new != IN_SERVICE and not cvm.final:
            violation("forbidden_transition", f"mode change to {new!r} marked final: only in-service can be final")
        if (cvm.mode, new) == (IN_SERVICE, IN_SERVICE) and (cvm.final or not final):
            violation("forbidden_transition", "in-service → in-service changes nothing unless it adds final")
        if isinstance(new, str) and new in MARKABLE_MODES:
            cvm.mode = new
        if final and not cvm.final and new == IN_SERVICE:
            cvm.final, cvm.lockdown = True, LOCKDOWN_PENDING

    @staticmethod
    def _check_once(cvm: CvmFacts, digest: Any, violation: Any) -> None:
        """A signed owner request is accepted once: its entries follow one another (a run of
        several commands shares one digest); the same digest after another request's is a replay.
        (Seed-protocol requests carry no nonce and may repeat by design; they are not checked.)"""
        if not isinstance(digest, str):
            return
        if digest == cvm.request_digest:
            return
        if digest in cvm.past_requests:
            violation("request_replayed", f"the owner request {digest[:16]}… was accepted a second time (a replay)")
        if cvm.request_digest is not None:
            cvm.past_requests.add(cvm.request_digest)
        cvm.request_digest = digest

    def _end_job(self, cvm_id: str, kind: str, status: str, error: dict[str, str] | None, time: str) -> None:
        for job in self.jobs.values():
            if job.cvm_id == cvm_id and job.kind == kind and job.status == "running":
                job.status, job.error, job.updated_at = status, error, time


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
