"""CVM attestation on real parts (design §10): a real controller process, local CVMs that are
real sshd processes, the real collection program sent over SSH, the SIMULATED hardware of
``duet.providers.local_tsm``, and the real CLI for users and auditors.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from duet.client.sdk import ApiError, DuetClient
from duet.client.trust import TrustStore
from duet.providers.local_tsm import SETTINGS_FILE
from duet.remote.ssh import fingerprint
from duet.testing.process import ControllerProcess
from support import Owner, serving, start_cvm


def duet(controller: ControllerProcess, home: Path, *args: str, roots: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DUET_HOME": str(home), "DUET_INSECURE": "1"}
    env.pop("DUET_CVM_ROOTS", None)
    if roots:
        env["DUET_CVM_ROOTS"] = str(controller.cvm_roots_file())
    return subprocess.run(
        [sys.executable, "-m", "duet", "--url", controller.url, *args], capture_output=True, text=True, timeout=60, env=env
    )


def hardware(controller: ControllerProcess) -> Path:
    return controller.state_dir / "local-cvms" / ".simulated-hardware"


def audit_json(controller: ControllerProcess, home: Path, *args: str, roots: bool = True) -> tuple[int, dict[str, Any]]:
    proc = duet(controller, home, "--json", "audit", *args, roots=roots)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_local_cvm_is_attested_and_users_see_it(client: DuetClient, controller: ControllerProcess, tmp_path: Path) -> None:
    cvm_id = start_cvm(client)
    [attested] = [e for e in client.entries(cvm=cvm_id) if e["event"] == "cvm.attested"]
    own_key = (controller.state_dir / "local-cvms" / cvm_id / "ssh_host_ed25519_key.pub").read_text().strip()
    assert attested["ok"] is True and attested["host_key_fingerprint"] == fingerprint(own_key)
    assert client.state(cvm_id)["cvm"]["host_key"] == own_key

    shown = duet(controller, tmp_path / "user", "cvm", "state", cvm_id)
    assert shown.returncode == 0, shown.stderr
    assert "attestation: SIMULATED passed (snp, signer VCEK)" in shown.stdout and "measurement: " in shown.stdout

    owner_key = str(tmp_path / "owner.pem")
    again = duet(controller, tmp_path / "user", "--key", owner_key, "cvm", "attest", cvm_id)
    assert again.returncode == 0, again.stderr
    assert "ok   binding: the report data binds this connection's SSH host key and nonce" in again.stdout


def test_relayed_evidence_fails_the_start_and_deletes_the_cvm(client: DuetClient, controller: ControllerProcess) -> None:
    """The CVM's hardware signs another machine's report data, as when a machine in the middle
    relays a genuine CVM's evidence: the binding to the key this connection presented fails."""
    hardware(controller).mkdir(parents=True, exist_ok=True)
    (hardware(controller) / SETTINGS_FILE).write_text(json.dumps({"relayed": True}))
    accepted = client.start("snp")
    job = client.wait_job(accepted["job_id"], timeout=60)
    assert job["status"] == "failed" and job["error"]["code"] == "attestation_failed"
    assert "binding" in job["error"]["message"]
    assert not (controller.state_dir / "local-cvms" / accepted["cvm_id"]).exists()  # the machine is deleted
    [attested] = [e for e in client.entries(cvm=accepted["cvm_id"]) if e["event"] == "cvm.attested"]
    assert (attested["ok"], attested["code"]) == (False, "binding_mismatch")


def test_a_stale_attestation_is_renewed_before_service_and_a_failure_refused(tmp_path: Path, owner: Owner) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("max_evidence_age_s = 1\n")
    process = ControllerProcess(tmp_path / "state", [owner.pub_path], extra_args=("--cvm-policy", str(policy)))
    with (
        serving(process),
        DuetClient(process.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        cvm_id = start_cvm(client)
        time.sleep(1.1)  # the evidence is now older than the policy allows
        (hardware(process) / SETTINGS_FILE).write_text(json.dumps({"debug": True}))  # the next evidence: a debug CVM
        with pytest.raises(ApiError) as refused:
            client.mark(cvm_id, "in-service")
        assert refused.value.code == "attestation_failed" and "debug" in refused.value.message
        assert client.state(cvm_id)["cvm"]["mode"] == "in-update"
        (hardware(process) / SETTINGS_FILE).write_text("{}")
        time.sleep(1.1)
        assert client.mark(cvm_id, "in-service")["mode"] == "in-service"
        oks = [e["ok"] for e in client.entries(cvm=cvm_id) if e["event"] == "cvm.attested"]
        assert oks == [True, False, True]


def test_the_audit_reverifies_recorded_evidence(client: DuetClient, controller: ControllerProcess, tmp_path: Path) -> None:
    cvm_id = start_cvm(client)
    code, report = audit_json(controller, tmp_path / "a", cvm_id)
    assert code == 0 and report["ok"] is True, report["findings"]

    code, report = audit_json(controller, tmp_path / "b", cvm_id, roots=False)  # SIMULATED, and not trusted here
    assert code == 3
    [finding] = report["findings"]
    assert finding["code"] == "evidence_unverified" and "SIMULATED" in finding["message"]

    [attested] = [e for e in client.entries(cvm=cvm_id) if e["event"] == "cvm.attested"]
    digest = attested["evidence_sha256"]
    controller.stop()  # the host swaps the stored evidence for other bytes
    with sqlite3.connect(controller.state_dir / "duet.sqlite3", isolation_level=None) as db:
        db.execute("UPDATE blobs SET data = CAST(? AS BLOB) WHERE sha256 = ?", (b'{"format": "forged"}', digest))
    controller.start()
    code, report = audit_json(controller, tmp_path / "a", cvm_id)
    assert code == 3 and [f["code"] for f in report["findings"]] == ["evidence_altered"]
