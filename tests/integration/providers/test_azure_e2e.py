"""The whole lifecycle through a real controller process on the Azure path.

The controller runs `--provider azure` with the real azure-identity (managed identity) and
azure-mgmt SDKs against the fake ARM over TLS; the "VM" is a real sshd that got its login key
from the VM's osProfile and generated its own host key at first boot (no host key travels in the
customData cloud-init). Its guest has a SIMULATED vTPM and a fake instance metadata service
(tests/fakes/fake_guest.py), so the controller attests it for real: it runs the collection
program over SSH (tpm2-tools, IMDS), verifies the HCL report, checks it binds the host key the
connection presented and names the VM's ARM vmId, and only then pins that key. So start,
attestation, run, mark, a crash-restart (reconcile) and stop are all exercised with SSH and
host-key pinning; the owner's opt-out (`--no-cvm-attestation`) pins the key cloud-init installed.

The controller trusts the fake Azure hardware's SIMULATED roots the one way it trusts any: with
`--trust-simulated-cvm` (ControllerProcess's default), from its local provider's simulated
hardware directory, which the fake Azure VMs share (`FakeArm.hardware_dir`). Hence
`--provider azure --provider local`: Azure first, the default.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.fakes.fake_arm import FakeArm

from duet.client.sdk import ApiError, DuetClient
from duet.client.trust import TrustStore
from duet.providers import controller_scoped
from duet.providers.azure import AzureProvider
from duet.providers.base import CvmSpec
from duet.remote.ssh import fingerprint
from duet.testing.process import ControllerProcess
from support import Owner, serving, start_cvm


def attested_controller(tmp_path: Path, owner: Owner, fake_arm: FakeArm, env: dict[str, str]) -> ControllerProcess:
    """A controller on the Azure path that trusts the fake Azure VMs' SIMULATED hardware (and only that)."""
    state = tmp_path / "state"
    fake_arm.hardware_dir = state / "local-cvms" / ".simulated-hardware"  # LocalProvider.hardware_dir
    return ControllerProcess(state, [owner.pub_path], provider=("azure", "local"), env=env)


def events(client: DuetClient, cvm_id: str, event: str) -> list[dict[str, Any]]:
    return [e for e in client.entries(cvm=cvm_id) if e["event"] == event]


def same_key(a: str, b: str) -> bool:
    return a.split()[:2] == b.split()[:2]


