"""CVM attestation in the lifecycle (design §10), in-process: the real service, ledger and
verifiers; the fake CVM answers the collection program from SIMULATED hardware
(``duet.providers.local_tsm``), bound to its own host key. Each test attacks one rule.
The same path on a real sshd is tests/integration/test_cvm_attestation.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from duet import keys
from duet.controller.auth import AuthorizedRequest
from duet.controller.runtime import Controller, open_controller
from duet.controller.settings import Settings
from duet.errors import DuetError
from duet.protocol import lifecycle as lc
from duet.protocol.lifecycle import LifecycleReplay
from duet.protocol.models import AttestParams, MarkParams, StartParams
from duet.providers.local_tsm import LOCAL_CVM_MEASUREMENT, SETTINGS_FILE
from duet.remote.ssh import fingerprint
from duet.testing.fakes import COLLECT_MARKER, FakeProvider, FakeSsh, _host_key, result, shared_hardware


@dataclass
class Clock:
    now: float = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    tmp: Path
    owner_pub: Path
    owner: str
    provider: FakeProvider
    ssh: FakeSsh
    clock: Clock


@dataclass
class Harness:
    world: World
    controller: Controller

    def request(self, op: str, params: Any) -> AuthorizedRequest[Any]:
        return AuthorizedRequest(op=op, params=params, signer=self.world.owner, digest=secrets.token_hex(32))

    async def start(self, cvm_type: str = "snp") -> str:
        accepted = await self.controller.service.start(self.request("cvm.start", StartParams(cvm_type=cvm_type)))  # type: ignore[arg-type]
        for _ in range(200):
            await asyncio.sleep(0.01)
            if self.controller.service.get_cvm(accepted["cvm_id"]).mode != lc.PROVISIONING:
                break
        return str(accepted["cvm_id"])

    def entries(self, cvm_id: str, event: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.controller.ledger.entries(cvm=cvm_id) if event is None or e["event"] == event]

    def violations(self) -> list[str]:
        replay = LifecycleReplay().apply_all(self.controller.ledger.entries())
        return [f"{v.seq}: {v.code}: {v.message}" for v in replay.violations]


def world_at(tmp_path: Path, hardware: Path | None = None) -> World:
    key = keys.generate("ed25519")
    pub = keys.write_key_pair(tmp_path / "owner.pem", key)
    provider = FakeProvider(hardware_dir=hardware or shared_hardware())
    return World(tmp_path, pub, keys.key_id(key.public_key()), provider, FakeSsh(), Clock())


async def open_harness(world: World, **overrides: Any) -> Harness:
    settings = Settings(
        state_dir=world.tmp / "state",
        owner_keys=(world.owner_pub,),
        providers=("fake",),
        tee="none",
        **{"trust_simulated_cvm": True, **overrides},
    )
    controller = open_controller(settings, providers={"fake": world.provider}, ssh=world.ssh, clock=world.clock)
    await controller.service.recover()
    return Harness(world, controller)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = await open_harness(world_at(tmp_path))
    yield h
    await h.controller.close()


async def test_a_new_cvm_is_attested_and_its_own_host_key_pinned(harness: Harness) -> None:
    cvm_id = await harness.start()
    assert harness.controller.service.get_cvm(cvm_id).mode == lc.IN_UPDATE
    [created] = harness.entries(cvm_id, lc.CVM_CREATED)
    [attested] = harness.entries(cvm_id, lc.CVM_ATTESTED)
    assert created["host_key_fingerprint"] is None  # the cloud said nothing trusted about the key
    own_key = harness.world.ssh.host_keys[cvm_id]
    assert attested["ok"] is True and attested["pinned"] is True and attested["simulated"] is True
    assert attested["host_key_fingerprint"] == fingerprint(own_key)
    assert harness.controller.service.machines[cvm_id].host_key == own_key
    assert attested["measurements"] == {"measurement": LOCAL_CVM_MEASUREMENT}
    evidence = harness.controller.store.get_blob(attested["evidence_sha256"])
    assert hashlib.sha256(evidence).hexdigest() == attested["evidence_sha256"]
    assert json.loads(evidence)["source"] == "simulated"
    assert harness.violations() == []


async def test_a_machine_in_the_middle_fails_the_start_and_the_machine_is_deleted(harness: Harness) -> None:
    """The controller sees the MITM's host key; the real CVM's evidence binds its own key."""
    harness.world.ssh.presented = _AnyCvm(_host_key())  # type: ignore[assignment]
    cvm_id = await harness.start()
    cvm = harness.controller.service.get_cvm(cvm_id)
    assert cvm.mode == lc.FAILED and cvm_id in harness.world.provider.deleted
    [attested] = harness.entries(cvm_id, lc.CVM_ATTESTED)
    assert (attested["ok"], attested["step"], attested["code"]) == (False, "binding", "binding_mismatch")
    assert "host_key_fingerprint" not in attested and harness.controller.service.machines[cvm_id].host_key == ""
    [failed] = harness.entries(cvm_id, lc.CVM_FAILED)
    assert failed["code"] == "attestation_failed" and "machine in the middle" in failed["reason"]
    assert failed["key_destroyed"] is True
    assert harness.violations() == []


async def test_simulated_hardware_is_refused_unless_trusted(tmp_path: Path) -> None:
    h = await open_harness(world_at(tmp_path), trust_simulated_cvm=False)
    try:
        cvm_id = await h.start()
        [attested] = h.entries(cvm_id, lc.CVM_ATTESTED)
        assert (attested["step"], attested["code"]) == ("cert_chain", "untrusted_root")
        assert h.controller.service.get_cvm(cvm_id).mode == lc.FAILED
    finally:
        await h.controller.close()


@pytest.mark.parametrize(
    "hardware, policy, step_code",
    [
        ({"debug": True}, "", "debug_allowed"),
        ({"migration": True}, "", "migration_allowed"),
        ({}, f'[snp.measurements]\nmeasurement = ["{"00" * 48}"]\n', "measurement_not_allowed"),
        ({}, "[snp.min_tcb]\nsnp_spl = 99\n", "tcb_too_low"),
    ],
)
async def test_the_policy_refuses_a_cvm_it_does_not_accept(
    tmp_path: Path, hardware: dict[str, Any], policy: str, step_code: str
) -> None:
    hardware_dir = tmp_path / "hardware"
    hardware_dir.mkdir()
    (hardware_dir / SETTINGS_FILE).write_text(json.dumps(hardware))
    (tmp_path / "policy.toml").write_text(policy)
    h = await open_harness(world_at(tmp_path, hardware_dir), cvm_policy=tmp_path / "policy.toml")
    try:
        cvm_id = await h.start()
        [attested] = h.entries(cvm_id, lc.CVM_ATTESTED)
        assert (attested["ok"], attested["step"], attested["code"]) == (False, "policy", step_code)
        assert h.controller.service.get_cvm(cvm_id).mode == lc.FAILED
        assert h.violations() == []
    finally:
        await h.controller.close()


async def test_mark_in_service_re_attests_stale_evidence_and_refuses_on_failure(harness: Harness) -> None:
    service = harness.controller.service
    cvm_id = await harness.start()
    harness.world.clock.now += 3601  # past the default policy's hour
    await service.mark(harness.request("cvm.mark", MarkParams(cvm_id=cvm_id, mode="in-service")))
    assert [e["ok"] for e in harness.entries(cvm_id, lc.CVM_ATTESTED)] == [True, True]
    assert service.get_cvm(cvm_id).mode == lc.IN_SERVICE
    await service.mark(harness.request("cvm.mark", MarkParams(cvm_id=cvm_id, mode="in-update")))

    harness.world.clock.now += 3601
    harness.world.ssh.presented[cvm_id] = _host_key()  # now someone else answers
    with pytest.raises(DuetError) as refused:
        await service.mark(harness.request("cvm.mark", MarkParams(cvm_id=cvm_id, mode="in-service")))
    assert refused.value.code == "attestation_failed" and "binding" in refused.value.message
    assert service.get_cvm(cvm_id).mode == lc.IN_UPDATE
    last = harness.entries(cvm_id, lc.CVM_ATTESTED)[-1]
    assert (last["ok"], last["code"]) == (False, "binding_mismatch")
    assert harness.violations() == []


async def test_fresh_evidence_is_not_collected_again(harness: Harness) -> None:
    cvm_id = await harness.start()
    await harness.controller.service.mark(harness.request("cvm.mark", MarkParams(cvm_id=cvm_id, mode="in-service")))
    assert len(harness.entries(cvm_id, lc.CVM_ATTESTED)) == 1
    assert [c for _, c in harness.world.ssh.ran].count(COLLECT_MARKER) == 1


async def test_an_owner_can_attest_on_demand(harness: Harness) -> None:
    cvm_id = await harness.start()
    answer = await harness.controller.service.attest(harness.request("cvm.attest", AttestParams(cvm_id=cvm_id)))
    assert answer["ok"] is True and [s["step"] for s in answer["steps"]][-3:] == ["binding", "vm_identity", "policy"]
    assert answer["attestation"]["last"]["seq"] == harness.entries(cvm_id, lc.CVM_ATTESTED)[-1]["seq"]
    assert len(harness.entries(cvm_id, lc.CVM_ATTESTED)) == 2


async def test_a_cvm_without_attestation_is_recorded_and_shown_so(tmp_path: Path) -> None:
    h = await open_harness(world_at(tmp_path), cvm_attestation=False)
    try:
        cvm_id = await h.start()
        assert h.controller.service.get_cvm(cvm_id).mode == lc.IN_UPDATE
        [provisioning] = h.entries(cvm_id, lc.CVM_PROVISIONING)
        assert provisioning["attestation"] == "off" and h.entries(cvm_id, lc.CVM_ATTESTED) == []
        state = json.loads(h.controller.service.state_bytes(cvm_id)[0])
        assert state["cvm"]["attestation"]["required"] is False
        await h.controller.service.mark(h.request("cvm.mark", MarkParams(cvm_id=cvm_id, mode="in-service")))
    finally:
        await h.controller.close()


@pytest.mark.parametrize(
    "stdout, code",
    [
        ("", "bad_evidence_bundle"),
        ("not json", "bad_evidence_bundle"),
        (
            '{"format": "duet-cvm-evidence/v1", "source": "simulated", "provider": "sev_guest", "outblob": "!!"}',
            "bad_evidence_bundle",
        ),
        (
            '{"format": "duet-cvm-evidence/v1", "source": "simulated", "provider": "sev_guest", "outblob": "AAAA"}',
            "bad_snp_report",
        ),
        (
            '{"format": "duet-cvm-evidence/v1", "source": "simulated", "provider": "tdx_guest", "outblob": "AAAA"}',
            "wrong_platform",
        ),
        ('{"format": "duet-cvm-evidence/v1", "source": "elsewhere"}', "bad_evidence_bundle"),
        ("x" * (10 * 1024 * 1024), "bad_evidence_bundle"),
    ],
)
async def test_hostile_evidence_fails_the_attestation_cleanly(harness: Harness, stdout: str, code: str) -> None:
    harness.world.ssh.on_run = lambda cvm_id, command: result(stdout=stdout) if COLLECT_MARKER in command else None
    cvm_id = await harness.start()
    [attested] = harness.entries(cvm_id, lc.CVM_ATTESTED)
    assert (attested["ok"], attested["code"]) == (False, code)
    assert harness.controller.service.get_cvm(cvm_id).mode == lc.FAILED
    assert harness.violations() == []


async def test_a_collection_program_that_fails_is_reported_with_its_words(harness: Harness) -> None:
    said = "collect_evidence: /sys/kernel/config/tsm/report is missing"
    harness.world.ssh.on_run = lambda cvm_id, command: result(1, stderr=said) if COLLECT_MARKER in command else None
    cvm_id = await harness.start()
    [attested] = harness.entries(cvm_id, lc.CVM_ATTESTED)
    assert attested["code"] == "collection_failed" and said in attested["reason"]


class _AnyCvm(dict[str, str]):
    """``FakeSsh.presented`` for every CVM: one machine in the middle of all connections."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def get(self, cvm_id: str, default: Any = None) -> str:  # type: ignore[override]
        return self.key


