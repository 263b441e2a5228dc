"""M-of-N approvals (duet.protocol.approvals): every rule attacked.

The policy is parsed strictly; the proposal state machine refuses each bad vote with its own
code and meets a threshold exactly once whatever the order of the votes; the recount rebuilds
proposals from ledger entries (a restart) and flags every crafted history that breaks a rule.
Owners are real Ed25519 keys and every vote a real signed request, as the controller admits them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from duet import keys
from duet.errors import ConfigError, Conflict, DuetError, Forbidden, NotFound
from duet.protocol import approvals as ap
from duet.protocol import lifecycle as lc
from duet.protocol.approvals import ApprovalPolicy, Ballot, CvmMode, EntrySpec, Proposal, ProposalReplay
from duet.protocol.canonical import timestamp
from duet.protocol.envelope import request_digest, request_signature_valid, sign_request

CONTROLLER = "f" * 64
CVM = "c" * 64
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
IN_SERVICE = CvmMode(lc.IN_SERVICE, False, since=4)


class Owner:
    def __init__(self) -> None:
        self.key = keys.generate()
        self.id = keys.key_id(self.key.public_key())

    def sign(self, op: str, params: dict[str, Any], at: datetime = T0) -> dict[str, Any]:
        return sign_request(op, CONTROLLER, params, self.key, issued_at=timestamp(at))

    def ballot(self, proposal_id: str, op: str = ap.APPROVE_OP, at: datetime = T0) -> Ballot:
        envelope = self.sign(op, {"proposal_id": proposal_id}, at)
        return Ballot(envelope["signer"], request_digest(envelope["request"]), envelope["request"], envelope["signature"])


A, B, C, D = Owner(), Owner(), Owner(), Owner()
THREE = frozenset({A.id, B.id, C.id})
TWO_FOR_IN_UPDATE = ApprovalPolicy.from_dict({"thresholds": {"cvm.mark.in-update": 2}})


def code_of(call: Callable[[], object]) -> str:
    with pytest.raises(DuetError) as caught:
        call()
    return caught.value.code


def mark_in_update(owner: Owner = A, at: datetime = T0) -> dict[str, Any]:
    return owner.sign("cvm.mark", {"cvm_id": CVM, "mode": lc.IN_UPDATE}, at)


def proposed(
    policy: ApprovalPolicy = TWO_FOR_IN_UPDATE,
    owners: frozenset[str] = THREE,
    *,
    by: Owner = A,
    at: datetime = T0,
    cvm: CvmMode = IN_SERVICE,
) -> Proposal:
    envelope = mark_in_update(by, at)
    vote = ap.propose(
        envelope["request"], proposer=by.id, signature=envelope["signature"], policy=policy, owners=owners, now=at, cvm=cvm
    )
    assert not vote.ready
    return vote.proposal


def approve(proposal: Proposal, owner: Owner, **overrides: Any) -> ap.Vote:
    ballot = overrides.pop("ballot", None) or owner.ballot(proposal.id)
    context: dict[str, Any] = {"policy": TWO_FOR_IN_UPDATE, "owners": THREE, "now": T0 + timedelta(minutes=5), "cvm": IN_SERVICE}
    context.update(overrides)
    return ap.approve(proposal, ballot, **context)


# --- the policy ---------------------------------------------------------------------------------


def test_the_default_policy_is_one_owner_for_everything_and_hashes_like_a_file_saying_so() -> None:
    assert all(ap.DEFAULT_POLICY.threshold(op) == 1 for op in ap.OPERATIONS)
    assert not any(ap.DEFAULT_POLICY.needs_approvals(op) for op in ap.OPERATIONS)
    explicit = ApprovalPolicy.parse("# all one\n[thresholds]\n'cvm.run' = 1\n'cvm.stop' = 1\n")
    assert explicit.sha256 == ap.DEFAULT_POLICY.sha256 == ApprovalPolicy.from_dict({}).sha256
    assert ap.DEFAULT_POLICY.to_dict()["thresholds"] == dict.fromkeys(ap.OPERATIONS, 1)
    assert ap.DEFAULT_POLICY.to_dict()["proposal_ttl_s"] == 24 * 3600


def test_a_policy_file_names_thresholds_and_its_hash_ignores_order_and_comments() -> None:
    text = """
        proposal_ttl_s = 3600
        [thresholds]
        "cvm.mark.in-update" = 2   # one stolen laptop must not reopen a service
        "owners.change" = 3
        "policy.change" = 3
    """
    policy = ApprovalPolicy.parse(text, "approvals.toml")
    assert policy.threshold("cvm.mark.in-update") == 2 and policy.threshold("cvm.run") == 1
    assert policy.needs_approvals("owners.change") and not policy.needs_approvals(None)
    reordered = ApprovalPolicy.parse('[thresholds]\n"policy.change" = 3\n"owners.change" = 3\n"cvm.mark.in-update" = 2\n')
    assert reordered.sha256 != policy.sha256  # the expiry differs
    assert ApprovalPolicy.from_dict({**reordered.to_dict(), "proposal_ttl_s": 3600}).sha256 == policy.sha256
    assert (
        policy.canonical()
        == b'{"proposal_ttl_s":3600,"thresholds":{'
        + b",".join(f'"{op}":{policy.threshold(op)}'.encode() for op in sorted(ap.OPERATIONS))
        + b"}}"
    )


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('[thresholds]\n"cvm.mark" = 2\n', "unknown_operation"),
        ('[thresholds]\n"cvm.reboot" = 2\n', "unknown_operation"),
        ('[thresholds]\n"cvm.run" = 0\n', "bad_threshold"),
        ('[thresholds]\n"cvm.run" = -2\n', "bad_threshold"),
        ('[thresholds]\n"cvm.run" = true\n', "bad_threshold"),
        ('[thresholds]\n"cvm.run" = "2"\n', "bad_threshold"),
        ('[thresholds]\n"cvm.run" = 1.5\n', "bad_threshold"),
        ('threshold = {"cvm.run" = 2}\n', "bad_approval_policy"),
        ("thresholds = 2\n", "bad_approval_policy"),
        ("proposal_ttl_s = 0\n", "bad_approval_policy"),
        ("proposal_ttl_s = 604801\n", "bad_approval_policy"),
        ("[thresholds\n", "bad_approval_policy"),
    ],
)
def test_a_bad_policy_is_refused_with_its_code(text: str, code: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ApprovalPolicy.parse(text, "approvals.toml")
    assert caught.value.code == code
    assert "approvals.toml" in caught.value.message


def test_no_threshold_above_the_owners_and_never_below_one_owner() -> None:
    policy = ApprovalPolicy.from_dict({"thresholds": {"cvm.stop": 3}})
    ap.validate(policy, 3)
    assert code_of(lambda: ap.validate(policy, 2)) == "threshold_above_owners"
    assert code_of(lambda: ap.validate(ap.DEFAULT_POLICY, 0)) == "no_owners"
    with pytest.raises(Conflict) as caught:  # the same rule, as the refusal of a governed change
        ap.check_governance(policy, 2)
    assert caught.value.code == "threshold_above_owners" and "cvm.stop = 3" in caught.value.message


@pytest.mark.parametrize(
    ("op", "params", "operation"),
    [
        ("cvm.start", {"cvm_type": "snp"}, "cvm.start"),
        ("cvm.run", {"cvm_id": CVM, "commands": ["true"]}, "cvm.run"),
        ("cvm.mark", {"cvm_id": CVM, "mode": "in-update"}, "cvm.mark.in-update"),
        ("cvm.mark", {"cvm_id": CVM, "mode": "in-service"}, "cvm.mark.in-service"),
        ("cvm.mark", {"cvm_id": CVM, "mode": "in-service", "final": False}, "cvm.mark.in-service"),
        ("cvm.mark", {"cvm_id": CVM, "mode": "in-service", "final": True}, "cvm.mark.final"),
        ("cvm.stop", {"cvm_id": CVM}, "cvm.stop"),
        ("owners.change", {}, "owners.change"),
        ("policy.change", {}, "policy.change"),
        ("cvm.attest", {"cvm_id": CVM}, None),
        ("proposal.approve", {"proposal_id": CVM}, None),
    ],
)
def test_each_signed_request_has_its_policy_operation(op: str, params: dict[str, Any], operation: str | None) -> None:
    assert ap.operation_of(op, params) == operation


def test_requests_without_an_operation_are_refused() -> None:
    assert code_of(lambda: ap.operation_of("cvm.reboot", {})) == "unknown_operation"
    assert code_of(lambda: ap.operation_of("cvm.mark", {"mode": "in-update", "final": True})) == "invalid_params"
    assert code_of(lambda: ap.operation_of("cvm.mark", {"mode": "stopped"})) == "invalid_params"


def test_the_seed_protocol_acts_for_one_owner_only() -> None:
    ap.check_single_owner(TWO_FOR_IN_UPDATE, "cvm.run", v1_route="POST /v1/cvms/{id}/run")
    with pytest.raises(Forbidden) as caught:
        ap.check_single_owner(TWO_FOR_IN_UPDATE, "cvm.mark.in-update", v1_route="POST /v1/cvms/{id}/mark")
    assert caught.value.code == "approvals_required" and "POST /v1/cvms/{id}/mark" in caught.value.message


# --- proposals -----------------------------------------------------------------------------------


def test_a_proposal_is_its_request_digest_with_the_proposers_approval_and_a_day_to_live() -> None:
    envelope = mark_in_update()
    common: dict[str, Any] = {"policy": TWO_FOR_IN_UPDATE, "owners": THREE, "now": T0, "cvm": IN_SERVICE}
    proposal = ap.propose(envelope["request"], proposer=A.id, signature=envelope["signature"], **common).proposal
    assert proposal.id == request_digest(envelope["request"]) and proposal.approvals == {A.id: proposal.id}
    assert proposal.operation == "cvm.mark.in-update" and proposal.cvm_id == CVM and proposal.bound_to == IN_SERVICE
    assert proposal.status == ap.PENDING and proposal.expires_at == timestamp(T0 + timedelta(days=1))
    assert request_signature_valid(proposal.request or {}, proposal.signature or "", A.key.public_key())
    assert ap.pending_message(proposal, policy=TWO_FOR_IN_UPDATE, owners=THREE) == (
        f"pending: 1 of 2 approvals; ask another owner to run `duet approve {proposal.id}`"
    )
    shown = ap.describe(proposal, policy=TWO_FOR_IN_UPDATE, owners=THREE)
    assert shown["may_approve"] == sorted([B.id, C.id]) and (shown["approved"], shown["threshold"]) == (1, 2)


def test_a_proposals_expiry_is_capped_and_must_be_in_the_future() -> None:
    request = mark_in_update()["request"]
    common: dict[str, Any] = {"proposer": A.id, "policy": TWO_FOR_IN_UPDATE, "owners": THREE, "now": T0, "cvm": IN_SERVICE}
    month = ap.propose(request, ttl_s=30 * 24 * 3600, **common).proposal
    assert month.expires_at == timestamp(T0 + timedelta(days=7))
    assert code_of(lambda: ap.propose(request, ttl_s=0, **common)) == "bad_expiry"


def test_who_may_propose_and_what() -> None:
    request = mark_in_update(D)["request"]
    common: dict[str, Any] = {"policy": TWO_FOR_IN_UPDATE, "owners": THREE, "now": T0, "cvm": IN_SERVICE}
    assert code_of(lambda: ap.propose(request, proposer=D.id, **common)) == "not_an_owner"
    attest = A.sign("cvm.attest", {"cvm_id": CVM})["request"]
    assert code_of(lambda: ap.propose(attest, proposer=A.id, **common)) == "not_governed"
    with pytest.raises(ValueError, match="bound to its CVM"):
        ap.propose(mark_in_update()["request"], proposer=A.id, policy=TWO_FOR_IN_UPDATE, owners=THREE, now=T0)
    alone = ap.propose(A.sign("cvm.run", {"cvm_id": CVM, "commands": ["true"]})["request"], proposer=A.id, **common)
    assert alone.ready and alone.proposal.status == ap.APPROVED  # threshold 1: the proposer alone meets it


def test_a_second_distinct_owner_meets_two_of_three() -> None:
    vote = approve(proposed(), B)
    assert vote.ready and vote.proposal.status == ap.APPROVED and set(vote.proposal.approvals) == {A.id, B.id}
    done = ap.executed(vote.proposal, now=T0 + timedelta(minutes=5), cvm=IN_SERVICE)
    assert done.status == ap.EXECUTED


def test_each_refusal_has_its_own_code_and_changes_nothing() -> None:
    proposal = proposed(ApprovalPolicy.from_dict({"thresholds": {"cvm.mark.in-update": 3}}))
    three: dict[str, Any] = {"policy": ApprovalPolicy.from_dict({"thresholds": {"cvm.mark.in-update": 3}})}
    once = approve(proposal, B, **three).proposal
    two = proposed()  # 2 of 3: one rejection leaves it open
    later = T0 + timedelta(minutes=5)
    cases: dict[str, Callable[[], object]] = {
        # the proposer signing an approval of its own proposal, and B a second time
        "already_approved": lambda: approve(once, B, **three),
        "not_an_owner": lambda: approve(proposal, D, **three),
        "approval_replayed": lambda: approve(once, B, ballot=once_ballot, **three),
        "proposal_expired": lambda: approve(proposal, B, now=T0 + timedelta(days=1), **three),
        "proposal_withdrawn": lambda: approve(ap.withdraw(proposal, A.ballot(proposal.id, ap.WITHDRAW_OP), owners=THREE, now=later), B, **three),
        "cvm_mode_changed": lambda: approve(proposal, B, cvm=CvmMode(lc.IN_UPDATE, False, since=9), **three),
        "proposal_closed": lambda: approve(ap.fail(proposal, code="interrupted", now=later), B, **three),
        "only_proposer_withdraws": lambda: ap.withdraw(proposal, B.ballot(proposal.id, ap.WITHDRAW_OP), owners=THREE, now=later),
        "already_rejected": lambda: approve(ap.reject(two, C.ballot(two.id, ap.REJECT_OP), policy=TWO_FOR_IN_UPDATE, owners=THREE, now=later, cvm=IN_SERVICE).proposal, C),
    }  # fmt: skip
    once_ballot = Ballot(B.id, once.approvals[B.id])
    assert code_of(lambda: approve(once, A, **three)) == "already_approved"
    for code, call in cases.items():
        assert code_of(call) == code, code
    assert proposal.status == ap.PENDING and once.approvals.keys() == {A.id, B.id}  # immutable: nothing changed
    # the proposer's own signed request offered again as an approval is a replay, not a vote
    assert code_of(lambda: approve(proposal, A, ballot=Ballot(A.id, proposal.id), **three)) == "approval_replayed"
    assert code_of(lambda: ap.find({}, proposal.id)) == "unknown_proposal"
    with pytest.raises(NotFound):
        ap.find({}, proposal.id)


def test_a_mode_change_away_and_back_still_fails_the_proposal() -> None:
    """Bound to the entry that put the CVM in its mode: in-service → in-update → in-service is a new situation."""
    proposal = proposed()
    back_again = CvmMode(lc.IN_SERVICE, False, since=12)
    assert code_of(lambda: approve(proposal, B, cvm=back_again)) == "cvm_mode_changed"
    assert code_of(lambda: approve(proposal, B, cvm=None)) == "cvm_mode_changed"  # the CVM is gone
    settled = ap.settle(proposal, now=T0 + timedelta(minutes=1), cvm=back_again)
    assert (settled.status, settled.reason) == (ap.FAILED, "cvm_mode_changed")
    assert code_of(lambda: approve(settled, B)) == "cvm_mode_changed"  # recorded or not, the same answer
    assert ap.settle(proposal, now=T0 + timedelta(minutes=1), cvm=IN_SERVICE) is proposal  # nothing due


def test_approvals_racing_meet_the_threshold_exactly_once_in_either_order() -> None:
    for threshold, voters in ((2, (B, C)), (3, (B, C, D)), (4, (B, C, D))):
        owners = frozenset({A.id, B.id, C.id, D.id})
        policy = ApprovalPolicy.from_dict({"thresholds": {"cvm.mark.in-update": threshold}})
        start = proposed(policy, owners)
        ballots = {owner.id: owner.ballot(start.id) for owner in voters}
        for order in itertools.permutations(voters):
            proposal, readies, refused = start, 0, []
            for owner in order:
                try:
                    vote = approve(proposal, owner, policy=policy, owners=owners, ballot=ballots[owner.id])
                except Conflict as exc:
                    refused.append(exc.code)
                    continue
                proposal, readies = vote.proposal, readies + vote.ready
            assert readies == 1, (threshold, order)
            assert proposal.status == ap.APPROVED and len(proposal.approvals) == threshold
            assert refused == ["proposal_closed"] * (len(voters) + 1 - threshold)
            # and it executes once: the second execution is refused
            done = ap.executed(proposal, now=T0, cvm=IN_SERVICE)
            assert code_of(lambda: ap.executed(done, now=T0, cvm=IN_SERVICE)) == "proposal_not_ready"  # noqa: B023


def test_a_removed_owners_approvals_no_longer_count() -> None:
    proposal = proposed()  # A proposes; A's signature is the first approval
    without_a = frozenset({B.id, C.id})
    vote = approve(proposal, B, owners=without_a)
    assert not vote.ready and ap.count(vote.proposal, without_a) == 1
    shown = ap.describe(vote.proposal, policy=TWO_FOR_IN_UPDATE, owners=without_a)
    assert [a["counts"] for a in shown["approvals"]] == [a["owner"] != A.id for a in shown["approvals"]]
    assert code_of(lambda: approve(vote.proposal, A, owners=without_a)) == "not_an_owner"
    final = approve(vote.proposal, C, owners=without_a)
    assert final.ready and ap.counted(final.proposal, without_a) == {o: final.proposal.approvals[o] for o in sorted([B.id, C.id])}


def test_rejection_closes_a_proposal_only_once_its_threshold_is_out_of_reach() -> None:
    proposal = proposed()
    later = T0 + timedelta(minutes=1)
    context: dict[str, Any] = {"policy": TWO_FOR_IN_UPDATE, "owners": THREE, "now": later, "cvm": IN_SERVICE}
    once = ap.reject(proposal, B.ballot(proposal.id, ap.REJECT_OP), **context).proposal
    assert once.status == ap.PENDING  # A and C may still agree
    twice = ap.reject(once, C.ballot(proposal.id, ap.REJECT_OP), **context).proposal
    assert twice.status == ap.REJECTED
    assert code_of(lambda: approve(twice, C)) == "proposal_closed"
    assert code_of(lambda: ap.reject(proposal, A.ballot(proposal.id, ap.REJECT_OP), **context)) == "already_approved"
    assert code_of(lambda: ap.reject(once, B.ballot(proposal.id, ap.REJECT_OP, later), **context)) == "already_rejected"


def test_the_proposer_withdraws_while_pending_only() -> None:
    proposal = proposed()
    later = T0 + timedelta(minutes=1)
    gone = ap.withdraw(proposal, A.ballot(proposal.id, ap.WITHDRAW_OP), owners=THREE, now=later)
    assert gone.status == ap.WITHDRAWN and gone.withdrawal is not None
    again = A.ballot(proposal.id, ap.WITHDRAW_OP, later)
    assert code_of(lambda: ap.withdraw(gone, again, owners=THREE, now=later)) == "proposal_withdrawn"
    expired = T0 + timedelta(days=2)
    assert code_of(lambda: ap.withdraw(proposal, again, owners=THREE, now=expired)) == "proposal_expired"
    approved = approve(proposal, B).proposal
    assert code_of(lambda: ap.withdraw(approved, again, owners=THREE, now=later)) == "proposal_closed"


def test_an_approved_proposal_does_not_run_after_its_expiry_or_a_mode_change() -> None:
    approved = approve(proposed(), B).proposal
    assert code_of(lambda: ap.executed(approved, now=T0 + timedelta(days=1), cvm=IN_SERVICE)) == "proposal_expired"
    moved = CvmMode(lc.IN_UPDATE, False, since=20)
    assert code_of(lambda: ap.executed(approved, now=T0, cvm=moved)) == "cvm_mode_changed"
    failed = ap.fail(approved, code="cvm_mode_changed", now=T0)
    assert failed.status == ap.FAILED and code_of(lambda: ap.fail(failed, code="x", now=T0)) == "proposal_closed"


def test_vote_requests_are_checked_for_shape() -> None:
    good = A.sign(ap.REJECT_OP, {"proposal_id": CVM, "reason": "not now"})["request"]
    assert ap.vote_target(good, ap.REJECT_OP) == CVM
    for op, params in [
        (ap.APPROVE_OP, {"proposal_id": CVM, "reason": "x"}),
        (ap.APPROVE_OP, {"proposal_id": "nope"}),
        (ap.REJECT_OP, {"proposal_id": CVM, "reason": "x" * 501}),
    ]:
        request = A.sign(op, params)["request"]
        assert code_of(lambda: ap.vote_target(request, op)) == "invalid_params"  # noqa: B023
    assert code_of(lambda: ap.vote_target(good, ap.APPROVE_OP)) == "invalid_params"


# --- ledger entries and the recount ------------------------------------------------------------


class Ledger:
    """Entries as the controller's ledger would hold them (seq, time, cvm, event, actor, request_digest, fields)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def put(self, spec: EntrySpec, at: datetime = T0) -> dict[str, Any]:
        return self.add(spec.event, spec.actor, spec.cvm, spec.request_digest, at, **spec.fields)

    def add(
        self, event: str, actor: str, cvm: str | None = CVM, digest: str | None = None, at: datetime = T0, **fields: Any
    ) -> dict[str, Any]:
        entry = {"seq": len(self.entries), "time": timestamp(at), "cvm": cvm, "event": event, "actor": actor,
                 "request_digest": digest, **fields}  # fmt: skip
        self.entries.append(entry)
        return entry

    def findings(self, **replay: Any) -> list[tuple[str, int | None]]:
        return [(v.code, v.seq) for v in ProposalReplay(**replay).apply_all(self.entries).violations]


