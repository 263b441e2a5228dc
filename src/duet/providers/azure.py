"""Azure Confidential VMs (AMD SEV-SNP ``DCadsv5``, Intel TDX ``DCedsv5``) through the ARM SDKs.

Per CVM, in an existing resource group (the seed's ``RESOURCE_GROUP_NAME``, where the managed
identity has Contributor): an NSG allowing SSH, a VNet and subnet, a static Standard public IP,
a NIC and the VM (``securityType: ConfidentialVM``, secure boot and vTPM on, OS disk
``DiskWithVMGuestState``, no VM agent and no extension operations, so no Run Command or VMAccess).
Every name is derived from the CVM id and every resource is tagged ``duet-cvm: <id>``, so
``delete`` and ``reconcile`` find them again after a crash.

The VM's cloud-init ``customData`` carries no SSH host key for an attested CVM (the guest makes
its own at first boot; ``cloud_init``), and the machine record keeps the ``vmId`` ARM returned
(``resources["vm_id"]``): the controller requires the vTPM evidence's ``vmUniqueId`` to name the
same VM, so that another genuine CVM cannot answer in this one's place (design §10).

The SDKs are synchronous; each call runs in a worker thread so the controller's event loop
keeps serving. Facts behind the request bodies: ``specs/providers.md`` §1.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from duet.errors import ConfigError, UpstreamError
from duet.providers import cloud, cloud_init
from duet.providers.base import CVM_TYPES, CvmSpec, CvmType, EvidenceSource, Machine, Progress, first_setting

PUBLIC_ARM = "https://management.azure.com"
DEFAULT_SIZES = {"snp": "Standard_DC2ads_v5", "tdx": "Standard_DC2eds_v5"}
DEFAULT_IMAGE = "Canonical:0001-com-ubuntu-confidential-vm-jammy:22_04-lts-cvm:latest"


@dataclass(frozen=True)
class AzureConfig:
    """Everything the provider reads from the environment (seed ``azure_config.env`` keys accepted)."""

    subscription_id: str
    resource_group: str
    location: str
    managed_identity_client_id: str = ""
    credential: str = "managed-identity"
    arm_endpoint: str = PUBLIC_ARM
    admin_username: str = "duet"
    ssh_port: int = 22
    ssh_source: str = "*"
    prefix: str = "duet"
    subnet_name: str = "default"
    vm_sizes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SIZES))
    image: str = DEFAULT_IMAGE
    os_disk_type: str = "StandardSSD_LRS"
    disk_encryption: str = "DiskWithVMGuestState"
    encryption_at_host: bool = False
    ca_bundle: str = ""
    poll_interval: float = 5.0
    delete_retry_seconds: float = 300.0
    retry_total: int | None = None
    """azure-core's own retries of connection errors and 5xx answers (None: the SDK default, 10)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AzureConfig:
        sub = first_setting(env, "DUET_AZURE_SUBSCRIPTION_ID", "SUBSCRIPTION_ID", "AZURE_SUBSCRIPTION_ID")
        rg = first_setting(env, "DUET_AZURE_RESOURCE_GROUP", "RESOURCE_GROUP_NAME", "AZURE_RESOURCE_GROUP")
        loc = first_setting(env, "DUET_AZURE_LOCATION", "LOCATION", "AZURE_LOCATION")
        missing = [n for n, v in (("SUBSCRIPTION_ID", sub), ("RESOURCE_GROUP_NAME", rg), ("LOCATION", loc)) if not v]
        if missing:
            raise ConfigError(
                "Azure provider needs " + ", ".join(missing) + " (seed azure_config.env keys, or DUET_AZURE_* / AZURE_*)",
                code="azure_config_missing",
            )
        credential = first_setting(env, "DUET_AZURE_CREDENTIAL", default="managed-identity")
        if credential not in ("managed-identity", "default"):
            raise ConfigError("DUET_AZURE_CREDENTIAL must be 'managed-identity' or 'default'", code="azure_config_invalid")
        image = first_setting(env, "DUET_AZURE_IMAGE", "VM_IMAGE", default=DEFAULT_IMAGE)
        if len(image.split(":")) != 4:
            raise ConfigError(f"image {image!r} is not publisher:offer:sku:version", code="azure_config_invalid")
        with cloud.config_numbers("Azure", code="azure_config_invalid"):
            port = int(first_setting(env, "DUET_SSH_PORT", default="22"))
            poll = float(first_setting(env, "DUET_AZURE_POLL_SECONDS", default="5"))
            retry = float(first_setting(env, "DUET_AZURE_DELETE_RETRY_SECONDS", default="300"))
            retry_total = int(env["DUET_AZURE_RETRY_TOTAL"]) if env.get("DUET_AZURE_RETRY_TOTAL", "").strip() else None
        return cls(
            subscription_id=sub,
            resource_group=rg,
            location=loc,
            managed_identity_client_id=first_setting(env, "DUET_AZURE_MANAGED_IDENTITY_CLIENT_ID", "MANAGED_IDENTITY_CLIENT_ID"),
            credential=credential,
            arm_endpoint=first_setting(env, "DUET_AZURE_ARM_ENDPOINT", default=PUBLIC_ARM).rstrip("/"),
            admin_username=first_setting(env, "DUET_AZURE_ADMIN_USERNAME", default="duet"),
            ssh_port=port,
            ssh_source=first_setting(env, "DUET_SSH_SOURCE_CIDR", default="*"),
            prefix=first_setting(env, "DUET_AZURE_PREFIX", "PREFIX", default="duet").lower(),
            subnet_name=first_setting(env, "DUET_AZURE_SUBNET_NAME", "SUBNET_NAME", default="default"),
            vm_sizes={
                "snp": first_setting(env, "DUET_AZURE_VM_SIZE_SNP", default=DEFAULT_SIZES["snp"]),
                "tdx": first_setting(env, "DUET_AZURE_VM_SIZE_TDX", default=DEFAULT_SIZES["tdx"]),
            },
            image=image,
            os_disk_type=first_setting(env, "DUET_AZURE_OS_DISK_TYPE", default="StandardSSD_LRS"),
            disk_encryption=first_setting(env, "DUET_AZURE_DISK_ENCRYPTION", default="DiskWithVMGuestState"),
            encryption_at_host=first_setting(env, "DUET_AZURE_ENCRYPTION_AT_HOST", default="false").lower()
            in ("1", "true", "yes"),
            ca_bundle=first_setting(env, "REQUESTS_CA_BUNDLE"),
            poll_interval=poll,
            delete_retry_seconds=retry,
            retry_total=retry_total,
        )


