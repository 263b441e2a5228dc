"""The AWS provider through real boto3/botocore against moto (which validates params against the EC2 model).

moto accepts but does not store ``CpuOptions`` (providers.md §2.3), so the SEV-SNP request is
asserted on the parameters botocore actually sent, captured with an event hook. Failures are
injected in front of moto with a ``before-send`` hook returning a real EC2 error document, so
botocore parses them exactly as it would AWS's.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.awsrequest import AWSResponse

from duet.errors import ConfigError, UpstreamError
from duet.providers.aws import AwsConfig, AwsProvider
from duet.providers.base import CvmSpec, Machine

moto = pytest.importorskip("moto")

STEPS = ["ImportKeyPair", "CreateSecurityGroup", "AuthorizeSecurityGroupIngress", "RunInstances", "DescribeInstances"]


class _Raw:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_kw: Any) -> Iterator[bytes]:
        yield self._data


def inject(client: Any, operation: str, code: str, message: str, times: int = 1) -> None:
    """Answer the next ``times`` calls of ``operation`` with an EC2 error, before moto sees them."""
    left = [times]
    body = (
        f"<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error><Code>{code}</Code>"
        f"<Message>{message}</Message></Error></Errors><RequestID>fake</RequestID></Response>"
    ).encode()

    def hook(request: Any, **_kw: Any) -> AWSResponse | None:
        if left[0] <= 0:
            return None
        left[0] -= 1
        return AWSResponse(request.url, 400, {"Content-Type": "text/xml"}, _Raw(body))

    client.meta.events.register_first(f"before-send.ec2.{operation}", hook)


@pytest.fixture(scope="module")
def moto_ami() -> Iterator[str]:
    """One moto EC2 for the module (its first start costs seconds); each test cleans up after itself."""
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            mp.setenv(k, "testing")
        with moto.mock_aws():
            import boto3

            yield boto3.client("ec2", region_name="us-east-2").register_image(
                Name="ubuntu-24.04-snp", BootMode="uefi", RootDeviceName="/dev/sda1"
            )["ImageId"]


@pytest.fixture
def aws(moto_ami: str, tmp_path: Path) -> Iterator[AwsProvider]:
    import boto3

    yield AwsProvider.from_env(
        {
            "DUET_AWS_REGION": "us-east-2",
            "DUET_AWS_AMI": moto_ami,
            "DUET_AWS_WAIT_DELAY": "0.01",
            "DUET_AWS_DELETE_RETRY_SECONDS": "0",
        },
        tmp_path,
    )
    ec2 = boto3.client("ec2", region_name="us-east-2")  # not through the provider: a clean slate even if it is broken
    left = leftovers(ec2)
    if left.get("instances"):
        ec2.terminate_instances(InstanceIds=left["instances"])
    for g in ec2.describe_security_groups()["SecurityGroups"]:
        if g["GroupName"] != "default":
            ec2.delete_security_group(GroupId=g["GroupId"])
    for k in left.get("keys", []):
        ec2.delete_key_pair(KeyName=k)


def capture(client: Any) -> dict[str, list[dict[str, Any]]]:
    seen: dict[str, list[dict[str, Any]]] = {}

    def hook(params: dict[str, Any], model: Any, **_kw: Any) -> None:
        seen.setdefault(model.name, []).append(dict(params))

    client.meta.events.register("provide-client-params.ec2.*", hook)
    return seen


def leftovers(client: Any) -> dict[str, list[str]]:
    live = [
        i["InstanceId"]
        for r in client.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    groups = [g["GroupName"] for g in client.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"]
    keys = [k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]]
    return {k: v for k, v in {"instances": live, "groups": groups, "keys": keys}.items() if v}


async def test_create_launches_snp_instance(aws: AwsProvider, client_key) -> None:
    ec2 = aws.client()
    sent = capture(ec2)
    machine = await aws.create(CvmSpec("cvm-1", "snp"), client_key.public, lambda _m: None)

    [run] = sent["RunInstances"]
    assert run["CpuOptions"] == {"AmdSevSnp": "enabled"}
    assert run["InstanceType"] == "m6a.large" and run["ImageId"] == aws.config.ami
    assert run["KeyName"] == machine.resources["key_name"]
    assert run["SecurityGroupIds"] == [machine.resources["security_group_id"]]
    assert run["MetadataOptions"]["HttpTokens"] == "required"
    [ingress] = sent["AuthorizeSecurityGroupIngress"]
    assert ingress["IpPermissions"] == [
        {
            "IpProtocol": "tcp",
            "FromPort": 22,
            "ToPort": 22,
            "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "duet controller"}],
        }
    ]
    [imported] = sent["ImportKeyPair"]
    assert imported["PublicKeyMaterial"] == client_key.public.encode()

    # what the guest receives: cloud-init with no host key; the guest generates its own at first
    # boot, and the controller pins it only once the CVM's evidence binds it
    iid = machine.resources["instance_id"]
    doc = user_data(ec2, iid)
    assert "ssh_keys" not in doc and "PRIVATE KEY" not in run["UserData"]
    assert doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == ["ed25519"]
    assert machine.host_key == ""
    assert "vm_id" not in machine.resources  # SNP evidence names no VM on AWS

    instance = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["duet-cvm"] == "cvm-1"
    assert machine.host == instance["PublicIpAddress"] and machine.username == "ubuntu" and machine.port == 22
    assert {t["Key"]: t["Value"] for t in ec2.describe_key_pairs()["KeyPairs"][0]["Tags"]}["duet-cvm"] == "cvm-1"


def user_data(ec2: Any, instance_id: str) -> dict[str, Any]:
    """The #cloud-config the instance received, as EC2 keeps it."""
    raw = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
    doc: dict[str, Any] = yaml.safe_load(base64.b64decode(raw))
    return doc


