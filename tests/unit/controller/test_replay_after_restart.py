"""A signed owner request is accepted once, whatever the host does to the nonce table or to the
clock between two runs of the controller (found by attacking an earlier version: a day-old
request was accepted again after the host set its clock back)."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from duet import keys
from duet.controller.runtime import Controller, open_controller
from duet.controller.settings import Settings
from duet.errors import DuetError
from duet.protocol.canonical import timestamp
from duet.protocol.envelope import sign_request
from duet.testing.fakes import FakeProvider, FakeSsh

DAY = 86400.0
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()


class Host:
    """The controller's machine: its disk (state dir), its clock, its cloud."""

    def __init__(self, tmp_path: Path) -> None:
        self.owner = keys.generate("ed25519")
        self.pub = keys.write_key_pair(tmp_path / "owner.pem", self.owner)
        self.state = tmp_path / "state"
        self.provider, self.ssh = FakeProvider(), FakeSsh()
        self.time = T0

    async def start(self) -> Controller:
        settings = Settings(
            state_dir=self.state, owner_keys=(self.pub,), providers=("fake",), tee="none", trust_simulated_cvm=True
        )
        controller = open_controller(settings, providers={"fake": self.provider}, ssh=self.ssh, clock=lambda: self.time)
        await controller.service.recover()
        return controller

    def start_request(self, controller: Controller, at: float) -> bytes:
        issued = timestamp(datetime.fromtimestamp(at, UTC))
        envelope = sign_request("cvm.start", controller.identity.controller_id, {"cvm_type": "snp"}, self.owner, issued_at=issued)
        return json.dumps(envelope).encode()

    def delete_nonces(self) -> None:
        with sqlite3.connect(self.state / "duet.sqlite3") as db:
            db.execute("DELETE FROM nonces")


async def accept(controller: Controller, body: bytes) -> None:
    request = controller.authenticator.authenticate(body, "cvm.start")
    await controller.service.start(request)
    await controller.service.jobs.wait_all()


async def test_deleted_nonces_do_not_reopen_a_replay_after_a_restart(tmp_path: Path) -> None:
    host = Host(tmp_path)
    controller = await host.start()
    body = host.start_request(controller, T0)
    await accept(controller, body)
    await controller.close()

    host.delete_nonces()
    host.time = T0 + 60  # well within the 5-minute window
    again = await host.start()
    with pytest.raises(DuetError) as refused:
        again.authenticator.authenticate(body, "cvm.start")
    assert refused.value.code == "replayed_request"
    await again.close()


async def test_a_clock_set_back_does_not_make_an_old_request_fresh(tmp_path: Path) -> None:
    host = Host(tmp_path)
    controller = await host.start()
    captured = host.start_request(controller, T0)  # signed on day 0, kept by the host
    host.time = T0 + DAY
    await accept(controller, host.start_request(controller, T0 + DAY))  # day 1: ordinary use
    await controller.close()

    host.delete_nonces()
    host.time = T0  # the host sets the clock back a day and restarts the controller
    again = await host.start()
    with pytest.raises(DuetError) as refused:
        again.authenticator.authenticate(captured, "cvm.start")
    assert refused.value.code == "request_expired"  # judged at day 1: the last ledger entry's time
    await again.close()
