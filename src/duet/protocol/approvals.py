"""M-of-N approvals: the policy, proposals as a pure state machine, their ledger events and the
recount an auditor (and the controller at start) replays (design.md §11; docs/approvals.md).

Three parts, all pure (no I/O, no clock: ``now`` is always given):

1. **The approval policy**: per operation (:data:`OPERATIONS`), how many distinct owners must
   sign. TOML (``[thresholds]``), parsed strictly, hashed over its canonical JSON (RFC 8785) for
   the identity document and the ledger. Default: 1 for everything (one owner acts alone).
2. **Proposals**: a signed request whose operation needs more than its signer becomes a
   :class:`Proposal` (its id is the request's digest; the proposer's signature is its first
   approval). :func:`approve`, :func:`reject`, :func:`withdraw` decide a vote given the policy
   and owner set in force, ``now`` and the CVM's current mode, and either return the proposal
   after the vote or raise a typed refusal (each with its own code). Votes are recounted
   against the owner set in force every time, so a removed owner's approvals stop counting.
   The vote that meets the threshold moves the proposal to ``approved`` and says ``ready``:
   that happens once, whatever the order of the votes; the controller then executes it (the
   same lock) and records :func:`executed` or :func:`fail`.
3. **Ledger events and** :class:`ProposalReplay`: the entries a proposal leaves
   (``proposal.*``, ``controller.policy``), the builders that make them from the state machine,
   and a replay that, fed entries in ledger order like ``LifecycleReplay``, rebuilds every
   proposal and reports each entry the rules forbid (an operation executed without its quorum
   under the policy and owner set in force at that seq, a vote by a non-owner, twice, after
   the close, ...).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final

from duet import keys
from duet.errors import ConfigError, Conflict, DuetError, Forbidden, InvalidParams, NotFound
from duet.protocol import lifecycle as lc
from duet.protocol.canonical import canonical, is_hex64, parse_timestamp, sha256_hex, timestamp
from duet.protocol.envelope import b64decode, request_digest
from duet.protocol.lifecycle import Violation

# --- operations ------------------------------------------------------------------------------

CVM_START: Final = "cvm.start"
CVM_RUN: Final = "cvm.run"
CVM_MARK_IN_UPDATE: Final = "cvm.mark.in-update"
CVM_MARK_IN_SERVICE: Final = "cvm.mark.in-service"
CVM_MARK_FINAL: Final = "cvm.mark.final"
CVM_STOP: Final = "cvm.stop"
OWNERS_CHANGE: Final = "owners.change"
POLICY_CHANGE: Final = "policy.change"

OPERATIONS: Final[tuple[str, ...]] = (
    CVM_START,
    CVM_RUN,
    CVM_MARK_IN_UPDATE,
    CVM_MARK_IN_SERVICE,
    CVM_MARK_FINAL,
    CVM_STOP,
    OWNERS_CHANGE,
    POLICY_CHANGE,
)
"""The governed operations, as a policy names them. ``cvm.mark`` is three: back to in-update,
to in-service, and to in-service for good (``--final``)."""

CVM_OPERATIONS: Final = frozenset({CVM_RUN, CVM_MARK_IN_UPDATE, CVM_MARK_IN_SERVICE, CVM_MARK_FINAL, CVM_STOP})
"""Operations on an existing CVM (``params.cvm_id``): their proposals are bound to the CVM's mode."""

APPROVE_OP: Final = "proposal.approve"
REJECT_OP: Final = "proposal.reject"
WITHDRAW_OP: Final = "proposal.withdraw"
VOTE_OPS: Final = (APPROVE_OP, REJECT_OP, WITHDRAW_OP)
"""The signed requests that vote on a proposal; their params are ``{"proposal_id": <id>}``
(a rejection may add ``"reason"``, at most :data:`MAX_REASON_CHARS` characters)."""

UNGOVERNED_OPS: Final = frozenset({"cvm.attest", *VOTE_OPS})
"""Signed requests one owner may always send: ``cvm.attest`` changes no mode (the controller
judges the evidence), and a vote is itself one owner's signature."""

MAX_REASON_CHARS: Final = 500

# --- proposal statuses -----------------------------------------------------------------------

PENDING: Final = "pending"
APPROVED: Final = "approved"
"""The threshold is met and the controller is executing it (under the lock); a proposal found
``approved`` with no outcome at start was interrupted: it is recorded as failed, never re-run."""
EXECUTED: Final = "executed"
REJECTED: Final = "rejected"
WITHDRAWN: Final = "withdrawn"
EXPIRED: Final = "expired"
FAILED: Final = "failed"
STATUSES: Final = (PENDING, APPROVED, EXECUTED, REJECTED, WITHDRAWN, EXPIRED, FAILED)
CLOSED: Final = frozenset({EXECUTED, REJECTED, WITHDRAWN, EXPIRED, FAILED})
"""Statuses no vote changes any more."""

DEFAULT_PROPOSAL_TTL_S: Final = 24 * 3600
MAX_PROPOSAL_TTL_S: Final = 7 * 24 * 3600
"""A proposal expires after the policy's ``proposal_ttl_s`` (default 24 h); never later than 7 days."""

INLINE_REQUEST_MAX_BYTES: Final = 16_384
"""A proposed request whose canonical form is larger is not copied into ``proposal.created``
(``request`` is null): the controller keeps JCS(request) as the blob addressed by its digest,
the proposal id, so ``GET /v1/blobs/<id>`` serves it and anyone can hash it back to the id."""

# --- ledger events ---------------------------------------------------------------------------

PROPOSAL_CREATED: Final = lc.PROPOSAL_CREATED
"""actor: the proposer; request_digest: the proposal id. ``proposal`` (id), ``operation``, ``op``,
``request`` (the signed request's body, or null when larger than :data:`INLINE_REQUEST_MAX_BYTES`),
``signature`` (the proposer's, base64), ``expires_at``, ``cvm_mode``, ``cvm_mode_seq``, ``cvm_final``
(what the proposal is bound to; null for operations on no CVM), ``threshold`` and
``policy_sha256`` (the policy in force at creation; informative)."""
PROPOSAL_APPROVED: Final = lc.PROPOSAL_APPROVED
"""actor: the approving owner; request_digest: the digest of its signed ``proposal.approve``
request. ``proposal``, ``request`` and ``signature`` (the approval as signed), ``approvals``
(valid approvals after this one), ``threshold``, ``ready`` (this approval met the threshold)."""
PROPOSAL_REJECTED: Final = lc.PROPOSAL_REJECTED
"""One owner's rejection (a vote, like an approval): ``proposal``, ``request``, ``signature``,
``rejections`` (valid rejections after this one), ``closed`` (the threshold can no longer be met:
the proposal is rejected)."""
PROPOSAL_WITHDRAWN: Final = lc.PROPOSAL_WITHDRAWN
"""actor: the proposer; request_digest: its ``proposal.withdraw`` request. ``proposal``, ``request``, ``signature``."""
PROPOSAL_EXPIRED: Final = lc.PROPOSAL_EXPIRED
"""actor: the controller. ``proposal``, ``expires_at``."""
PROPOSAL_EXECUTED: Final = lc.PROPOSAL_EXECUTED
"""actor: the controller; request_digest: the proposal id. ``proposal``, ``operation``,
``approvers`` (the owners whose approvals counted, sorted) and ``approvals`` (their approval
digests, same order), ``threshold``, ``policy_sha256``. The operation's own entries follow,
as for a request signed by the proposer alone (actor: the proposer, request_digest: the id)."""
PROPOSAL_FAILED: Final = lc.PROPOSAL_FAILED
"""actor: the controller; request_digest: the proposal id. ``proposal``, ``code``
(``cvm_mode_changed``, ``interrupted``, or the refusal the execution met, e.g. ``unattested``),
``reason`` (a sentence)."""
CONTROLLER_POLICY: Final = "controller.policy"
"""The approval policy in force from this entry on: ``policy`` (its canonical dict) and
``policy_sha256``. The first one (first start) is the controller's (actor ``controller``); any
later one is a ``policy.change``: actor the proposer, request_digest its request (the proposal id)."""

