"""The lifecycle rules, exhaustively and fast: the real service, store, ledger and sealed state
in-process, with the fake provider and SSH of ``duet.testing``.

Two families: every operation in every mode (the transition table), and a crash between each
ledger entry and its effect (the controller is dropped mid-step, as by kill -9, and opened
again on the same state). After each, the whole ledger must obey the rules an auditor checks.
The real-sshd and kill -9 tests in tests/integration stay the proof with real parts.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from duet import keys
from duet.controller.auth import AuthorizedRequest
from duet.controller.runtime import Controller, open_controller
from duet.controller.settings import Settings
from duet.errors import DuetError, UpstreamError
from duet.protocol import lifecycle as lc
from duet.protocol.lifecycle import LifecycleReplay
from duet.protocol.models import MarkParams, RunParams, StartParams, StopParams
from duet.providers.base import LOCKDOWN_MARKER
from duet.testing.fakes import FakeProvider, FakeSsh, SimulatedCrash


@dataclass
class World:
    """The controller's outside: survives a controller crash, as the cloud and the CVMs do."""

    state_dir: Path
    owner_pub: Path
    owner: str
    provider: FakeProvider
    ssh: FakeSsh


@dataclass
class Harness:
    world: World
    controller: Controller

    def request(self, op: str, params: Any) -> AuthorizedRequest:
        return AuthorizedRequest(op=op, params=params, signer=self.world.owner, digest=secrets.token_hex(32))

    async def start(self) -> str:
        accepted = await self.controller.service.start(self.request("cvm.start", StartParams(cvm_type="snp")))
        await self.settle()
        return str(accepted["cvm_id"])

    async def run(self, cvm_id: str, *commands: str) -> dict[str, Any]:
        return await self.controller.service.run(self.request("cvm.run", RunParams(cvm_id=cvm_id, commands=list(commands))))

    async def mark(self, cvm_id: str, mode: str, final: bool = False) -> dict[str, Any]:
        params = MarkParams(cvm_id=cvm_id, mode=mode, final=final)  # type: ignore[arg-type]
        return await self.controller.service.mark(self.request("cvm.mark", params))

    async def stop(self, cvm_id: str) -> dict[str, Any]:
        accepted = await self.controller.service.stop(self.request("cvm.stop", StopParams(cvm_id=cvm_id)))
        await self.settle()
        return accepted

    async def settle(self) -> None:
        """Let background jobs run until they end or wait on a gate."""
        for _ in range(20):
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)

    def mode(self, cvm_id: str) -> str:
        return self.controller.service.get_cvm(cvm_id).mode

    def events(self, cvm_id: str) -> list[str]:
        return [entry["event"] for entry in self.controller.ledger.entries(cvm=cvm_id)]

    def violations(self) -> list[str]:
        replay = LifecycleReplay().apply_all(self.controller.ledger.entries())
        return [f"{v.seq}: {v.code}: {v.message}" for v in replay.violations]


def settings(world: World, **overrides: Any) -> Settings:
    return Settings(
        state_dir=world.state_dir,
        owner_keys=(world.owner_pub,),
        providers=("fake",),
        tee="none",
        lockdown_retry_s=0.01,
        lockdown_retry_max_s=0.05,
        **{"trust_simulated_cvm": True, **overrides},
    )


async def open_harness(world: World, **overrides: Any) -> Harness:
    controller = open_controller(settings(world, **overrides), providers={"fake": world.provider}, ssh=world.ssh)
    await controller.service.recover()
    harness = Harness(world, controller)
    await harness.settle()
    return harness


def crash(harness: Harness) -> None:
    """Drop the controller without any clean-up, as kill -9 would (only the database handle closes)."""
    for task in list(harness.controller.service.jobs._tasks):
        task.cancel()
    harness.controller.store.close()


@pytest.fixture
def world(tmp_path: Path) -> World:
    key = keys.generate("ed25519")
    pub = keys.write_key_pair(tmp_path / "owner.pem", key)
    return World(tmp_path / "state", pub, keys.key_id(key.public_key()), FakeProvider(), FakeSsh())


