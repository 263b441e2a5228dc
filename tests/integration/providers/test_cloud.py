"""The scaffolding every cloud provider shares (``duet.providers.cloud``), with no SDK and no fake cloud:
what each provider's own tests cannot reach, such as cancellation, back-off and its bound."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

import pytest
import yaml

from duet.errors import ConfigError, NotFound, UpstreamError
from duet.providers import cloud, cloud_init
from duet.providers.base import CvmSpec, Machine


class CloudFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class AuthFailed(CloudFailure):
    pass


ERRORS = cloud.CloudErrors(
    cloud="Test",
    read=lambda exc: (getattr(exc, "code", type(exc).__name__), str(exc)),
    hints={"Quota": "ask for more quota", "AuthFailed": "check the credential", "WrongTenant": "another tenant"},
    missing=lambda exc: isinstance(exc, LookupError),
    gone_codes=frozenset({"AlreadyGone"}),
    in_use=lambda code: code == "InUse",
)


def test_base_name_is_readable_unique_and_derived_from_the_id_alone() -> None:
    digest = hashlib.sha256(b"CVM_1").hexdigest()[:8]
    assert cloud.base_name("CVM_1", "duet") == f"duet-cvm-1-{digest}"
    assert cloud.base_name("___", "p") == f"p-{hashlib.sha256(b'___').hexdigest()[:8]}"
    assert cloud.base_name("a" * 40, "p") == f"p-{'a' * 20}-{hashlib.sha256(b'a' * 40).hexdigest()[:8]}"


def test_upstream_names_the_cloud_step_code_and_hint() -> None:
    error = ERRORS.upstream("creating VM x", CloudFailure("Quota", "over quota"), code="cloud_provisioning_failed")
    assert error.message == "Test: creating VM x failed: Quota: over quota (ask for more quota)"
    assert error.code == "cloud_provisioning_failed"
    assert ERRORS.upstream("x", CloudFailure("Other", "m"), code="c").message == "Test: x failed: Other: m"
    # the exception's class wins over the code it carries
    assert ERRORS.upstream("x", AuthFailed("WrongTenant", "m"), code="c").message.endswith("(check the credential)")


def test_calling_wraps_sdk_errors_and_lets_duets_own_pass() -> None:
    with pytest.raises(UpstreamError) as info, ERRORS.calling("listing", code="cloud_list_failed"):
        raise CloudFailure("Boom", "down")
    assert (info.value.code, info.value.message) == ("cloud_list_failed", "Test: listing failed: Boom: down")
    with pytest.raises(NotFound) as gone, ERRORS.calling("resuming", code="cloud_resume_failed", gone="VM v is gone"):
        raise LookupError("404")
    assert (gone.value.code, gone.value.message) == ("cvm_gone", "VM v is gone")
    with pytest.raises(UpstreamError) as missing, ERRORS.calling("listing", code="cloud_list_failed"):
        raise LookupError("404")  # without a `gone` message, a missing resource is a failure like any other
    assert missing.value.code == "cloud_list_failed"
    own = NotFound("no instance", code="cvm_gone")
    with pytest.raises(NotFound) as passed, ERRORS.calling("resuming", code="cloud_resume_failed"):
        raise own
    assert passed.value is own


def test_config_numbers_name_the_provider() -> None:
    with pytest.raises(ConfigError) as info, cloud.config_numbers("Test", code="test_config_invalid"):
        int("twenty")
    assert info.value.code == "test_config_invalid"
    assert info.value.message.startswith("Test provider: bad number in configuration: ")


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(cloud.asyncio, "sleep", sleep)
    return slept


def failing(*errors: Exception) -> tuple[list[int], Callable[[], None]]:
    calls = [0]
    left = list(errors)

    def fn() -> None:
        calls[0] += 1
        if left:
            raise left.pop(0)

    return calls, fn


async def test_delete_of_what_is_gone_succeeds(sleeps: list[float]) -> None:
    for exc in (LookupError("404"), CloudFailure("AlreadyGone", "no such group")):
        calls, fn = failing(exc)
        await ERRORS.delete("deleting x", fn)
        assert calls == [1]
    assert sleeps == []


async def test_delete_backs_off_while_in_use_and_within_patience(sleeps: list[float]) -> None:
    calls, fn = failing(*[CloudFailure("InUse", "still attached")] * 6)
    await ERRORS.delete("deleting x", fn, patience=300)
    assert calls == [7] and sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]

    calls, fn = failing(*[CloudFailure("InUse", "still attached")] * 6)
    with pytest.raises(UpstreamError) as info:
        await ERRORS.delete("deleting x", fn)
    assert calls == [1] and info.value.code == "cloud_delete_failed"
    assert info.value.message == "Test: deleting x failed: InUse: still attached"

    calls, fn = failing(CloudFailure("Denied", "no"))
    with pytest.raises(UpstreamError):
        await ERRORS.delete("deleting x", fn, patience=300)
    assert calls == [1]


def spec() -> CvmSpec:
    return CvmSpec("cvm-1", "snp")


async def test_provisioning_cleans_up_and_names_the_step() -> None:
    progress: list[str] = []
    cleaned: list[bool] = []

    async def cleanup() -> None:
        cleaned.append(True)

    with pytest.raises(UpstreamError) as info:
        async with cloud.Provisioning(ERRORS, spec(), "ssh-ed25519 AAAA controller", progress.append, cleanup) as steps:
            steps.step("creating network")
            steps.step("reading the address", report=False)
            raise CloudFailure("Quota", "over quota")
    assert info.value.code == "cloud_provisioning_failed"
    assert info.value.message == "Test: reading the address failed: Quota: over quota (ask for more quota)"
    assert info.value.__suppress_context__
    assert progress == ["creating network", "cleaning up after failure"] and cleaned == [True]


async def test_provisioning_keeps_an_upstream_error_and_reports_a_failed_cleanup() -> None:
    async def cleanup() -> None:
        raise UpstreamError("Test: deleting nsg failed: Boom: down", code="cloud_delete_failed")

    own = UpstreamError("Test: VM has no address", code="cloud_provisioning_failed")
    with pytest.raises(UpstreamError) as info:
        async with cloud.Provisioning(ERRORS, spec(), "k", lambda _m: None, cleanup) as steps:
            steps.step("reading the address")
            raise own
    assert info.value.code == "cloud_provisioning_failed"
    assert info.value.message == (
        "Test: VM has no address; cleanup also failed, reconcile will retry: Test: deleting nsg failed: Boom: down"
    )


async def test_provisioning_leaves_a_cancelled_start_to_the_controller() -> None:
    cleaned: list[bool] = []

    async def cleanup() -> None:
        cleaned.append(True)

    with pytest.raises(asyncio.CancelledError):
        async with cloud.Provisioning(ERRORS, spec(), "k", lambda _m: None, cleanup):
            raise asyncio.CancelledError
    assert cleaned == []


async def test_the_machine_record_keeps_the_key_the_lockdown_removes_and_no_host_key_of_an_attested_cvm() -> None:
    async def cleanup() -> None:
        raise AssertionError("nothing failed")

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIControllerKeyControllerKeyControllerKey controller"
    async with cloud.Provisioning(ERRORS, spec(), key, lambda _m: None, cleanup) as steps:
        pass
    # attested (the default): no host key is made, sent or pinned; the guest makes its own
    assert steps.host_key is None
    doc = yaml.safe_load(steps.user_data())
    assert "ssh_keys" not in doc and doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == ["ed25519"]
    assert doc["ssh_pwauth"] is False and doc["disable_root"] is True
    assert ["sh", "-c", cloud_init.DISABLE_AGENT_EXTENSIONS] in doc["bootcmd"]
    assert "PRIVATE KEY" not in steps.user_data()
    machine = steps.machine("test", host="10.0.0.1", port=22, username="duet", resources={"vm": "v"})
    assert machine.host_key == ""
    assert machine.resources == {"vm": "v", "authorized_key": key}
    assert "AAAAC3NzaC1lZDI1NTE5AAAAIControllerKeyControllerKeyControllerKey" in cloud.machine_lockdown_command(machine)
    with pytest.raises(ConfigError) as info:
        cloud.machine_lockdown_command(Machine(cvm_id="c", provider="test"))
    assert info.value.code == "machine_incomplete"


async def test_the_owners_opt_out_installs_a_host_key_made_here_and_pins_it() -> None:
    async def cleanup() -> None:
        raise AssertionError("nothing failed")

    async with cloud.Provisioning(ERRORS, CvmSpec("cvm-1", "snp", attested=False), "k", lambda _m: None, cleanup) as steps:
        pass
    assert steps.host_key is not None
    doc = yaml.safe_load(steps.user_data())
    assert doc["ssh_keys"]["ed25519_public"] == steps.host_key.public
    assert doc["ssh_keys"]["ed25519_private"].strip() == steps.host_key.private.strip()
    assert doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == []  # no other host key survives
    assert ["sh", "-c", cloud_init.DISABLE_AGENT_EXTENSIONS] in doc["bootcmd"]
    assert "PRIVATE KEY" not in repr(steps.host_key)
    machine = steps.machine("test", host="10.0.0.1", port=22, username="duet", resources={})
    assert machine.host_key == steps.host_key.public and machine.host_key.endswith(" duet-cvm-1")