def test_lifecycle_through_the_azure_sdk(tmp_path: Path, owner: Owner, fake_arm: FakeArm, azure_env, client_key) -> None:
    controller = attested_controller(tmp_path, owner, fake_arm, azure_env | fake_arm.identity_env())
    # Plain HTTP, TEE none (ControllerProcess passes --no-tls): an unverified client, answers still checked.
    with (
        serving(controller),
        DuetClient(controller.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        cvm_id = start_cvm(client, "snp")
        [vm] = fake_arm.bodies("virtualMachines")
        assert vm["properties"]["securityProfile"]["securityType"] == "ConfidentialVM"
        assert vm["tags"]["duet-cvm"] == cvm_id
        [(vm_rid, cloud_config)] = fake_arm.cloud_configs.items()
        assert "ssh_keys" not in cloud_config  # no host key went through ARM
        guest_key = fake_arm.host_keys[vm_rid]  # the one the guest generated at first boot
        vm_id = fake_arm.vm_id_of(vm_rid.rsplit("/", 1)[1])

        [provisioning] = events(client, cvm_id, "cvm.provisioning")
        assert provisioning["attestation"] == "required"
        [created] = events(client, cvm_id, "cvm.created")
        assert created["host_key_fingerprint"] is None  # nothing pinned before the evidence binds a key
        assert created["host"] == "127.0.0.1" and created["port"] == fake_arm.ssh_port
        [attested] = events(client, cvm_id, "cvm.attested")
        assert attested["ok"] is True and attested["kind"] == "azure-snp" and attested["simulated"] is True
        assert attested["vm_id"] == vm_id
        assert attested["pinned"] is True and attested["host_key_fingerprint"] == fingerprint(guest_key)
        assert same_key(client.state(cvm_id)["cvm"]["host_key"], guest_key)
        assert controller.cvm_machine(cvm_id)["resources"]["vm_id"] == vm_id  # type: ignore[index]
        assert fake_arm.imds.paths() == ["/metadata/THIM/amd/certification"]  # the VCEK chain, from IMDS

        ran = client.run(cvm_id, ["echo hello from the cvm"])
        assert ran["results"][0]["exit_status"] == 0
        assert ran["results"][0]["stdout"] == "hello from the cvm\n"

        assert client.mark(cvm_id, "in-service")["mode"] == "in-service"
        with pytest.raises(ApiError) as refused:
            client.run(cvm_id, ["echo must not run"])
        assert refused.value.code == "not_in_update"

        # An auditor who trusts the same SIMULATED roots re-verifies the recorded Azure evidence offline.
        code, report = audit_json(controller, tmp_path / "auditor", cvm_id)
        assert code == 0 and report["ok"] is True, report["findings"]

        # A CVM the controller does not know (say, created before a crash lost its record)
        # is deleted by reconcile when the controller restarts; the known one survives, and so
        # does a CVM of another controller sharing the resource group (another prefix).
        own = controller_scoped("azure", azure_env, client.pin().controller)
        other = controller_scoped("azure", azure_env, "f" * 64)
        fake_arm.ssh_port = None  # these need no sshd
        asyncio.run(
            AzureProvider.from_env(own, tmp_path).create(CvmSpec("orphan-cvm", "snp"), client_key.public, lambda _m: None)
        )
        asyncio.run(
            AzureProvider.from_env(other, tmp_path).create(CvmSpec("neighbour-cvm", "snp"), client_key.public, lambda _m: None)
        )
        assert any("orphan-cvm" in n for n in fake_arm.names())
        controller.restart()
        assert not any("orphan-cvm" in n for n in fake_arm.names())
        assert any("neighbour-cvm" in n for n in fake_arm.names())
        assert client.state(cvm_id)["cvm"]["mode"] == "in-service"

        job = client.wait_job(client.stop(cvm_id)["job_id"], timeout=60)
        assert job["status"] == "succeeded", job
        left = [name for name in fake_arm.names() if name != "default"]  # "default": the neighbour's subnet
        assert left and all("neighbour-cvm" in name for name in left), left  # ours are all gone
        asyncio.run(AzureProvider.from_env(other, tmp_path).reconcile([]))
        assert fake_arm.resources == {}
        assert client.entries(cvm=cvm_id)[-1]["event"] == "cvm.stopped"
    log = controller.log()
    assert "PRIVATE KEY" not in log and "customData" not in log
    assert "ManagedIdentityCredential" in log or fake_arm.token_requests  # the managed identity was used


def audit_json(controller: ControllerProcess, home: Path, cvm_id: str) -> tuple[int, dict[str, Any]]:
    env = {**os.environ, "DUET_HOME": str(home), "DUET_INSECURE": "1", "DUET_CVM_ROOTS": str(controller.cvm_roots_file())}
    proc = subprocess.run(
        [sys.executable, "-m", "duet", "--url", controller.url, "--json", "audit", cvm_id],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_evidence_of_another_vm_fails_the_start_and_deletes_the_cvm(
    tmp_path: Path, owner: Owner, fake_arm: FakeArm, azure_env
) -> None:
    """A genuine (here SIMULATED) Azure CVM answers, but its evidence names another VM than the one
    ARM created for this CVM: the start fails at the VM identity, and the resources are deleted."""
    fake_arm.reported_vm_id = str(uuid.uuid4())
    controller = attested_controller(tmp_path, owner, fake_arm, azure_env | fake_arm.identity_env())
    with (
        serving(controller),
        DuetClient(controller.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        accepted = client.start("snp")
        job = client.wait_job(accepted["job_id"], timeout=60)
        assert job["status"] == "failed" and job["error"]["code"] == "attestation_failed"
        assert "vm_id_mismatch" in job["error"]["message"]
        cvm_id = accepted["cvm_id"]
        [attested] = events(client, cvm_id, "cvm.attested")
        assert (attested["ok"], attested["step"], attested["code"]) == (False, "vm_identity", "vm_id_mismatch")
        assert attested.get("pinned") is None and attested["vm_id"] == fake_arm.reported_vm_id
        [failed] = events(client, cvm_id, "cvm.failed")
        assert failed["code"] == "attestation_failed" and failed["cleanup_error"] is None
        assert client.state(cvm_id)["cvm"]["mode"] == "failed"
        assert fake_arm.resources == {}  # every resource of the CVM is deleted


def test_the_owners_opt_out_pins_the_host_key_cloud_init_installed(
    tmp_path: Path, owner: Owner, fake_arm: FakeArm, azure_env
) -> None:
    controller = ControllerProcess(
        tmp_path / "state",
        [owner.pub_path],
        provider="azure",
        env=azure_env | fake_arm.identity_env(),
        extra_args=("--no-cvm-attestation",),  # the owner's opt-out: the host key cloud-init installed is pinned
    )
    with (
        serving(controller),
        DuetClient(controller.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        cvm_id = start_cvm(client, "snp")
        [provisioning] = events(client, cvm_id, "cvm.provisioning")
        assert provisioning["attestation"] == "off"
        [vm] = fake_arm.bodies("virtualMachines")
        sent = yaml.safe_load(base64.b64decode(vm["properties"]["osProfile"]["customData"]))
        [host_key] = fake_arm.host_keys.values()  # what cloud-init installed on the "VM"
        assert sent["ssh_keys"]["ed25519_public"] == host_key
        [created] = events(client, cvm_id, "cvm.created")
        assert created["host_key_fingerprint"] == fingerprint(host_key)
        assert events(client, cvm_id, "cvm.attested") == [] and fake_arm.imds.requests == []
        assert client.run(cvm_id, ["echo up"])["results"][0]["stdout"] == "up\n"
        assert client.wait_job(client.stop(cvm_id)["job_id"], timeout=60)["status"] == "succeeded"
        assert fake_arm.resources == {}
    assert "PRIVATE KEY" not in controller.log()


def test_one_controller_starts_cvms_on_several_providers(tmp_path: Path, owner: Owner, fake_arm: FakeArm, azure_env) -> None:
    # The Azure settings come as the seed's azure_config.env file (KEY=VALUE lines).
    env_file = tmp_path / "azure_config.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in azure_env.items()))
    fake_arm.hardware_dir = tmp_path / "state" / "local-cvms" / ".simulated-hardware"
    controller = ControllerProcess(
        tmp_path / "state",
        [owner.pub_path],
        provider=("local", "azure"),
        extra_args=("--env-file", str(env_file)),
        env=fake_arm.identity_env(),
    )
    with (
        serving(controller),
        DuetClient(controller.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        on_local = client.start("snp")  # the first provider given is the default
        on_azure = client.start("tdx", provider="azure")
        for accepted in (on_local, on_azure):
            job = client.wait_job(accepted["job_id"], timeout=60)
            assert job["status"] == "succeeded", job
        providers = {cvm["cvm_id"]: cvm["provider"] for cvm in client.list_cvms()}
        assert providers == {on_local["cvm_id"]: "local", on_azure["cvm_id"]: "azure"}
        [vm] = fake_arm.bodies("virtualMachines")
        assert vm["properties"]["hardwareProfile"]["vmSize"] == "Standard_DC2eds_v5"
        kinds = {cvm_id: [e["kind"] for e in events(client, cvm_id, "cvm.attested") if e["ok"]] for cvm_id in providers}
        assert kinds == {on_local["cvm_id"]: ["snp"], on_azure["cvm_id"]: ["azure-tdx"]}
        assert fake_arm.imds.paths() == ["/acc/tdquote"]  # the TD quote of the TD report, from IMDS
        for cvm_id in providers:
            assert client.run(cvm_id, ["echo up"])["results"][0]["stdout"] == "up\n"

        with pytest.raises(ApiError) as refused:
            client.start("snp", provider="aws")
        assert (refused.value.status, refused.value.code) == (422, "provider_not_enabled")

        for cvm_id in providers:
            assert client.wait_job(client.stop(cvm_id)["job_id"], timeout=60)["status"] == "succeeded"
        assert fake_arm.resources == {}
        assert not (controller.state_dir / "local-cvms" / on_local["cvm_id"]).exists()


@pytest.mark.parametrize("step", ["publicIPAddresses", "virtualMachines"])
def test_a_cloud_failure_ends_the_cvm_failed_with_the_clouds_message(
    tmp_path: Path, owner: Owner, fake_arm: FakeArm, azure_env, step: str
) -> None:
    fake_arm.fail(step, "QuotaExceeded", f"Operation could not be completed as it results in exceeding quota ({step}, injected).")
    controller = ControllerProcess(
        tmp_path / "state",
        [owner.pub_path],
        provider="azure",
        env=azure_env | fake_arm.identity_env(),
    )
    with (
        controller,
        DuetClient(controller.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        accepted = client.start("snp")
        job = client.wait_job(accepted["job_id"], timeout=60)
        assert job["status"] == "failed"
        assert "exceeding quota" in job["error"]["message"]
        cvm = client.state(accepted["cvm_id"])["cvm"]
        assert cvm["mode"] == "failed" and f"({step}, injected)" in cvm["failure"]
        failed = client.entries(cvm=accepted["cvm_id"])[-1]
        assert failed["event"] == "cvm.failed" and f"({step}, injected)" in failed["reason"]
        assert failed["cleanup_error"] is None
        assert fake_arm.resources == {}
