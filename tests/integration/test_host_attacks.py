"""The host operator attacks the controller's disk (issue 9): what it edits decides nothing.

Each test is an attack that worked on an earlier main, scripted against a real controller
process and real sshd CVMs: the host edits the state database while the controller runs
(the controller keeps deciding from memory) and across a restart (the controller refuses to
start and says what differs). The host owns the disk, not the TEE's sealed state.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from duet import keys
from duet.client.sdk import ApiError, DuetClient
from duet.client.trust import TrustStore
from duet.controller.sealed_state import read_anchor
from duet.errors import DuetError
from duet.providers.local import LocalProvider, _find_sshd
from duet.testing.process import ControllerProcess, free_port
from support import Owner, make_owner, serving, start_cvm


def db(controller: ControllerProcess) -> sqlite3.Connection:
    return sqlite3.connect(controller.state_dir / "duet.sqlite3", isolation_level=None)


def refused_start(controller: ControllerProcess) -> str:
    """Restart the controller, which must refuse to start; returns its log on one line."""
    controller.stop()
    with pytest.raises(DuetError, match="exited at start"):
        controller.start()
    return " ".join(controller.log().split())


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def cvm_dir(controller: ControllerProcess, cvm_id: str) -> Path:
    return controller.state_dir / "local-cvms" / cvm_id


def kill_cvm_sshd(controller: ControllerProcess, cvm_id: str) -> None:
    """Make the CVM unreachable: its sshd and every session of it die (connections are refused)."""
    listener = LocalProvider(controller.state_dir / "local-cvms").sshd_pid(cvm_id)
    assert listener is not None
    sessions = [int(p) for p in subprocess.run(["pgrep", "-P", str(listener)], capture_output=True, text=True).stdout.split()]
    for pid in [*sessions, listener]:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: LocalProvider(controller.state_dir / "local-cvms").sshd_pid(cvm_id) is None, what="sshd to die")


def revive_cvm_sshd(controller: ControllerProcess, cvm_id: str) -> None:
    directory = cvm_dir(controller, cvm_id)
    subprocess.run([_find_sshd(None), "-f", str(directory / "sshd_config"), "-E", str(directory / "sshd.log")], check=True)


def events(client: DuetClient, cvm_id: str) -> list[dict[str, Any]]:
    return client.entries(cvm=cvm_id)


# --- 1. the mode in the database decides nothing ------------------------------------------------


def test_a_mode_edited_in_the_database_reopens_nothing(client: DuetClient, controller: ControllerProcess) -> None:
    cvm_id = start_cvm(client)
    client.mark(cvm_id, "in-service")
    with db(controller) as conn:
        conn.execute("UPDATE cvms SET mode = 'in-update' WHERE id = ?", (cvm_id,))

    with pytest.raises(ApiError) as refused:
        client.run(cvm_id, ["touch /tmp/should-not-run"])
    assert (refused.value.status, refused.value.code) == (403, "not_in_update")
    assert client.state(cvm_id)["cvm"]["mode"] == "in-service"
    assert "command.started" not in [e["event"] for e in events(client, cvm_id)]

    log = refused_start(controller)
    assert f"CVM {cvm_id[:16]}…: mode is 'in-update' in the database but 'in-service' in the ledger" in log


# --- 2, 3. final means final --------------------------------------------------------------------


@pytest.fixture
def quick_lockdown(tmp_path: Path, owner: Owner) -> Iterator[tuple[ControllerProcess, DuetClient]]:
    """A controller whose lockdown attempts end within seconds and are retried after 1 s."""
    process = ControllerProcess(
        tmp_path / "state", [owner.pub_path], extra_args=("--lockdown-timeout", "5", "--lockdown-retry", "1")
    )
    with (
        serving(process),
        DuetClient(process.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        yield process, client


def test_final_with_the_cvm_unreachable_stays_pending_and_completes_once_reachable(
    quick_lockdown: tuple[ControllerProcess, DuetClient],
) -> None:
    controller, client = quick_lockdown
    cvm_id = start_cvm(client)
    kill_cvm_sshd(controller, cvm_id)

    answer = client.mark(cvm_id, "in-service", final=True)

    assert (answer["mode"], answer["final"], answer["lockdown"]) == ("in-service", True, "pending")
    locked = [e for e in events(client, cvm_id) if e["event"] == "cvm.locked"]
    assert locked and locked[0]["ok"] is False and "refused" in locked[0]["error"]
    state = client.state(cvm_id)["cvm"]
    assert (state["lockdown"], state["final"]) == ("pending", True) and state["lockdown_error"]
    assert controller.cvm_login_key(cvm_id) is not None  # kept to retry: the lockdown is not verified
    with pytest.raises(ApiError) as refused:
        client.mark(cvm_id, "in-update")
    assert refused.value.code == "cvm_final"
    time.sleep(4)  # retries of the same failure are logged, not appended at every attempt
    recorded = len([e for e in events(client, cvm_id) if e["event"] == "cvm.locked"])
    assert recorded <= 2  # (the first attempt may still find the dying connection: another message)

    revive_cvm_sshd(controller, cvm_id)
    done = wait_until(
        lambda: [e for e in events(client, cvm_id) if e["event"] == "cvm.locked" and e["ok"]],
        timeout=30,
        what="the retried lockdown",
    )
    assert done[0]["key_destroyed"] is True and done[0]["attempt"] >= 2
    assert client.state(cvm_id)["cvm"]["lockdown"] == "done"
    assert controller.cvm_login_key(cvm_id) is None
    assert (cvm_dir(controller, cvm_id) / "authorized_keys").read_text().strip() == ""
    wait_until(lambda: LocalProvider(controller.state_dir / "local-cvms").sshd_pid(cvm_id) is None, what="sshd to stop")


def test_kill_9_between_final_and_lockdown_ends_locked_after_restart(tmp_path: Path, owner: Owner) -> None:
    process = ControllerProcess(tmp_path / "state", [owner.pub_path], extra_args=("--lockdown-retry", "600"))
    with (
        serving(process),
        DuetClient(process.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        cvm_id = start_cvm(client)
        kill_cvm_sshd(process, cvm_id)
        assert client.mark(cvm_id, "in-service", final=True)["lockdown"] == "pending"
        process.kill()  # the next retry (in 10 minutes) never comes

        process.start()  # recovery brings the CVM's sshd back and retries the pending lockdown at once
        done = wait_until(
            lambda: [e for e in events(client, cvm_id) if e["event"] == "cvm.locked" and e["ok"]],
            what="the lockdown after restart",
        )
        assert done[0]["key_destroyed"] is True
        assert client.state(cvm_id)["cvm"]["lockdown"] == "done"
        assert process.cvm_login_key(cvm_id) is None


def test_a_destroyed_key_written_back_with_the_old_mode_does_not_come_back(
    client: DuetClient, controller: ControllerProcess
) -> None:
    cvm_id = start_cvm(client)
    with db(controller) as conn:
        old_ciphertext = conn.execute("SELECT ssh_private_key FROM cvms WHERE id = ?", (cvm_id,)).fetchone()[0]
    assert client.mark(cvm_id, "in-service", final=True)["lockdown"] == "done"

    with db(controller) as conn:  # the host writes the key's old ciphertext back and reopens the CVM
        conn.execute("UPDATE cvms SET ssh_private_key = ?, mode = 'in-update', final = 0 WHERE id = ?", (old_ciphertext, cvm_id))
    with pytest.raises(ApiError) as refused:
        client.run(cvm_id, ["true"])
    assert refused.value.code == "not_in_update"
    with pytest.raises(ApiError) as refused:
        client.mark(cvm_id, "in-update")
    assert refused.value.code == "cvm_final"

    anchor = read_anchor(controller.state_dir / "sealed" / "anchor.json")
    assert cvm_id not in anchor["data_keys"]  # crypto-shredded: nothing can decrypt the old ciphertext
    log = refused_start(controller)
    assert "its SSH key was destroyed, yet the database holds a key again" in log
    assert "final is False in the database but True in the ledger" in log


# --- 4, 5. owners come from the attested identity only -----------------------------------------


PSS_MAX = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)


def seed_call(url: str, path: str, params: dict[str, Any], key: rsa.RSAPrivateKey) -> dict[str, Any]:
    signature = key.sign(json.dumps(params, sort_keys=True).encode(), PSS_MAX, hashes.SHA256())
    body = {"params": params, "signature": base64.b64encode(signature).decode()}
    return httpx.post(url + path, json=body, timeout=60).json()["result"]  # type: ignore[no-any-return]


def test_an_owner_inserted_in_the_database_is_not_an_owner(tmp_path: Path, owner: Owner) -> None:
    seed_port = free_port()
    process = ControllerProcess(tmp_path / "state", [owner.pub_path], extra_args=("--seed-listen", f"127.0.0.1:{seed_port}"))
    with (
        serving(process),
        DuetClient(process.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        cvm_id = start_cvm(client)
        client.mark(cvm_id, "in-service")
        operator = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = operator.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        with db(process) as conn:
            conn.execute(
                "INSERT INTO owners (key_id, public_pem, added_at) VALUES (?, ?, 'now')",
                (keys.key_id(operator.public_key()), pem.decode()),
            )

        seed = f"http://127.0.0.1:{seed_port}"
        answer = seed_call(seed, "/mark_cvm", {"cvm_id": cvm_id, "cvm_mode": "in-update"}, operator)
        assert answer["success"] is False and "privileged" in answer["error"]
        answer = seed_call(seed, "/run_commands", {"cvm_id": cvm_id, "commands": ["id"]}, operator)
        assert answer["success"] is False
        assert client.state(cvm_id)["cvm"]["mode"] == "in-service"
        assert {e["actor"] for e in client.entries()} <= {owner.key_id, "controller"}


def test_deleted_sealed_state_is_tampering_not_a_first_start(
    client: DuetClient, controller: ControllerProcess, tmp_path: Path
) -> None:
    start_cvm(client)
    operator = make_owner(tmp_path, "operator")
    (controller.state_dir / "sealed" / "anchor.json").unlink()
    controller.owner_keys = [operator.pub_path]
    log = refused_start(controller)
    assert "sealed anchor" in log and "is missing, but this controller's signing key exists" in log


# --- 6. the per-CVM index is what was hashed ----------------------------------------------------


def test_retagged_ledger_rows_are_not_hidden_from_a_cvm(client: DuetClient, controller: ControllerProcess) -> None:
    cvm_id = start_cvm(client)
    client.run(cvm_id, ["echo secret-step"])
    shown = [e["seq"] for e in events(client, cvm_id)]
    with db(controller) as conn:
        conn.execute("UPDATE ledger SET cvm_id = NULL WHERE cvm_id = ?", (cvm_id,))

    assert [e["seq"] for e in events(client, cvm_id)] == shown
    assert [c["command"] for c in client.state(cvm_id)["commands"]] == ["echo secret-step"]
    assert "the row was re-tagged" in refused_start(controller)


# --- 7. the machine in the database is not where the controller goes ------------------------------


def test_a_machine_rewritten_in_the_database_is_not_used(client: DuetClient, controller: ControllerProcess) -> None:
    real, impostor = start_cvm(client), start_cvm(client)
    with db(controller) as conn:
        machine = json.loads(conn.execute("SELECT machine FROM cvms WHERE id = ?", (impostor,)).fetchone()[0])
        conn.execute("UPDATE cvms SET machine = ? WHERE id = ?", (json.dumps({**machine, "cvm_id": real}), real))

    result = client.run(real, ["pwd"])["results"][0]
    assert result["stdout"].strip() == str(cvm_dir(controller, real) / "home")
    assert "hostkey.mismatch" not in [e["event"] for e in events(client, real)]
    assert f"CVM {real[:16]}…: its machine record (address, host key) is not the one the ledger recorded" in refused_start(
        controller
    )


# --- 8. two copies of the state directory, one identity, two histories ----------------------------


def test_two_copies_side_by_side_are_told_apart_by_comparing_heads(
    client: DuetClient, controller: ControllerProcess, owner: Owner, tmp_path: Path
) -> None:
    controller.stop()
    shutil.copytree(controller.state_dir, tmp_path / "copy")  # the host copies the whole state, sealed state too
    controller.start()
    copy = ControllerProcess(tmp_path / "copy", [])
    with serving(copy), DuetClient(copy.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user-b"), insecure=True) as other:
        start_cvm(client)  # the owner's work goes to one copy ...
        start_cvm(other)  # ... and other work to the other: two histories under one identity
        assert client.head()["controller"] == other.head()["controller"]

        first, second = tmp_path / "auditor-a", tmp_path / "auditor-b"
        assert audit(controller, first)[0] == 0
        assert audit(copy, second)[0] == 0  # each auditor alone sees a consistent log

        saved = first / "heads" / f"{client.head()['controller']}.json"
        for view in (str(saved), controller.url):
            rc, report = audit(copy, second, "--compare", view)
            assert rc == 3 and "fork" in [f["code"] for f in report["findings"]], report
        assert audit(controller, first, "--compare", controller.url)[0] == 0  # one copy agrees with itself


def audit(controller: ControllerProcess, home: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "duet", "--url", controller.url, "--json", "audit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DUET_HOME": str(home), "DUET_INSECURE": "1", "DUET_CVM_ROOTS": str(controller.cvm_roots_file())},
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


# --- found later: an older copy of the sealed anchor with a database cut to match ------------------


def test_an_older_anchor_with_a_truncated_ledger_does_not_reopen_a_final_cvm(tmp_path: Path, owner: Owner) -> None:
    """The host may put back an older copy of a sealed file (never forge one). With the copy taken
    before `--final` and the ledger cut where the final mark began, the CVM would come back
    in-update, its key held: the entries' MACs are bound to the sealed head they follow, so only
    the one transaction after the old copy could verify, and the start is refused. (Cut exactly
    at the copy's head, it is a rollback of the whole state to that moment: docs/security.md.)"""
    process = ControllerProcess(tmp_path / "state", [owner.pub_path], extra_args=("--lockdown-retry", "600"))
    with (
        serving(process),
        DuetClient(process.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        cvm_id = start_cvm(client)
        client.run(cvm_id, ["echo before-final"])
        anchor = process.state_dir / "sealed" / "anchor.json"
        old_anchor = anchor.read_bytes()
        client.run(cvm_id, ["echo after the copy"])  # two more transactions: started, finished
        kill_cvm_sshd(process, cvm_id)
        assert client.mark(cvm_id, "in-service", final=True)["lockdown"] == "pending"
        final_seq = next(e["seq"] for e in events(client, cvm_id) if e["event"] == "mode.changed" and e["final"])
        process.stop()

        anchor.write_bytes(old_anchor)
        with db(process) as conn:
            conn.execute("DELETE FROM ledger WHERE seq >= ?", (final_seq,))
            conn.execute("UPDATE cvms SET mode = 'in-update', final = 0 WHERE id = ?", (cvm_id,))
        assert "lies after the sealed head" in refused_start(process)
