"""A stalled CVM (issue 12, item 4): its sshd frozen with SIGSTOP, as a hung guest would be.

The kernel still accepts and holds the CVM's sockets, so nothing is refused: every SSH step
just never gets an answer. Before, opening the command's channel had no time limit: a `run`
with `timeout_s=2` took 120 s (the keepalive's limit) and held the CVM's lock all along, so
`mark in-service` on that CVM waited too. Now the run ends within its timeout plus the SSH
margin with `command.failed` and the reason, and the mark goes through at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from duet.client.sdk import ApiError, DuetClient
from duet.controller.settings import Settings
from duet.providers.local import LocalProvider
from duet.testing.process import ControllerProcess
from support import start_cvm


def sshd_tree(controller: ControllerProcess, cvm_id: str) -> list[int]:
    """The CVM's sshd listener and the sshd processes of its connections (not the shells they run)."""
    listener = LocalProvider(controller.state_dir / "local-cvms").sshd_pid(cvm_id)
    assert listener is not None
    found, todo = [], [listener]
    while todo:
        pid = todo.pop()
        found.append(pid)
        for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/comm").read_text().startswith("sshd"):
                    todo.append(int(child))
    return found


@contextlib.contextmanager
def stalled(controller: ControllerProcess, cvm_id: str) -> Iterator[None]:
    pids = sshd_tree(controller, cvm_id)
    assert len(pids) >= 2, "the controller keeps a connection to the CVM open"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # a connection's process that just ended
            os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def test_a_stalled_cvm_fails_the_run_in_time_and_frees_its_lock(
    client: DuetClient, controller: ControllerProcess, tmp_path: Path
) -> None:
    cvm_id = start_cvm(client)
    margin = Settings(state_dir=tmp_path).ssh_margin_s
    with stalled(controller, cvm_id):
        began = time.monotonic()
        with pytest.raises(ApiError) as failed:
            client.run(cvm_id, ["touch /tmp/duet-stalled"], timeout_s=2)
        elapsed = time.monotonic() - began
        assert elapsed < 2 + margin, f"the run held the CVM for {elapsed:.1f} s"
        assert (failed.value.status, failed.value.code) == (502, "ssh_unavailable")
        assert "stalled" in failed.value.message

        began = time.monotonic()
        assert client.mark(cvm_id, "in-service")["mode"] == "in-service"  # the lock is free
        assert time.monotonic() - began < 2

    entries = client.entries(cvm=cvm_id)
    started = [e for e in entries if e["event"] == "command.started"]
    outcome = [e for e in entries if e.get("started_seq") == started[-1]["seq"]]
    assert [e["event"] for e in outcome] == ["command.failed"]
    assert "did not open a channel" in outcome[0]["reason"] and "stalled" in outcome[0]["reason"]

    # Once the CVM answers again, it is served as before (over a fresh connection).
    client.mark(cvm_id, "in-update")
    result = client.run(cvm_id, ["echo back"], timeout_s=10)["results"][0]
    assert (result["exit_status"], result["stdout"]) == (0, "back\n")
