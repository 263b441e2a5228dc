"""The Azure provider through the real azure-mgmt SDKs, against the fake ARM over TLS."""

from __future__ import annotations

import base64
import copy
import getpass
import logging
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import yaml
from azure.core.exceptions import HttpResponseError
from tests.fakes.fake_arm import FakeArm

from duet.attestation.cvm_policy import DEFAULT_CVM_POLICY
from duet.controller.cvm_attestation import Attestation, attest
from duet.errors import ConfigError, NotFound, UpstreamError
from duet.providers import cloud_init
from duet.providers.azure import AzureConfig, AzureProvider
from duet.providers.base import CvmSpec, Machine
from duet.providers.local_tsm import simulated_roots
from duet.remote.ssh import ExecResult

STEPS = ["networkSecurityGroups", "virtualNetworks", "subnets", "publicIPAddresses", "networkInterfaces", "virtualMachines"]


def provider(env: dict[str, str], tmp_path: Path) -> AzureProvider:
    return AzureProvider.from_env(env, tmp_path)


async def test_create_sends_confidential_vm_bodies(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    steps: list[str] = []
    machine = await provider(azure_env, tmp_path).create(CvmSpec("cvm-1", "snp"), client_key.public, steps.append)

    user = getpass.getuser()
    [vm] = fake_arm.bodies("virtualMachines")
    props = vm["properties"]
    assert vm["location"] == "westeurope"
    assert vm["tags"] == {"duet-cvm": "cvm-1", "duet-prefix": "duet"}
    assert props["hardwareProfile"] == {"vmSize": "Standard_DC2ads_v5"}
    assert props["securityProfile"] == {
        "securityType": "ConfidentialVM",
        "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True},
    }
    assert props["storageProfile"]["imageReference"] == {
        "publisher": "Canonical",
        "offer": "0001-com-ubuntu-confidential-vm-jammy",
        "sku": "22_04-lts-cvm",
        "version": "latest",
    }
    os_disk = props["storageProfile"]["osDisk"]
    assert os_disk["managedDisk"]["securityProfile"] == {"securityEncryptionType": "DiskWithVMGuestState"}
    assert os_disk["createOption"] == "FromImage" and os_disk["deleteOption"] == "Delete"
    linux = props["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    # the cloud-layer lockdown: no VM agent, no extension operations (Run Command, VMAccess, Custom Script)
    assert props["osProfile"]["allowExtensionOperations"] is False
    assert linux["provisionVMAgent"] is False
    assert linux["ssh"]["publicKeys"] == [{"path": f"/home/{user}/.ssh/authorized_keys", "keyData": client_key.public}]
    assert props["osProfile"]["adminUsername"] == user
    cloud = base64.b64decode(props["osProfile"]["customData"]).decode()
    assert cloud.startswith("#cloud-config\n")
    doc = yaml.safe_load(cloud)
    # an attested CVM: no host key travels through ARM; the guest deletes the image's and makes its own
    assert "ssh_keys" not in doc and "PRIVATE KEY" not in cloud
    assert doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == ["ed25519"]
    assert ["sh", "-c", cloud_init.DISABLE_AGENT_EXTENSIONS] in doc["bootcmd"]  # the agent runs no extension
    assert machine.host_key == ""
    assert props["networkProfile"]["networkInterfaces"][0]["properties"] == {"primary": True, "deleteOption": "Delete"}

    [nsg] = fake_arm.bodies("networkSecurityGroups")
    [rule] = nsg["properties"]["securityRules"]
    assert rule["properties"] == {
        "priority": 1000,
        "direction": "Inbound",
        "access": "Allow",
        "protocol": "Tcp",
        "sourceAddressPrefix": "*",
        "sourcePortRange": "*",
        "destinationAddressPrefix": "*",
        "destinationPortRange": str(fake_arm.ssh_port),
    }
    [pip] = fake_arm.bodies("publicIPAddresses")
    assert pip["sku"] == {"name": "Standard", "tier": "Regional"}
    assert pip["properties"]["publicIPAllocationMethod"] == "Static"
    [subnet] = fake_arm.bodies("subnets")
    assert subnet["properties"]["networkSecurityGroup"]["id"].endswith("/networkSecurityGroups/" + machine.resources["nsg"])
    [nic] = fake_arm.bodies("networkInterfaces")
    ipconf = nic["properties"]["ipConfigurations"][0]["properties"]
    assert ipconf["publicIPAddress"]["id"].endswith("/publicIPAddresses/" + machine.resources["public_ip"])

    # every top-level resource carries the CVM tag; the PUT order is the dependency order
    assert all(b["tags"]["duet-cvm"] == "cvm-1" for t in STEPS if t != "subnets" for b in fake_arm.bodies(t))
    puts = [r["type"].split("/")[-1] for r in fake_arm.requests if r["method"] == "PUT"]
    assert puts == STEPS
    assert all(r["api_version"] for r in fake_arm.requests)
    # the token came from the managed identity named by the seed's MANAGED_IDENTITY_CLIENT_ID
    assert fake_arm.token_requests and fake_arm.token_requests[0].get("client_id") == "mi-client-1"

    assert machine.host == "127.0.0.1" and machine.port == fake_arm.ssh_port and machine.username == user
    # the VM's identity as ARM returned it: what the vTPM evidence's vmUniqueId must name
    assert machine.resources["vm_id"] == fake_arm.vm_id_of(machine.resources["vm"])
    assert uuid.UUID(machine.resources["vm_id"])
    assert steps[0].startswith("creating network security group") and steps[-1].startswith("reading public IP")


async def test_tdx_uses_dcedsv5_and_options_override(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    p = provider(azure_env | {"DUET_AZURE_IMAGE": "Canonical:ubuntu-24_04-lts:cvm:latest"}, tmp_path)
    await p.create(CvmSpec("cvm-t", "tdx"), client_key.public, lambda _m: None)
    await p.create(CvmSpec("cvm-u", "tdx", {"vm_size": "Standard_DC4eds_v5"}), client_key.public, lambda _m: None)
    sizes = [b["properties"]["hardwareProfile"]["vmSize"] for b in fake_arm.bodies("virtualMachines")]
    assert sizes == ["Standard_DC2eds_v5", "Standard_DC4eds_v5"]
    image = fake_arm.bodies("virtualMachines")[0]["properties"]["storageProfile"]["imageReference"]
    assert (image["offer"], image["sku"]) == ("ubuntu-24_04-lts", "cvm")


async def test_the_owners_opt_out_sends_the_host_key_to_pin(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    spec = CvmSpec("cvm-o", "snp", attested=False)
    machine = await provider(azure_env, tmp_path).create(spec, client_key.public, lambda _m: None)
    [vm] = fake_arm.bodies("virtualMachines")
    doc = yaml.safe_load(base64.b64decode(vm["properties"]["osProfile"]["customData"]))
    assert doc["ssh_keys"]["ed25519_public"] == machine.host_key and machine.host_key.startswith("ssh-ed25519 ")
    assert "OPENSSH PRIVATE KEY" in doc["ssh_keys"]["ed25519_private"]
    assert doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == []
    assert ["sh", "-c", cloud_init.DISABLE_AGENT_EXTENSIONS] in doc["bootcmd"]
    [guest_key] = fake_arm.host_keys.values()
    assert guest_key == machine.host_key  # the guest runs with the key that travelled
    assert machine.resources["vm_id"] == fake_arm.vm_id_of(machine.resources["vm"])


async def test_an_attested_cvm_presents_the_host_key_it_made_itself(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    machine = await provider(azure_env, tmp_path).create(CvmSpec("cvm-a", "snp"), client_key.public, lambda _m: None)
    assert machine.host_key == ""
    async with asyncssh.connect(
        machine.host,
        machine.port,
        username=machine.username,
        client_keys=[asyncssh.import_private_key(client_key.private)],
        known_hosts=None,
    ) as conn:
        presented = conn.get_server_host_key()
        assert presented is not None
        result = await conn.run("cat /etc/ssh/ssh_host_ed25519_key.pub", check=True)
    [guest_key] = fake_arm.host_keys.values()
    assert presented.export_public_key().decode().split()[:2] == guest_key.split()[:2]
    assert str(result.stdout).split()[:2] == guest_key.split()[:2]  # the guest's own /etc/ssh


async def test_login_with_pinned_host_key(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    spec = CvmSpec("cvm-ssh", "snp", attested=False)
    machine = await provider(azure_env, tmp_path).create(spec, client_key.public, lambda _m: None)
    known = asyncssh.import_known_hosts(f"[{machine.host}]:{machine.port} {machine.host_key}\n")
    key = asyncssh.import_private_key(client_key.private)
    async with asyncssh.connect(
        machine.host, machine.port, username=machine.username, client_keys=[key], known_hosts=known
    ) as conn:
        result = await conn.run("echo pinned-ok", check=True)
    assert result.stdout.strip() == "pinned-ok"
    # a different pinned key must be refused: the pin is what stops a man in the middle
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    wrong = asyncssh.import_known_hosts(f"[{machine.host}]:{machine.port} {other}\n")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with asyncssh.connect(machine.host, machine.port, username=machine.username, client_keys=[key], known_hosts=wrong):
            pass


@pytest.mark.parametrize("step", STEPS)
async def test_failure_at_each_step_leaves_nothing(fake_arm: FakeArm, azure_env, client_key, tmp_path, step) -> None:
    fake_arm.fail(step, "SkuNotAvailable", f"The requested size is not available for {step} (injected).")
    with pytest.raises(UpstreamError) as info:
        await provider(azure_env, tmp_path).create(CvmSpec("cvm-f", "snp"), client_key.public, lambda _m: None)
    assert info.value.code == "cloud_provisioning_failed"
    assert f"is not available for {step} (injected)" in info.value.message
    assert "SkuNotAvailable" in info.value.message
    assert fake_arm.resources == {}


async def test_async_vm_failure_deletes_the_failed_vm_too(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    """ARM keeps a VM whose creation failed asynchronously (state Failed); cleanup must remove it."""
    fake_arm.fail("virtualMachines", "OverconstrainedAllocationRequest", "Allocation failed (injected).", asynchronous=True)
    with pytest.raises(UpstreamError) as info:
        await provider(azure_env, tmp_path).create(CvmSpec("cvm-a", "snp"), client_key.public, lambda _m: None)
    assert "Allocation failed (injected)" in info.value.message
    assert fake_arm.resources == {}
    assert any(r["method"] == "DELETE" and r["type"].endswith("virtualMachines") for r in fake_arm.requests)


async def test_failed_cleanup_is_reported_and_reconcile_finishes_it(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    p = provider(azure_env | {"DUET_AZURE_RETRY_TOTAL": "1"}, tmp_path)
    fake_arm.fail("virtualMachines", "QuotaExceeded", "Operation could not be completed as it results in exceeding quota.")
    fake_arm.fail("networkSecurityGroups", "InternalServerError", "boom (injected)", method="DELETE", status=500, times=10)
    with pytest.raises(UpstreamError) as info:
        await p.create(CvmSpec("cvm-c", "snp"), client_key.public, lambda _m: None)
    assert "exceeding quota" in info.value.message and "request more quota" in info.value.message
    assert "cleanup also failed" in info.value.message
    assert fake_arm.names() == [p._names("cvm-c").nsg]
    fake_arm.failures.clear()
    assert await p.reconcile([]) == []
    assert fake_arm.resources == {}


async def test_delete_removes_everything_in_dependency_order(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    p = provider(azure_env, tmp_path)
    machine = await p.create(CvmSpec("cvm-d", "snp"), client_key.public, lambda _m: None)
    assert len(fake_arm.resources) == 7  # nsg, vnet, subnet, pip, nic, vm, os disk
    # a partial record (what survives a crash mid-create) is enough
    await p.delete(Machine(cvm_id="cvm-d", provider="azure"), lambda _m: None)
    assert fake_arm.resources == {}
    assert not any(s.running for s in fake_arm.sshds.values())
    deletes = [r["type"].split("/")[-1] for r in fake_arm.requests if r["method"] == "DELETE"]
    assert deletes == [
        "virtualMachines",
        "disks",
        "networkInterfaces",
        "publicIPAddresses",
        "virtualNetworks",
        "networkSecurityGroups",
    ]
    await p.delete(machine, lambda _m: None)  # idempotent


async def test_reconcile_deletes_unknown_cvms_only(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    p = provider(azure_env, tmp_path)
    keep = await p.create(CvmSpec("cvm-keep", "snp"), client_key.public, lambda _m: None)
    await p.create(CvmSpec("cvm-orphan", "tdx"), client_key.public, lambda _m: None)
    other = provider(azure_env | {"PREFIX": "other"}, tmp_path)  # another controller sharing the group
    await other.create(CvmSpec("cvm-theirs", "snp"), client_key.public, lambda _m: None)
    gone = Machine(cvm_id="cvm-gone", provider="azure")

    live = await p.reconcile([keep, gone])

    assert [m.cvm_id for m in live] == ["cvm-keep"]
    remaining = fake_arm.names()
    assert not any("cvm-orphan" in n for n in remaining)
    assert p._names("cvm-keep").vm in remaining and other._names("cvm-theirs").vm in remaining


async def test_resume_reads_the_address_again(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    p = provider(azure_env, tmp_path)
    machine = await p.create(CvmSpec("cvm-r", "snp"), client_key.public, lambda _m: None)
    machine.host = ""
    assert (await p.resume(machine)).host == "127.0.0.1"


async def test_resume_of_a_vm_that_is_gone_says_so(fake_arm: FakeArm, azure_env, tmp_path) -> None:
    with pytest.raises(NotFound) as info:
        await provider(azure_env, tmp_path).resume(Machine(cvm_id="cvm-g", provider="azure"))
    assert info.value.code == "cvm_gone"


async def test_private_host_key_never_logged(fake_arm: FakeArm, azure_env, client_key, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    fake_arm.fail("virtualMachines", "BadRequest", "bad request (injected)", asynchronous=True)
    with pytest.raises(UpstreamError) as info:  # the owner's opt-out: the only case where a host key travels
        await provider(azure_env, tmp_path).create(CvmSpec("cvm-l", "snp", attested=False), client_key.public, lambda _m: None)
    custom = fake_arm.bodies("virtualMachines")[0]["properties"]["osProfile"]["customData"]
    assert "PRIVATE KEY" not in info.value.message and custom not in info.value.message
    assert "PRIVATE KEY" not in caplog.text and custom[:40] not in caplog.text


async def test_unreachable_arm_is_an_upstream_error(azure_env, client_key, tmp_path) -> None:
    env = azure_env | {"DUET_AZURE_ARM_ENDPOINT": "https://127.0.0.1:9", "DUET_AZURE_RETRY_TOTAL": "1"}
    with pytest.raises(UpstreamError) as info:
        await provider(env, tmp_path).create(CvmSpec("cvm-x", "snp"), client_key.public, lambda _m: None)
    assert "cannot reach Azure Resource Manager" in info.value.message


def test_config_reads_seed_keys_and_duet_overrides() -> None:
    seed = {
        "SUBSCRIPTION_ID": "s",
        "RESOURCE_GROUP_NAME": "rg",
        "LOCATION": "westeurope",
        "PREFIX": "Acme",
        "MANAGED_IDENTITY_CLIENT_ID": "mi",
        "VM_IMAGE": "canonical:0001-com-ubuntu-confidential-vm-jammy:22_04-lts-cvm:latest",
        "VNET_NAME": "ignored",
        "SUBNET_NAME": "default",
    }
    cfg = AzureConfig.from_env(seed)
    assert (cfg.subscription_id, cfg.resource_group, cfg.location, cfg.prefix) == ("s", "rg", "westeurope", "acme")
    assert cfg.managed_identity_client_id == "mi" and cfg.credential == "managed-identity"
    assert cfg.arm_endpoint == "https://management.azure.com" and cfg.admin_username == "duet" and cfg.ssh_port == 22
    cfg = AzureConfig.from_env(seed | {"DUET_AZURE_LOCATION": "northeurope", "DUET_SSH_PORT": "2222"})
    assert (cfg.location, cfg.ssh_port) == ("northeurope", 2222)
    with pytest.raises(ConfigError) as info:
        AzureConfig.from_env({"LOCATION": "x"})
    assert "SUBSCRIPTION_ID" in info.value.message and "RESOURCE_GROUP_NAME" in info.value.message


def test_lockdown_command_removes_only_the_controller_key(tmp_path: Path, client_key) -> None:
    """Run the real command in a sandbox HOME with a `sudo` stand-in that records its arguments."""
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOtherKeyOtherKeyOtherKeyOther other@host"
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "authorized_keys").write_text(f"{other}\n{client_key.public}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/sudo.log\n')
    (bin_dir / "sudo").chmod(0o755)
    machine = Machine(cvm_id="c", provider="azure", resources={"authorized_key": client_key.public})
    cmd = AzureProvider(AzureConfig("s", "rg", "l")).lockdown_command(machine)
    env = {"HOME": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["bash", "-c", cmd], env=env, check=True)
    assert (tmp_path / ".ssh" / "authorized_keys").read_text() == other + "\n"
    log = (tmp_path / "sudo.log").read_text()
    assert "systemctl disable --now ssh.service" in log and "systemctl disable --now ssh.socket" in log
    assert "systemctl mask ssh.service" in log


# ---- the cloud-layer lockdown: the subscription owner's Run Command / VMAccess back doors ----

VMACCESS = {
    "location": "westeurope",
    "properties": {
        "publisher": "Microsoft.OSTCExtensions",
        "type": "VMAccessForLinux",
        "typeHandlerVersion": "1.5",
        "protectedSettings": {"username": "intruder", "ssh_key": "ssh-ed25519 AAAA intruder"},
    },
}
RUN_COMMAND = {"location": "westeurope", "properties": {"source": {"script": "cat /etc/shadow"}}}


def _refused(fn: Any) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as info:
        fn()
    return info.value


async def test_extension_operations_are_refused_on_a_duet_cvm(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    """VMAccess (reset SSH keys), managed Run Command and action Run Command: ARM answers 409 OperationNotAllowed."""
    p = provider(azure_env, tmp_path)
    await p.create(CvmSpec("cvm-x", "snp"), client_key.public, lambda _m: None)
    compute, _, _ = p.clients()
    rg, vm = p._names("cvm-x").resource_group, p._names("cvm-x").vm

    attempts = {
        "VMAccess": lambda: compute.virtual_machine_extensions.begin_create_or_update(
            rg, vm, "enablevmaccess", VMACCESS
        ).result(),
        "runCommands": lambda: compute.virtual_machine_run_commands.begin_create_or_update(rg, vm, "rc1", RUN_COMMAND).result(),
        "runCommand": lambda: compute.virtual_machines.begin_run_command(
            rg, vm, {"commandId": "RunShellScript", "script": ["cat /etc/shadow"]}
        ).result(),
    }
    for what, attempt in attempts.items():
        err = _refused(attempt)
        assert err.status_code == 409, what
        assert err.error is not None and err.error.code == "OperationNotAllowed", what
        assert "extension operations are disallowed" in str(err.message), what
    assert [r["what"] for r in fake_arm.refused] == ["extensions", "runCommands", "runCommand"]
    # nothing was created under the VM
    assert not any("/extensions/" in rid or "/runcommands/" in rid for rid in fake_arm.resources)


async def test_fake_arm_accepts_extensions_on_an_ordinary_vm(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    """The refusal comes from the VM's settings, not from the fake refusing extensions on principle."""
    p = provider(azure_env, tmp_path)
    compute, network, _ = p.clients()
    await p.create(CvmSpec("cvm-o", "snp"), client_key.public, lambda _m: None)
    names = p._names("cvm-o")
    [body] = fake_arm.bodies("virtualMachines")
    ordinary = {**body, "properties": {**body["properties"], "osProfile": {"computerName": "plain", "adminUsername": "u"}}}
    ordinary["properties"]["storageProfile"] = {**body["properties"]["storageProfile"], "osDisk": {"createOption": "FromImage"}}
    compute.virtual_machines.begin_create_or_update(names.resource_group, "plain-vm", ordinary).result()
    ext = compute.virtual_machine_extensions.begin_create_or_update(
        names.resource_group, "plain-vm", "enablevmaccess", VMACCESS
    ).result()
    assert ext.name == "enablevmaccess"
    assert fake_arm.refused == []


async def test_provision_vm_agent_cannot_be_turned_back_on(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    """allowExtensionOperations can be set back to true by whoever controls the subscription (Azure documents
    it); provisionVMAgent cannot be changed after creation, so extension operations stay refused."""
    p = provider(azure_env, tmp_path)
    await p.create(CvmSpec("cvm-f", "snp"), client_key.public, lambda _m: None)
    compute, _, _ = p.clients()
    names = p._names("cvm-f")
    [body] = fake_arm.bodies("virtualMachines")
    body["properties"]["osProfile"].pop("customData")

    reopened = copy.deepcopy(body)
    reopened["properties"]["osProfile"]["allowExtensionOperations"] = True
    vm_id = fake_arm.vm_id_of(names.vm)
    updated = compute.virtual_machines.begin_create_or_update(names.resource_group, names.vm, reopened).result()
    assert updated.vm_id == vm_id  # an update keeps the VM's identity, as ARM does
    err = _refused(
        lambda: compute.virtual_machine_extensions.begin_create_or_update(
            names.resource_group, names.vm, "enablevmaccess", VMACCESS
        ).result()
    )
    assert err.error is not None and err.error.code == "OperationNotAllowed"

    agent = copy.deepcopy(reopened)
    agent["properties"]["osProfile"]["linuxConfiguration"]["provisionVMAgent"] = True
    err = _refused(lambda: compute.virtual_machines.begin_create_or_update(names.resource_group, names.vm, agent).result())
    assert err.status_code == 409 and err.error is not None and err.error.code == "PropertyChangeNotAllowed"
    assert "provisionVMAgent" in str(err.message)


# ---- the fake Confidential VM's SIMULATED vTPM, against the controller's real collection and judgement ----


async def _attest_fake_cvm(machine: Machine, client_key: Any, platform: str, hardware_dir: Path) -> Attestation:
    """What the controller does at start: run the collection program over the SSH connection whose
    host key it will pin, then verify and judge the evidence (SIMULATED roots trusted)."""
    key = asyncssh.import_private_key(client_key.private)
    async with asyncssh.connect(
        machine.host, machine.port, username=machine.username, client_keys=[key], known_hosts=None
    ) as conn:
        server_key = conn.get_server_host_key()
        assert server_key is not None
        presented = server_key.export_public_key().decode().strip()

        async def run(command: str) -> ExecResult:
            done = await conn.run(command, encoding=None, timeout=60)
            out, err = bytes(done.stdout or b""), bytes(done.stderr or b"")
            return ExecResult(done.exit_status, out, err, 0.0, False, False, False, host_key=presented)

        source = AzureProvider(AzureConfig("s", "rg", "l")).evidence_source(machine, platform)  # type: ignore[arg-type]
        return await attest(
            run,
            source,
            platform=platform,  # type: ignore[arg-type]
            roots=simulated_roots(hardware_dir),
            policy=DEFAULT_CVM_POLICY,
            vm_id=machine.resources.get("vm_id"),
            now=time.time,
        )


@pytest.mark.parametrize("platform", ["snp", "tdx"])
async def test_the_fake_cvm_answers_the_real_collection_program(
    fake_arm: FakeArm, azure_env, client_key, tmp_path, platform: str
) -> None:
    fake_arm.vtpm_refresh_s = 1.0  # the report holds the new user data a moment after the write, as Azure's
    machine = await provider(azure_env, tmp_path).create(CvmSpec("cvm-v", platform), client_key.public, lambda _m: None)  # type: ignore[arg-type]
    attestation = await _attest_fake_cvm(machine, client_key, platform, fake_arm.hardware_dir)

    assert attestation.ok, attestation.verdict
    claims = attestation.verdict.claims
    assert claims is not None and claims.simulated
    assert attestation.verdict.kind == f"azure-{platform}"
    assert claims.vm_id == machine.resources["vm_id"] == fake_arm.vm_id_of(machine.resources["vm"])
    [guest_key] = fake_arm.host_keys.values()
    assert attestation.host_key.split()[:2] == guest_key.split()[:2]  # bound: the key the guest made itself
    expected = {"snp": "/metadata/THIM/amd/certification", "tdx": "/acc/tdquote"}[platform]
    assert fake_arm.imds.paths() == [expected]


async def test_evidence_naming_another_vm_fails_the_vm_identity_check(fake_arm: FakeArm, azure_env, client_key, tmp_path) -> None:
    fake_arm.reported_vm_id = str(uuid.uuid4())  # another genuine CVM answering in this one's place
    machine = await provider(azure_env, tmp_path).create(CvmSpec("cvm-w", "snp"), client_key.public, lambda _m: None)
    attestation = await _attest_fake_cvm(machine, client_key, "snp", fake_arm.hardware_dir)
    failure = attestation.verdict.failure
    assert failure is not None and (failure.step, failure.code) == ("vm_identity", "vm_id_mismatch")
    assert fake_arm.reported_vm_id in failure.message and machine.resources["vm_id"] in failure.message


async def test_the_fake_guest_has_passwordless_sudo_and_keeps_its_services(
    fake_arm: FakeArm, azure_env, client_key, tmp_path
) -> None:
    machine = await provider(azure_env, tmp_path).create(CvmSpec("cvm-s", "snp"), client_key.public, lambda _m: None)
    key = asyncssh.import_private_key(client_key.private)
    async with asyncssh.connect(
        machine.host, machine.port, username=machine.username, client_keys=[key], known_hosts=None
    ) as conn:
        assert (await conn.run("sudo -n echo as-root", check=True)).stdout == "as-root\n"
        # a lockdown's `sudo systemctl ...` reaches the guest's recorder, not the test machine's services
        await conn.run("sudo -n systemctl disable --now ssh.service", check=True)
    [guest] = fake_arm.guests.values()
    assert guest.systemctl_log.read_text() == "disable --now ssh.service\n"
