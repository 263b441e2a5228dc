"""A large answer is signed off the event loop (issue 12, item 2): while one ``run`` answer of
megabytes is canonicalized and signed, in protocol v1 or the seed's, other clients are answered.

The real application, service, ledger and sealed state in-process (httpx's ASGI transport),
with the fake provider and SSH of ``duet.testing``. Signing the run answer is held at a gate
until ``/v1/ledger/head`` has been answered: on the event loop, the gate would block the loop
itself, the head could not be answered, and the gate would open only at its timeout.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from duet import keys
from duet.controller import api
from duet.controller.app import build_app
from duet.controller.auth import AuthorizedRequest
from duet.controller.runtime import Controller, open_controller
from duet.controller.settings import Settings
from duet.protocol import seed
from duet.protocol.envelope import sign_request
from duet.protocol.models import StartParams
from duet.testing.fakes import FakeProvider, FakeSsh, result

MiB = 1024 * 1024
GATE_TIMEOUT_S = 10.0


@dataclass
class Gate:
    """Holds the signing of the big answer until the test releases it."""

    signing: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    timed_out: list[bool] = field(default_factory=list)

    def hold(self) -> None:
        self.signing.set()
        self.timed_out.append(not self.released.wait(GATE_TIMEOUT_S))


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[tuple[Controller, keys.PrivateKey]]:
    owner = keys.generate("rsa")  # the seed protocol's owners sign with RSA; v1 takes it too
    pub = keys.write_key_pair(tmp_path / "owner.pem", owner)
    ssh = FakeSsh(on_run=lambda cvm_id, command: result(stdout="\x01" * (4 * MiB)) if command == "big" else None)
    settings = Settings(
        state_dir=tmp_path / "state", owner_keys=(pub,), providers=("fake",), tee="none", seed_api=True, trust_simulated_cvm=True
    )
    controller = open_controller(settings, providers={"fake": FakeProvider()}, ssh=ssh)
    await controller.service.recover()
    yield controller, owner
    await controller.close()


async def in_update_cvm(controller: Controller, owner: keys.PrivateKey) -> str:
    signer = keys.key_id(owner.public_key())
    start = AuthorizedRequest(op="cvm.start", params=StartParams(cvm_type="snp"), signer=signer, digest=secrets.token_hex(32))
    cvm_id = str((await controller.service.start(start))["cvm_id"])
    for _ in range(50):
        await asyncio.sleep(0.01)
        if controller.service.get_cvm(cvm_id).mode == "in-update":
            break
    assert controller.service.get_cvm(cvm_id).mode == "in-update"
    return cvm_id


async def head_while_signing(controller: Controller, gate: Gate, path: str, body: dict[str, Any]) -> httpx.Response:
    """Post the big request; once its answer is being signed, read the head; then let it go."""
    transport = httpx.ASGITransport(app=build_app(controller))
    async with httpx.AsyncClient(transport=transport, base_url="http://controller") as client:
        run = asyncio.create_task(client.post(path, json=body, timeout=60))
        assert await asyncio.to_thread(gate.signing.wait, GATE_TIMEOUT_S), "the run answer was never signed"
        head = await client.get("/v1/ledger/head", timeout=GATE_TIMEOUT_S)
        gate.released.set()  # the head was answered while the run answer was being signed
        answered = await run
    assert head.status_code == 200
    assert gate.timed_out == [False], "signing the run answer blocked the event loop"
    return answered


async def test_a_large_run_answer_does_not_stall_other_clients(
    opened: tuple[Controller, keys.PrivateKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    controller, owner = opened
    cvm_id = await in_update_cvm(controller, owner)
    gate, canonical = Gate(), api.canonical

    def gated(value: Any) -> bytes:
        if isinstance(value, dict) and "results" in value:
            gate.hold()
        return canonical(value)

    monkeypatch.setattr(api, "canonical", gated)
    body = sign_request("cvm.run", controller.identity.controller_id, {"cvm_id": cvm_id, "commands": ["big"]}, owner)
    answered = await head_while_signing(controller, gate, f"/v1/cvms/{cvm_id}/run", body)

    assert answered.status_code == 200
    [outcome] = answered.json()["result"]["results"]
    assert (outcome["stdout"], outcome["exit_status"]) == ("\x01" * (4 * MiB), 0)


async def test_a_large_seed_run_answer_does_not_stall_other_clients(
    opened: tuple[Controller, keys.PrivateKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    controller, owner = opened
    assert isinstance(owner, rsa.RSAPrivateKey)
    cvm_id = await in_update_cvm(controller, owner)
    gate, signed_answer = Gate(), seed.signed_answer

    def gated(key: rsa.RSAPrivateKey, result: dict[str, Any]) -> dict[str, Any]:
        if "output" in result:
            gate.hold()
        return signed_answer(key, result)

    monkeypatch.setattr(seed, "signed_answer", gated)
    params = {"cvm_id": cvm_id, "commands": ["big"]}
    answered = await head_while_signing(
        controller, gate, "/run_commands", {"params": params, "signature": seed.sign(owner, params)}
    )

    assert answered.json()["result"] == {"success": True, "output": ["\x01" * (4 * MiB)]}
