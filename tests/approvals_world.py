"""An in-process controller for approvals tests (real service, store, ledger, sealed state,
proposal service; the fake provider and SSH of ``duet.testing``), three owners (owner 2 is RSA,
the kind the seed protocol accepts), an approval policy, and a clock the test moves."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from duet import keys
from duet.controller.auth import AuthorizedRequest
from duet.controller.proposals import Answered
from duet.controller.runtime import Controller, open_controller
from duet.controller.settings import Settings
from duet.protocol import lifecycle as lc
from duet.protocol.canonical import timestamp
from duet.protocol.envelope import sign_request
from duet.protocol.rules import RulesReplay
from duet.testing.fakes import FakeProvider, FakeSsh

# cvm.run / mark in-service stay at 1: one owner may run commands and close a CVM; reopening needs 2.
POLICY = '[thresholds]\n"cvm.mark.in-update" = 2\n"cvm.mark.final" = 2\n'


class Clock:
    """The host's clock, which the test moves (the controller never believes it backwards)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    state_dir: Path
    owner_keys: list[Any]
    pubs: list[Path]
    policy: Path
    provider: FakeProvider
    ssh: FakeSsh
    clock: Clock

    def key_id(self, who: int) -> str:
        return keys.key_id(self.owner_keys[who].public_key())


def world_fixture(tmp_path: Path, policy_text: str = POLICY) -> World:
    # owner 2 is an RSA key: the one the seed protocol accepts (and the one that gets stolen)
    owner_keys: list[Any] = [keys.generate("ed25519"), keys.generate("ed25519"), rsa.generate_private_key(65537, 2048)]
    pubs = [keys.write_key_pair(tmp_path / f"owner{i}.pem", key) for i, key in enumerate(owner_keys)]
    policy = tmp_path / "approvals.toml"
    policy.write_text(policy_text)
    return World(tmp_path / "state", owner_keys, pubs, policy, FakeProvider(), FakeSsh(), Clock())


async def open_world(world: World, *, first: bool = False, **overrides: Any) -> Controller:
    settings = Settings(
        state_dir=world.state_dir,
        owner_keys=tuple(world.pubs) if first else (),
        approval_policy=world.policy if first else None,
        providers=("fake",),
        tee="none",
        trust_simulated_cvm=True,
        **overrides,
    )
    controller = open_controller(settings, providers={"fake": world.provider}, ssh=world.ssh, clock=world.clock)
    await controller.service.recover()
    assert controller.proposals is not None
    controller.proposals.recover()
    return controller


async def controller_fixture(world: World) -> AsyncIterator[Controller]:
    made = await open_world(world, first=True)
    yield made
    await made.close()


def signed(controller: Controller, world: World, who: int, op: str, params: dict[str, Any]) -> AuthorizedRequest[Any]:
    issued = timestamp(datetime.fromtimestamp(world.clock.now, UTC))
    envelope = sign_request(op, controller.identity.controller_id, params, world.owner_keys[who], issued_at=issued)
    return controller.authenticator.authenticate(json.dumps(envelope).encode(), op)


async def perform(controller: Controller, request: AuthorizedRequest[Any]) -> dict[str, Any]:
    """What the route does: a proposal (or the answer of a request that changes nothing), or the operation run at once."""
    assert controller.proposals is not None
    admitted = controller.proposals.admit(request)
    if isinstance(admitted, Answered):
        return admitted.answer
    action = {
        "cvm.start": controller.service.start,
        "cvm.run": controller.service.run,
        "cvm.mark": controller.service.mark,
        "cvm.stop": controller.service.stop,
        "owners.change": controller.proposals.change_owners,
        "policy.change": controller.proposals.change_policy,
    }
    return await action[request.op](admitted)


def events(controller: Controller, cvm_id: str | None = None) -> list[dict[str, Any]]:
    return controller.ledger.entries(cvm=cvm_id) if cvm_id else controller.ledger.entries()


async def in_service_cvm(controller: Controller, world: World) -> str:
    """A CVM started and put in service by owner 0 (one owner suffices for both)."""
    cvm_id = await in_update_cvm(controller, world)
    await perform(controller, signed(controller, world, 0, "cvm.mark", {"cvm_id": cvm_id, "mode": lc.IN_SERVICE}))
    return cvm_id


async def vote(controller: Controller, world: World, who: int, op: str, proposal_id: str) -> dict[str, Any]:
    assert controller.proposals is not None
    return await controller.proposals.vote(signed(controller, world, who, op, {"proposal_id": proposal_id}))


async def in_update_cvm(controller: Controller, world: World) -> str:
    started = await perform(controller, signed(controller, world, 0, "cvm.start", {"cvm_type": "snp"}))
    for _ in range(300):
        if controller.service.get_cvm(started["cvm_id"]).mode == lc.IN_UPDATE:
            break
        await asyncio.sleep(0.01)
    assert controller.service.get_cvm(started["cvm_id"]).mode == lc.IN_UPDATE
    return str(started["cvm_id"])


def violations(controller: Controller) -> list[str]:
    replay = RulesReplay()
    return [f"{v.seq}: {v.code}: {v.message}" for entry in controller.ledger.entries() for v in replay.apply(entry)]


async def remove_owner(controller: Controller, world: World, who: int, *, by: int = 0) -> None:
    """owners.change (threshold 1 under POLICY): one owner removes another (the stolen key)."""
    done = await perform(controller, signed(controller, world, by, "owners.change", {"remove": [world.key_id(who)]}))
    assert world.key_id(who) not in done["owners"]