PROPOSAL_EVENTS: Final = lc.PROPOSAL_EVENTS
VOTE_EVENTS: Final = {PROPOSAL_APPROVED: APPROVE_OP, PROPOSAL_REJECTED: REJECT_OP, PROPOSAL_WITHDRAWN: WITHDRAW_OP}

# --- the policy --------------------------------------------------------------------------------

_POLICY_KEYS = frozenset({"thresholds", "proposal_ttl_s"})


def _bad_policy(source: str, message: str, code: str = "bad_approval_policy") -> ConfigError:
    return ConfigError(f"{source}: {message}", code=code)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ApprovalPolicy:
    """How many distinct owners must sign each operation, and how long a proposal waits."""

    thresholds: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(OPERATIONS, 1))
    """Every operation of :data:`OPERATIONS`, each at least 1."""
    proposal_ttl_s: int = DEFAULT_PROPOSAL_TTL_S
    source: str = field(default="the default approval policy", compare=False)

    def threshold(self, operation: str) -> int:
        """Distinct owner signatures ``operation`` needs (1 for an operation the policy does not name)."""
        return self.thresholds.get(operation, 1)

    def needs_approvals(self, operation: str | None) -> bool:
        """Whether a request for ``operation`` becomes a proposal (more than its signer needed)."""
        return operation is not None and self.threshold(operation) > 1

    @classmethod
    def from_dict(cls, data: Any, source: str = "approval policy") -> ApprovalPolicy:
        """Strict: unknown keys (``bad_approval_policy``), unknown operations (``unknown_operation``)
        and thresholds that are not whole numbers of at least 1 (``bad_threshold``) are refused."""
        if not isinstance(data, dict):
            raise _bad_policy(source, "must be a table")
        unknown = set(data) - _POLICY_KEYS
        if unknown:
            raise _bad_policy(source, f"unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_POLICY_KEYS))}")
        given = data.get("thresholds", {})
        if not isinstance(given, dict):
            raise _bad_policy(source, "[thresholds] must be a table of operation = number")
        thresholds = dict.fromkeys(OPERATIONS, 1)
        for operation, value in given.items():
            if operation not in thresholds:
                raise _bad_policy(
                    source,
                    f"[thresholds]: unknown operation {operation!r}; known: {', '.join(OPERATIONS)}",
                    code="unknown_operation",
                )
            if not _is_int(value) or value < 1:
                raise _bad_policy(
                    source,
                    f"[thresholds] {operation!r} = {value!r}: a threshold is a whole number of owners, at least 1",
                    code="bad_threshold",
                )
            thresholds[operation] = value
        ttl = data.get("proposal_ttl_s", DEFAULT_PROPOSAL_TTL_S)
        if not _is_int(ttl) or not 0 < ttl <= MAX_PROPOSAL_TTL_S:
            raise _bad_policy(source, f"proposal_ttl_s must be a whole number of seconds from 1 to {MAX_PROPOSAL_TTL_S} (7 days)")
        return cls(thresholds, ttl, source)

    @classmethod
    def parse(cls, text: str, source: str = "approval policy") -> ApprovalPolicy:
        """The policy in a TOML text (the caller reads the file: this module does no I/O)."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _bad_policy(source, f"not valid TOML: {exc}") from None
        return cls.from_dict(data, source)

    def to_dict(self) -> dict[str, Any]:
        """Every operation with its threshold (defaults written out, so a file that names
        ``"cvm.run" = 1`` and one that does not are the same policy, with the same hash)."""
        return {
            "proposal_ttl_s": self.proposal_ttl_s,
            "thresholds": {operation: self.threshold(operation) for operation in OPERATIONS},
        }

    def canonical(self) -> bytes:
        """JCS (RFC 8785) of :meth:`to_dict`: what the identity document and the ledger carry."""
        return canonical(self.to_dict())

    @property
    def sha256(self) -> str:
        """SHA-256 hex of :meth:`canonical`: comments, order and formatting do not change it."""
        return sha256_hex(self.canonical())


DEFAULT_POLICY: Final = ApprovalPolicy()
"""Without a policy file: 1 for everything (any one owner acts alone, as before approvals)."""


def _policy_problem(policy: ApprovalPolicy, owner_count: int) -> tuple[str, str] | None:
    if owner_count < 1:
        return "no_owners", "a controller needs at least one owner"
    above = [f"{op} = {n}" for op in OPERATIONS if (n := policy.threshold(op)) > owner_count]
    if above:
        return (
            "threshold_above_owners",
            f"the approval policy asks for more owners than there are ({owner_count}): {', '.join(above)}; "
            "no threshold may exceed the number of owners",
        )
    return None


def validate(policy: ApprovalPolicy, owner_count: int) -> None:
    """Refuse a policy no owner set of ``owner_count`` can satisfy (``ConfigError``: at start):
    ``no_owners`` below one owner, ``threshold_above_owners`` for any threshold above the count."""
    problem = _policy_problem(policy, owner_count)
    if problem is not None:
        raise ConfigError(f"{policy.source}: {problem[1]}", code=problem[0])


def check_governance(policy: ApprovalPolicy, owner_count: int) -> None:
    """:func:`validate` for a governed change (``owners.change``, ``policy.change``) an owner
    asked for: the same codes, as a refusal of the request (``Conflict``), nothing changed."""
    problem = _policy_problem(policy, owner_count)
    if problem is not None:
        raise Conflict(f"refused: {problem[1]}", code=problem[0])


def operation_of(op: str, params: Mapping[str, Any]) -> str | None:
    """The policy operation of a signed request (``op`` and its ``params``, as sent).

    ``cvm.mark`` is ``cvm.mark.in-update``, ``cvm.mark.in-service`` or (``final`` true)
    ``cvm.mark.final``; the others are named as their op. None for the requests one owner may
    always send (:data:`UNGOVERNED_OPS`). An unknown op is refused (``unknown_operation``)."""
    if op in UNGOVERNED_OPS:
        return None
    if op == "cvm.mark":
        mode, final = params.get("mode"), params.get("final", False)
        if final is True and mode != lc.IN_SERVICE:
            raise InvalidParams("final applies only to mode in-service", code="invalid_params")
        if mode == lc.IN_UPDATE:
            return CVM_MARK_IN_UPDATE
        if mode == lc.IN_SERVICE:
            return CVM_MARK_FINAL if final is True else CVM_MARK_IN_SERVICE
        raise InvalidParams(f"cvm.mark to {mode!r}: a CVM is marked in-update or in-service", code="invalid_params")
    if op in OPERATIONS:
        return op
    raise InvalidParams(f"no operation {op!r}; governed ones: {', '.join(OPERATIONS)}", code="unknown_operation")


def check_single_owner(policy: ApprovalPolicy, operation: str | None, *, v1_route: str) -> None:
    """For the seed protocol, whose privileged routes act for one owner: an operation that needs
    more owners is refused (``approvals_required``), naming the v1 route to propose it on."""
    if operation is not None and policy.needs_approvals(operation):
        raise Forbidden(
            f"{operation} needs {policy.threshold(operation)} owner signatures under this controller's approval "
            f"policy; the seed protocol acts for one owner: propose it with duet's v1 protocol ({v1_route})",
            code="approvals_required",
        )


# --- proposals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CvmMode:
    """What a proposal on a CVM is bound to: the CVM's mode, its final flag, and the seq of the
    entry that put it in that mode (None when unknown: then mode and final alone are compared).
    Any mode change since, even away and back, fails the proposal (``cvm_mode_changed``)."""

    mode: str
    final: bool = False
    since: int | None = None

    def differs(self, current: CvmMode | None) -> bool:
        if current is None:
            return True
        if (self.mode, self.final) != (current.mode, current.final):
            return True
        return self.since is not None and current.since is not None and self.since != current.since

    def describe(self) -> str:
        return f"{self.mode}{' (final)' if self.final else ''}"


@dataclass(frozen=True)
class Ballot:
    """A vote as the controller admitted it: its signer and digest, and (for the ledger) the
    signed request body and its signature."""

    signer: str
    digest: str
    request: dict[str, Any] | None = None
    signature: str | None = None


@dataclass(frozen=True)
class Proposal:
    """A request waiting for more owners. Immutable: every transition returns a new one.
    ``approvals`` and ``rejections`` are owner key id → digest of the signed vote (the
    proposer's approval is the proposal's own request: its digest is the id)."""

    id: str
    """The proposed request's digest: SHA-256 hex of JCS(request)."""
    operation: str
    op: str
    proposer: str
    created_at: str
    expires_at: str
    cvm_id: str | None = None
    bound_to: CvmMode | None = None
    """The CVM's mode when proposed (None: an operation on no CVM: start, owners, policy)."""
    request: dict[str, Any] | None = None
    """The signed request body (None when only its digest is known, see :data:`INLINE_REQUEST_MAX_BYTES`)."""
    signature: str | None = None
    approvals: dict[str, str] = field(default_factory=dict)
    rejections: dict[str, str] = field(default_factory=dict)
    status: str = PENDING
    reason: str | None = None
    """Why it closed: the code of its failure (``cvm_mode_changed``, ``interrupted``, ...)."""
    closed_at: str | None = None
    withdrawal: str | None = None
    """The digest of the proposer's withdrawal."""

    @property
    def votes(self) -> frozenset[str]:
        """Every signed-request digest this proposal has taken (a second use is a replay)."""
        seen = {self.id, *self.approvals.values(), *self.rejections.values()}
        if self.withdrawal is not None:
            seen.add(self.withdrawal)
        return frozenset(seen)