# --- the audit's rules on attestation -------------------------------------------------------------


def _entries(*events: dict[str, Any]) -> list[dict[str, Any]]:
    base = {"cvm": "c" * 64, "actor": "controller", "time": "2026-12-02T10:00:00.000Z"}
    return [{**base, "seq": i, **e} for i, e in enumerate(events)]


PROVISIONING = {"event": "cvm.provisioning", "actor": "owner", "type": "snp", "provider": "local", "attestation": "required"}
PASSED = {"event": "cvm.attested", "ok": True, "valid_until": "2026-12-02T11:00:00.000Z", "host_key_fingerprint": "SHA256:a"}


@pytest.mark.parametrize(
    "events, code",
    [
        ([PROVISIONING, {"event": "cvm.ready"}], "unattested_ready"),
        (
            [PROVISIONING, PASSED, {"event": "cvm.ready"}, {"event": "mode.changed", "actor": "owner", "previous": "in-update",
             "mode": "in-service", "time": "2026-12-02T11:00:00.001Z"}],
            "unattested_service",
        ),
        (
            [PROVISIONING, PASSED, {"event": "cvm.ready"}, {**PASSED, "ok": False}, {"event": "mode.changed", "actor": "owner",
             "previous": "in-update", "mode": "in-service"}],
            "unattested_service",
        ),
        ([PROVISIONING, PASSED, {"event": "cvm.ready"}, {**PASSED, "host_key_fingerprint": "SHA256:b"}], "host_key_changed"),
    ],
)  # fmt: skip
def test_the_audit_finds_a_cvm_that_served_without_a_valid_attestation(events: list[dict[str, Any]], code: str) -> None:
    replay = LifecycleReplay().apply_all(_entries(*events))
    assert [v.code for v in replay.violations] == [code]


