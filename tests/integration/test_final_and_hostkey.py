"""`mark in-service --final` is one way, and a CVM whose host key changed is refused."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from duet.client.sdk import ApiError, DuetClient
from duet.providers.local import LocalProvider, _find_sshd
from duet.testing.process import ControllerProcess
from support import start_cvm


def cvm_login_key(controller: ControllerProcess, cvm_id: str) -> str:
    key = controller.cvm_login_key(cvm_id)
    assert key is not None
    return key


async def try_login(port: int, username: str, client_key: str) -> str:
    async with asyncssh.connect(
        "127.0.0.1",
        port,
        username=username,
        client_keys=[asyncssh.import_private_key(client_key)],
        known_hosts=None,
        agent_path=None,
        config=(),
        connect_timeout=5,
    ) as conn:
        return (await conn.run("echo in", check=True)).stdout  # type: ignore[return-value]


def test_final_is_one_way_and_the_controller_gives_up_its_key(client: DuetClient, controller: ControllerProcess) -> None:
    cvm_id = start_cvm(client)
    machine = client.state(cvm_id)["cvm"]
    key = cvm_login_key(controller, cvm_id)
    port = int((controller.state_dir / "local-cvms" / cvm_id / "port").read_text())
    import getpass

    assert asyncio.run(try_login(port, getpass.getuser(), key)) == "in\n"  # the key works before

    result = client.mark(cvm_id, "in-service", final=True)
    assert (result["mode"], result["final"]) == ("in-service", True)

    with pytest.raises(ApiError) as refused:
        client.mark(cvm_id, "in-update")
    assert (refused.value.status, refused.value.code) == (403, "cvm_final")
    with pytest.raises(ApiError) as no_command:
        client.run(cvm_id, ["true"])
    assert no_command.value.code == "not_in_update"

    with pytest.raises((OSError, asyncssh.Error)):
        asyncio.run(try_login(port, getpass.getuser(), key))
    assert (controller.state_dir / "local-cvms" / cvm_id / "authorized_keys").read_text().strip() == ""
    events = [entry["event"] for entry in client.entries(cvm=cvm_id)]
    assert events[-2:] == ["mode.changed", "cvm.locked"]
    assert client.entries(cvm=cvm_id)[-1]["ok"] is True
    assert machine["mode"] == "in-update"

    # A restart does not bring SSH back, and the CVM can still be stopped.
    controller.restart()
    assert LocalProvider(controller.state_dir / "local-cvms").sshd_pid(cvm_id) is None
    with pytest.raises(ApiError):
        client.mark(cvm_id, "in-update")
    assert client.wait_job(client.stop(cvm_id)["job_id"])["status"] == "succeeded"


def replace_host_key_behind_the_controllers_back(controller: ControllerProcess, cvm_id: str) -> None:
    cvm_dir = controller.state_dir / "local-cvms" / cvm_id
    listener = LocalProvider(cvm_dir.parent).sshd_pid(cvm_id)
    assert listener is not None
    sessions = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(listener)], capture_output=True, text=True).stdout.split()]
    for pid in [*sessions, listener]:
        os.kill(pid, signal.SIGKILL)
    key_file = cvm_dir / "ssh_host_ed25519_key"
    key_file.unlink()
    key_file.with_suffix(".pub").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)], check=True)
    subprocess.run([_find_sshd(None), "-f", str(cvm_dir / "sshd_config"), "-E", str(cvm_dir / "sshd.log")], check=True)


def test_a_replaced_host_key_is_refused_and_recorded(client: DuetClient, controller: ControllerProcess) -> None:
    cvm_id = start_cvm(client)
    client.run(cvm_id, ["true"])
    replace_host_key_behind_the_controllers_back(controller, cvm_id)

    with pytest.raises(ApiError) as refused:
        client.run(cvm_id, ["echo secret-setup > /tmp/should-not-run-$$"])
    assert refused.value.code == "host_key_mismatch"
    assert refused.value.status == 502

    entries = client.entries(cvm=cvm_id)
    mismatch = [entry for entry in entries if entry["event"] == "hostkey.mismatch"]
    assert len(mismatch) == 1
    assert mismatch[0]["expected"] != mismatch[0]["presented"]
    assert mismatch[0]["expected"].startswith("SHA256:")
    assert entries[-1]["event"] == "command.failed"
    home = controller.state_dir / "local-cvms" / cvm_id / "home"
    assert not any(Path(home).glob("should-not-run*"))


def test_state_key_never_appears_in_answers_or_logs(client: DuetClient, controller: ControllerProcess) -> None:
    cvm_id = start_cvm(client)
    client.run(cvm_id, ["true"])
    key = cvm_login_key(controller, cvm_id)
    secret_line = [line for line in key.splitlines() if line and "-----" not in line][0]
    seen: list[Any] = [client.state(cvm_id), client.list_cvms(), client.entries(), client.head()]
    assert secret_line not in repr(seen)
    assert secret_line not in controller.log()