@dataclass(frozen=True)
class Vote:
    """The proposal after an accepted vote, and whether this vote met the threshold: ``ready``
    is true for exactly one vote of a proposal (the controller then executes it)."""

    proposal: Proposal
    ready: bool = False


def _time(text: str | None) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return parse_timestamp(text)
    except ValueError:
        return None


def _is_due(expires_at: str, now: datetime) -> bool:
    expires = _time(expires_at)
    return expires is not None and now >= expires


def count(proposal: Proposal, owners: Collection[str] | None) -> int:
    """Distinct approvals that count: by owners in force (all of them when ``owners`` is None)."""
    return sum(1 for owner in proposal.approvals if owners is None or owner in owners)


def counted(proposal: Proposal, owners: Collection[str] | None) -> dict[str, str]:
    """The approvals that count (owner → approval digest), sorted by owner."""
    return {o: d for o, d in sorted(proposal.approvals.items()) if owners is None or o in owners}


def ready(proposal: Proposal, policy: ApprovalPolicy, owners: Collection[str] | None) -> bool:
    """Whether the valid approvals meet the threshold of the policy in force."""
    return count(proposal, owners) >= policy.threshold(proposal.operation)


def reachable(proposal: Proposal, policy: ApprovalPolicy, owners: Collection[str]) -> bool:
    """Whether the owners in force who have not rejected could still meet the threshold."""
    return len(set(owners) - set(proposal.rejections)) >= policy.threshold(proposal.operation)


def may_still_approve(proposal: Proposal, owners: Collection[str]) -> list[str]:
    """Owners in force who have neither approved nor rejected (sorted)."""
    return sorted(set(owners) - set(proposal.approvals) - set(proposal.rejections))


def propose(
    request: Mapping[str, Any],
    *,
    proposer: str,
    policy: ApprovalPolicy,
    owners: Collection[str],
    now: datetime,
    cvm: CvmMode | None = None,
    signature: str | None = None,
    ttl_s: float | None = None,
) -> Vote:
    """A proposal for an admitted signed ``request`` (its body: op, controller, nonce, issued_at,
    params) from ``proposer``, with the proposer's approval. ``cvm``: the CVM's mode now, for an
    operation on a CVM (required then). ``ttl_s``: the expiry asked for (default: the policy's),
    capped at 7 days. ``ready`` when the proposer alone meets the threshold (1: the controller
    normally runs such a request directly, without a proposal)."""
    op, params = request.get("op"), request.get("params")
    if not isinstance(op, str) or not isinstance(params, Mapping):
        raise InvalidParams("a proposal needs a signed request with an op and params", code="invalid_params")
    operation = operation_of(op, params)
    if operation is None:
        raise InvalidParams(f"{op} is never put to a vote: one owner may always send it", code="not_governed")
    if proposer not in owners:
        raise Forbidden(f"{proposer[:16]}… is not in the owner set in force", code="not_an_owner")
    cvm_id: str | None = None
    if operation in CVM_OPERATIONS:
        cvm_id = params.get("cvm_id") if isinstance(params.get("cvm_id"), str) else None
        if cvm_id is None or cvm is None:
            raise ValueError(f"a proposal for {operation} is bound to its CVM: give the CVM's id and current mode")
    ttl = policy.proposal_ttl_s if ttl_s is None else ttl_s
    if ttl <= 0:
        raise InvalidParams("a proposal's expiry must be in the future", code="bad_expiry")
    ttl = min(ttl, MAX_PROPOSAL_TTL_S)
    digest = request_digest(dict(request))
    proposal = Proposal(
        id=digest,
        operation=operation,
        op=op,
        proposer=proposer,
        created_at=timestamp(now),
        expires_at=timestamp(now + timedelta(seconds=ttl)),
        cvm_id=cvm_id,
        bound_to=cvm if operation in CVM_OPERATIONS else None,
        request=dict(request),
        signature=signature,
        approvals={proposer: digest},
    )
    if ready(proposal, policy, owners):
        return Vote(replace(proposal, status=APPROVED), ready=True)
    return Vote(proposal)


def settle(proposal: Proposal, *, now: datetime, cvm: CvmMode | None = None) -> Proposal:
    """The proposal with the closure that is due, if any: ``expired`` once ``now`` reaches its
    expiry, ``failed`` (``cvm_mode_changed``) once its CVM is no longer in the mode it was made
    in. The same object when nothing is due (so ``settled is not proposal`` means: record it).
    Only a pending proposal settles; ``cvm`` is the CVM's mode now (None: the CVM is gone)."""
    if proposal.status != PENDING:
        return proposal
    if _is_due(proposal.expires_at, now):
        return replace(proposal, status=EXPIRED, closed_at=proposal.expires_at)
    if proposal.bound_to is not None and proposal.bound_to.differs(cvm):
        return replace(proposal, status=FAILED, reason="cvm_mode_changed", closed_at=timestamp(now))
    return proposal