def in_service_cvm(policy: ApprovalPolicy = TWO_FOR_IN_UPDATE, owners: frozenset[str] = THREE) -> Ledger:
    """Controller start (owners, policy), a CVM started by A, ready, put in service by A: seq 0..5."""
    ledger = Ledger()
    ledger.add(lc.CONTROLLER_OWNERS, lc.CONTROLLER_ACTOR, None, owners=sorted(owners))
    ledger.put(ap.policy_entry(policy))
    ledger.add(lc.CVM_PROVISIONING, A.id, digest="1" * 64, type="snp", provider="local", job="j1")
    ledger.add(lc.CVM_CREATED, lc.CONTROLLER_ACTOR, host_key_fingerprint="SHA256:k", machine_sha256="a" * 64)
    ledger.add(lc.CVM_READY, lc.CONTROLLER_ACTOR, mode=lc.IN_UPDATE)
    ledger.add(lc.MODE_CHANGED, A.id, digest="2" * 64, previous=lc.IN_UPDATE, mode=lc.IN_SERVICE, final=False)
    return ledger


IN_SERVICE_AT_5 = CvmMode(lc.IN_SERVICE, False, since=5)


def two_of_three(ledger: Ledger | None = None) -> tuple[Ledger, Proposal]:
    """The lawful history: A proposes in-update, B approves, the controller executes it."""
    ledger = ledger or in_service_cvm()
    proposal = proposed(cvm=IN_SERVICE_AT_5)
    ledger.put(ap.created_entry(proposal, TWO_FOR_IN_UPDATE))
    ballot = B.ballot(proposal.id)
    later = T0 + timedelta(minutes=5)
    vote = ap.approve(proposal, ballot, policy=TWO_FOR_IN_UPDATE, owners=THREE, now=later, cvm=IN_SERVICE_AT_5)
    assert vote.ready
    ledger.put(ap.vote_entry(ap.PROPOSAL_APPROVED, vote.proposal, ballot, policy=TWO_FOR_IN_UPDATE, owners=THREE), later)
    done = ap.executed(vote.proposal, now=later, cvm=IN_SERVICE_AT_5)
    ledger.put(ap.executed_entry(done, policy=TWO_FOR_IN_UPDATE, owners=THREE), later)
    ledger.add(lc.MODE_CHANGED, A.id, digest=proposal.id, at=later, previous=lc.IN_SERVICE, mode=lc.IN_UPDATE, final=False)
    return ledger, done