@pytest.fixture
async def harness(world: World) -> AsyncIterator[Harness]:
    h = await open_harness(world)
    yield h
    await h.controller.close()


# --- every operation in every mode ------------------------------------------------------------


async def in_mode(h: Harness, mode: str) -> str:
    """A CVM in ``mode`` (final and final-pending are in-service with the flag; stop-failed is
    stopping, its last stop having failed)."""
    world = h.world
    if mode == "provisioning":
        world.provider.gate = asyncio.Event()
        return await h.start()
    if mode == "failed":
        world.provider.fail_create = UpstreamError("the cloud said no", code="quota")
        cvm_id = await h.start()
        world.provider.fail_create = None
        return cvm_id
    cvm_id = await h.start()
    if mode in ("in-service", "final", "final-pending"):
        if mode == "final-pending":
            world.ssh.unreachable.add(cvm_id)
        await h.mark(cvm_id, "in-service", final=mode != "in-service")
    if mode in ("stopping", "stopped"):
        if mode == "stopping":
            world.provider.gate = asyncio.Event()
        await h.stop(cvm_id)
    if mode == "stop-failed":
        world.provider.fail_delete = UpstreamError("the cloud refused to delete the VM", code="cloud_error")
        await h.stop(cvm_id)
        world.provider.fail_delete = None
        assert h.events(cvm_id)[-2:] == ["cvm.stopping", "cvm.stop_failed"]
    return cvm_id