@dataclass(frozen=True)
class Names:
    """Deterministic ARM names of one CVM's resources."""

    base: str
    resource_group: str
    subnet: str

    @classmethod
    def of(cls, cvm_id: str, prefix: str, resource_group: str, subnet: str = "default") -> Names:
        return cls(base=cloud.base_name(cvm_id, prefix), resource_group=resource_group, subnet=subnet)

    vm = property(lambda self: f"{self.base}-vm")
    os_disk = property(lambda self: f"{self.base}-osdisk")
    nic = property(lambda self: f"{self.base}-nic")
    public_ip = property(lambda self: f"{self.base}-pip")
    vnet = property(lambda self: f"{self.base}-vnet")
    nsg = property(lambda self: f"{self.base}-nsg")

    def to_json(self) -> dict[str, str]:
        return {
            "resource_group": self.resource_group,
            "vm": self.vm,
            "os_disk": self.os_disk,
            "nic": self.nic,
            "public_ip": self.public_ip,
            "vnet": self.vnet,
            "subnet": self.subnet,
            "nsg": self.nsg,
        }


# ---- request bodies (REST-shaped camelCase dicts: both SDK generations send them verbatim) ----


def nsg_body(cfg: AzureConfig, tags: dict[str, str]) -> dict[str, Any]:
    return {
        "location": cfg.location,
        "tags": tags,
        "properties": {
            "securityRules": [
                {
                    "name": "allow-ssh",
                    "properties": {
                        "priority": 1000,
                        "direction": "Inbound",
                        "access": "Allow",
                        "protocol": "Tcp",
                        "sourceAddressPrefix": cfg.ssh_source,
                        "sourcePortRange": "*",
                        "destinationAddressPrefix": "*",
                        "destinationPortRange": str(cfg.ssh_port),
                    },
                }
            ]
        },
    }


