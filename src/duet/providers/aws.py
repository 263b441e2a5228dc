"""AWS EC2 instances with AMD SEV-SNP (``CpuOptions={"AmdSevSnp": "enabled"}``) through boto3.

Per CVM: the controller's login key imported as a key pair, a security group allowing SSH,
and the instance (M6a/C6a/R6a, UEFI AMI) with cloud-init user-data (``cloud_init``): an attested
CVM generates its own SSH host key at first boot, none is sent; only the owner's opt-out installs
one the provider generated. Everything is named after the CVM id and tagged ``duet-cvm``, so
``delete`` and ``reconcile`` find it again from a partial record. AWS offers SEV-SNP only;
a ``tdx`` spec is refused with a clear error. Facts: ``specs/providers.md`` §2.

boto3 is synchronous; each call runs in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

from duet.errors import ConfigError, NotFound, UpstreamError
from duet.providers import cloud
from duet.providers.base import CvmSpec, CvmType, EvidenceSource, Machine, Progress, first_setting

_LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


@dataclass(frozen=True)
class AwsConfig:
    region: str
    ami: str
    instance_type: str = "m6a.large"
    username: str = "ubuntu"
    endpoint_url: str = ""
    subnet_id: str = ""
    vpc_id: str = ""
    ssh_port: int = 22
    ssh_source: str = "0.0.0.0/0"
    prefix: str = "duet"
    wait_delay: float = 5.0
    wait_attempts: int = 120
    delete_retry_seconds: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AwsConfig:
        region = first_setting(env, "DUET_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
        ami = first_setting(env, "DUET_AWS_AMI")
        missing = [n for n, v in (("DUET_AWS_REGION (or AWS_REGION)", region), ("DUET_AWS_AMI", ami)) if not v]
        if missing:
            raise ConfigError(
                "AWS provider needs "
                + ", ".join(missing)
                + " (the AMI must boot in UEFI mode and support SEV-SNP guests, e.g. Ubuntu 24.04)",
                code="aws_config_missing",
            )
        with cloud.config_numbers("AWS", code="aws_config_invalid"):
            port = int(first_setting(env, "DUET_SSH_PORT", default="22"))
            delay = float(first_setting(env, "DUET_AWS_WAIT_DELAY", default="5"))
            attempts = int(first_setting(env, "DUET_AWS_WAIT_ATTEMPTS", default="120"))
            retry = float(first_setting(env, "DUET_AWS_DELETE_RETRY_SECONDS", default="300"))
        return cls(
            region=region,
            ami=ami,
            instance_type=first_setting(env, "DUET_AWS_INSTANCE_TYPE", default="m6a.large"),
            username=first_setting(env, "DUET_AWS_USERNAME", default="ubuntu"),
            endpoint_url=first_setting(env, "DUET_AWS_ENDPOINT_URL"),
            subnet_id=first_setting(env, "DUET_AWS_SUBNET_ID"),
            vpc_id=first_setting(env, "DUET_AWS_VPC_ID"),
            ssh_port=port,
            ssh_source=first_setting(env, "DUET_SSH_SOURCE_CIDR", default="0.0.0.0/0"),
            prefix=first_setting(env, "DUET_AWS_PREFIX", default="duet").lower(),
            wait_delay=delay,
            wait_attempts=attempts,
            delete_retry_seconds=retry,
        )


def _tag_spec(resource_type: str, tags: dict[str, str], name: str) -> dict[str, Any]:
    return {"ResourceType": resource_type, "Tags": [{"Key": k, "Value": v} for k, v in (tags | {"Name": name}).items()]}


def run_instances_params(
    cfg: AwsConfig, *, name: str, tags: dict[str, str], instance_type: str, sg_id: str, user_data: str
) -> dict[str, Any]:
    """Parameters of ``run_instances``. ``UserData`` may hold a host private key (the owner's opt-out): never log them."""
    params: dict[str, Any] = {
        "ImageId": cfg.ami,
        "InstanceType": instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "KeyName": name,
        "CpuOptions": {"AmdSevSnp": "enabled"},
        "UserData": user_data,
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "TagSpecifications": [_tag_spec("instance", tags, name), _tag_spec("volume", tags, name)],
    }
    if cfg.subnet_id:
        params["NetworkInterfaces"] = [
            {"DeviceIndex": 0, "AssociatePublicIpAddress": True, "Groups": [sg_id], "SubnetId": cfg.subnet_id}
        ]
    else:
        params["SecurityGroupIds"] = [sg_id]
    return params


def _read_error(exc: BaseException) -> tuple[str, str]:
    """botocore's own exceptions (no credentials, no endpoint) carry no EC2 error: their class names it."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        return str(response["Error"].get("Code", "")), str(response["Error"].get("Message", "")).strip()
    return type(exc).__name__, str(exc)


_NO_CREDENTIALS = "no AWS credentials; give the controller an instance role or set AWS_* variables"
_NO_ENDPOINT = "cannot reach the EC2 endpoint; check DUET_AWS_REGION, DUET_AWS_ENDPOINT_URL and the network"
ERRORS = cloud.CloudErrors(
    cloud="AWS",
    read=_read_error,
    hints={
        "InsufficientInstanceCapacity": "AWS has no SEV-SNP capacity for this type in this zone now; retry later or use another zone/type",
        "Unsupported": "SEV-SNP needs an M6a, C6a or R6a type in a region that offers it (e.g. us-east-2, eu-west-1)",
        "InvalidParameterCombination": "SEV-SNP needs an M6a, C6a or R6a type and a UEFI (or uefi-preferred) AMI",
        "InvalidAMIID.NotFound": "DUET_AWS_AMI is not an AMI of this region",
        "UnauthorizedOperation": "the controller's AWS identity lacks an EC2 permission for this call",
        "AuthFailure": "the AWS credentials were refused; check the instance role or AWS_* variables",
        "VcpuLimitExceeded": "raise the account's vCPU limit for this instance family",
        "NoCredentialsError": _NO_CREDENTIALS,
        "PartialCredentialsError": _NO_CREDENTIALS,
        "EndpointConnectionError": _NO_ENDPOINT,
        "ConnectTimeoutError": _NO_ENDPOINT,
    },
    gone_codes=frozenset({"InvalidGroup.NotFound"}),
    # a security group stays in use until the terminated instance's network interface is gone
    in_use=lambda code: code == "DependencyViolation",
)


class AwsProvider:
    """The ``aws`` provider. ``client`` (a boto3 EC2 client) is injectable for tests."""

    name = "aws"

    def __init__(self, config: AwsConfig, client: Any = None) -> None:
        self.config = config
        self._client = client

    @classmethod
    def from_env(cls, env: Mapping[str, str], state_dir: Path) -> Self:
        return cls(AwsConfig.from_env(env))

    def client(self) -> Any:
        """The EC2 client, built once (boto3's default credential chain: instance role, env, files)."""
        if self._client is None:
            import boto3

            session = boto3.session.Session(region_name=self.config.region)
            self._client = session.client("ec2", endpoint_url=self.config.endpoint_url or None)
        return self._client

    def _waiter(self, ec2: Any, name: str, instance_ids: list[str]) -> None:
        ec2.get_waiter(name).wait(
            InstanceIds=instance_ids, WaiterConfig={"Delay": self.config.wait_delay, "MaxAttempts": self.config.wait_attempts}
        )

    def _filters(self, cvm_id: str | None) -> list[dict[str, Any]]:
        f: list[dict[str, Any]] = [{"Name": f"tag:{cloud.TAG_PREFIX}", "Values": [self.config.prefix]}]
        f.append(
            {"Name": f"tag:{cloud.TAG_CVM}", "Values": [cvm_id]} if cvm_id else {"Name": "tag-key", "Values": [cloud.TAG_CVM]}
        )
        return f

    async def create(self, spec: CvmSpec, ssh_public_key: str, progress: Progress) -> Machine:
        if spec.cvm_type != "snp":
            raise ConfigError(
                f"AWS offers AMD SEV-SNP only; CVM type {spec.cvm_type!r} cannot run there (use --provider azure or gcp for TDX)",
                code="cvm_type_unsupported",
            )
        cfg = self.config
        name = cloud.base_name(spec.cvm_id, cfg.prefix)
        tags = cloud.cvm_tags(spec.cvm_id, cfg.prefix)
        instance_type = spec.options.get("instance_type") or cfg.instance_type
        ec2 = await cloud.in_thread(self.client)
        async with cloud.Provisioning(
            ERRORS, spec, ssh_public_key, progress, lambda: self._delete_cvm(spec.cvm_id, progress)
        ) as steps:
            steps.step(f"importing key pair {name}")
            await cloud.in_thread(
                lambda: ec2.import_key_pair(
                    KeyName=name, PublicKeyMaterial=ssh_public_key.encode(), TagSpecifications=[_tag_spec("key-pair", tags, name)]
                )
            )
            steps.step(f"creating security group {name}")
            sg_args: dict[str, Any] = {
                "GroupName": name,
                "Description": f"duet CVM {spec.cvm_id}: SSH from the controller",
                "TagSpecifications": [_tag_spec("security-group", tags, name)],
            }
            if cfg.vpc_id:
                sg_args["VpcId"] = cfg.vpc_id
            sg_id = (await cloud.in_thread(lambda: ec2.create_security_group(**sg_args)))["GroupId"]
            steps.step(f"allowing SSH in security group {name}")
            await cloud.in_thread(
                lambda: ec2.authorize_security_group_ingress(
                    GroupId=sg_id,
                    IpPermissions=[
                        {
                            "IpProtocol": "tcp",
                            "FromPort": cfg.ssh_port,
                            "ToPort": cfg.ssh_port,
                            "IpRanges": [{"CidrIp": cfg.ssh_source, "Description": "duet controller"}],
                        }
                    ],
                )
            )
            steps.step(f"launching SEV-SNP instance {name} ({instance_type})")
            params = run_instances_params(
                cfg,
                name=name,
                tags=tags,
                instance_type=instance_type,
                sg_id=sg_id,
                user_data=steps.user_data(),
            )
            instance_id = (await cloud.in_thread(lambda: ec2.run_instances(**params)))["Instances"][0]["InstanceId"]
            steps.step(f"waiting for instance {instance_id} to run")
            await cloud.in_thread(lambda: self._waiter(ec2, "instance_running", [instance_id]))
            steps.step(f"reading the address of instance {instance_id}", report=False)
            desc = await cloud.in_thread(lambda: ec2.describe_instances(InstanceIds=[instance_id]))
            instance = desc["Reservations"][0]["Instances"][0]
            address = instance.get("PublicIpAddress", "")
            if not address:
                raise UpstreamError(
                    f"AWS: instance {instance_id} has no public IP; use a subnet that assigns one "
                    "(DUET_AWS_SUBNET_ID) or the default VPC",
                    code="cloud_provisioning_failed",
                )
        resources = {
            "region": cfg.region,
            "instance_id": instance_id,
            "security_group_id": sg_id,
            "key_name": name,
            "instance_type": instance_type,
        }
        return steps.machine(self.name, host=address, port=cfg.ssh_port, username=cfg.username, resources=resources)

    async def delete(self, machine: Machine, progress: Progress) -> None:
        await self._delete_cvm(machine.cvm_id, progress)

    async def _delete_cvm(self, cvm_id: str, progress: Progress) -> None:
        """Terminate (and wait), then the security group (once no longer in use), then the key pair."""
        ec2 = await cloud.in_thread(self.client)
        name = cloud.base_name(cvm_id, self.config.prefix)
        filters = self._filters(cvm_id)
        with ERRORS.calling(f"deleting the resources of CVM {cvm_id}", code="cloud_delete_failed"):
            progress(f"terminating instances of {name}")
            desc = await cloud.in_thread(
                lambda: ec2.describe_instances(Filters=filters + [{"Name": "instance-state-name", "Values": _LIVE_STATES}])
            )
            ids = [i["InstanceId"] for r in desc["Reservations"] for i in r["Instances"]]
            if ids:
                await cloud.in_thread(lambda: ec2.terminate_instances(InstanceIds=ids))
                await cloud.in_thread(lambda: self._waiter(ec2, "instance_terminated", ids))
            progress(f"deleting security group {name}")
            groups = (await cloud.in_thread(lambda: ec2.describe_security_groups(Filters=filters)))["SecurityGroups"]
            for group in groups:
                await ERRORS.delete(
                    f"deleting security group {group['GroupId']}",
                    functools.partial(ec2.delete_security_group, GroupId=group["GroupId"]),
                    patience=self.config.delete_retry_seconds,
                )
            progress(f"deleting key pair {name}")
            await cloud.in_thread(lambda: ec2.delete_key_pair(KeyName=name))

    async def _tagged_cvms(self) -> tuple[set[str], set[str]]:
        """(CVM ids owning any tagged resource, CVM ids with a live instance) under this prefix."""
        ec2 = await cloud.in_thread(self.client)
        filters = self._filters(None)

        def scan() -> tuple[set[str], set[str]]:
            owners: set[str] = set()
            live: set[str] = set()
            for r in ec2.describe_instances(Filters=filters + [{"Name": "instance-state-name", "Values": _LIVE_STATES}])[
                "Reservations"
            ]:
                for i in r["Instances"]:
                    cvm = _tag(i.get("Tags"), cloud.TAG_CVM)
                    owners.add(cvm)
                    if i["State"]["Name"] in ("pending", "running", "stopping", "stopped"):
                        live.add(cvm)
            for g in ec2.describe_security_groups(Filters=filters)["SecurityGroups"]:
                owners.add(_tag(g.get("Tags"), cloud.TAG_CVM))
            for k in ec2.describe_key_pairs(Filters=filters)["KeyPairs"]:
                owners.add(_tag(k.get("Tags"), cloud.TAG_CVM))
            owners.discard("")
            return owners, live

        with ERRORS.calling(f"listing resources tagged {cloud.TAG_CVM}", code="cloud_list_failed"):
            found = await cloud.in_thread(scan)
        return found

    async def reconcile(self, known: list[Machine]) -> list[Machine]:
        owners, live = await self._tagged_cvms()
        known_ids = {m.cvm_id for m in known}
        for cvm_id in sorted(owners - known_ids):
            await self._delete_cvm(cvm_id, lambda _m: None)
        return [m for m in known if m.cvm_id in live]

    async def resume(self, machine: Machine) -> Machine:
        """Start a stopped instance and read its public IP again (it changes across stop/start)."""
        ec2 = await cloud.in_thread(self.client)
        with ERRORS.calling(f"resuming CVM {machine.cvm_id}", code="cloud_resume_failed"):
            desc = await cloud.in_thread(
                lambda: ec2.describe_instances(
                    Filters=self._filters(machine.cvm_id)
                    + [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
                )
            )
            instances = [i for r in desc["Reservations"] for i in r["Instances"]]
            if not instances:
                raise NotFound(f"AWS: no instance of CVM {machine.cvm_id} exists any more", code="cvm_gone")
            instance = instances[0]
            iid = instance["InstanceId"]
            if instance["State"]["Name"] in ("stopping", "stopped"):
                await cloud.in_thread(lambda: self._waiter(ec2, "instance_stopped", [iid]))
                await cloud.in_thread(lambda: ec2.start_instances(InstanceIds=[iid]))
            await cloud.in_thread(lambda: self._waiter(ec2, "instance_running", [iid]))
            desc = await cloud.in_thread(lambda: ec2.describe_instances(InstanceIds=[iid]))
        address = desc["Reservations"][0]["Instances"][0].get("PublicIpAddress", "")
        return replace(machine, host=address or machine.host, resources=machine.resources | {"instance_id": iid})

    def lockdown_command(self, machine: Machine) -> str:
        return cloud.machine_lockdown_command(machine)

    def evidence_source(self, machine: Machine, cvm_type: CvmType) -> EvidenceSource:
        return EvidenceSource("configfs-tsm")


def _tag(tags: list[dict[str, str]] | None, key: str) -> str:
    for t in tags or []:
        if t.get("Key") == key:
            return t.get("Value", "")
    return ""
