"""Operations that need several owners: proposals, votes, governed changes (design.md §11).

The rules are ``protocol/approvals.py``'s, pure; this module applies them to live requests and
records what they decide. What it decides from is held in memory and fed by the verified ledger
(``ProposalReplay``, like ``LifecycleReplay``): every proposal, the owner set and the policy in
force. The database is written, never read back to decide.

A request whose operation needs more than one owner becomes a proposal (``admit``); votes
(``vote``) are decided and recorded at once, without waiting, so that two racing votes are
decided one after the other and only one of them meets the threshold. That one executes the
proposal: the same code path as a request signed by the proposer alone, with a hook that writes
``proposal.executed`` in the transaction of the operation's first entry, after checking once more,
under the CVM's lock, that the proposal has not expired, that its CVM is still in the mode it was
made in, and that its approvals still meet the policy in force. An execution that is refused, or
that changes nothing, is recorded as ``proposal.failed``; one the controller's stop interrupted is
recorded so at the next start (``recover``). Nothing runs twice, and nothing runs after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from duet import keys
from duet.controller.auth import AuthorizedRequest, ParamsT, RequestAuthenticator
from duet.controller.sealed_state import SealedState
from duet.controller.service import MAX_REASON_CHARS, LifecycleService
from duet.controller.settings import Settings
from duet.controller.store import OutputPruned, Store, StoredBlobAltered
from duet.errors import Conflict, DuetError, Forbidden, InvalidParams
from duet.ledger.log import Ledger
from duet.protocol import approvals as ap
from duet.protocol import lifecycle as lc
from duet.protocol.approvals import ApprovalPolicy, Ballot, CvmMode, EntrySpec, Proposal, ProposalReplay
from duet.protocol.canonical import canonical, timestamp
from duet.protocol.models import PARAMS_BY_OP, OwnersChangeParams, PolicyChangeParams
from duet.storage import Transaction

log = logging.getLogger("duet.proposals")

LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
"""``GET /v1/proposals`` answers the newest 100 by default (``?limit=`` up to 1,000): its size
does not grow with the number of proposals ever made."""

Action = Callable[[AuthorizedRequest[Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Answered:
    """A request answered without running now: it became a proposal (HTTP 202, the answer
    describes it), or it changes nothing (200, the operation's own answer)."""

    answer: dict[str, Any]
    status: int = 202


def owners_digest(owners: list[str]) -> str:
    """What a ``controller.owners`` entry names its sorted owner ids by (as at first start)."""
    return hashlib.sha256("\n".join(sorted(owners)).encode()).hexdigest()


class ProposalService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        ledger: Ledger,
        lifecycle: LifecycleService,
        authenticator: RequestAuthenticator,
        sealed: SealedState,
        *,
        replay: ProposalReplay,
    ) -> None:
        """``replay`` has seen the verified ledger and is fed every committed entry from here on
        (the caller subscribes it before the start's own entries). The owner set in force (key id
        → public PEM) is sealed state's: the start reconciled it with the verified ledger, and each
        governed change updates it (``SealedState.govern``)."""
        self.settings = settings
        self.store = store
        self.ledger = ledger
        self.lifecycle = lifecycle
        self.authenticator = authenticator
        self.sealed = sealed
        self.replay = replay
        self.on_governance: list[Callable[[], None]] = []
        """Called after a governed change took effect (the runtime refreshes the identity document)."""
        self._governance = asyncio.Lock()
        self._sweeping: asyncio.Task[None] | None = None
        self._actions: dict[str, Action] = {
            "cvm.start": lifecycle.start,
            "cvm.run": lifecycle.run,
            "cvm.mark": lifecycle.mark,
            "cvm.stop": lifecycle.stop,
            "owners.change": self.change_owners,
            "policy.change": self.change_policy,
        }

    # --- what is in force ---------------------------------------------------------------------

    @property
    def policy(self) -> ApprovalPolicy:
        return self.replay.policy

    @property
    def owners(self) -> frozenset[str]:
        """The owner key ids in force."""
        return frozenset(self.sealed.owners)

    def now(self) -> datetime:
        """The controller's clock (``controller.clock.FloorClock``, through the authenticator): the
        host's, never believed backwards, the one the ledger stamps entries with. To the
        millisecond, as entries say it: each decision is recorded with the very time it was made
        at (``_append(..., at=)``), so an auditor recounting from the entries decides the same."""
        moment = datetime.fromtimestamp(self.authenticator.now(), UTC)
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    def _mode(self, cvm_id: str | None) -> CvmMode | None:
        return self.replay.cvms.get(cvm_id) if cvm_id is not None else None

    # --- admission: direct, or a proposal --------------------------------------------------------

    def admit(self, request: AuthorizedRequest[Any]) -> AuthorizedRequest[Any] | Answered:
        """An admitted signed request: returned to run directly (with a guard that refuses it if
        the policy changes before its first entry) when its signer alone meets the policy;
        otherwise checked as the operation would check it now, and recorded as a proposal."""
        body = request.body or {}
        operation = ap.operation_of(request.op, body.get("params") or {})
        if not self.policy.needs_approvals(operation):
            return dataclasses.replace(request, before_first_entry=self._direct_guard(request.signer, request.op, body))
        unchanged = self._precheck(request)
        if unchanged is not None:
            return Answered(unchanged, status=200)  # nothing to change: answered as a direct request, without a proposal
        assert operation is not None
        waiting = sum(1 for p in self.replay.pending() if p.proposer == request.signer)
        if waiting >= self.settings.max_pending_proposals:
            raise Conflict(
                f"{request.signer[:16]}… already has {waiting} proposals waiting for approvals, the most one owner may "
                "have; withdraw some (`duet proposals --pending`, `duet withdraw ID`) or wait for them to close",
                code="too_many_proposals",
            )
        cvm_id = getattr(request.params, "cvm_id", None)
        now = self.now()
        vote = ap.propose(
            body,
            proposer=request.signer,
            policy=self.policy,
            owners=self.owners,
            now=now,
            cvm=self._mode(cvm_id),
            signature=request.signature,
        )
        with self.store.transaction() as tx:
            if body and len(canonical(body)) > ap.INLINE_REQUEST_MAX_BYTES:
                self.store.put_blob(tx, vote.proposal.id, canonical(body))
            self._append(tx, ap.created_entry(vote.proposal, self.policy), at=now)
        log.info("proposal %s (%s) by %s: waiting for approvals", vote.proposal.id[:16], operation, request.signer[:16])
        return Answered(self._answer(vote.proposal.id))

    def single_owner(self, request: AuthorizedRequest[ParamsT], *, v1_route: str) -> AuthorizedRequest[ParamsT]:
        """For the seed protocol, which speaks for one owner: refused when the operation needs more
        (``approvals_required``, naming the v1 route), else guarded like a direct request."""
        body = request.body or {"op": request.op, "params": request.params.model_dump()}
        ap.check_single_owner(self.policy, ap.operation_of(request.op, body.get("params") or {}), v1_route=v1_route)
        return dataclasses.replace(request, before_first_entry=self._direct_guard(request.signer, request.op, body))

    def _precheck(self, request: AuthorizedRequest[Any]) -> dict[str, Any] | None:
        if request.op == "owners.change":
            self._owners_after(request.params)
            return None
        if request.op == "policy.change":
            self._policy_after(request.params)
            return None
        return self.lifecycle.precheck(request.op, request.params)

    def _direct_guard(self, signer: str, op: str, body: dict[str, Any]) -> Callable[[Transaction, str | None], None]:
        """Checked at each of the request's entries: its signer is still an owner (a key removed
        while its request waited, behind another's command or an attestation, acts no more: its
        later commands are refused too) and one owner still suffices."""

        def guard(tx: Transaction, cvm_id: str | None) -> None:
            if signer not in self.sealed.owners:
                raise Forbidden(
                    f"{signer[:16]}… was removed from the owner set while this request waited; nothing more of it runs",
                    code="not_an_owner",
                )
            operation = ap.operation_of(op, body.get("params") or {})
            if self.policy.needs_approvals(operation):
                raise Conflict(
                    f"the approval policy changed while this request waited: {operation} now needs "
                    f"{self.policy.threshold(operation or '')} owner signatures; nothing ran. Send it again to propose it",
                    code="approvals_required",
                )

        return guard

    # --- votes ---------------------------------------------------------------------------------

    def replay_refusal(self, digest: str | None, refusal: DuetError) -> DuetError:
        """A vote refused at admission as a replayed request is, when it was counted on a proposal,
        the replayed approval it is (``approval_replayed``)."""
        if refusal.code == "replayed_request" and digest is not None and digest in self.replay.votes:
            return Conflict(
                f"this signed vote ({digest[:16]}…) was already counted on a proposal; a vote is accepted once",
                code="approval_replayed",
            )
        return refusal

    async def vote(self, request: AuthorizedRequest[Any]) -> dict[str, Any]:
        """Approve, reject or withdraw (``request.op``); the approval that meets the threshold
        executes the proposal before answering, and its result is in the answer."""
        proposal = ap.find(self.replay.proposals, request.params.proposal_id)
        now = self.now()
        proposal = self._close_if_due(proposal, now)
        ballot = Ballot(request.signer, request.digest, request.body, request.signature)
        policy, owners, cvm = self.policy, self.owners, self._mode(proposal.cvm_id)
        ready = False
        if request.op == ap.APPROVE_OP:
            decided = ap.approve(proposal, ballot, policy=policy, owners=owners, now=now, cvm=cvm)
            after, ready, event = decided.proposal, decided.ready, ap.PROPOSAL_APPROVED
        elif request.op == ap.REJECT_OP:
            after, event = (
                ap.reject(proposal, ballot, policy=policy, owners=owners, now=now, cvm=cvm).proposal,
                ap.PROPOSAL_REJECTED,
            )
        else:
            after, event = ap.withdraw(proposal, ballot, owners=owners, now=now), ap.PROPOSAL_WITHDRAWN
        with self.store.transaction() as tx:
            self._append(tx, ap.vote_entry(event, after, ballot, policy=policy, owners=owners), at=now)
        result = await self._execute(after.id) if ready else None
        return {**self._answer(after.id), "result": result}

    def _close_if_due(self, proposal: Proposal, now: datetime) -> Proposal:
        """Record the closure that is due (expired, or its CVM changed mode); the proposal after it."""
        settled = ap.settle(proposal, now=now, cvm=self._mode(proposal.cvm_id))
        if settled is proposal:
            return proposal
        with self.store.transaction() as tx:
            if settled.status == ap.EXPIRED:
                self._append(tx, ap.expired_entry(settled), at=now)
            else:
                reason = (
                    f"its CVM was {proposal.bound_to.describe() if proposal.bound_to else '?'} when it was proposed and "
                    "changed since (its mode, or commands ran): it will not run in a situation its signers did not see"
                )
                self._append(tx, ap.failed_entry(settled, code=settled.reason or "cvm_mode_changed", reason=reason), at=now)
        return self.replay.proposals[proposal.id]

    # --- execution -----------------------------------------------------------------------------

    async def _execute(self, proposal_id: str) -> dict[str, Any]:
        """Run the approved proposal's request as if its proposer alone had signed it (actor: the
        proposer, digest: the proposal id); ``proposal.executed`` goes into the transaction of its
        first entry (``_execution``). A refusal or no effect is recorded as ``proposal.failed``."""
        proposal = self.replay.proposals[proposal_id]
        try:
            request = self._request_of(proposal)
            result = await self._actions[request.op](request)
        except DuetError as exc:
            self._fail_if_open(proposal.id, exc.code, exc.message)
            raise
        except asyncio.CancelledError:
            self._fail_if_open(proposal.id, "interrupted", "the execution was cancelled before it ran (the server is stopping)")
            raise
        except Exception:
            self._fail_if_open(proposal.id, "internal_error", "the execution hit an unexpected error (in the controller's log)")
            raise
        self._fail_if_open(proposal.id, "no_effect", "by the time it ran, the operation had nothing left to change")
        log.info("proposal %s executed (%s)", proposal.id[:16], proposal.operation)
        return result

    def _request_of(self, proposal: Proposal) -> AuthorizedRequest[Any]:
        """The proposed request, as if its proposer alone had signed it: from the ledger entry, or
        (a large one) from its blob, checked against its address, the proposal id."""
        try:
            body = proposal.request if proposal.request is not None else json.loads(self.store.get_blob(proposal.id))
        except StoredBlobAltered:
            raise Conflict(
                f"the stored request of proposal {proposal.id[:16]}… no longer hashes to its id: the database was edited; "
                "it does not run",
                code="proposal_request_altered",
            ) from None
        except OutputPruned:
            raise Conflict(
                f"the stored request of proposal {proposal.id[:16]}… was pruned by the output retention policy (keep "
                "--output-retention-days above the proposals' lifetime); it does not run",
                code="proposal_request_pruned",
            ) from None
        op = str(body["op"])
        return AuthorizedRequest(
            op=op,
            params=PARAMS_BY_OP[op].model_validate(body["params"]),
            signer=proposal.proposer,
            digest=proposal.id,
            body=body,
            signature=proposal.signature,
            before_first_entry=self._execution(proposal.id),
        )

    def _execution(self, proposal_id: str) -> Callable[[Transaction, str | None], None]:
        def record(tx: Transaction, cvm_id: str | None) -> None:
            proposal = self.replay.proposals[proposal_id]
            if proposal.status == ap.EXECUTED:
                return  # a run's later commands: one execution
            if proposal.status != ap.APPROVED:
                raise Conflict(f"proposal {proposal_id[:16]}… is {proposal.status}; it does not run", code="proposal_closed")
            if not ap.ready(proposal, self.policy, self.owners):
                raise Conflict(
                    f"proposal {proposal_id[:16]}… no longer has its approvals: the owner set or the policy changed "
                    f"({ap.count(proposal, self.owners)} of {self.policy.threshold(proposal.operation)} count now)",
                    code="quorum_lost",
                )
            now = self.now()
            done = ap.executed(proposal, now=now, cvm=self._mode(proposal.cvm_id))
            self._append(tx, ap.executed_entry(done, policy=self.policy, owners=self.owners), at=now)

        return record

    def _fail_if_open(self, proposal_id: str, code: str, reason: str) -> None:
        proposal = self.replay.proposals.get(proposal_id)
        if proposal is None or proposal.status not in (ap.PENDING, ap.APPROVED):
            return
        now = self.now()
        failed = ap.fail(proposal, code=code, now=now)
        with self.store.transaction() as tx:
            self._append(tx, ap.failed_entry(failed, code=code, reason=reason[:MAX_REASON_CHARS]), at=now)

    # --- governed changes ----------------------------------------------------------------------

    def _owners_after(self, params: OwnersChangeParams) -> dict[str, str]:
        """The owner set the change would put in force (key id → PEM), checked: known keys to
        remove, new keys to add, at least one owner and every threshold within the count."""
        after = dict(self.sealed.owners)
        if not params.add and not params.remove:
            raise InvalidParams("owners.change adds or removes at least one owner key", code="invalid_params")
        for key_id in params.remove:
            if key_id not in after:
                raise Conflict(f"{key_id[:16]}… is not an owner of this controller", code="unknown_owner")
            del after[key_id]
        for index, pem in enumerate(params.add):
            try:
                key = keys.load_public_key_bytes(pem.encode(), f"params.add[{index}]")
            except DuetError as exc:
                raise InvalidParams(exc.message, code="invalid_params") from None
            key_id = keys.key_id(key)
            if key_id in after:
                raise Conflict(f"{key_id[:16]}… is already an owner of this controller", code="already_an_owner")
            after[key_id] = keys.public_pem(key).decode()
        if after == self.sealed.owners:
            raise Conflict("this owners.change leaves the owner set as it is; nothing to change", code="no_change")
        ap.check_governance(self.policy, len(after))
        return after

    def _policy_after(self, params: PolicyChangeParams) -> ApprovalPolicy:
        try:
            policy = ApprovalPolicy.from_dict(params.policy, "the proposed policy")
        except DuetError as exc:
            raise InvalidParams(exc.message, code=exc.code) from None
        if policy.sha256 == self.policy.sha256:
            raise Conflict("this policy.change proposes the policy in force; nothing to change", code="no_change")
        ap.check_governance(policy, len(self.owners))
        return policy

    async def change_owners(self, request: AuthorizedRequest[OwnersChangeParams]) -> dict[str, Any]:
        """Add and remove owner keys; in force from the transaction of its ``controller.owners``
        entry (which carries the added public keys, so sealed state can follow it after a crash)."""
        async with self._governance:
            after = self._owners_after(request.params)
            owners = sorted(after)
            with self.store.transaction() as tx:
                if request.before_first_entry is not None:
                    request.before_first_entry(tx, None)
                entry = self.ledger.append(
                    tx,
                    cvm=None,
                    event=lc.CONTROLLER_OWNERS,
                    actor=request.signer,
                    request_digest=request.digest,
                    owners=owners,
                    owners_digest=owners_digest(owners),
                    added=[after[k] for k in owners if k not in self.sealed.owners],
                    removed=sorted(set(self.sealed.owners) - set(after)),
                )
            self.store.replace_owners(after)  # a cache for people reading the database; never read back
            self._governed(owner_keys=after)
        return {"owners": owners, "seq": entry["seq"], "tree_size": self.ledger.size}

    async def change_policy(self, request: AuthorizedRequest[PolicyChangeParams]) -> dict[str, Any]:
        """A new approval policy, in force from the transaction of its ``controller.policy`` entry."""
        async with self._governance:
            policy = self._policy_after(request.params)
            with self.store.transaction() as tx:
                if request.before_first_entry is not None:
                    request.before_first_entry(tx, None)
                entry = self._append(tx, ap.policy_entry(policy, actor=request.signer, request_digest=request.digest))
            self._governed(owner_keys=self.sealed.owners)
        return {
            "approval_policy": policy.to_dict(),
            "policy_sha256": policy.sha256,
            "seq": entry["seq"],
            "tree_size": self.ledger.size,
        }

    def _governed(self, *, owner_keys: dict[str, str]) -> None:
        """After the entry committed: sealed state, the authenticator (and with it the seed
        gateway) and the identity document follow it."""
        self.sealed.govern(owners=owner_keys, approval_policy=self.policy.to_dict())
        self.authenticator.set_owners(owner_keys)
        for listener in self.on_governance:
            listener()

    # --- reads ---------------------------------------------------------------------------------

    def describe(self, proposal: Proposal) -> dict[str, Any]:
        return ap.describe(proposal, policy=self.policy, owners=self.owners)

    def _answer(self, proposal_id: str) -> dict[str, Any]:
        proposal = self.replay.proposals[proposal_id]
        answer: dict[str, Any] = {"proposal": self.describe(proposal), "tree_size": self.ledger.size}
        if proposal.status == ap.PENDING:
            answer["message"] = ap.pending_message(proposal, policy=self.policy, owners=self.owners)
        return answer

    def list(self, *, status: str | None = None, limit: int = LIST_LIMIT) -> dict[str, Any]:
        """The newest ``limit`` proposals (or those with ``status``), closures that are due shown as closed."""
        if status is not None and status not in ap.STATUSES:
            raise InvalidParams(f"status is one of {', '.join(ap.STATUSES)}", code="invalid_params")
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidParams(f"limit is from 1 to {MAX_LIST_LIMIT}", code="invalid_params")
        now = self.now()
        shown = (ap.settle(p, now=now, cvm=self._mode(p.cvm_id)) for p in reversed(self.replay.proposals.values()))
        chosen = list(itertools.islice((p for p in shown if status is None or p.status == status), limit))
        return {"proposals": [self.describe(p) for p in chosen], "tree_size": self.ledger.size}

    def show(self, proposal_id: str) -> dict[str, Any]:
        proposal = ap.find(self.replay.proposals, proposal_id)
        settled = ap.settle(proposal, now=self.now(), cvm=self._mode(proposal.cvm_id))
        return {"proposal": self.describe(settled), "request": proposal.request, "tree_size": self.ledger.size}

    # --- closing what is due -------------------------------------------------------------------

    def recover(self) -> None:
        """At start: an approved proposal without an outcome was interrupted by the stop (it never
        runs after a restart); then the sweep."""
        for proposal in list(self.replay.pending()):
            if proposal.status == ap.APPROVED:
                self._fail_if_open(
                    proposal.id, "interrupted", "the controller stopped after the approvals were met, before it ran"
                )
        self.sweep()

    def sweep(self) -> int:
        """Record every closure that is due; how many were."""
        now, closed = self.now(), 0
        for proposal in list(self.replay.pending()):
            if proposal.status == ap.PENDING and self._close_if_due(proposal, now) is not proposal:
                closed += 1
        return closed

    def start_sweeping(self) -> None:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(self.settings.proposal_sweep_s)
                try:
                    self.sweep()
                except Exception:
                    log.exception("recording closed proposals failed; retrying at the next sweep")

        if self._sweeping is None:
            self._sweeping = asyncio.create_task(sweep(), name="proposal-sweep")

    async def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeping

    # --- plumbing ------------------------------------------------------------------------------

    def _append(self, tx: Transaction, spec: EntrySpec, at: datetime | None = None) -> dict[str, Any]:
        return self.ledger.append(
            tx,
            cvm=spec.cvm,
            event=spec.event,
            actor=spec.actor,
            request_digest=spec.request_digest,
            at=timestamp(at) if at is not None else None,
            **spec.fields,
        )