def verifier(signer: str, request: Mapping[str, Any], signature: str) -> bool:
    owner = {o.id: o for o in (A, B, C, D)}[signer]
    return request_signature_valid(dict(request), signature, owner.key.public_key())


def test_a_correct_two_of_three_history_passes_both_replays() -> None:
    ledger, done = two_of_three()
    replay = ProposalReplay(verify_signature=verifier).apply_all(ledger.entries)
    assert replay.violations == []
    rebuilt = replay.proposals[done.id]
    assert (rebuilt.status, rebuilt.approvals, rebuilt.bound_to) == (ap.EXECUTED, done.approvals, done.bound_to)
    assert rebuilt.request is None and rebuilt.expires_at == done.expires_at  # a closed one keeps no request body
    assert replay.policy == TWO_FOR_IN_UPDATE and replay.owners == THREE
    # the proposal's entries plug into the lifecycle rules as they are
    assert lc.LifecycleReplay().apply_all(ledger.entries).violations == []
    executed = ledger.entries[-2]
    assert executed["approvers"] == sorted([A.id, B.id]) and executed["threshold"] == 2


def test_an_operation_above_its_threshold_without_a_proposal_lacks_its_quorum() -> None:
    ledger = in_service_cvm()
    reopened = ledger.add(lc.MODE_CHANGED, A.id, digest="3" * 64, previous=lc.IN_SERVICE, mode=lc.IN_UPDATE, final=False)
    assert ledger.findings() == [("quorum_not_met", reopened["seq"])]
    # under the default policy (a ledger older than approvals) the same entry is lawful
    plain = Ledger()
    plain.entries = [e for e in ledger.entries if e["event"] != ap.CONTROLLER_POLICY]
    assert plain.findings() == []