def _refuse_closed(proposal: Proposal, what: str) -> None:
    """The refusal of a vote on a proposal that no longer takes votes, coded by why."""
    short = proposal.id[:16]
    if proposal.status == EXPIRED:
        raise Conflict(f"proposal {short}… expired at {proposal.expires_at}; {what} refused", code="proposal_expired")
    if proposal.status == WITHDRAWN:
        raise Conflict(f"proposal {short}… was withdrawn by its proposer; {what} refused", code="proposal_withdrawn")
    if proposal.status == FAILED and proposal.reason == "cvm_mode_changed":
        raise Conflict(
            f"proposal {short}… was made while its CVM was {proposal.bound_to.describe() if proposal.bound_to else '?'}; "
            f"the CVM's mode changed since, so it failed rather than run in a new situation; {what} refused",
            code="cvm_mode_changed",
        )
    if proposal.status == APPROVED:
        raise Conflict(
            f"proposal {short}… already has its approvals and is being executed; {what} refused", code="proposal_closed"
        )
    if proposal.status in CLOSED:
        outcome = proposal.status + (f" ({proposal.reason})" if proposal.reason else "")
        raise Conflict(f"proposal {short}… is closed: {outcome}; {what} refused", code="proposal_closed")


def _admit_vote(
    proposal: Proposal, ballot: Ballot, owners: Collection[str], now: datetime, cvm: CvmMode | None, what: str
) -> Proposal:
    """The checks every vote passes, in order: an owner in force, a digest never used, a
    proposal still open (settled first, so the refusal names why it closed)."""
    if not is_hex64(ballot.digest):
        raise InvalidParams("a vote's digest is the SHA-256 hex of its signed request", code="invalid_params")
    if ballot.signer not in owners:
        raise Forbidden(f"{ballot.signer[:16]}… is not in the owner set in force; {what} refused", code="not_an_owner")
    if ballot.digest in proposal.votes:
        raise Conflict(
            f"this signed request was already counted on proposal {proposal.id[:16]}…; a vote is accepted once",
            code="approval_replayed",
        )
    settled = settle(proposal, now=now, cvm=cvm)
    _refuse_closed(settled, what)
    return settled


def approve(
    proposal: Proposal,
    ballot: Ballot,
    *,
    policy: ApprovalPolicy,
    owners: Collection[str],
    now: datetime,
    cvm: CvmMode | None = None,
) -> Vote:
    """Add ``ballot.signer``'s approval, given the policy and owner set in force, ``now`` and the
    CVM's current mode. Refusals: ``not_an_owner``, ``approval_replayed``, ``proposal_expired``,
    ``proposal_withdrawn``, ``cvm_mode_changed``, ``proposal_closed``, ``already_approved``,
    ``already_rejected``. ``ready`` when this approval meets the threshold (the proposal is then
    ``approved``: every later vote is answered ``proposal_closed``)."""
    _admit_vote(proposal, ballot, owners, now, cvm, "approval")
    if ballot.signer in proposal.approvals:
        raise Conflict(f"{ballot.signer[:16]}… already approved proposal {proposal.id[:16]}…", code="already_approved")
    if ballot.signer in proposal.rejections:
        raise Conflict(f"{ballot.signer[:16]}… rejected proposal {proposal.id[:16]}…; a vote is final", code="already_rejected")
    after = replace(proposal, approvals={**proposal.approvals, ballot.signer: ballot.digest})
    if ready(after, policy, owners):
        return Vote(replace(after, status=APPROVED), ready=True)
    return Vote(after)


def reject(
    proposal: Proposal,
    ballot: Ballot,
    *,
    policy: ApprovalPolicy,
    owners: Collection[str],
    now: datetime,
    cvm: CvmMode | None = None,
) -> Vote:
    """Add ``ballot.signer``'s rejection; the proposal is ``rejected`` once the owners in force
    who have not rejected can no longer meet its threshold (one rejection does not veto a
    2-of-3: the two others may still agree). Refusals as :func:`approve`; an owner who approved
    (the proposer included: it withdraws instead) gets ``already_approved``."""
    _admit_vote(proposal, ballot, owners, now, cvm, "rejection")
    if ballot.signer in proposal.approvals:
        hint = ": withdraw it instead" if ballot.signer == proposal.proposer else "; a vote is final"
        raise Conflict(f"{ballot.signer[:16]}… approved proposal {proposal.id[:16]}…{hint}", code="already_approved")
    if ballot.signer in proposal.rejections:
        raise Conflict(f"{ballot.signer[:16]}… already rejected proposal {proposal.id[:16]}…", code="already_rejected")
    after = replace(proposal, rejections={**proposal.rejections, ballot.signer: ballot.digest})
    if not reachable(after, policy, owners):
        after = replace(after, status=REJECTED, closed_at=timestamp(now))
    return Vote(after)


def withdraw(proposal: Proposal, ballot: Ballot, *, owners: Collection[str], now: datetime) -> Proposal:
    """The proposer takes its proposal back while it is pending. Refusals: ``not_an_owner``,
    ``approval_replayed``, ``only_proposer_withdraws``, ``proposal_expired``,
    ``proposal_withdrawn``, ``proposal_closed`` (a withdrawal needs no CVM check: it runs nothing)."""
    if not is_hex64(ballot.digest):
        raise InvalidParams("a vote's digest is the SHA-256 hex of its signed request", code="invalid_params")
    if ballot.signer not in owners:
        raise Forbidden(f"{ballot.signer[:16]}… is not in the owner set in force; withdrawal refused", code="not_an_owner")
    if ballot.digest in proposal.votes:
        raise Conflict("this signed request was already used on this proposal; it is accepted once", code="approval_replayed")
    if ballot.signer != proposal.proposer:
        raise Forbidden(
            f"only the proposer ({proposal.proposer[:16]}…) may withdraw proposal {proposal.id[:16]}…; reject it instead",
            code="only_proposer_withdraws",
        )
    if proposal.status == PENDING and _is_due(proposal.expires_at, now):
        proposal = replace(proposal, status=EXPIRED, closed_at=proposal.expires_at)
    _refuse_closed(proposal, "withdrawal")
    return replace(proposal, status=WITHDRAWN, withdrawal=ballot.digest, closed_at=timestamp(now))


def executed(proposal: Proposal, *, now: datetime, cvm: CvmMode | None = None) -> Proposal:
    """The approved proposal, executed: the controller records this with the operation's first
    entry, under the CVM's lock. Only an ``approved`` proposal executes (``proposal_not_ready``
    otherwise), once; and only before its expiry (``proposal_expired``) and while its CVM is
    still in the mode it was made in (``cvm_mode_changed``; ``cvm``: the mode now), for the
    execution may start a little after the approval that met the threshold (an attestation
    first). On either refusal the controller records :func:`fail` with that code."""
    if proposal.status != APPROVED:
        raise Conflict(
            f"proposal {proposal.id[:16]}… is {proposal.status}; only an approved proposal is executed, once",
            code="proposal_not_ready",
        )
    if _is_due(proposal.expires_at, now):
        raise Conflict(f"proposal {proposal.id[:16]}… expired at {proposal.expires_at} before it ran", code="proposal_expired")
    if proposal.bound_to is not None and proposal.bound_to.differs(cvm):
        raise Conflict(
            f"proposal {proposal.id[:16]}… was made while its CVM was {proposal.bound_to.describe()}; its mode changed "
            "before it ran",
            code="cvm_mode_changed",
        )
    return replace(proposal, status=EXECUTED, closed_at=timestamp(now))


def fail(proposal: Proposal, *, code: str, now: datetime) -> Proposal:
    """A pending or approved proposal that will never run: ``code`` says why (``interrupted``,
    ``cvm_mode_changed``, or the refusal the execution met)."""
    if proposal.status not in (PENDING, APPROVED):
        raise Conflict(f"proposal {proposal.id[:16]}… is already {proposal.status}", code="proposal_closed")
    return replace(proposal, status=FAILED, reason=code, closed_at=timestamp(now))


def find(proposals: Mapping[str, Proposal], proposal_id: str) -> Proposal:
    proposal = proposals.get(proposal_id)
    if proposal is None:
        raise NotFound(f"no proposal {proposal_id[:16]}…; `duet proposals` lists them", code="unknown_proposal")
    return proposal


