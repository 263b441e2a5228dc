"""`kill -9` of the controller at the worst moments: nothing lost, nothing orphaned."""

from __future__ import annotations

import threading
import time
from typing import Any

from duet.client.sdk import DuetClient
from duet.providers.local import LocalProvider
from duet.testing.process import ControllerProcess
from support import sshd_processes, start_cvm


def sshd_processes_for(cvm_id: str) -> list[int]:
    """Every sshd process whose command line names the CVM's directory (its listener, its sessions)."""
    return sshd_processes(cvm_id)


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_while_idle_loses_nothing(client: DuetClient, controller: ControllerProcess) -> None:
    cvm_id = start_cvm(client)
    client.run(cvm_id, ["echo before > kept.txt"])
    other = start_cvm(client, "tdx")
    client.mark(other, "in-service")
    entries_before = client.entries()
    head_before = client.head()

    controller.kill()
    controller.start()

    assert client.entries()[: len(entries_before)] == entries_before
    assert client.head()["root_hash"] != "" and client.head()["tree_size"] >= head_before["tree_size"]
    modes = {cvm["cvm_id"]: cvm["mode"] for cvm in client.list_cvms()}
    assert modes == {cvm_id: "in-update", other: "in-service"}
    assert client.run(cvm_id, ["cat kept.txt"])["results"][0]["stdout"] == "before\n"


def test_kill_during_a_start_fails_it_and_cleans_up(client: DuetClient, controller: ControllerProcess) -> None:
    accepted = client.start("snp")
    cvm_id = accepted["cvm_id"]
    # Kill once the sshd exists but before the CVM is ready: the worst moment to lose state.
    wait_for(lambda: LocalProvider(controller.state_dir / "local-cvms").sshd_pid(cvm_id), "the CVM's sshd to start")
    controller.kill()
    assert sshd_processes_for(cvm_id), "the sshd must outlive the killed controller for this test to mean anything"

    controller.start()

    state = client.state(cvm_id)
    assert state["cvm"]["mode"] == "failed"
    assert "provision" in state["cvm"]["failure"]
    assert [entry["event"] for entry in client.entries(cvm=cvm_id)][-1] == "cvm.failed"
    assert client.job(accepted["job_id"])["status"] == "failed"
    assert not (controller.state_dir / "local-cvms" / cvm_id).exists()
    assert sshd_processes_for(cvm_id) == []


def test_kill_while_a_command_runs_records_it_and_recovers(client: DuetClient, controller: ControllerProcess) -> None:
    cvm_id = start_cvm(client)
    size = client.head()["tree_size"]
    errors: list[BaseException] = []

    def long_command() -> None:
        try:
            client.run(cvm_id, ["echo started > marker; sleep 30"])
        except BaseException as exc:  # the connection dies with the controller
            errors.append(exc)

    runner = threading.Thread(target=long_command)
    runner.start()
    wait_for(lambda: (controller.state_dir / "local-cvms" / cvm_id / "home" / "marker").exists(), "the command to start")
    controller.kill()
    runner.join(30)
    assert errors, "the client must learn that its request did not complete"

    controller.start()

    events = [entry for entry in client.entries(size) if entry["cvm"] == cvm_id]
    assert [entry["event"] for entry in events] == ["command.started", "command.interrupted"]
    assert events[1]["started_seq"] == events[0]["seq"]
    assert client.state(cvm_id)["cvm"]["mode"] == "in-update"
    assert client.run(cvm_id, ["cat marker"])["results"][0]["stdout"] == "started\n"


def test_a_dead_local_sshd_is_restarted_after_a_controller_restart(client: DuetClient, controller: ControllerProcess) -> None:
    cvm_id = start_cvm(client)
    controller.stop()
    provider = LocalProvider(controller.state_dir / "local-cvms")
    for pid in sshd_processes_for(cvm_id):
        import os
        import signal

        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: provider.sshd_pid(cvm_id) is None, "the sshd to die")

    controller.start()

    assert client.run(cvm_id, ["echo alive"])["results"][0]["stdout"] == "alive\n"