def test_an_executed_proposal_with_one_approval_lacks_its_quorum() -> None:
    ledger, done = two_of_three()
    approval = next(e for e in ledger.entries if e["event"] == ap.PROPOSAL_APPROVED)
    ledger.entries.remove(approval)
    executed = next(e for e in ledger.entries if e["event"] == ap.PROPOSAL_EXECUTED)
    assert ledger.findings() == [("quorum_not_met", executed["seq"])]


def test_an_approval_by_a_key_outside_the_owner_set_at_that_seq_is_flagged_and_does_not_count() -> None:
    ledger = in_service_cvm()
    proposal = proposed(cvm=IN_SERVICE_AT_5)
    ledger.put(ap.created_entry(proposal, TWO_FOR_IN_UPDATE))
    ballot = D.ballot(proposal.id)  # D is no owner (yet): its approval is recorded as if it were
    forged = ledger.put(EntrySpec(ap.PROPOSAL_APPROVED, CVM, D.id, ballot.digest,
                                  {"proposal": proposal.id, "request": ballot.request, "signature": ballot.signature}))  # fmt: skip
    executed = ledger.put(ap.executed_entry(replace_status(proposal, ap.APPROVED), policy=TWO_FOR_IN_UPDATE, owners=THREE))
    ledger.add(lc.MODE_CHANGED, A.id, digest=proposal.id, previous=lc.IN_SERVICE, mode=lc.IN_UPDATE, final=False)
    assert ledger.findings() == [("approval_by_non_owner", forged["seq"]), ("quorum_not_met", executed["seq"])]