def vnet_body(cfg: AzureConfig, tags: dict[str, str]) -> dict[str, Any]:
    return {"location": cfg.location, "tags": tags, "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}}}


def subnet_body(nsg_id: str) -> dict[str, Any]:
    return {"properties": {"addressPrefix": "10.0.0.0/24", "networkSecurityGroup": {"id": nsg_id}}}


def public_ip_body(cfg: AzureConfig, tags: dict[str, str]) -> dict[str, Any]:
    return {
        "location": cfg.location,
        "tags": tags,
        "sku": {"name": "Standard", "tier": "Regional"},
        "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"},
    }


def nic_body(cfg: AzureConfig, tags: dict[str, str], nsg_id: str, subnet_id: str, pip_id: str) -> dict[str, Any]:
    return {
        "location": cfg.location,
        "tags": tags,
        "properties": {
            "networkSecurityGroup": {"id": nsg_id},
            "ipConfigurations": [
                {
                    "name": "ipconfig1",
                    "properties": {
                        "subnet": {"id": subnet_id},
                        "privateIPAllocationMethod": "Dynamic",
                        "publicIPAddress": {"id": pip_id},
                    },
                }
            ],
        },
    }


def vm_body(
    cfg: AzureConfig,
    names: Names,
    tags: dict[str, str],
    *,
    vm_size: str,
    image: str,
    nic_id: str,
    ssh_public_key: str,
    custom_data: str,
) -> dict[str, Any]:
    """The Confidential VM. ``custom_data`` may hold a host private key (the owner's opt-out): never log this body."""
    publisher, offer, sku, version = image.split(":")
    security: dict[str, Any] = {
        "securityType": "ConfidentialVM",
        "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True},
    }
    if cfg.encryption_at_host:
        security["encryptionAtHost"] = True
    user = cfg.admin_username
    return {
        "location": cfg.location,
        "tags": tags,
        "properties": {
            "hardwareProfile": {"vmSize": vm_size},
            "securityProfile": security,
            "storageProfile": {
                "imageReference": {"publisher": publisher, "offer": offer, "sku": sku, "version": version},
                "osDisk": {
                    "name": names.os_disk,
                    "createOption": "FromImage",
                    "deleteOption": "Delete",
                    "caching": "ReadWrite",
                    "managedDisk": {
                        "storageAccountType": cfg.os_disk_type,
                        "securityProfile": {"securityEncryptionType": cfg.disk_encryption},
                    },
                },
            },
            "osProfile": {
                "computerName": names.base,
                "adminUsername": user,
                "customData": custom_data,
                # No extension operations (Run Command, VMAccess, Custom Script...): ARM answers them with
                # 409 OperationNotAllowed. Whoever controls the subscription can set this back to true...
                "allowExtensionOperations": False,
                "linuxConfiguration": {
                    "disablePasswordAuthentication": True,
                    # ...but not this one, which cannot be changed after creation: without it, too, ARM
                    # refuses extension operations (docs/providers.md, "What the subscription owner keeps").
                    "provisionVMAgent": False,
                    "ssh": {"publicKeys": [{"path": f"/home/{user}/.ssh/authorized_keys", "keyData": ssh_public_key}]},
                },
            },
            "networkProfile": {"networkInterfaces": [{"id": nic_id, "properties": {"primary": True, "deleteOption": "Delete"}}]},
        },
    }


# ---- errors ----