def vote_target(request: Any, op: str) -> str:
    """The proposal id a vote request (``proposal.approve`` / ``reject`` / ``withdraw``) names,
    after checking its shape (``invalid_params`` otherwise)."""
    if not isinstance(request, Mapping) or request.get("op") != op or op not in VOTE_OPS:
        raise InvalidParams(f"not a {op} request", code="invalid_params")
    params = request.get("params")
    allowed = {"proposal_id", "reason"} if op == REJECT_OP else {"proposal_id"}
    if not isinstance(params, Mapping) or not set(params) <= allowed or not is_hex64(params.get("proposal_id")):
        raise InvalidParams(f"{op} params are {{{', '.join(sorted(allowed))}}}, proposal_id a 64-hex id", code="invalid_params")
    reason = params.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise InvalidParams(f"a rejection's reason is text of at most {MAX_REASON_CHARS} characters", code="invalid_params")
    return str(params["proposal_id"])


def describe(proposal: Proposal, *, policy: ApprovalPolicy, owners: Collection[str]) -> dict[str, Any]:
    """The JSON a client is shown (``/v1/proposals``): who approved (and whether it still counts),
    how many of how many, who still may, the expiry and the outcome."""
    return {
        "id": proposal.id,
        "operation": proposal.operation,
        "op": proposal.op,
        "cvm_id": proposal.cvm_id,
        "proposer": proposal.proposer,
        "status": proposal.status,
        "reason": proposal.reason,
        "created_at": proposal.created_at,
        "expires_at": proposal.expires_at,
        "closed_at": proposal.closed_at,
        "bound_to": None
        if proposal.bound_to is None
        else {"mode": proposal.bound_to.mode, "final": proposal.bound_to.final, "since": proposal.bound_to.since},
        "approvals": [{"owner": o, "digest": d, "counts": o in owners} for o, d in sorted(proposal.approvals.items())],
        "rejections": [{"owner": o, "digest": d, "counts": o in owners} for o, d in sorted(proposal.rejections.items())],
        "approved": count(proposal, owners),
        "threshold": policy.threshold(proposal.operation),
        "may_approve": may_still_approve(proposal, owners) if proposal.status == PENDING else [],
    }


def pending_message(proposal: Proposal, *, policy: ApprovalPolicy, owners: Collection[str]) -> str:
    """What the operation answers while its proposal waits."""
    return (
        f"pending: {count(proposal, owners)} of {policy.threshold(proposal.operation)} approvals; "
        f"ask another owner to run `duet approve {proposal.id}`"
    )


# --- ledger entries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EntrySpec:
    """A ledger entry to append: ``ledger.append(tx, cvm=, event=, actor=, request_digest=, **fields)``."""

    event: str
    cvm: str | None
    actor: str
    request_digest: str | None
    fields: dict[str, Any]


def _inline(request: dict[str, Any] | None) -> dict[str, Any] | None:
    if request is None or len(canonical(request)) > INLINE_REQUEST_MAX_BYTES:
        return None
    return request


def created_entry(proposal: Proposal, policy: ApprovalPolicy) -> EntrySpec:
    bound = proposal.bound_to
    return EntrySpec(
        PROPOSAL_CREATED,
        proposal.cvm_id,
        proposal.proposer,
        proposal.id,
        {
            "proposal": proposal.id,
            "operation": proposal.operation,
            "op": proposal.op,
            "request": _inline(proposal.request),
            "signature": proposal.signature,
            "expires_at": proposal.expires_at,
            "cvm_mode": bound.mode if bound else None,
            "cvm_mode_seq": bound.since if bound else None,
            "cvm_final": bound.final if bound else None,
            "threshold": policy.threshold(proposal.operation),
            "policy_sha256": policy.sha256,
        },
    )


def vote_entry(event: str, after: Proposal, ballot: Ballot, *, policy: ApprovalPolicy, owners: Collection[str]) -> EntrySpec:
    """``proposal.approved``, ``proposal.rejected`` or ``proposal.withdrawn`` for ``ballot``,
    given the proposal after the vote."""
    if event not in VOTE_EVENTS:
        raise ValueError(f"{event} is not a vote")
    fields: dict[str, Any] = {"proposal": after.id, "request": ballot.request, "signature": ballot.signature}
    if event == PROPOSAL_APPROVED:
        fields |= {
            "approvals": count(after, owners),
            "threshold": policy.threshold(after.operation),
            "ready": after.status == APPROVED,
        }
    elif event == PROPOSAL_REJECTED:
        fields |= {"rejections": sum(1 for o in after.rejections if o in owners), "closed": after.status == REJECTED}
    return EntrySpec(event, after.cvm_id, ballot.signer, ballot.digest, fields)


def expired_entry(proposal: Proposal) -> EntrySpec:
    return EntrySpec(
        PROPOSAL_EXPIRED,
        proposal.cvm_id,
        lc.CONTROLLER_ACTOR,
        None,
        {"proposal": proposal.id, "expires_at": proposal.expires_at},
    )


def executed_entry(proposal: Proposal, *, policy: ApprovalPolicy, owners: Collection[str]) -> EntrySpec:
    valid = counted(proposal, owners)
    return EntrySpec(
        PROPOSAL_EXECUTED,
        proposal.cvm_id,
        lc.CONTROLLER_ACTOR,
        proposal.id,
        {
            "proposal": proposal.id,
            "operation": proposal.operation,
            "approvers": list(valid),
            "approvals": list(valid.values()),
            "threshold": policy.threshold(proposal.operation),
            "policy_sha256": policy.sha256,
        },
    )


def failed_entry(proposal: Proposal, *, code: str, reason: str) -> EntrySpec:
    return EntrySpec(
        PROPOSAL_FAILED,
        proposal.cvm_id,
        lc.CONTROLLER_ACTOR,
        proposal.id,
        {"proposal": proposal.id, "code": code, "reason": reason},
    )


def policy_entry(policy: ApprovalPolicy, *, actor: str = lc.CONTROLLER_ACTOR, request_digest: str | None = None) -> EntrySpec:
    """``controller.policy``: at first start (the controller's), or as a ``policy.change``'s own
    entry (actor: the proposer; request_digest: its request, the proposal id)."""
    return EntrySpec(
        CONTROLLER_POLICY,
        None,
        actor,
        request_digest,
        {"policy": policy.to_dict(), "policy_sha256": policy.sha256},
    )


# --- the recount -------------------------------------------------------------------------------

SignatureCheck = Callable[[str, Mapping[str, Any], str], bool]
"""(signer key id, signed request body, base64 signature) → whether it verifies; an auditor
holding the owners' public keys passes one to :class:`ProposalReplay`."""

_OWNER_OPERATION_EVENTS: Final = frozenset({lc.CVM_PROVISIONING, lc.COMMAND_STARTED, lc.MODE_CHANGED, lc.CVM_STOPPING})


