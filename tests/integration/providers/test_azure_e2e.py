"""The whole lifecycle through a real controller process on the Azure path.

The controller runs `--provider azure` with the real azure-identity (managed identity) and
azure-mgmt SDKs against the fake ARM over TLS; the "VM" is a real sshd that got its host key
from the customData cloud-init and its login key from the VM's osProfile. So start, run,
mark, a crash-restart (reconcile) and stop are all exercised with SSH and host-key pinning.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.fakes.fake_arm import FakeArm

from duet.client.sdk import ApiError, DuetClient
from duet.client.trust import TrustStore
from duet.providers import controller_scoped
from duet.providers.azure import AzureProvider
from duet.providers.base import CvmSpec
from duet.remote.ssh import fingerprint
from duet.testing.process import ControllerProcess
from support import Owner, start_cvm


def test_lifecycle_through_the_azure_sdk(tmp_path: Path, owner: Owner, fake_arm: FakeArm, azure_env, client_key) -> None:
    controller = ControllerProcess(
        tmp_path / "state",
        [owner.pub_path],
        provider="azure",
        env=azure_env | fake_arm.identity_env(),
        extra_args=("--no-cvm-attestation",),  # the owner's opt-out: the host key cloud-init installed is pinned
    )
    # Plain HTTP, TEE none (ControllerProcess passes --no-tls): an unverified client, answers still checked.
    with (
        controller,
        DuetClient(controller.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        cvm_id = start_cvm(client, "snp")
        [vm] = fake_arm.bodies("virtualMachines")
        assert vm["properties"]["securityProfile"]["securityType"] == "ConfidentialVM"
        assert vm["tags"]["duet-cvm"] == cvm_id

        entries = client.entries(cvm=cvm_id)
        created = next(e for e in entries if e["event"] == "cvm.created")
        [host_key] = fake_arm.host_keys.values()  # what cloud-init installed on the "VM"
        assert created["host_key_fingerprint"] == fingerprint(host_key)
        assert created["host"] == "127.0.0.1" and created["port"] == fake_arm.ssh_port

        ran = client.run(cvm_id, ["echo hello from the cvm"])
        assert ran["results"][0]["exit_status"] == 0
        assert ran["results"][0]["stdout"] == "hello from the cvm\n"

        assert client.mark(cvm_id, "in-service")["mode"] == "in-service"
        with pytest.raises(ApiError) as refused:
            client.run(cvm_id, ["echo must not run"])
        assert refused.value.code == "not_in_update"

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


def test_one_controller_starts_cvms_on_several_providers(tmp_path: Path, owner: Owner, fake_arm: FakeArm, azure_env) -> None:
    # The Azure settings come as the seed's azure_config.env file (KEY=VALUE lines).
    env_file = tmp_path / "azure_config.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in azure_env.items()))
    controller = ControllerProcess(
        tmp_path / "state",
        [owner.pub_path],
        provider=("local", "azure"),
        extra_args=("--env-file", str(env_file), "--no-cvm-attestation"),
        env=fake_arm.identity_env(),
    )
    with (
        controller,
        DuetClient(controller.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        on_local = client.start("snp")  # the first provider given is the default
        on_azure = client.start("tdx", provider="azure")
        for accepted in (on_local, on_azure):
            assert client.wait_job(accepted["job_id"], timeout=60)["status"] == "succeeded"
        providers = {cvm["cvm_id"]: cvm["provider"] for cvm in client.list_cvms()}
        assert providers == {on_local["cvm_id"]: "local", on_azure["cvm_id"]: "azure"}
        [vm] = fake_arm.bodies("virtualMachines")
        assert vm["properties"]["hardwareProfile"]["vmSize"] == "Standard_DC2eds_v5"
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
        extra_args=("--no-cvm-attestation",),  # the owner's opt-out: the host key cloud-init installed is pinned
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