def _read_error(exc: BaseException) -> tuple[str, str]:
    err = getattr(exc, "error", None)
    code = getattr(err, "code", None) or type(exc).__name__
    message = getattr(err, "message", None) or getattr(exc, "message", None) or str(exc)
    return str(code), str(message).strip()


_CREDENTIAL_FAILED = (
    "the Azure credential failed; check the managed identity (MANAGED_IDENTITY_CLIENT_ID) or DUET_AZURE_CREDENTIAL"
)
# ARM answers these while a just-deleted or just-failed resource still holds a reference
# (e.g. a NIC stays reserved for a while after a failed VM create); they clear by themselves.
_IN_USE = re.compile(r"InUse|Reserved|AnotherOperationInProgress|RetryableError|Conflict", re.I)
ERRORS = cloud.CloudErrors(
    cloud="Azure",
    read=_read_error,
    hints={
        "SkuNotAvailable": "the VM size is not offered in this location; pick another location or size",
        "QuotaExceeded": "request more quota for the DC/EC family in this location",
        "OperationNotAllowed": "check the subscription's quota for this VM family and location",
        "AuthorizationFailed": "give the controller's identity the Contributor role on the resource group",
        "ResourceGroupNotFound": "create the resource group or fix RESOURCE_GROUP_NAME",
        "InvalidAuthenticationToken": "the credential is for another tenant or cloud; check the identity and ARM endpoint",
        "ServiceRequestError": "cannot reach Azure Resource Manager; check DUET_AZURE_ARM_ENDPOINT, network and REQUESTS_CA_BUNDLE",
        "ClientAuthenticationError": _CREDENTIAL_FAILED,
        "CredentialUnavailableError": _CREDENTIAL_FAILED,
    },
    missing=lambda exc: type(exc).__name__ == "ResourceNotFoundError",
    gone_codes=frozenset({"ResourceNotFound", "NotFound", "ResourceGroupNotFound"}),
    in_use=lambda code: _IN_USE.search(code) is not None,
)