def replace_status(proposal: Proposal, status: str) -> Proposal:
    return replace(proposal, status=status)


def test_a_duplicate_approval_counts_once() -> None:
    ledger = in_service_cvm(ApprovalPolicy.from_dict({"thresholds": {"cvm.mark.in-update": 3}}))
    policy3 = ApprovalPolicy.from_dict({"thresholds": {"cvm.mark.in-update": 3}})
    proposal = proposed(policy3, cvm=IN_SERVICE_AT_5)
    ledger.put(ap.created_entry(proposal, policy3))
    first, second = B.ballot(proposal.id), B.ballot(proposal.id, at=T0 + timedelta(seconds=1))
    for ballot in (first, second):
        ledger.put(EntrySpec(ap.PROPOSAL_APPROVED, CVM, B.id, ballot.digest,
                             {"proposal": proposal.id, "request": ballot.request, "signature": ballot.signature}))  # fmt: skip
    executed = ledger.put(ap.executed_entry(replace_status(proposal, ap.APPROVED), policy=policy3, owners=THREE))
    assert ledger.findings() == [("duplicate_approval", executed["seq"] - 1), ("quorum_not_met", executed["seq"])]


def test_replayed_mismatched_and_forged_votes_are_flagged() -> None:
    ledger, done = two_of_three()
    approval = next(e for e in ledger.entries if e["event"] == ap.PROPOSAL_APPROVED)
    replayed = ledger.add(
        ap.PROPOSAL_APPROVED, B.id, digest=approval["request_digest"], proposal=done.id,
        request=approval["request"], signature=approval["signature"],
    )  # fmt: skip
    assert ledger.findings() == [("approval_replayed", replayed["seq"])]
    ledger.entries[-1] = dict(replayed, request=None, signature=None)  # a vote recorded without what was signed
    assert ledger.findings() == [("vote_mismatch", replayed["seq"]), ("approval_replayed", replayed["seq"])]
    ledger.entries.pop()
    other = dict(approval, request=B.ballot("9" * 64).request)  # the signed request names another proposal
    ledger.entries[approval["seq"]] = other
    executed = approval["seq"] + 1  # a vote that is not what its owner signed counts for nothing
    assert ledger.findings() == [("vote_mismatch", approval["seq"]), ("quorum_not_met", executed)]
    forged = dict(approval, signature=C.ballot(done.id).signature)
    ledger.entries[approval["seq"]] = forged
    assert ledger.findings() == []  # without the owners' keys, digests are all an auditor can check
    assert ledger.findings(verify_signature=verifier) == [("bad_vote_signature", approval["seq"]), ("quorum_not_met", executed)]


