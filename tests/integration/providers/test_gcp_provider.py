"""The GCP provider through the real google-cloud-compute REST client against the fake endpoint.

Credentials are a generated service-account key file, loaded the way production loads one
(GOOGLE_APPLICATION_CREDENTIALS); the fake records the token's issuer to prove it was used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.fakes.fake_gcp import FakeGcp

from duet.errors import ConfigError, NotFound, UpstreamError
from duet.providers.base import CvmSpec, Machine
from duet.providers.gcp import GcpConfig, GcpProvider

SA_EMAIL = "duet-controller@proj-1.iam.gserviceaccount.com"


@pytest.fixture
def fake_gcp() -> Iterator[FakeGcp]:
    fake = FakeGcp().start()
    yield fake
    fake.stop()


@pytest.fixture
def gcp_env(fake_gcp: FakeGcp, tmp_path: Path) -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    sa = tmp_path / "sa.json"
    sa.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "proj-1",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": SA_EMAIL,
                "client_id": "1",
                "token_uri": f"{fake_gcp.endpoint}/token",
            }
        )
    )
    return {
        "DUET_GCP_PROJECT": "proj-1",
        "DUET_GCP_ZONE": "europe-west4-a",
        "DUET_GCP_ENDPOINT": fake_gcp.endpoint,
        "GOOGLE_APPLICATION_CREDENTIALS": str(sa),
    }


def provider(env: dict[str, str], tmp_path: Path) -> GcpProvider:
    return GcpProvider.from_env(env, tmp_path)


async def test_create_snp_instance_body(fake_gcp: FakeGcp, gcp_env, client_key, tmp_path) -> None:
    machine = await provider(gcp_env, tmp_path).create(CvmSpec("cvm-1", "snp"), client_key.public, lambda _m: None)

    [body] = fake_gcp.bodies("instances")
    assert body["confidentialInstanceConfig"] == {"confidentialInstanceType": "SEV_SNP"}
    assert body["minCpuPlatform"] == "AMD Milan"
    assert body["scheduling"] == {"onHostMaintenance": "TERMINATE", "automaticRestart": True}
    assert body["shieldedInstanceConfig"] == {"enableSecureBoot": True, "enableVtpm": True, "enableIntegrityMonitoring": True}
    assert body["machineType"] == "zones/europe-west4-a/machineTypes/n2d-standard-2"
    [disk] = body["disks"]
    assert disk["boot"] is True and disk["autoDelete"] is True
    assert disk["initializeParams"] == {
        "sourceImage": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64",
        "diskSizeGb": "20",
    }
    meta = {i["key"]: i["value"] for i in body["metadata"]["items"]}
    assert meta["ssh-keys"] == f"duet:{' '.join(client_key.public.split()[:2])} duet-controller"
    assert meta["enable-oslogin"] == "FALSE" and meta["block-project-ssh-keys"] == "TRUE"
    # no host key travels: the guest generates its own at first boot, pinned once its evidence binds it
    doc = yaml.safe_load(meta["user-data"])
    assert "ssh_keys" not in doc and "PRIVATE KEY" not in meta["user-data"]
    assert doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == ["ed25519"]
    assert machine.host_key == "" and "vm_id" not in machine.resources
    assert body["labels"] == {"duet-cvm": "cvm-1", "duet-prefix": "duet"}
    assert body["networkInterfaces"][0]["accessConfigs"] == [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]

    [fw] = fake_gcp.bodies("firewalls")
    assert fw["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
    assert fw["direction"] == "INGRESS" and fw["sourceRanges"] == ["0.0.0.0/0"]
    assert fw["targetTags"] == body["tags"]["items"] == [machine.resources["instance"]]

    assert machine.host == "127.0.0.1" and machine.username == "duet" and machine.port == 22
    assert set(fake_gcp.token_issuers) == {SA_EMAIL}
    # operations were awaited through our own operations client on the fake, never the public endpoint
    assert any(r["path"].endswith("/wait") for r in fake_gcp.requests)


async def test_the_owners_opt_out_installs_the_host_key_to_pin(fake_gcp: FakeGcp, gcp_env, client_key, tmp_path) -> None:
    spec = CvmSpec("cvm-o", "tdx", attested=False)
    machine = await provider(gcp_env, tmp_path).create(spec, client_key.public, lambda _m: None)
    [body] = fake_gcp.bodies("instances")
    doc = yaml.safe_load({i["key"]: i["value"] for i in body["metadata"]["items"]}["user-data"])
    assert doc["ssh_keys"]["ed25519_public"] == machine.host_key and machine.host_key.startswith("ssh-ed25519 ")
    assert "OPENSSH PRIVATE KEY" in doc["ssh_keys"]["ed25519_private"]
    assert doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == []


async def test_tdx_uses_c3_without_min_cpu_platform(fake_gcp: FakeGcp, gcp_env, client_key, tmp_path) -> None:
    await provider(gcp_env, tmp_path).create(CvmSpec("cvm-t", "tdx"), client_key.public, lambda _m: None)
    [body] = fake_gcp.bodies("instances")
    assert body["confidentialInstanceConfig"] == {"confidentialInstanceType": "TDX"}
    assert body["machineType"].endswith("/c3-standard-4")
    assert "minCpuPlatform" not in body
    assert body["scheduling"]["onHostMaintenance"] == "TERMINATE"


@pytest.mark.parametrize(
    "kind,method,asynchronous",
    [
        ("firewalls", "POST", False),
        ("firewalls", "POST", True),
        ("instances", "POST", False),
        ("instances", "POST", True),
        ("instances", "GET", False),
    ],
)
async def test_failure_at_each_step_leaves_nothing(
    fake_gcp: FakeGcp, gcp_env, client_key, tmp_path, kind, method, asynchronous
) -> None:
    fake_gcp.fail(
        kind,
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        f"The zone does not have enough resources ({kind}, injected).",
        method=method,
        asynchronous=asynchronous,
    )
    with pytest.raises(UpstreamError) as info:
        await provider(gcp_env, tmp_path).create(CvmSpec("cvm-f", "snp"), client_key.public, lambda _m: None)
    assert info.value.code == "cloud_provisioning_failed"
    assert f"does not have enough resources ({kind}, injected)" in info.value.message
    assert fake_gcp.names() == {}


async def test_delete_and_reconcile(fake_gcp: FakeGcp, gcp_env, client_key, tmp_path) -> None:
    p = provider(gcp_env, tmp_path)
    keep = await p.create(CvmSpec("cvm-keep", "snp"), client_key.public, lambda _m: None)
    await p.create(CvmSpec("cvm-orphan", "tdx"), client_key.public, lambda _m: None)
    other = provider(gcp_env | {"DUET_GCP_PREFIX": "other"}, tmp_path)
    theirs = await other.create(CvmSpec("cvm-theirs", "snp"), client_key.public, lambda _m: None)

    live = await p.reconcile([keep, Machine(cvm_id="cvm-gone", provider="gcp")])
    assert [m.cvm_id for m in live] == ["cvm-keep"]
    assert fake_gcp.names() == {
        "instances": sorted([keep.resources["instance"], theirs.resources["instance"]]),
        "firewalls": sorted([keep.resources["firewall"], theirs.resources["firewall"]]),
    }

    await p.delete(Machine(cvm_id="cvm-keep", provider="gcp"), lambda _m: None)
    await other.delete(theirs, lambda _m: None)
    assert fake_gcp.names() == {}
    await p.delete(keep, lambda _m: None)  # idempotent


async def test_resume_of_a_vm_that_is_gone_says_so(fake_gcp: FakeGcp, gcp_env, tmp_path) -> None:
    with pytest.raises(NotFound) as info:
        await provider(gcp_env, tmp_path).resume(Machine(cvm_id="cvm-g", provider="gcp"))
    assert info.value.code == "cvm_gone"


def test_config() -> None:
    with pytest.raises(ConfigError) as info:
        GcpConfig.from_env({"DUET_GCP_PROJECT": "p"})
    assert "DUET_GCP_ZONE" in info.value.message
    cfg = GcpConfig.from_env({"GOOGLE_CLOUD_PROJECT": "p", "DUET_GCP_ZONE": "z", "DUET_GCP_MACHINE_TYPE_SNP": "n2d-standard-4"})
    assert cfg.machine_types == {"snp": "n2d-standard-4", "tdx": "c3-standard-4"} and cfg.endpoint == ""
