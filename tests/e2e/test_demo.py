"""`duet demo`, the newcomer's first command: it passes, and a failure leaves nothing running."""

from __future__ import annotations

import subprocess
import sys

from duet.cli.demo import run_demo
from duet.client.sdk import DuetClient
from support import sshd_processes


def sshd_processes_of_demos() -> list[int]:
    return sshd_processes("duet-demo-")


def test_duet_demo_passes_and_says_so() -> None:
    done = subprocess.run([sys.executable, "-m", "duet", "demo"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "demo passed" in done.stdout
    assert "SIMULATED" in done.stdout  # the simulated TEE is labelled where the user sees it
    assert "refused with 403 not_in_update" in done.stdout
    assert sshd_processes_of_demos() == []


def test_a_failing_demo_exits_1_and_leaves_no_cvm_running() -> None:
    def start_then_fail(client: DuetClient) -> None:
        accepted = client.start("snp")
        assert client.wait_job(accepted["job_id"])["status"] == "succeeded"
        assert sshd_processes_of_demos(), "the CVM's sshd must exist for this test to mean anything"
        raise RuntimeError("a step did not behave")

    assert run_demo(play=start_then_fail) == 1
    assert sshd_processes_of_demos() == []