@dataclass
class ProposalReplay:
    """Feeds ledger entries in order (the same entries as ``LifecycleReplay``); rebuilds every
    proposal, the owner set and the approval policy in force, and reports what the rules forbid.

    ``initial_owners`` / ``initial_policy``: what is in force before the ledger says (e.g. the
    attested identity's, for an audit of one CVM's entries); the ledger's ``controller.owners``
    and ``controller.policy`` entries then take over. Owners None: not known, votes are then
    counted whoever cast them. Policy unknown: the default (1 for everything), as for ledgers
    older than approvals, whose operations each had one signature."""

    initial_owners: Iterable[str] | None = None
    initial_policy: ApprovalPolicy | None = None
    verify_signature: SignatureCheck | None = field(default=None, repr=False)
    proposals: dict[str, Proposal] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    owners: frozenset[str] | None = None
    policy: ApprovalPolicy = DEFAULT_POLICY
    cvms: dict[str, CvmMode] = field(default_factory=dict)
    """Each CVM's mode as the entries set it (what proposals are bound to)."""
    votes: set[str] = field(default_factory=set)
    """Every vote digest seen (a second use anywhere is a replay)."""
    ran: set[str] = field(default_factory=set)
    """Executed proposals whose operation's entry was seen."""
    check_signatures: bool = False
    """Verify every recorded vote's signature with the owner's public key where the ledger holds
    it (``controller.owners`` entries carry the keys they add: ``added``); an auditor's choice."""
    keys: dict[str, str] = field(default_factory=dict)
    """Owner key id → public PEM, as the ledger named them (removed owners' kept: their past votes)."""
    running: dict[str, int] = field(default_factory=dict)
    """Executed proposals whose operation's entries are still to come → entries seen so far."""
    owners_seq: int | None = None
    policy_seq: int | None = None
    """The seqs of the entries that put the owner set and the policy in force (None: not in the
    ledger): the identity document names them, so a client that pinned another set sees which
    entry changed it."""
    _owners_from_ledger: bool = field(default=False, init=False, repr=False)
    _policy_from_ledger: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial_owners is not None:
            self.owners = frozenset(self.initial_owners)
        if self.initial_policy is not None:
            self.policy = self.initial_policy

    def apply_all(self, entries: Iterable[dict[str, Any]]) -> ProposalReplay:
        for entry in entries:
            self.apply(entry)
        return self

    @property
    def policy_recorded(self) -> bool:
        """Whether the ledger has said which policy is in force (a ``controller.policy`` entry)."""
        return self._policy_from_ledger

    def pending(self) -> list[Proposal]:
        """Proposals that still take votes or await their outcome (pending, approved)."""
        return [p for p in self.proposals.values() if p.status in (PENDING, APPROVED)]

    def apply(self, entry: dict[str, Any]) -> list[Violation]:
        """Apply one entry; returns the violations it adds (also kept in ``violations``)."""
        found: list[Violation] = []
        seq = entry.get("seq") if _is_int(entry.get("seq")) else None
        event = entry.get("event")
        if not isinstance(event, str):
            return found

        def violation(code: str, message: str) -> None:
            found.append(Violation(code, message, seq))

        if event == CONTROLLER_POLICY:
            self._policy(entry, violation)
            self.policy_seq = seq
        elif event == lc.CONTROLLER_OWNERS:
            self._owners(entry, violation)
            self.owners_seq = seq
        elif event == PROPOSAL_CREATED:
            self._created(entry, violation)
        elif event in VOTE_EVENTS:
            self._vote(event, entry, violation)
        elif event in (PROPOSAL_EXPIRED, PROPOSAL_EXECUTED, PROPOSAL_FAILED):
            self._closed(event, entry, violation)
        elif event in _OWNER_OPERATION_EVENTS and isinstance(entry.get("cvm"), str):
            operation = self._cvm_operation(event, entry)
            if operation is not None:
                self._operation(entry, operation, violation)
        self._track_mode(event, entry, seq)
        self._forget_closed_request(entry.get("proposal") if event in PROPOSAL_EVENTS else None)
        self.violations.extend(found)
        return found

    def _forget_closed_request(self, pid: Any) -> None:
        """A closed proposal's request body is not kept in memory (it is in its ``proposal.created``
        entry, or its blob): what a replay holds per proposal stays small however many were made."""
        proposal = self.proposals.get(pid) if isinstance(pid, str) else None
        if proposal is None or proposal.status not in CLOSED or proposal.request is None:
            return
        if proposal.status == EXECUTED and (proposal.id not in self.ran or proposal.id in self.running):
            return  # its operation's entries are still to be checked against the request
        self.proposals[proposal.id] = replace(proposal, request=None, signature=None)

    # --- the owner set and the policy in force ---------------------------------------------

    def _policy(self, entry: dict[str, Any], violation: Callable[[str, str], None]) -> None:
        try:
            new = ApprovalPolicy.from_dict(entry.get("policy"), f"the policy of entry {entry.get('seq')}")
        except ConfigError as exc:
            violation("bad_policy", f"controller.policy holds no readable approval policy ({exc.code}: {exc.message})")
            return
        if entry.get("policy_sha256") != new.sha256:
            violation("bad_policy", "controller.policy names another SHA-256 than its policy's")
        if self._policy_from_ledger:
            if entry.get("actor") == lc.CONTROLLER_ACTOR:
                violation(
                    "policy_changed",
                    "the approval policy changed without a governed change: the entry is the controller's, not an owner request's",
                )
            else:
                params = self._executed_params(entry, POLICY_CHANGE)
                try:
                    asked = ApprovalPolicy.from_dict(params.get("policy")).to_dict() if params is not None else None
                except ConfigError:
                    asked = {}
                if asked is not None and asked != new.to_dict():
                    violation("operation_mismatch", "the policy written is not the one its signed policy.change proposed")
                self._operation(entry, POLICY_CHANGE, violation)
        if self.owners is not None:
            self._check_policy(new, len(self.owners), violation)
        self.policy, self._policy_from_ledger = new, True

    def _owners(self, entry: dict[str, Any], violation: Callable[[str, str], None]) -> None:
        given = entry.get("owners")
        new = frozenset(o for o in given if isinstance(o, str)) if isinstance(given, list) else frozenset()
        added = _key_ids(entry.get("added"))
        self.keys.update(added)
        if self._owners_from_ledger and new != self.owners and entry.get("actor") != lc.CONTROLLER_ACTOR:
            self._check_owners_change(entry, new, set(added), violation)  # before _operation forgets the request
            self._operation(entry, OWNERS_CHANGE, violation)
        # A change by the controller itself is LifecycleReplay's finding (owners_changed).
        self._check_policy(self.policy, len(new), violation)
        self.owners, self._owners_from_ledger = new, True

    def _check_owners_change(
        self, entry: dict[str, Any], new: frozenset[str], added: set[str], violation: Callable[[str, str], None]
    ) -> None:
        """A governed change must be the one its signers asked for: these keys added, these removed."""
        params = self._executed_params(entry, OWNERS_CHANGE)
        if params is None:
            return
        asked_added = set(_key_ids(params.get("add")))
        asked_removed = {k for k in params.get("remove") or () if isinstance(k, str)}
        expected = (set(self.owners or ()) - asked_removed) | asked_added
        if added != asked_added or set(_strs(entry.get("removed"))) != asked_removed or new != expected:
            violation(
                "operation_mismatch",
                f"the owner set written ({len(new)} owners) is not the change its signed request asked for "
                f"(add {len(asked_added)}, remove {len(asked_removed)})",
            )

    def _executed_params(self, entry: dict[str, Any], operation: str) -> dict[str, Any] | None:
        """The params of the signed request an operation's entry executes, when the ledger holds it."""
        digest = entry.get("request_digest")
        proposal = self.proposals.get(digest) if isinstance(digest, str) else None
        if proposal is None or proposal.operation != operation or not isinstance(proposal.request, dict):
            return None
        params = proposal.request.get("params")
        return params if isinstance(params, dict) else None

    @staticmethod
    def _check_policy(policy: ApprovalPolicy, owner_count: int, violation: Callable[[str, str], None]) -> None:
        problem = _policy_problem(policy, owner_count)
        if problem is not None:
            violation(*problem)

    # --- proposals --------------------------------------------------------------------------

    def _created(self, entry: dict[str, Any], violation: Callable[[str, str], None]) -> None:
        pid, actor, time = entry.get("proposal"), entry.get("actor"), entry.get("time")
        if not is_hex64(pid) or entry.get("request_digest") != pid or not isinstance(actor, str) or not isinstance(time, str):
            violation("bad_proposal", "proposal.created without a proposal id equal to its request digest, an actor and a time")
            return
        assert isinstance(pid, str)
        if pid in self.proposals:
            violation("duplicate_proposal", f"proposal {pid[:16]}… is created a second time (a replayed request)")
            return
        request = entry.get("request")
        operation = entry.get("operation")
        op = entry.get("op")
        signed = True  # whether the proposer's own signature counts as its approval
        if isinstance(request, dict):
            if request_digest(request) != pid:
                violation("vote_mismatch", f"proposal {pid[:16]}…'s request does not hash to its id")
                signed = False
            params = request.get("params")
            try:
                derived = operation_of(str(request.get("op")), params if isinstance(params, dict) else {})
            except DuetError:
                derived = None
            if derived != operation or request.get("op") != op:
                violation("operation_mismatch", f"proposal {pid[:16]}… names operation {operation!r}, its request is {derived!r}")
            asked_cvm = params.get("cvm_id") if isinstance(params, dict) else None
            if derived in CVM_OPERATIONS and asked_cvm != entry.get("cvm"):
                violation(
                    "operation_mismatch",
                    f"proposal {pid[:16]}… is recorded on CVM {str(entry.get('cvm'))[:16]}…, its request names "
                    f"{str(asked_cvm)[:16]}…",
                )
            signed = signed and self._check_signature(actor, request, entry.get("signature"), f"proposal {pid[:16]}…", violation)
        if not isinstance(operation, str) or operation not in OPERATIONS:
            violation("bad_proposal", f"proposal {pid[:16]}… names no known operation ({operation!r})")
            operation = str(operation)
        if self.owners is not None and actor not in self.owners:
            violation("approval_by_non_owner", f"proposal {pid[:16]}… was made by {actor[:16]}…, not in the owner set in force")
        if pid in self.votes:
            violation("approval_replayed", f"the signed request {pid[:16]}… was already counted as a vote")
        self.votes.add(pid)
        cvm = entry.get("cvm") if isinstance(entry.get("cvm"), str) else None
        bound = self.cvms.get(cvm) if cvm is not None else None
        if bound is None and isinstance(entry.get("cvm_mode"), str):
            since = entry.get("cvm_mode_seq")
            bound = CvmMode(str(entry["cvm_mode"]), entry.get("cvm_final") is True, since if _is_int(since) else None)
        expires = str(entry.get("expires_at"))
        created, expiry = _time(time), _time(expires)
        if created is None or expiry is None:
            violation("bad_proposal", f"proposal {pid[:16]}… has no readable time or expiry")
        elif expiry - created > timedelta(seconds=MAX_PROPOSAL_TTL_S):
            violation("expiry_too_long", f"proposal {pid[:16]}… expires {expires}, more than 7 days after it was made")
            expires = timestamp(created + timedelta(seconds=MAX_PROPOSAL_TTL_S))
        self.proposals[pid] = Proposal(
            id=pid,
            operation=operation,
            op=str(op),
            proposer=actor,
            created_at=time,
            expires_at=expires,
            cvm_id=cvm,
            bound_to=bound if operation in CVM_OPERATIONS else None,
            request=request if isinstance(request, dict) else None,
            signature=_str(entry.get("signature")),
            approvals={actor: pid} if signed else {},
        )
        self._settle_ready(pid)

    def _settle_ready(self, pid: str) -> None:
        proposal = self.proposals[pid]
        if proposal.status == PENDING and ready(proposal, self.policy, self.owners):
            self.proposals[pid] = replace(proposal, status=APPROVED)

    def _check_signature(
        self, signer: str, request: Mapping[str, Any], signature: Any, what: str, violation: Callable[[str, str], None]
    ) -> bool:
        check = self.verify_signature
        if check is None and self.check_signatures and signer in self.keys:
            check = self._verify_with_known_key
        if check is None:
            return True
        try:
            verified = isinstance(signature, str) and check(signer, request, signature)
        except Exception:  # a checker refusing hostile input is a signature that does not verify
            verified = False
        if not verified:
            violation("bad_vote_signature", f"{what}: the signature does not verify with {signer[:16]}…'s key")
            return False
        return True

    def _verify_with_known_key(self, signer: str, request: Mapping[str, Any], signature: str) -> bool:
        key = keys.load_public_key_bytes(self.keys[signer].encode(), f"owner key {signer[:16]}")
        return keys.verify(key, b64decode(signature), canonical(dict(request)))

    def _vote(self, event: str, entry: dict[str, Any], violation: Callable[[str, str], None]) -> None:
        pid, actor, digest, time = entry.get("proposal"), entry.get("actor"), entry.get("request_digest"), entry.get("time")
        what = {PROPOSAL_APPROVED: "approval", PROPOSAL_REJECTED: "rejection", PROPOSAL_WITHDRAWN: "withdrawal"}[event]
        proposal = self.proposals.get(pid) if isinstance(pid, str) else None
        if proposal is None or not isinstance(actor, str) or not is_hex64(digest):
            violation("unknown_proposal", f"a {what} of proposal {str(pid)[:16]}…, which was never created")
            return
        assert isinstance(digest, str)
        request, valid = entry.get("request"), True
        if not isinstance(request, dict):  # a vote is always small: recorded without its signed request, it proves nothing
            violation(
                "vote_mismatch",
                f"the {what} {digest[:16]}… of proposal {proposal.id[:16]}… is recorded without its signed request",
            )
            valid = False
        else:
            try:
                target = vote_target(request, VOTE_EVENTS[event])
            except InvalidParams:
                target = None
            if target != pid or request_digest(request) != digest:
                violation(
                    "vote_mismatch", f"the {what} recorded for proposal {proposal.id[:16]}… is not the signed request it names"
                )
                valid = False
            else:
                valid = self._check_signature(actor, request, entry.get("signature"), f"the {what} {digest[:16]}…", violation)
        if digest in self.votes:
            violation("approval_replayed", f"the {what} {digest[:16]}… was already counted (a replayed vote)")
            return
        self.votes.add(digest)
        if not valid:  # flagged above: a vote that is not what its owner signed counts for nothing
            return
        if self.owners is not None and actor not in self.owners:
            violation("approval_by_non_owner", f"a {what} of proposal {proposal.id[:16]}… by {actor[:16]}…, not an owner then")
        moment = _time(time)
        if proposal.status in CLOSED or (moment is not None and _is_due(proposal.expires_at, moment)):
            state = proposal.status if proposal.status in CLOSED else f"expired at {proposal.expires_at}"
            violation("approval_after_close", f"a {what} of proposal {proposal.id[:16]}… after it closed ({state})")
            return
        if proposal.status == APPROVED:
            violation("approval_after_close", f"a {what} of proposal {proposal.id[:16]}… after its threshold was met")
            return
        if event == PROPOSAL_WITHDRAWN:
            if actor != proposal.proposer:
                violation(
                    "only_proposer_withdraws", f"proposal {proposal.id[:16]}… was withdrawn by {actor[:16]}…, not its proposer"
                )
                return
            self.proposals[proposal.id] = replace(proposal, status=WITHDRAWN, withdrawal=digest, closed_at=_str(time))
            return
        if actor in proposal.approvals or actor in proposal.rejections:
            violation("duplicate_approval", f"{actor[:16]}… voted twice on proposal {proposal.id[:16]}…")
            return
        if event == PROPOSAL_APPROVED:
            self.proposals[proposal.id] = replace(proposal, approvals={**proposal.approvals, actor: digest})
            self._settle_ready(proposal.id)
        else:
            after = replace(proposal, rejections={**proposal.rejections, actor: digest})
            if self.owners is not None and not reachable(after, self.policy, self.owners):
                after = replace(after, status=REJECTED, closed_at=_str(time))
            self.proposals[proposal.id] = after

    def _closed(self, event: str, entry: dict[str, Any], violation: Callable[[str, str], None]) -> None:
        pid, time = entry.get("proposal"), _str(entry.get("time"))
        proposal = self.proposals.get(pid) if isinstance(pid, str) else None
        if proposal is None:
            violation("unknown_proposal", f"{event} of proposal {str(pid)[:16]}…, which was never created")
            return
        short, moment = proposal.id[:16], _time(time)
        if event == PROPOSAL_EXPIRED:
            if proposal.status in CLOSED:
                violation("approval_after_close", f"proposal {short}… expired after it had closed ({proposal.status})")
                return
            if moment is not None and not _is_due(proposal.expires_at, moment):
                violation("expired_early", f"proposal {short}… was expired before its expiry ({proposal.expires_at})")
            self.proposals[proposal.id] = replace(proposal, status=EXPIRED, closed_at=time)
            return
        if event == PROPOSAL_FAILED:
            if proposal.status in CLOSED:
                violation("approval_after_close", f"proposal {short}… failed after it had closed ({proposal.status})")
                return
            self.proposals[proposal.id] = replace(proposal, status=FAILED, reason=_str(entry.get("code")), closed_at=time)
            return
        # proposal.executed: recount every vote under the policy and owner set in force now.
        if proposal.status == EXECUTED:
            violation("executed_twice", f"proposal {short}… is executed a second time")
            return
        if proposal.status in CLOSED:
            violation("executed_after_close", f"proposal {short}… is executed although it was {proposal.status}")
        if moment is not None and _is_due(proposal.expires_at, moment):
            violation("executed_after_expiry", f"proposal {short}… is executed after it expired ({proposal.expires_at})")
        needed, valid = self.policy.threshold(proposal.operation), count(proposal, self.owners)
        if valid < needed:
            violation(
                "quorum_not_met",
                f"proposal {short}… ({proposal.operation}) is executed with {valid} valid owner approval(s); "
                f"the policy in force asks for {needed}",
            )
        if proposal.bound_to is not None and proposal.bound_to.differs(self.cvms.get(proposal.cvm_id or "")):
            now = self.cvms.get(proposal.cvm_id or "")
            violation(
                "cvm_mode_changed",
                f"proposal {short}… was made while its CVM was {proposal.bound_to.describe()} and is executed while it is "
                f"{now.describe() if now else 'gone'}",
            )
        self.proposals[proposal.id] = replace(proposal, status=EXECUTED, closed_at=time)

    # --- the operations' own entries ----------------------------------------------------------

    def _cvm_operation(self, event: str, entry: dict[str, Any]) -> str | None:
        if event == lc.CVM_PROVISIONING:
            return CVM_START
        if event == lc.COMMAND_STARTED:
            return CVM_RUN
        if event == lc.CVM_STOPPING:
            return CVM_STOP
        mode = entry.get("mode")
        if mode == lc.IN_UPDATE:
            return CVM_MARK_IN_UPDATE
        if mode != lc.IN_SERVICE:
            return None
        before = self.cvms.get(str(entry.get("cvm")))
        adds_final = entry.get("final") is True and not (before is not None and before.final)
        return CVM_MARK_FINAL if adds_final else CVM_MARK_IN_SERVICE

    def _operation(self, entry: dict[str, Any], operation: str, violation: Callable[[str, str], None]) -> None:
        """An operation's own entry: when its threshold is above 1 it must be the execution of
        an executed proposal for that very operation (and CVM)."""
        digest = entry.get("request_digest")
        proposal = self.proposals.get(digest) if isinstance(digest, str) else None
        needed = self.policy.threshold(operation)
        if proposal is None:
            if needed > 1:
                violation(
                    "quorum_not_met",
                    f"{operation} ran on one owner's signature; the policy in force asks for {needed} (no executed proposal)",
                )
            return
        short = proposal.id[:16]
        if proposal.status != EXECUTED:
            violation("not_executed", f"{operation} ran the request of proposal {short}…, which is {proposal.status}")
            return
        cvm = entry.get("cvm") if isinstance(entry.get("cvm"), str) else None
        if proposal.operation != operation or (proposal.cvm_id is not None and proposal.cvm_id != cvm):
            violation(
                "operation_mismatch",
                f"proposal {short}… was for {proposal.operation} on {str(proposal.cvm_id)[:16]}…, but ran {operation}",
            )
            return
        if proposal.id in self.ran and operation != CVM_RUN:
            violation("executed_twice", f"the operation of proposal {short}… ran a second time")
        self._check_effect(proposal, entry, violation)

    def _check_effect(self, proposal: Proposal, entry: dict[str, Any], violation: Callable[[str, str], None]) -> None:
        """What an executed proposal's entry does must be what its signed request asked for: the
        commands, in order and no more; the CVM's type and provider. (Marks and stops are told
        apart by their operation; owner and policy changes are checked where they are applied.)
        Without the request (one above 16 KiB is a blob) only the operation is checked."""
        params = proposal.request.get("params") if isinstance(proposal.request, dict) else None
        first = proposal.id not in self.ran
        self.ran.add(proposal.id)
        if proposal.operation == CVM_RUN:
            if not first and proposal.id not in self.running:
                violation("operation_mismatch", f"proposal {proposal.id[:16]}… ran more commands than its request asked for")
                return
            commands = params.get("commands") if isinstance(params, dict) else None
            if not isinstance(commands, list):
                self.running[proposal.id] = -1  # not known: never complete, never checked
                return
            done = self.running.get(proposal.id, 0)
            if done >= len(commands) or entry.get("command") != commands[done]:
                violation("operation_mismatch", f"proposal {proposal.id[:16]}… ran command {done + 1}, not its request's")
            self.running[proposal.id] = done + 1
            if done + 1 < len(commands):
                return
        elif proposal.operation == CVM_START and isinstance(params, dict):
            provider = params.get("provider")
            if entry.get("type") != params.get("cvm_type") or (provider is not None and entry.get("provider") != provider):
                violation("operation_mismatch", f"proposal {proposal.id[:16]}… provisioned another CVM than the one asked for")
        self.running.pop(proposal.id, None)
        self._forget_closed_request(proposal.id)

    def _track_mode(self, event: str, entry: dict[str, Any], seq: int | None) -> None:
        cvm_id = entry.get("cvm")
        if not isinstance(cvm_id, str):
            return
        before = self.cvms.get(cvm_id)
        if event == lc.CVM_PROVISIONING and before is None:
            self.cvms[cvm_id] = CvmMode(lc.PROVISIONING, False, seq)
        elif event in lc.MODE_AFTER and before is not None:
            self.cvms[cvm_id] = CvmMode(lc.MODE_AFTER[event], before.final, seq)
        elif event == lc.COMMAND_STARTED and before is not None:
            self.cvms[cvm_id] = CvmMode(before.mode, before.final, seq)  # a command changes what was approved too
        elif event == lc.MODE_CHANGED and before is not None:
            mode = entry.get("mode")
            if isinstance(mode, str) and mode in lc.MARKABLE_MODES:
                self.cvms[cvm_id] = CvmMode(mode, before.final or entry.get("final") is True, seq)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _strs(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _key_ids(pems: Any) -> dict[str, str]:
    """Public keys (PEM) by key id; what does not load is left out."""
    found: dict[str, str] = {}
    for pem in _strs(pems):
        try:
            found[keys.key_id(keys.load_public_key_bytes(pem.encode(), "an owner key"))] = pem
        except DuetError:
            continue
    return found