def test_votes_and_executions_after_the_close_are_flagged() -> None:
    ledger, done = two_of_three()
    late = T0 + timedelta(minutes=10)
    after = C.ballot(done.id, at=late)
    vote = ledger.put(EntrySpec(ap.PROPOSAL_APPROVED, CVM, C.id, after.digest,
                                {"proposal": done.id, "request": after.request, "signature": after.signature}), late)  # fmt: skip
    twice = ledger.put(ap.executed_entry(done, policy=TWO_FOR_IN_UPDATE, owners=THREE), late)
    unknown = ledger.add(ap.PROPOSAL_EXECUTED, lc.CONTROLLER_ACTOR, digest="8" * 64, at=late, proposal="8" * 64)
    assert ledger.findings() == [
        ("approval_after_close", vote["seq"]),
        ("executed_twice", twice["seq"]),
        ("unknown_proposal", unknown["seq"]),
    ]


def test_an_execution_after_expiry_or_after_a_mode_change_is_flagged() -> None:
    ledger = in_service_cvm()
    proposal = proposed(cvm=IN_SERVICE_AT_5)
    ledger.put(ap.created_entry(proposal, TWO_FOR_IN_UPDATE))
    ballot = B.ballot(proposal.id)
    day = T0 + timedelta(days=1, seconds=1)
    ledger.put(EntrySpec(ap.PROPOSAL_APPROVED, CVM, B.id, ballot.digest,
                         {"proposal": proposal.id, "request": ballot.request, "signature": ballot.signature}), day)  # fmt: skip
    executed = ledger.put(ap.executed_entry(replace_status(proposal, ap.APPROVED), policy=TWO_FOR_IN_UPDATE, owners=THREE), day)
    assert ledger.findings() == [("approval_after_close", executed["seq"] - 1), ("executed_after_expiry", executed["seq"]),
                                 ("quorum_not_met", executed["seq"])]  # fmt: skip

    ledger, done = two_of_three()
    executed_at = next(i for i, e in enumerate(ledger.entries) if e["event"] == ap.PROPOSAL_EXECUTED)
    # the CVM went in-update and back in service between the proposal and its execution
    moved = [
        {"event": lc.MODE_CHANGED, "actor": A.id, "request_digest": "4" * 64, "previous": lc.IN_SERVICE, "mode": lc.IN_UPDATE},
        {"event": lc.MODE_CHANGED, "actor": A.id, "request_digest": "5" * 64, "previous": lc.IN_UPDATE, "mode": lc.IN_SERVICE},
    ]
    entries = (
        ledger.entries[:executed_at]
        + [{"time": timestamp(T0), "cvm": CVM, "final": False, **m} for m in moved]
        + ledger.entries[executed_at:]
    )
    for seq, entry in enumerate(entries):
        entry["seq"] = seq
    ledger.entries = entries
    findings = ledger.findings()
    assert ("cvm_mode_changed", executed_at + 2) in findings


def test_policy_and_owner_changes_are_governed_and_counted_under_the_rules_then_in_force() -> None:
    policy = ApprovalPolicy.from_dict({"thresholds": {"cvm.mark.in-update": 2, "owners.change": 2, "policy.change": 2}})
    ledger = in_service_cvm(policy)
    proposal = proposed(policy, cvm=IN_SERVICE_AT_5)
    ledger.put(ap.created_entry(proposal, policy))
    ballot = B.ballot(proposal.id)
    vote = approve(proposal, B, ballot=ballot, policy=policy, cvm=IN_SERVICE_AT_5)
    ledger.put(ap.vote_entry(ap.PROPOSAL_APPROVED, vote.proposal, ballot, policy=policy, owners=THREE))
    # B is removed by the controller's own say-so (not a governed change), then by one owner's request
    ungoverned = ledger.add(lc.CONTROLLER_OWNERS, A.id, None, digest="6" * 64, owners=sorted([A.id, C.id]))
    executed = ledger.put(ap.executed_entry(replace_status(proposal, ap.APPROVED), policy=policy, owners=THREE))
    relaxed = ap.policy_entry(ap.DEFAULT_POLICY, actor=A.id, request_digest="7" * 64)
    policy_once = ledger.put(relaxed)
    policy_by_controller = ledger.put(ap.policy_entry(policy))
    assert ledger.findings() == [
        ("quorum_not_met", ungoverned["seq"]),  # owners.change on one signature
        ("quorum_not_met", executed["seq"]),  # B's approval no longer counts: 1 of 2
        ("quorum_not_met", policy_once["seq"]),  # policy.change on one signature
        ("policy_changed", policy_by_controller["seq"]),  # a new policy with no owner behind it
    ]


def test_the_policy_in_force_at_the_time_decides_not_a_later_one() -> None:
    ledger, _ = two_of_three()
    stricter = ApprovalPolicy.from_dict({"thresholds": {"cvm.mark.in-update": 3}})
    # a later governed policy change (executed proposal by threshold 1 under the old policy)
    envelope = A.sign("policy.change", {"policy": stricter.to_dict()})
    change = ap.propose(envelope["request"], proposer=A.id, policy=TWO_FOR_IN_UPDATE, owners=THREE, now=T0).proposal
    assert change.status == ap.APPROVED
    ledger.put(ap.created_entry(change, TWO_FOR_IN_UPDATE))
    ledger.put(ap.executed_entry(change, policy=TWO_FOR_IN_UPDATE, owners=THREE))
    ledger.put(ap.policy_entry(stricter, actor=A.id, request_digest=change.id))
    assert ledger.findings() == []
    too_strict = ledger.put(ap.policy_entry(ApprovalPolicy.from_dict({"thresholds": {"cvm.run": 4}}), actor=A.id))
    assert ("threshold_above_owners", too_strict["seq"]) in ledger.findings()


def test_pending_proposals_survive_a_restart() -> None:
    ledger = in_service_cvm()
    proposal = proposed(cvm=IN_SERVICE_AT_5)
    ledger.put(ap.created_entry(proposal, TWO_FOR_IN_UPDATE))
    # the controller restarts: everything it knows of the proposal comes from its ledger
    replay = ProposalReplay().apply_all(ledger.entries)
    rebuilt = replay.proposals[proposal.id]
    assert rebuilt == proposal and replay.pending() == [rebuilt]
    assert replay.cvms[CVM] == IN_SERVICE_AT_5
    owners, cvm = replay.owners or frozenset(), replay.cvms[CVM]
    vote = ap.approve(rebuilt, B.ballot(proposal.id), policy=replay.policy, owners=owners, now=T0, cvm=cvm)
    assert vote.ready  # the rebuilt proposal takes the approval that meets its threshold


