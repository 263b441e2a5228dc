"""Google Cloud Confidential VMs (``SEV_SNP`` on N2D, ``TDX`` on C3) through google-cloud-compute.

Per CVM: a firewall rule allowing SSH to the instance's own network tag, and the instance
(``confidentialInstanceConfig``, ``onHostMaintenance: TERMINATE``, shielded VM) with the
controller's login key in ``ssh-keys`` metadata (OS Login off, project keys blocked) and cloud-init
``user-data`` (``cloud_init``): an attested CVM generates its own SSH host key at first boot, none is
sent; only the owner's opt-out installs one the provider generated. Instances carry ``duet-cvm`` labels;
names are derived from the CVM id, so a partial record is enough to delete. Facts:
``specs/providers.md`` §3.

Long-running operations are awaited with our own ``ZoneOperationsClient``/``GlobalOperationsClient``
built with the same endpoint (``insert_unary`` + ``wait``): the SDK's ``ExtendedOperation``
would poll the public endpoint even when another one is configured (providers.md §3.2).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

from duet.errors import ConfigError, UpstreamError
from duet.providers import cloud
from duet.providers.base import CVM_TYPES, CvmSpec, CvmType, EvidenceSource, Machine, Progress, first_setting

DEFAULT_MACHINE_TYPES = {"snp": "n2d-standard-2", "tdx": "c3-standard-4"}
CONFIDENTIAL_TYPES = {"snp": "SEV_SNP", "tdx": "TDX"}
DEFAULT_IMAGE = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64"
_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


@dataclass(frozen=True)
class GcpConfig:
    project: str
    zone: str
    machine_types: dict[str, str]
    image: str = DEFAULT_IMAGE
    network: str = "global/networks/default"
    subnetwork: str = ""
    username: str = "duet"
    endpoint: str = ""
    credentials_file: str = ""
    disk_gb: int = 20
    ssh_port: int = 22
    ssh_source: str = "0.0.0.0/0"
    prefix: str = "duet"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GcpConfig:
        project = first_setting(env, "DUET_GCP_PROJECT", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT")
        zone = first_setting(env, "DUET_GCP_ZONE", "CLOUDSDK_COMPUTE_ZONE")
        missing = [n for n, v in (("DUET_GCP_PROJECT", project), ("DUET_GCP_ZONE", zone)) if not v]
        if missing:
            raise ConfigError(
                "GCP provider needs " + ", ".join(missing) + " (pick a zone that offers N2D AMD Milan for SEV_SNP or C3 for TDX)",
                code="gcp_config_missing",
            )
        prefix = first_setting(env, "DUET_GCP_PREFIX", default="duet").lower()
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,20}", prefix):
            raise ConfigError(
                "DUET_GCP_PREFIX must start with a letter and hold only a-z, 0-9 and '-'", code="gcp_config_invalid"
            )
        with cloud.config_numbers("GCP", code="gcp_config_invalid"):
            port = int(first_setting(env, "DUET_SSH_PORT", default="22"))
            disk = int(first_setting(env, "DUET_GCP_DISK_GB", default="20"))
        return cls(
            project=project,
            zone=zone,
            machine_types={
                "snp": first_setting(env, "DUET_GCP_MACHINE_TYPE_SNP", default=DEFAULT_MACHINE_TYPES["snp"]),
                "tdx": first_setting(env, "DUET_GCP_MACHINE_TYPE_TDX", default=DEFAULT_MACHINE_TYPES["tdx"]),
            },
            image=first_setting(env, "DUET_GCP_IMAGE", default=DEFAULT_IMAGE),
            network=first_setting(env, "DUET_GCP_NETWORK", default="global/networks/default"),
            subnetwork=first_setting(env, "DUET_GCP_SUBNETWORK"),
            username=first_setting(env, "DUET_GCP_USERNAME", default="duet"),
            endpoint=first_setting(env, "DUET_GCP_ENDPOINT").rstrip("/"),
            credentials_file=first_setting(env, "DUET_GCP_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS"),
            disk_gb=disk,
            ssh_port=port,
            ssh_source=first_setting(env, "DUET_SSH_SOURCE_CIDR", default="0.0.0.0/0"),
            prefix=prefix,
        )


def _label(value: str) -> str:
    """GCP label values: lowercase letters, digits, '_' and '-', at most 63."""
    return re.sub(r"[^a-z0-9_-]", "_", value.lower())[:63]


def firewall_resource(cfg: GcpConfig, name: str, cvm_id: str) -> Any:
    from google.cloud import compute_v1

    return compute_v1.Firewall(
        name=f"{name}-ssh",
        network=cfg.network,
        direction="INGRESS",
        priority=1000,
        description=f"duet CVM {cvm_id} ({cloud.TAG_PREFIX}={cfg.prefix}): SSH from the controller",  # firewalls have no labels
        allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=[str(cfg.ssh_port)])],
        source_ranges=[cfg.ssh_source],
        target_tags=[name],
    )


def instance_resource(
    cfg: GcpConfig, *, name: str, cvm_id: str, cvm_type: str, machine_type: str, ssh_public_key: str, user_data: str
) -> Any:
    """The Confidential VM. ``user_data`` may hold a host private key (the owner's opt-out): never log this resource."""
    from google.cloud import compute_v1

    nic = compute_v1.NetworkInterface(
        network=cfg.network,
        nic_type="GVNIC",
        access_configs=[compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")],
    )
    if cfg.subnetwork:
        nic.subnetwork = cfg.subnetwork
    key_line = " ".join(ssh_public_key.split()[:2])
    instance = compute_v1.Instance(
        name=name,
        machine_type=f"zones/{cfg.zone}/machineTypes/{machine_type}",
        confidential_instance_config=compute_v1.ConfidentialInstanceConfig(
            confidential_instance_type=CONFIDENTIAL_TYPES[cvm_type]
        ),
        scheduling=compute_v1.Scheduling(on_host_maintenance="TERMINATE", automatic_restart=True),
        shielded_instance_config=compute_v1.ShieldedInstanceConfig(
            enable_secure_boot=True, enable_vtpm=True, enable_integrity_monitoring=True
        ),
        disks=[
            compute_v1.AttachedDisk(
                boot=True,
                auto_delete=True,
                initialize_params=compute_v1.AttachedDiskInitializeParams(source_image=cfg.image, disk_size_gb=cfg.disk_gb),
            )
        ],
        network_interfaces=[nic],
        metadata=compute_v1.Metadata(
            items=[
                compute_v1.Items(key="ssh-keys", value=f"{cfg.username}:{key_line} duet-controller"),
                compute_v1.Items(key="enable-oslogin", value="FALSE"),
                compute_v1.Items(key="block-project-ssh-keys", value="TRUE"),
                compute_v1.Items(key="user-data", value=user_data),
                compute_v1.Items(key=cloud.TAG_CVM, value=cvm_id),
            ]
        ),
        labels={cloud.TAG_CVM: _label(cvm_id), cloud.TAG_PREFIX: cfg.prefix},
        tags=compute_v1.Tags(items=[name]),
    )
    if cvm_type == "snp":
        instance.min_cpu_platform = "AMD Milan"  # required for SEV_SNP; must be absent for TDX
    return instance


def _read_error(exc: BaseException) -> tuple[str, str]:
    """The last ``reason`` of the error list names the cause; an operation's error carries its code as ``reason``."""
    errors = getattr(exc, "errors", None) or []
    reason = ""
    for e in errors:
        reason = (e.get("reason") if isinstance(e, dict) else getattr(e, "reason", "")) or reason
    code = reason or getattr(exc, "reason", None) or type(exc).__name__
    return str(code), str(getattr(exc, "message", None) or exc).strip()


def _missing(exc: BaseException) -> bool:
    from google.api_core import exceptions as gexc

    return isinstance(exc, gexc.NotFound)


_CREDENTIALS_FAILED = "Google credentials failed; set GOOGLE_APPLICATION_CREDENTIALS or run on a VM with a service account"
ERRORS = cloud.CloudErrors(
    cloud="GCP",
    read=_read_error,
    hints={
        "ZONE_RESOURCE_POOL_EXHAUSTED": "the zone has no capacity for this machine type now; retry or use another zone",
        "QUOTA_EXCEEDED": "raise the project's CPU quota for this family and region",
        "UNSUPPORTED_OPERATION": "this zone or machine type does not offer the confidential type (SEV_SNP: N2D + AMD Milan; TDX: C3)",
        "forbidden": "the controller's service account lacks compute permissions (roles/compute.instanceAdmin.v1 + firewall admin)",
        "notFound": "check DUET_GCP_PROJECT, DUET_GCP_ZONE, the network and the image",
        "DefaultCredentialsError": _CREDENTIALS_FAILED,
        "RefreshError": _CREDENTIALS_FAILED,
        "TransportError": _CREDENTIALS_FAILED,
    },
    missing=_missing,
)


class _OperationFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = code, message


class GcpProvider:
    """The ``gcp`` provider. ``credentials`` are injectable; by default google-auth finds them."""

    name = "gcp"

    def __init__(self, config: GcpConfig, credentials: Any = None) -> None:
        self.config = config
        self._credentials = credentials
        self._clients: dict[str, Any] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], state_dir: Path) -> Self:
        return cls(GcpConfig.from_env(env))

    def clients(self) -> dict[str, Any]:
        if self._clients is None:
            import google.auth
            from google.api_core.client_options import ClientOptions
            from google.cloud import compute_v1

            creds = self._credentials
            if creds is None:
                if self.config.credentials_file:
                    from google.oauth2 import service_account

                    # only a service-account key is accepted from a file: other credential
                    # configurations can make google-auth fetch or execute things
                    creds = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                        self.config.credentials_file, scopes=_SCOPES
                    )
                else:
                    creds, _ = google.auth.default(scopes=_SCOPES)
            opts = ClientOptions(api_endpoint=self.config.endpoint) if self.config.endpoint else None
            kw: dict[str, Any] = {"credentials": creds, "client_options": opts, "transport": "rest"}
            self._clients = {
                "instances": compute_v1.InstancesClient(**kw),
                "firewalls": compute_v1.FirewallsClient(**kw),
                "zone_ops": compute_v1.ZoneOperationsClient(**kw),
                "global_ops": compute_v1.GlobalOperationsClient(**kw),
            }
        return self._clients

    def _wait(self, op: Any, zonal: bool) -> None:
        """Block (in a worker thread) until the operation is DONE; raise its error if it has one."""
        from google.cloud import compute_v1

        c = self.clients()
        done = compute_v1.Operation.Status.DONE
        while op.status != done:  # each wait() returns when DONE or after at most ~2 minutes
            if zonal:
                op = c["zone_ops"].wait(project=self.config.project, zone=self.config.zone, operation=op.name)
            else:
                op = c["global_ops"].wait(project=self.config.project, operation=op.name)
        if op.error and op.error.errors:
            first = op.error.errors[0]
            raise _OperationFailed(first.code or "OPERATION_FAILED", first.message or op.http_error_message or "")

    async def create(self, spec: CvmSpec, ssh_public_key: str, progress: Progress) -> Machine:
        if spec.cvm_type not in CVM_TYPES:
            raise ConfigError(f"unknown CVM type {spec.cvm_type!r}; use snp or tdx", code="bad_cvm_type")
        cfg = self.config
        name = cloud.base_name(spec.cvm_id, cfg.prefix)
        machine_type = spec.options.get("machine_type") or cfg.machine_types[spec.cvm_type]
        c = await cloud.in_thread(self.clients)
        async with cloud.Provisioning(ERRORS, spec, ssh_public_key, progress, lambda: self._delete_name(name, progress)) as steps:
            steps.step(f"creating firewall rule {name}-ssh")
            fw = firewall_resource(cfg, name, spec.cvm_id)
            op = await cloud.in_thread(lambda: c["firewalls"].insert_unary(project=cfg.project, firewall_resource=fw))
            await cloud.in_thread(lambda: self._wait(op, zonal=False))
            steps.step(f"creating confidential VM {name} ({CONFIDENTIAL_TYPES[spec.cvm_type]}, {machine_type})")
            instance = instance_resource(
                cfg,
                name=name,
                cvm_id=spec.cvm_id,
                cvm_type=spec.cvm_type,
                machine_type=machine_type,
                ssh_public_key=ssh_public_key,
                user_data=steps.user_data(),
            )
            op = await cloud.in_thread(
                lambda: c["instances"].insert_unary(project=cfg.project, zone=cfg.zone, instance_resource=instance)
            )
            await cloud.in_thread(lambda: self._wait(op, zonal=True))
            steps.step(f"reading the address of {name}")
            got = await cloud.in_thread(lambda: c["instances"].get(project=cfg.project, zone=cfg.zone, instance=name))
            address = got.network_interfaces[0].access_configs[0].nat_i_p if got.network_interfaces else ""
            if not address:
                raise UpstreamError(f"GCP: instance {name} has no external IP", code="cloud_provisioning_failed")
        resources = {
            "project": cfg.project,
            "zone": cfg.zone,
            "instance": name,
            "firewall": f"{name}-ssh",
            "machine_type": machine_type,
        }
        return steps.machine(self.name, host=address, port=cfg.ssh_port, username=cfg.username, resources=resources)

    async def delete(self, machine: Machine, progress: Progress) -> None:
        await self._delete_name(cloud.base_name(machine.cvm_id, self.config.prefix), progress)

    async def _delete_name(self, name: str, progress: Progress) -> None:
        """The instance first (its boot disk goes with it: autoDelete), then its firewall rule."""
        cfg = self.config
        c = await cloud.in_thread(self.clients)
        steps: list[tuple[str, Callable[[], None]]] = [
            (
                f"deleting VM {name}",
                lambda: self._wait(c["instances"].delete_unary(project=cfg.project, zone=cfg.zone, instance=name), zonal=True),
            ),
            (
                f"deleting firewall rule {name}-ssh",
                lambda: self._wait(c["firewalls"].delete_unary(project=cfg.project, firewall=f"{name}-ssh"), zonal=False),
            ),
        ]
        for label, fn in steps:
            progress(label)
            await ERRORS.delete(label, fn)

    async def reconcile(self, known: list[Machine]) -> list[Machine]:
        cfg = self.config
        c = await cloud.in_thread(self.clients)
        prefix = f"{cfg.prefix}-"

        def scan() -> tuple[set[str], set[str]]:
            # the server-side filters narrow the listing; the same test is applied again here
            instances = {
                i.name
                for i in c["instances"].list(
                    request={"project": cfg.project, "zone": cfg.zone, "filter": f'labels.{cloud.TAG_PREFIX} = "{cfg.prefix}"'}
                )
                if i.labels.get(cloud.TAG_PREFIX) == cfg.prefix
            }
            firewalls = {
                f.name[: -len("-ssh")]
                for f in c["firewalls"].list(request={"project": cfg.project, "filter": f'name = "{prefix}.*"'})
                if f.name.startswith(prefix) and f.name.endswith("-ssh") and f"({cloud.TAG_PREFIX}={cfg.prefix})" in f.description
            }
            return instances, firewalls

        with ERRORS.calling("listing duet instances and firewall rules", code="cloud_list_failed"):
            instances, firewalls = await cloud.in_thread(scan)
        names = {cloud.base_name(m.cvm_id, cfg.prefix): m for m in known}
        for orphan in sorted((instances | firewalls) - set(names)):
            await self._delete_name(orphan, lambda _m: None)
        return [m for n, m in names.items() if n in instances]

    async def resume(self, machine: Machine) -> Machine:
        """Start a TERMINATED (stopped, or ended by host maintenance) instance and read its IP again."""
        cfg = self.config
        c = await cloud.in_thread(self.clients)
        name = cloud.base_name(machine.cvm_id, cfg.prefix)
        gone = f"GCP: VM {name} of CVM {machine.cvm_id} no longer exists"
        with ERRORS.calling(f"resuming VM {name}", code="cloud_resume_failed", gone=gone):
            got = await cloud.in_thread(lambda: c["instances"].get(project=cfg.project, zone=cfg.zone, instance=name))
            if got.status in ("TERMINATED", "STOPPED", "SUSPENDED"):
                op = await cloud.in_thread(lambda: c["instances"].start_unary(project=cfg.project, zone=cfg.zone, instance=name))
                await cloud.in_thread(lambda: self._wait(op, zonal=True))
                got = await cloud.in_thread(lambda: c["instances"].get(project=cfg.project, zone=cfg.zone, instance=name))
        address = got.network_interfaces[0].access_configs[0].nat_i_p if got.network_interfaces else ""
        return replace(machine, host=address or machine.host)

    def lockdown_command(self, machine: Machine) -> str:
        return cloud.machine_lockdown_command(machine)

    def evidence_source(self, machine: Machine, cvm_type: CvmType) -> EvidenceSource:
        return EvidenceSource("configfs-tsm")