MODES = ("provisioning", "in-update", "in-service", "final", "final-pending", "stopping", "stop-failed", "stopped", "failed")
OPERATIONS: dict[str, Callable[[Harness, str], Any]] = {
    "run": lambda h, cvm: h.run(cvm, "true"),
    "mark in-update": lambda h, cvm: h.mark(cvm, "in-update"),
    "mark in-service": lambda h, cvm: h.mark(cvm, "in-service"),
    "mark final": lambda h, cvm: h.mark(cvm, "in-service", final=True),
    "stop": lambda h, cvm: h.stop(cvm),
}
HELD_BY_A_JOB = {"provisioning": "in-update", "stopping": "stopped"}
"""While a start or stop job holds the CVM, an operation waits for it, then meets the mode it left."""
REFUSED = {
    **{(mode, "run"): "not_in_update" for mode in ("in-service", "final", "final-pending", "stop-failed", "stopped", "failed")},
    ("final", "mark in-update"): "cvm_final",
    ("final-pending", "mark in-update"): "cvm_final",
    **{("stopped", op): "bad_transition" for op in OPERATIONS if op != "run"},
    **{
        (mode, op): "bad_transition"
        for mode in ("failed", "stop-failed")
        for op in ("mark in-update", "mark in-service", "mark final")
    },
}
SHOWN_AS = {"final": "in-service", "final-pending": "in-service", "stop-failed": "stopping"}
UNCHANGED = {
    ("in-update", "mark in-update"),
    ("in-service", "mark in-service"),
    ("final", "mark in-service"),
    ("final", "mark final"),
    ("final-pending", "mark in-service"),
    ("final-pending", "mark final"),
}
MODE_AFTER = {"run": None, "mark in-update": "in-update", "mark in-service": "in-service", "mark final": "in-service"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_every_operation_in_every_mode(harness: Harness, mode: str, operation: str) -> None:
    cvm_id = await in_mode(harness, mode)
    pending = asyncio.ensure_future(OPERATIONS[operation](harness, cvm_id))
    if mode in HELD_BY_A_JOB:
        await harness.settle()
        assert not pending.done() and harness.mode(cvm_id) == mode  # it waits for the job, deciding nothing
        assert harness.world.provider.gate is not None
        before_size = None  # the job's own entries land first: only the outcome is checked
        harness.world.provider.gate.set()
        mode = HELD_BY_A_JOB[mode]  # then it meets the mode the job left, as if asked now
    else:
        before_size = harness.controller.ledger.size
    refusal = REFUSED.get((mode, operation))
    if refusal is not None:
        with pytest.raises(DuetError) as refused:
            await pending
        assert refused.value.code == refusal
        assert harness.mode(cvm_id) == SHOWN_AS.get(mode, mode)
        assert before_size in (None, harness.controller.ledger.size)  # nothing recorded
    else:
        answer = await pending
        if (mode, operation) in UNCHANGED:
            assert answer["changed"] is False
        await harness.settle()
        if operation == "stop":
            assert harness.mode(cvm_id) == "stopped" and cvm_id in harness.world.provider.deleted
        elif MODE_AFTER[operation]:
            assert harness.mode(cvm_id) == MODE_AFTER[operation]
    assert harness.violations() == []


async def test_the_service_and_the_audit_rules_use_one_table(harness: Harness) -> None:
    """What the service allows is what the replay accepts, and the other way round."""
    cvm_id = await in_mode(harness, "in-update")
    for mode in lc.ALLOWED_IN[lc.COMMAND_STARTED]:
        assert mode == harness.mode(cvm_id) == lc.IN_UPDATE
    await harness.run(cvm_id, "echo one")
    await harness.mark(cvm_id, "in-service", final=True)
    await harness.stop(cvm_id)
    assert harness.violations() == []
    assert harness.events(cvm_id) == [
        "cvm.provisioning", "cvm.created", "cvm.attested", "cvm.ready", "command.started", "command.finished",
        "mode.changed", "cvm.locked", "cvm.stopping", "cvm.stopped",
    ]  # fmt: skip


# --- a crash between each ledger entry and its effect -------------------------------------------


async def reopen(h: Harness) -> Harness:
    crash(h)
    return await open_harness(h.world)


async def test_crash_after_command_started_records_it_interrupted(harness: Harness) -> None:
    cvm_id = await in_mode(harness, "in-update")

    def die(cvm: str, command: str) -> None:
        if command == "rm -rf /tmp/cache":
            raise SimulatedCrash

    harness.world.ssh.on_run = die
    with pytest.raises(SimulatedCrash):
        await harness.run(cvm_id, "rm -rf /tmp/cache")
    harness.world.ssh.on_run = None

    again = await reopen(harness)
    assert again.events(cvm_id)[-2:] == ["command.started", "command.interrupted"]
    assert again.mode(cvm_id) == "in-update"
    assert (await again.run(cvm_id, "true"))["results"][0]["exit_status"] == 0
    assert again.violations() == []
    await again.controller.close()


@pytest.mark.parametrize("where", ["provider create", "bootstrap"])
async def test_crash_during_a_start_ends_it_failed_and_deletes_the_machine(harness: Harness, where: str) -> None:
    world = harness.world
    if where == "provider create":
        world.provider.fail_create = SimulatedCrash()
    else:
        world.ssh.on_run = lambda cvm, command: (_ for _ in ()).throw(SimulatedCrash()) if command == "uname -a" else None
    accepted = await harness.controller.service.start(harness.request("cvm.start", StartParams(cvm_type="tdx")))
    await harness.settle()
    cvm_id = accepted["cvm_id"]
    assert harness.mode(cvm_id) == "provisioning"
    world.provider.fail_create, world.ssh.on_run = None, None

    again = await reopen(harness)
    assert again.mode(cvm_id) == "failed"
    assert again.controller.service.job(accepted["job_id"])["status"] == "failed"
    assert cvm_id not in world.provider.machines
    assert not again.controller.service.sealed.has_data_key(cvm_id)  # the key went with the failure
    assert again.violations() == []
    await again.controller.close()


async def test_crash_between_final_and_lockdown_ends_locked_after_restart(harness: Harness) -> None:
    cvm_id = await in_mode(harness, "in-update")

    def die(cvm: str, command: str) -> None:
        if LOCKDOWN_MARKER in command:
            raise SimulatedCrash

    harness.world.ssh.on_run = die
    with pytest.raises(SimulatedCrash):
        await harness.mark(cvm_id, "in-service", final=True)
    assert harness.controller.service.get_cvm(cvm_id).lockdown == lc.LOCKDOWN_PENDING
    harness.world.ssh.on_run = None

    again = await reopen(harness)
    await asyncio.sleep(0.1)
    cvm = again.controller.service.get_cvm(cvm_id)
    assert (cvm.final, cvm.lockdown, cvm.key_destroyed) == (True, lc.LOCKDOWN_DONE, True)
    assert cvm_id in again.world.ssh.locked
    assert again.violations() == []
    await again.controller.close()


async def test_crash_after_stopping_finishes_the_stop_after_restart(harness: Harness) -> None:
    cvm_id = await in_mode(harness, "in-service")
    harness.world.provider.fail_delete = SimulatedCrash()
    await harness.controller.service.stop(harness.request("cvm.stop", StopParams(cvm_id=cvm_id)))
    await harness.settle()
    assert harness.mode(cvm_id) == "stopping"
    harness.world.provider.fail_delete = None

    again = await reopen(harness)
    assert again.mode(cvm_id) == "stopped" and cvm_id in again.world.provider.deleted
    assert again.violations() == []
    await again.controller.close()


async def test_an_unreachable_lockdown_is_retried_and_its_failures_are_bounded(harness: Harness) -> None:
    cvm_id = await in_mode(harness, "final-pending")
    await asyncio.sleep(0.3)  # many retries
    locked = [e for e in harness.controller.ledger.entries(cvm=cvm_id) if e["event"] == "cvm.locked"]
    assert len(locked) == 1 and locked[0]["ok"] is False  # the same failure is not appended again
    harness.world.ssh.unreachable.discard(cvm_id)
    await asyncio.sleep(0.2)
    assert harness.controller.service.get_cvm(cvm_id).lockdown == lc.LOCKDOWN_DONE
    assert harness.violations() == []


# --- a failed stop is retried: by stop again, and at every start ---------------------------------


async def test_stop_again_retries_a_failed_stop(harness: Harness) -> None:
    cvm_id = await in_mode(harness, "in-service")
    harness.world.provider.fail_delete = UpstreamError("the cloud refused to delete the VM", code="cloud_error")
    await harness.stop(cvm_id)
    await harness.stop(cvm_id)  # still failing: recorded again, still retryable
    assert harness.mode(cvm_id) == "stopping"
    harness.world.provider.fail_delete = None
    accepted = await harness.stop(cvm_id)
    assert harness.mode(cvm_id) == "stopped" and cvm_id in harness.world.provider.deleted
    assert harness.controller.service.job(accepted["job_id"])["status"] == "succeeded"
    stops = [e for e in harness.controller.ledger.entries(cvm=cvm_id) if e["event"].startswith("cvm.stop")]
    assert [(e["event"], e.get("previous")) for e in stops] == [
        ("cvm.stopping", "in-service"), ("cvm.stop_failed", None),
        ("cvm.stopping", "stopping"), ("cvm.stop_failed", None),
        ("cvm.stopping", "stopping"), ("cvm.stopped", None),
    ]  # fmt: skip
    assert not harness.controller.service.sealed.has_data_key(cvm_id)
    assert harness.violations() == []


async def test_stop_while_a_stop_runs_is_refused_as_busy(harness: Harness) -> None:
    cvm_id = await in_mode(harness, "in-update")
    harness.world.provider.gate = asyncio.Event()
    service = harness.controller.service
    await service.stop(harness.request("cvm.stop", StopParams(cvm_id=cvm_id)))  # its job has not started yet
    with pytest.raises(DuetError) as refused:
        await service.stop(harness.request("cvm.stop", StopParams(cvm_id=cvm_id)))
    assert refused.value.code == "cvm_busy"
    harness.world.provider.gate.set()
    await harness.settle()
    assert harness.mode(cvm_id) == "stopped"
    assert harness.violations() == []


async def test_a_failed_stop_is_retried_at_every_start(harness: Harness) -> None:
    cvm_id = await in_mode(harness, "in-update")
    world = harness.world
    world.provider.fail_delete = UpstreamError("the cloud refused to delete the VM", code="cloud_error")
    await harness.stop(cvm_id)

    again = await reopen(harness)  # the deletion still fails: the start goes on, the failure is recorded
    assert again.mode(cvm_id) == "stopping"
    assert again.events(cvm_id)[-3:] == ["cvm.stopping", "cvm.stop_failed", "cvm.stop_failed"]
    assert again.controller.ledger.entries(cvm=cvm_id)[-1]["retry"] == "restart"
    assert again.violations() == []

    world.provider.fail_delete = None
    third = await reopen(again)
    assert third.mode(cvm_id) == "stopped" and cvm_id in world.provider.deleted
    assert not third.controller.service.sealed.has_data_key(cvm_id)
    assert third.violations() == []
    await third.controller.close()


@pytest.mark.parametrize("failing", ["reconcile", "resume", "delete of a start interrupted by a crash"])
async def test_a_failing_cleanup_at_start_is_recorded_not_fatal(harness: Harness, failing: str) -> None:
    world = harness.world
    cvm_id = await in_mode(harness, "in-update")
    if failing.startswith("delete"):
        world.provider.fail_create = SimulatedCrash()
        await harness.controller.service.start(harness.request("cvm.start", StartParams(cvm_type="snp")))
        await harness.settle()
        world.provider.fail_create = None
        world.provider.fail_delete = UpstreamError("the cloud refused to delete the VM", code="cloud_error")
    else:
        setattr(world.provider, f"fail_{failing}", UpstreamError("the cloud API is down", code="cloud_down"))

    again = await reopen(harness)  # starts all the same
    entries = again.controller.ledger.entries()
    if failing.startswith("delete"):
        failed = [e for e in entries if e["event"] == "cvm.failed"]
        assert failed[-1]["cleanup_error"] == "the cloud refused to delete the VM"
    else:
        recorded = [e for e in entries if e["event"] == lc.CONTROLLER_RECOVERY_FAILED]
        assert [(e["step"], e["provider"], e["reason"]) for e in recorded] == [(failing, "fake", "the cloud API is down")]
    assert again.mode(cvm_id) == "in-update"
    assert (await again.run(cvm_id, "true"))["results"][0]["exit_status"] == 0  # and it serves
    assert again.violations() == []
    await again.controller.close()


# --- a stalled CVM holds its lock no longer than the command's timeout plus a margin -------------


async def test_a_hung_ssh_layer_holds_the_cvm_no_longer_than_the_timeout_plus_the_margin(world: World) -> None:
    h = await open_harness(world, ssh_connect_timeout_s=0.05, ssh_channel_timeout_s=0.05, ssh_close_timeout_s=0.05)
    try:
        cvm_id = await in_mode(h, "in-update")

        async def hang(cvm: str, command: str) -> None:
            if command == "stalled":
                await asyncio.Event().wait()  # as an SSH layer whose every step hangs would

        world.ssh.on_run = hang
        params = RunParams(cvm_id=cvm_id, commands=["stalled", "never"], timeout_s=0.2)
        began = time.monotonic()
        with pytest.raises(DuetError) as failed:
            await asyncio.wait_for(h.controller.service.run(h.request("cvm.run", params)), 10)
        bound = 0.2 + h.controller.settings.ssh_margin_s
        assert time.monotonic() - began < bound + 0.5
        assert failed.value.code == "ssh_unavailable"
        entries = h.controller.ledger.entries(cvm=cvm_id)
        assert [e["event"] for e in entries[-2:]] == ["command.started", "command.failed"]
        assert "did not answer" in entries[-1]["reason"] and "0.2 s" in entries[-1]["reason"]
        assert "never" not in [command for _, command in world.ssh.ran]

        began = time.monotonic()
        await asyncio.wait_for(h.mark(cvm_id, "in-service"), 1)  # the lock is free again
        assert time.monotonic() - began < 0.5 and h.mode(cvm_id) == "in-service"
        assert h.violations() == []
    finally:
        await h.controller.close()