async def test_the_owners_opt_out_installs_the_host_key_to_pin(aws: AwsProvider, client_key) -> None:
    ec2 = aws.client()
    machine = await aws.create(CvmSpec("cvm-o", "snp", attested=False), client_key.public, lambda _m: None)
    doc = user_data(ec2, machine.resources["instance_id"])
    assert doc["ssh_keys"]["ed25519_public"] == machine.host_key and machine.host_key.startswith("ssh-ed25519 ")
    assert "OPENSSH PRIVATE KEY" in doc["ssh_keys"]["ed25519_private"]
    assert doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == []
    await aws.delete(machine, lambda _m: None)


async def test_tdx_is_refused_before_any_call(aws: AwsProvider, client_key) -> None:
    sent = capture(aws.client())
    with pytest.raises(ConfigError) as info:
        await aws.create(CvmSpec("cvm-t", "tdx"), client_key.public, lambda _m: None)
    assert info.value.code == "cvm_type_unsupported" and sent == {}


@pytest.mark.parametrize("step", STEPS)
async def test_failure_at_each_step_leaves_nothing(aws: AwsProvider, client_key, step) -> None:
    ec2 = aws.client()
    inject(ec2, step, "InsufficientInstanceCapacity", f"We currently do not have sufficient capacity ({step}, injected).")
    with pytest.raises(UpstreamError) as info:
        await aws.create(CvmSpec("cvm-f", "snp"), client_key.public, lambda _m: None)
    assert info.value.code == "cloud_provisioning_failed"
    assert f"sufficient capacity ({step}, injected)" in info.value.message
    assert leftovers(ec2) == {}


async def test_delete_and_reconcile(aws: AwsProvider, client_key) -> None:
    ec2 = aws.client()
    keep = await aws.create(CvmSpec("cvm-keep", "snp"), client_key.public, lambda _m: None)
    await aws.create(CvmSpec("cvm-orphan", "snp"), client_key.public, lambda _m: None)
    assert len(leftovers(ec2)["instances"]) == 2

    live = await aws.reconcile([keep, Machine(cvm_id="cvm-gone", provider="aws")])
    assert [m.cvm_id for m in live] == ["cvm-keep"]
    assert leftovers(ec2) == {
        "instances": [keep.resources["instance_id"]],
        "groups": [keep.resources["key_name"]],
        "keys": [keep.resources["key_name"]],
    }

    await aws.delete(Machine(cvm_id="cvm-keep", provider="aws"), lambda _m: None)  # partial record suffices
    assert leftovers(ec2) == {}
    resumed_gone = aws.resume(keep)
    with pytest.raises(Exception) as info:
        await resumed_gone
    assert getattr(info.value, "code", "") == "cvm_gone"


def test_config_and_endpoint_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        AwsConfig.from_env({})
    assert "DUET_AWS_AMI" in info.value.message
    p = AwsProvider.from_env(
        {"AWS_DEFAULT_REGION": "eu-west-1", "DUET_AWS_AMI": "ami-1", "DUET_AWS_ENDPOINT_URL": "http://127.0.0.1:5999"}, tmp_path
    )
    assert p.client().meta.endpoint_url == "http://127.0.0.1:5999"
    assert p.client().meta.region_name == "eu-west-1"