class AzureProvider:
    """The ``azure`` provider. ``credential`` is injectable; by default azure-identity builds one."""

    name = "azure"

    def __init__(self, config: AzureConfig, credential: Any = None) -> None:
        self.config = config
        self._credential = credential
        self._clients: tuple[Any, Any, Any] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], state_dir: Path) -> Self:
        return cls(AzureConfig.from_env(env))

    # ---- SDK plumbing ----

    def _build_credential(self) -> Any:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

            client_id = self.config.managed_identity_client_id or None
            if self.config.credential == "default":
                self._credential = DefaultAzureCredential(managed_identity_client_id=client_id)
            else:
                self._credential = ManagedIdentityCredential(client_id=client_id)
        return self._credential

    def clients(self) -> tuple[Any, Any, Any]:
        """(compute, network, resources) clients, built once; no I/O happens here."""
        if self._clients is None:
            from azure.mgmt.compute import ComputeManagementClient
            from azure.mgmt.network import NetworkManagementClient

            try:
                from azure.mgmt.resource.resources import ResourceManagementClient
            except ImportError:  # azure-mgmt-resource < 24
                from azure.mgmt.resource import ResourceManagementClient  # type: ignore[no-redef,attr-defined]

            # azure-core logs every request and response header at INFO; keep the controller's log readable
            logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
            cfg = self.config
            kw: dict[str, Any] = {
                "base_url": cfg.arm_endpoint,
                "credential_scopes": [f"{cfg.arm_endpoint}/.default"],
                "polling_interval": cfg.poll_interval,
            }
            if cfg.ca_bundle:
                kw["connection_verify"] = cfg.ca_bundle
            if cfg.retry_total is not None:
                kw["retry_total"] = cfg.retry_total
            cred = self._build_credential()
            self._clients = (
                ComputeManagementClient(cred, cfg.subscription_id, **kw),
                NetworkManagementClient(cred, cfg.subscription_id, **kw),
                ResourceManagementClient(cred, cfg.subscription_id, **kw),
            )
        return self._clients

    def _names(self, cvm_id: str, resources: Mapping[str, Any] | None = None) -> Names:
        rg = (resources or {}).get("resource_group") or self.config.resource_group
        subnet = (resources or {}).get("subnet") or self.config.subnet_name
        return Names.of(cvm_id, self.config.prefix, rg, subnet)

    # ---- Provider protocol ----

    async def create(self, spec: CvmSpec, ssh_public_key: str, progress: Progress) -> Machine:
        if spec.cvm_type not in CVM_TYPES:
            raise ConfigError(f"unknown CVM type {spec.cvm_type!r}; use snp or tdx", code="bad_cvm_type")
        cfg = self.config
        names = self._names(spec.cvm_id)
        tags = cloud.cvm_tags(spec.cvm_id, cfg.prefix)
        vm_size = spec.options.get("vm_size") or cfg.vm_sizes[spec.cvm_type]
        image = spec.options.get("image") or cfg.image
        compute, network, _ = await cloud.in_thread(self.clients)
        rg = names.resource_group
        async with cloud.Provisioning(
            ERRORS, spec, ssh_public_key, progress, lambda: self._delete_names(names, progress)
        ) as steps:
            steps.step(f"creating network security group {names.nsg}")
            nsg = await cloud.in_thread(
                lambda: network.network_security_groups.begin_create_or_update(rg, names.nsg, nsg_body(cfg, tags)).result()
            )
            steps.step(f"creating virtual network {names.vnet}")
            await cloud.in_thread(
                lambda: network.virtual_networks.begin_create_or_update(rg, names.vnet, vnet_body(cfg, tags)).result()
            )
            steps.step(f"creating subnet {names.subnet}")
            subnet = await cloud.in_thread(
                lambda: network.subnets.begin_create_or_update(rg, names.vnet, names.subnet, subnet_body(nsg.id)).result()
            )
            steps.step(f"creating public IP {names.public_ip}")
            pip = await cloud.in_thread(
                lambda: network.public_ip_addresses.begin_create_or_update(
                    rg, names.public_ip, public_ip_body(cfg, tags)
                ).result()
            )
            steps.step(f"creating network interface {names.nic}")
            nic = await cloud.in_thread(
                lambda: network.network_interfaces.begin_create_or_update(
                    rg, names.nic, nic_body(cfg, tags, nsg.id, subnet.id, pip.id)
                ).result()
            )
            steps.step(f"creating confidential VM {names.vm} ({vm_size})")
            body = vm_body(
                cfg,
                names,
                tags,
                vm_size=vm_size,
                image=image,
                nic_id=nic.id,
                ssh_public_key=ssh_public_key,
                custom_data=cloud_init.user_data_b64(steps.host_key),
            )
            vm = await cloud.in_thread(lambda: compute.virtual_machines.begin_create_or_update(rg, names.vm, body).result())
            vm_id = str(getattr(vm, "vm_id", None) or "")  # the operation's result is ARM's GET of the VM
            if not vm_id and spec.attested:
                raise UpstreamError(
                    f"Azure: VM {names.vm} has no vmId after it was created: its attestation could not be tied to it",
                    code="cloud_provisioning_failed",
                )
            steps.step(f"reading public IP {names.public_ip}")
            address = (await cloud.in_thread(lambda: network.public_ip_addresses.get(rg, names.public_ip))).ip_address
            if not address:
                raise UpstreamError(
                    f"Azure: public IP {names.public_ip} has no address after the VM was created",
                    code="cloud_provisioning_failed",
                )
        resources = names.to_json() | {"location": cfg.location, "vm_size": vm_size, "image": image}
        if vm_id:
            resources["vm_id"] = vm_id  # what the evidence's vmUniqueId must name (design §10)
        return steps.machine(self.name, host=address, port=cfg.ssh_port, username=cfg.admin_username, resources=resources)

    async def delete(self, machine: Machine, progress: Progress) -> None:
        await self._delete_names(self._names(machine.cvm_id, machine.resources), progress)

    async def _delete_names(self, names: Names, progress: Progress) -> None:
        """Delete in dependency order (ARM refuses to delete what is still referenced)."""
        compute, network, _ = await cloud.in_thread(self.clients)
        rg = names.resource_group
        steps: list[tuple[str, Callable[[], Any]]] = [
            (f"deleting VM {names.vm}", lambda: compute.virtual_machines.begin_delete(rg, names.vm).result()),
            (f"deleting OS disk {names.os_disk}", lambda: compute.disks.begin_delete(rg, names.os_disk).result()),
            (f"deleting network interface {names.nic}", lambda: network.network_interfaces.begin_delete(rg, names.nic).result()),
            (
                f"deleting public IP {names.public_ip}",
                lambda: network.public_ip_addresses.begin_delete(rg, names.public_ip).result(),
            ),
            (f"deleting virtual network {names.vnet}", lambda: network.virtual_networks.begin_delete(rg, names.vnet).result()),
            (
                f"deleting network security group {names.nsg}",
                lambda: network.network_security_groups.begin_delete(rg, names.nsg).result(),
            ),
        ]
        for label, fn in steps:
            progress(label)
            await ERRORS.delete(label, fn, patience=self.config.delete_retry_seconds)

    async def _tagged(self) -> dict[str, list[dict[str, str]]]:
        """Resources in the group tagged by this controller's prefix, grouped by CVM id."""
        _, _, resources = await cloud.in_thread(self.clients)
        rg = self.config.resource_group

        def list_tagged() -> list[Any]:
            return list(resources.resources.list_by_resource_group(rg, filter=f"tagName eq '{cloud.TAG_CVM}'"))

        with ERRORS.calling(f"listing resources tagged {cloud.TAG_CVM} in {rg}", code="cloud_list_failed"):
            items = await cloud.in_thread(list_tagged)
        groups: dict[str, list[dict[str, str]]] = {}
        for item in items:
            tags = item.tags or {}
            if cloud.TAG_CVM in tags and tags.get(cloud.TAG_PREFIX) == self.config.prefix:
                groups.setdefault(tags[cloud.TAG_CVM], []).append({"name": item.name, "type": item.type})
        return groups

    async def reconcile(self, known: list[Machine]) -> list[Machine]:
        groups = await self._tagged()
        known_ids = {m.cvm_id for m in known}
        for cvm_id in sorted(set(groups) - known_ids):
            await self._delete_names(self._names(cvm_id), lambda _msg: None)
        live = []
        for machine in known:
            vm_name = self._names(machine.cvm_id, machine.resources).vm
            if any(
                r["name"] == vm_name and r["type"].lower() == "microsoft.compute/virtualmachines"
                for r in groups.get(machine.cvm_id, [])
            ):
                live.append(machine)
        return live

    async def resume(self, machine: Machine) -> Machine:
        """Start the VM if it was stopped or deallocated, and read its (static) public IP again."""
        compute, network, _ = await cloud.in_thread(self.clients)
        names = self._names(machine.cvm_id, machine.resources)
        rg = names.resource_group
        gone = f"Azure: VM {names.vm} of CVM {machine.cvm_id} no longer exists"
        with ERRORS.calling(f"resuming VM {names.vm}", code="cloud_resume_failed", gone=gone):
            view = await cloud.in_thread(lambda: compute.virtual_machines.instance_view(rg, names.vm))
            states = {s.code for s in (view.statuses or []) if s.code}
            if states & {"PowerState/deallocated", "PowerState/stopped", "PowerState/deallocating", "PowerState/stopping"}:
                await cloud.in_thread(lambda: compute.virtual_machines.begin_start(rg, names.vm).result())
            address = (await cloud.in_thread(lambda: network.public_ip_addresses.get(rg, names.public_ip))).ip_address
        return replace(machine, host=address or machine.host)

    def lockdown_command(self, machine: Machine) -> str:
        return cloud.machine_lockdown_command(machine)

    def evidence_source(self, machine: Machine, cvm_type: CvmType) -> EvidenceSource:
        return EvidenceSource("azure-vtpm")