def test_expiry_is_enforced_after_a_restart() -> None:
    ledger = in_service_cvm()
    proposal = proposed(cvm=IN_SERVICE_AT_5)
    ledger.put(ap.created_entry(proposal, TWO_FOR_IN_UPDATE))
    replay = ProposalReplay().apply_all(ledger.entries)
    rebuilt, owners, cvm = replay.proposals[proposal.id], replay.owners or frozenset(), replay.cvms[CVM]
    later = T0 + timedelta(days=1, minutes=1)
    ballot = B.ballot(proposal.id, at=later)
    assert (
        code_of(lambda: ap.approve(rebuilt, ballot, policy=replay.policy, owners=owners, now=later, cvm=cvm))
        == "proposal_expired"
    )
    settled = ap.settle(rebuilt, now=later, cvm=cvm)
    assert settled.status == ap.EXPIRED
    ledger.put(ap.expired_entry(settled), later)
    # restart again: expired stays expired; a vote recorded anyway is a finding
    again = ProposalReplay().apply_all(ledger.entries)
    assert again.proposals[proposal.id].status == ap.EXPIRED and again.pending() == []
    vote = ledger.put(EntrySpec(ap.PROPOSAL_APPROVED, CVM, B.id, ballot.digest,
                                {"proposal": proposal.id, "request": ballot.request, "signature": ballot.signature}), later)  # fmt: skip
    early = Ledger()
    early.entries = ledger.entries[:-2]
    early.put(ap.expired_entry(settled), T0 + timedelta(hours=1))
    assert ledger.findings() == [("approval_after_close", vote["seq"])]
    assert early.findings() == [("expired_early", len(early.entries) - 1)]


def test_an_approved_proposal_without_an_outcome_at_restart_was_interrupted() -> None:
    ledger, done = two_of_three()
    ledger.entries = [e for e in ledger.entries if e["seq"] < next(
        e["seq"] for e in ledger.entries if e["event"] == ap.PROPOSAL_EXECUTED)]  # fmt: skip
    replay = ProposalReplay().apply_all(ledger.entries)
    [interrupted] = replay.pending()
    assert interrupted.status == ap.APPROVED
    failed = ap.fail(interrupted, code="interrupted", now=T0 + timedelta(hours=1))
    ledger.put(ap.failed_entry(failed, code="interrupted", reason="the controller stopped before it ran"))
    again = ProposalReplay().apply_all(ledger.entries)
    assert again.violations == [] and again.proposals[done.id].status == ap.FAILED
    ran = ledger.add(lc.MODE_CHANGED, A.id, digest=done.id, previous=lc.IN_SERVICE, mode=lc.IN_UPDATE, final=False)
    assert ledger.findings() == [("not_executed", ran["seq"])]


def test_a_large_request_is_left_out_of_its_entry_but_still_named_by_its_digest() -> None:
    policy = ApprovalPolicy.from_dict({"thresholds": {"cvm.run": 2}})
    envelope = A.sign("cvm.run", {"cvm_id": CVM, "commands": ["echo " + "x" * 20_000]})
    proposal = ap.propose(envelope["request"], proposer=A.id, policy=policy, owners=THREE, now=T0, cvm=IN_SERVICE).proposal
    spec = ap.created_entry(proposal, policy)
    assert spec.fields["request"] is None and spec.request_digest == proposal.id == request_digest(envelope["request"])


def test_a_run_of_several_commands_is_one_execution_but_a_mark_is_not_run_twice() -> None:
    ledger, done = two_of_three()
    again = ledger.add(lc.MODE_CHANGED, A.id, digest=done.id, previous=lc.IN_UPDATE, mode=lc.IN_UPDATE, final=False)
    assert ("executed_twice", again["seq"]) in ledger.findings()


def test_a_proposal_whose_recorded_request_is_not_its_own_counts_no_proposer_approval() -> None:
    ledger, done = two_of_three()
    created = next(e for e in ledger.entries if e["event"] == ap.PROPOSAL_CREATED)
    executed = next(e for e in ledger.entries if e["event"] == ap.PROPOSAL_EXECUTED)
    ledger.entries[created["seq"]] = dict(created, request=mark_in_update()["request"])  # another nonce: another digest
    assert ledger.findings() == [("vote_mismatch", created["seq"]), ("quorum_not_met", executed["seq"])]
    ledger.entries[created["seq"]] = dict(
        created, signature=B.sign("cvm.mark", {"cvm_id": CVM, "mode": "in-update"})["signature"]
    )
    assert ledger.findings(verify_signature=verifier) == [
        ("bad_vote_signature", created["seq"]),
        ("quorum_not_met", executed["seq"]),
    ]


def test_rejections_are_recounted_and_close_the_proposal_in_the_replay_too() -> None:
    ledger = in_service_cvm()
    proposal = proposed(cvm=IN_SERVICE_AT_5)
    ledger.put(ap.created_entry(proposal, TWO_FOR_IN_UPDATE))
    context: dict[str, Any] = {"policy": TWO_FOR_IN_UPDATE, "owners": THREE, "now": T0, "cvm": IN_SERVICE_AT_5}
    for owner in (B, C):
        ballot = owner.ballot(proposal.id, ap.REJECT_OP)
        proposal = ap.reject(proposal, ballot, **context).proposal
        ledger.put(ap.vote_entry(ap.PROPOSAL_REJECTED, proposal, ballot, policy=TWO_FOR_IN_UPDATE, owners=THREE))
    assert proposal.status == ap.REJECTED and ledger.entries[-1]["closed"] is True
    replay = ProposalReplay().apply_all(ledger.entries)
    assert replay.violations == [] and replay.proposals[proposal.id].status == ap.REJECTED
    executed = ledger.put(ap.executed_entry(proposal, policy=TWO_FOR_IN_UPDATE, owners=THREE))
    assert ledger.findings() == [("executed_after_close", executed["seq"]), ("quorum_not_met", executed["seq"])]