def test_the_audit_accepts_an_attested_lifecycle() -> None:
    events = [PROVISIONING, PASSED, {"event": "cvm.ready"},
              {"event": "mode.changed", "actor": "owner", "previous": "in-update", "mode": "in-service"}]  # fmt: skip
    assert LifecycleReplay().apply_all(_entries(*events)).violations == []


# --- the audit's re-verification of recorded evidence (duet.client.evidence_check) -------------------


async def test_recorded_evidence_is_reverified_and_a_lying_entry_is_caught(harness: Harness) -> None:
    from duet.attestation.bundle import CvmRoots
    from duet.client.evidence_check import recheck
    from duet.providers.local_tsm import simulated_roots

    cvm_id = await harness.start()
    [entry] = harness.entries(cvm_id, lc.CVM_ATTESTED)
    evidence = harness.controller.store.get_blob(entry["evidence_sha256"])
    trusted = simulated_roots(harness.world.provider.hardware_dir)
    roots = CvmRoots(amd=trusted.amd, intel=trusted.intel)
    assert recheck(entry, evidence, roots) is None
    assert "untrusted_root" in (recheck(entry, evidence, CvmRoots()) or "")  # SIMULATED, not trusted by this auditor
    assert "binding_mismatch" in (recheck({**entry, "nonce": "00" * 32}, evidence, roots) or "")
    assert "binding_mismatch" in (recheck({**entry, "host_key": _host_key()}, evidence, roots) or "")
    lying = {**entry, "measurements": {"measurement": "00" * 48}, "debug": True}
    assert recheck(lying, evidence, roots) == "the entry's measurements, debug differ from what its evidence says"
    assert "does not hash" in (recheck(entry, evidence + b" ", roots) or "")