def test_a_withdrawal_by_another_owner_is_flagged() -> None:
    ledger = in_service_cvm()
    proposal = proposed(cvm=IN_SERVICE_AT_5)
    ledger.put(ap.created_entry(proposal, TWO_FOR_IN_UPDATE))
    ballot = B.ballot(proposal.id, ap.WITHDRAW_OP)
    spec = ap.vote_entry(
        ap.PROPOSAL_WITHDRAWN, replace_status(proposal, ap.WITHDRAWN), ballot, policy=TWO_FOR_IN_UPDATE, owners=THREE
    )
    entry = ledger.put(spec)
    assert ledger.findings() == [("only_proposer_withdraws", entry["seq"])]
    ledger.entries[-1] = dict(entry, actor=A.id, **{"request_digest": (own := A.ballot(proposal.id, ap.WITHDRAW_OP)).digest,
                                                    "request": own.request, "signature": own.signature})  # fmt: skip
    replay = ProposalReplay().apply_all(ledger.entries)
    assert replay.violations == [] and replay.proposals[proposal.id].status == ap.WITHDRAWN


def test_one_cvms_entries_are_recounted_under_the_attested_owners_and_policy() -> None:
    """A CVM audit sees no controller entries: the identity's owner set and policy are given."""
    ledger, _ = two_of_three()
    own = [e for e in ledger.entries if e["cvm"] == CVM]
    replay = ProposalReplay(initial_owners=THREE, initial_policy=TWO_FOR_IN_UPDATE).apply_all(own)
    assert replay.violations == []
    without_b = ProposalReplay(initial_owners=[A.id, C.id], initial_policy=TWO_FOR_IN_UPDATE).apply_all(own)
    assert [v.code for v in without_b.violations] == ["approval_by_non_owner", "quorum_not_met"]


def test_crafted_proposal_entries_are_each_flagged() -> None:
    ledger, done = two_of_three()
    created = next(e for e in ledger.entries if e["event"] == ap.PROPOSAL_CREATED)
    n = len(ledger.entries)
    again = ledger.add(ap.PROPOSAL_CREATED, A.id, digest=done.id, **{k: created[k] for k in ("proposal", "operation", "op")})
    ghost = ledger.add(ap.PROPOSAL_REJECTED, C.id, digest="9" * 64, proposal="a" * 64)
    long_lived = dict(created, expires_at=timestamp(T0 + timedelta(days=30)))
    lying = dict(created, operation=ap.CVM_STOP)
    assert ledger.findings() == [("duplicate_proposal", again["seq"]), ("unknown_proposal", ghost["seq"])]
    for crafted, codes in (
        (long_lived, ["expiry_too_long"]),
        (lying, ["operation_mismatch", "approval_after_close", "operation_mismatch"]),
    ):
        ledger.entries[created["seq"]] = crafted
        assert [c for c, _ in ledger.findings()][: len(codes)] == codes
    ledger.entries[created["seq"]] = created
    del ledger.entries[n:]
    bad = ledger.put(EntrySpec(ap.CONTROLLER_POLICY, None, lc.CONTROLLER_ACTOR, None, {"policy": {"thresholds": {"cvm.x": 2}}}))
    wrong_hash = ledger.put(EntrySpec(ap.CONTROLLER_POLICY, None, A.id, None, {"policy": ap.DEFAULT_POLICY.to_dict(), "policy_sha256": "0" * 64}))  # fmt: skip
    assert ledger.findings() == [("bad_policy", bad["seq"]), ("bad_policy", wrong_hash["seq"])]


def test_a_vote_after_the_threshold_was_met_is_flagged() -> None:
    ledger, done = two_of_three()
    position = next(e["seq"] for e in ledger.entries if e["event"] == ap.PROPOSAL_EXECUTED)
    late = C.ballot(done.id)
    vote = {"seq": -1, "time": timestamp(T0), "cvm": CVM, "event": ap.PROPOSAL_APPROVED, "actor": C.id,
            "request_digest": late.digest, "proposal": done.id, "request": late.request, "signature": late.signature}  # fmt: skip
    ledger.entries.insert(position, vote)
    for seq, entry in enumerate(ledger.entries):
        entry["seq"] = seq
    assert ledger.findings() == [("approval_after_close", position)]  # the executing proposal takes no more votes


def test_runs_and_stops_by_proposal_are_recounted_and_must_be_the_operation_proposed() -> None:
    policy = ApprovalPolicy.from_dict({"thresholds": {"cvm.run": 2, "cvm.stop": 2, "cvm.mark.in-update": 2}})
    ledger, _ = two_of_three(in_service_cvm(policy))  # now in-update: its last entry
    in_update = CvmMode(lc.IN_UPDATE, False, since=len(ledger.entries) - 1)
    envelope = A.sign("cvm.run", {"cvm_id": CVM, "commands": ["one", "two"]})
    run = ap.propose(envelope["request"], proposer=A.id, policy=policy, owners=THREE, now=T0, cvm=in_update).proposal
    ledger.put(ap.created_entry(run, policy))
    ballot = C.ballot(run.id)
    vote = ap.approve(run, ballot, policy=policy, owners=THREE, now=T0, cvm=in_update)
    ledger.put(ap.vote_entry(ap.PROPOSAL_APPROVED, vote.proposal, ballot, policy=policy, owners=THREE))
    ledger.put(ap.executed_entry(ap.executed(vote.proposal, now=T0, cvm=in_update), policy=policy, owners=THREE))
    for command in ("one", "two"):  # one execution, several command entries
        started = ledger.add(lc.COMMAND_STARTED, A.id, digest=run.id, command=command)
        ledger.add(lc.COMMAND_FINISHED, lc.CONTROLLER_ACTOR, digest=run.id, started_seq=started["seq"], exit_status=0)
    assert ledger.findings() == []
    stop = ledger.add(lc.CVM_STOPPING, A.id, digest=run.id, previous=lc.IN_UPDATE, job="j2")  # a stop on the run's votes
    assert ledger.findings() == [("operation_mismatch", stop["seq"])]
