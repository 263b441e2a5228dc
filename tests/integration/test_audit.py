"""``duet audit`` and the ledger API against a real controller process whose disk is attacked.

The host may roll the controller's database back, edit an entry or delete one. An edit of the
database alone is caught by the controller itself (it serves only entries matching its tree,
and will not start on a ledger that does not reproduce its sealed head); a rollback of the
whole state directory, sealed state included, only auditors can catch: ``duet audit`` must
say what failed and exit non-zero. Honest histories must verify (exit 0).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from duet.client.sdk import DuetClient
from duet.errors import DuetError
from duet.ledger.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from duet.protocol.canonical import canonical
from duet.protocol.envelope import verify_answer
from duet.testing.process import ControllerProcess
from support import Owner, start_cvm

DB_FILES = ("duet.sqlite3", "duet.sqlite3-wal", "duet.sqlite3-shm")
STATE = (*DB_FILES, "sealed")
"""The whole state: a host that rolls back the database alone is refused at start."""


def duet_audit(controller: ControllerProcess, home: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run the real CLI with --json; the user's state (pins, last heads) lives in ``home``."""
    proc = subprocess.run(
        [sys.executable, "-m", "duet", "--url", controller.url, "--json", "audit", *args],
        # The fixture controller is plain HTTP with TEE none: the auditor uses it unverified (--insecure).
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DUET_HOME": str(home), "DUET_INSECURE": "1", "DUET_CVM_ROOTS": str(controller.cvm_roots_file())},
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def codes(report: dict[str, Any]) -> list[str]:
    return [finding["code"] for finding in report["findings"]]


def backup(controller: ControllerProcess, to: Path, names: tuple[str, ...] = STATE) -> None:
    controller.stop()
    to.mkdir()
    for name in names:
        source = controller.state_dir / name
        if source.is_dir():
            shutil.copytree(source, to / name)
        elif source.exists():
            shutil.copy2(source, to / name)
    controller.start()


def restore(controller: ControllerProcess, frm: Path, *, start: bool = True) -> None:
    controller.stop()
    for name in STATE:
        target, source = controller.state_dir / name, frm / name
        if source.exists():
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
        elif name in DB_FILES:
            target.unlink(missing_ok=True)
    if start:
        controller.start()


def refused_start(controller: ControllerProcess) -> str:
    """(Re)start the controller, which must refuse; returns its log."""
    controller.stop()
    with pytest.raises(DuetError, match="exited at start"):
        controller.start()
    return " ".join(controller.log().split())  # the console wraps long lines


def db(controller: ControllerProcess) -> sqlite3.Connection:
    return sqlite3.connect(controller.state_dir / "duet.sqlite3", isolation_level=None)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "auditor"


def test_an_honest_history_verifies_with_its_timeline(client: DuetClient, controller: ControllerProcess, home: Path) -> None:
    cvm_id = start_cvm(client)
    client.run(cvm_id, ["echo hello", "exit 3"])
    client.mark(cvm_id, "in-service")

    rc, report, _ = duet_audit(controller, home, cvm_id, "--long")

    assert rc == 0 and report["ok"], report["findings"]
    rows = report["timeline"]
    assert all(row["cvm"] == cvm_id and row["verified"] for row in rows)
    finished = [row for row in rows if row["event"] == "command.finished"]
    assert [(r["command"], r["exit_status"], r["stdout"]) for r in finished] == [("echo hello", 0, "hello\n"), ("exit 3", 3, "")]
    assert rows[-1]["event"] == "mode.changed" and rows[-1]["mode"] == "in-service"
    assert report["head"]["tree_size"] == client.head()["tree_size"]
    rc, whole, _ = duet_audit(controller, home)
    assert rc == 0 and len(whole["timeline"]) == whole["head"]["tree_size"]
    assert whole["previous_head"]["tree_size"] == report["head"]["tree_size"]


def test_a_rolled_back_disk_is_reported_against_the_head_seen_before(
    client: DuetClient, controller: ControllerProcess, home: Path, tmp_path: Path
) -> None:
    cvm_id = start_cvm(client)
    client.run(cvm_id, ["echo one"])
    backup(controller, tmp_path / "old-db")
    client.run(cvm_id, ["echo two"])
    client.mark(cvm_id, "in-service")
    rc, seen, _ = duet_audit(controller, home, cvm_id)
    assert rc == 0

    restore(controller, tmp_path / "old-db")  # the host rolls all state back; the controller restarts
    rc, report, _ = duet_audit(controller, home, cvm_id)

    assert rc == 3 and codes(report) == ["ledger_shrank"]
    assert "ROLLBACK" in report["findings"][0]["message"]
    evidence = json.loads(Path(report["evidence"]).read_text())
    assert evidence["earlier_head"] == seen["head"]
    # History written after the rollback cannot paper over it: same size is a fork, more is inconsistent.
    while client.head()["tree_size"] < seen["head"]["tree_size"]:
        client.run(cvm_id, ["echo other"])
    rc, report, _ = duet_audit(controller, home, cvm_id)
    assert rc == 3 and codes(report)[0] in ("fork", "inconsistent_head")
    client.run(cvm_id, ["echo more"])
    rc, report, _ = duet_audit(controller, home)
    assert rc == 3 and codes(report) == ["inconsistent_head"]


def test_a_second_audit_checks_only_the_new_entries_and_still_sees_a_rollback(
    client: DuetClient, controller: ControllerProcess, home: Path, tmp_path: Path
) -> None:
    cvm_id = start_cvm(client)
    backup(controller, tmp_path / "old-db")  # the whole state, before the audits below
    client.run(cvm_id, ["echo one"])
    rc, first, _ = duet_audit(controller, home)
    assert rc == 0 and first["start"] == 0 and first["resumed_from"] is None
    assert first["checked"] == first["head"]["tree_size"] == len(first["timeline"])

    client.run(cvm_id, ["echo two"])
    rc, second, _ = duet_audit(controller, home)
    size = first["head"]["tree_size"]
    assert rc == 0 and second["resumed_from"] == first["head"] and second["start"] == size, second
    assert [row["seq"] for row in second["timeline"]] == list(range(size, second["head"]["tree_size"]))
    assert [row["command"] for row in second["timeline"] if row["event"] == "command.started"] == ["echo two"]

    rc, again, _ = duet_audit(controller, home, "--from-start", "--timeline", "3")
    assert rc == 0 and again["start"] == 0 and again["resumed_from"] is None
    assert again["checked"] == again["head"]["tree_size"] and [r["seq"] for r in again["timeline"]] == list(
        range(again["checked"] - 3, again["checked"])
    )

    restore(controller, tmp_path / "old-db")  # the host rolls all state back to before the audits
    rc, report, _ = duet_audit(controller, home)
    assert rc == 3 and codes(report)[0] in ("ledger_shrank", "fork", "inconsistent_head"), report


def test_a_database_rolled_back_alone_is_refused_at_start(
    client: DuetClient, controller: ControllerProcess, tmp_path: Path
) -> None:
    cvm_id = start_cvm(client)
    backup(controller, tmp_path / "old-db", DB_FILES)
    client.run(cvm_id, ["echo two"])
    controller.stop()
    for name in DB_FILES:
        (controller.state_dir / name).unlink(missing_ok=True)
        if (tmp_path / "old-db" / name).exists():
            shutil.copy2(tmp_path / "old-db" / name, controller.state_dir / name)
    assert "its tail was deleted" in refused_start(controller)


def test_an_entry_altered_on_disk_is_not_served_and_stops_the_next_start(
    client: DuetClient, controller: ControllerProcess, home: Path
) -> None:
    cvm_id = start_cvm(client)
    result = client.run(cvm_id, ["echo secret-step"])["results"][0]
    assert duet_audit(controller, home, cvm_id)[0] == 0
    seq = result["seq"] - 1  # the command.started entry
    with db(controller) as conn:
        entry = json.loads(conn.execute("SELECT entry FROM ledger WHERE seq = ?", (seq,)).fetchone()[0])
        conn.execute("UPDATE ledger SET entry = ? WHERE seq = ?", (canonical({**entry, "command": "echo harmless"}), seq))

    for scope in ((cvm_id,), ()):
        rc, report, _ = duet_audit(controller, home, *scope)
        assert rc != 0 and report["error"]["code"] == "ledger_corrupted", report
        assert f"entry {seq} was altered" in report["error"]["message"]
    # The state is kept in memory from verified entries: the controller signs nothing built from
    # the altered row, and still shows what was recorded.
    assert [row["command"] for row in client.state(cvm_id)["commands"]] == ["echo secret-step"]

    assert "do not hash to the root sealed" in refused_start(controller)


def test_a_deleted_entry_is_not_served_and_stops_the_next_start(
    client: DuetClient, controller: ControllerProcess, home: Path
) -> None:
    cvm_id = start_cvm(client)
    client.run(cvm_id, ["echo a", "echo b"])
    assert duet_audit(controller, home, cvm_id)[0] == 0
    deleted = client.entries(0, None, cvm_id)[-3]["seq"]
    with db(controller) as conn:
        conn.execute("DELETE FROM ledger WHERE seq = ?", (deleted,))

    rc, report, _ = duet_audit(controller, home, cvm_id)
    assert rc != 0 and report["error"]["code"] == "ledger_corrupted" and str(deleted) in report["error"]["message"]

    assert "not contiguous" in refused_start(controller)


def test_follow_prints_new_entries_and_stops_at_the_first_failure(
    client: DuetClient, controller: ControllerProcess, home: Path, tmp_path: Path
) -> None:
    cvm_id = start_cvm(client)
    backup(controller, tmp_path / "old-db")
    follower = subprocess.Popen(
        [sys.executable, "-m", "duet", "--url", controller.url, "--json", "audit", cvm_id, "--follow", "--interval", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DUET_HOME": str(home), "DUET_INSECURE": "1", "DUET_CVM_ROOTS": str(controller.cvm_roots_file())},
    )
    try:
        lines: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: [lines.append(json.loads(line)) for line in follower.stdout], daemon=True)  # type: ignore[union-attr]
        reader.start()

        def wait_for(predicate: Any, timeout: float = 20.0) -> None:
            deadline = time.monotonic() + timeout
            while not predicate():
                assert time.monotonic() < deadline, lines
                time.sleep(0.02)

        wait_for(lambda: len(lines) >= 1)
        assert lines[0]["ok"]
        client.mark(cvm_id, "in-service")  # with an interval of 60 s, only the event can make this show at once
        wait_for(lambda: any(row["event"] == "mode.changed" for line in lines[1:] for row in line["timeline"]), timeout=10)
        assert all(line["ok"] for line in lines)

        restore(controller, tmp_path / "old-db")
        client.run(cvm_id, ["echo after the rollback"])  # a new entry: its event wakes the follower
        follower.wait(timeout=30)
        assert follower.returncode == 3
        reader.join(5)
        assert codes(lines[-1])[0] in ("ledger_shrank", "fork", "inconsistent_head")
    finally:
        follower.kill()


def test_events_are_signed_resumable_and_end_at_shutdown(client: DuetClient, controller: ControllerProcess) -> None:
    cvm_id = start_cvm(client)
    pin = client.pin()
    nonce = "ab" * 16

    def read(n: int, **kwargs: Any) -> list[dict[str, Any]]:
        events, current = [], {}
        with httpx.stream("GET", controller.url + "/v1/events", timeout=10, **kwargs) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("id:"):
                    current["id"] = int(line[3:])
                elif line.startswith("data:"):
                    answer = json.loads(line[5:])
                    current["entry"] = verify_answer(answer, controller=pin.controller, public_key=pin.public_key(), nonce=nonce)
                    events.append(current)
                    current = {}
                    if len(events) == n:
                        return events
        raise AssertionError("stream ended")

    first = read(3, params={"from": 0, "nonce": nonce})
    assert [e["id"] for e in first] == [0, 1, 2] == [e["entry"]["seq"] for e in first]
    assert first == [{"id": e["seq"], "entry": e} for e in client.entries(0, 3)]
    resumed = read(2, headers={"Last-Event-ID": "1"}, params={"nonce": nonce})
    assert [e["id"] for e in resumed] == [2, 3]

    live: list[dict[str, Any]] = []
    size = client.head()["tree_size"]
    reader = threading.Thread(target=lambda: live.extend(read(1, params={"nonce": nonce, "from": size})), daemon=True)
    reader.start()
    client.mark(cvm_id, "in-service")
    reader.join(10)
    assert live and live[0]["entry"]["event"] == "mode.changed"

    # An open stream must not hold up the controller's shutdown.
    with httpx.stream("GET", controller.url + "/v1/events", timeout=10) as response:
        next(response.iter_lines())
        started = time.monotonic()
        controller.stop()
        assert time.monotonic() - started < 5
        assert controller.process is not None and controller.process.returncode is not None


BAD_REQUESTS = [
    ("/v1/ledger/proof/inclusion?index=99&tree_size=1", 422, "bad_proof_request"),
    ("/v1/ledger/proof/inclusion?index=0&tree_size=99", 422, "bad_proof_request"),
    ("/v1/ledger/proof/inclusion?index=a&tree_size=1", 422, "invalid_params"),
    ("/v1/ledger/proof/consistency?first=2&second=1", 422, "bad_proof_request"),
    ("/v1/ledger/proof/consistency?first=-1&second=1", 422, "invalid_params"),
    ("/v1/ledger/proof/consistency?first=0&second=99999999999999999999999", 422, "invalid_params"),
    ("/v1/ledger/entries?start=3&end=1", 422, "bad_range"),
    ("/v1/ledger/entries?limit=0", 422, "invalid_params"),
    ("/v1/ledger/entries?nonce=XYZ", 400, "bad_nonce"),
    ("/v1/events?from=-3", 422, "invalid_params"),
    ("/v1/blobs/NOTHEX", 400, "bad_blob_id"),
    ("/v1/blobs/" + "0" * 64, 404, "unknown_blob"),
]


def test_bad_ledger_requests_get_signed_4xx(client: DuetClient, controller: ControllerProcess) -> None:
    pin = client.pin()
    size = client.head()["tree_size"]
    for path, status, code in BAD_REQUESTS:
        response = httpx.get(controller.url + path, timeout=10)
        result = verify_answer(response.json(), controller=pin.controller, public_key=pin.public_key())
        assert (path, response.status_code, result["error"]["code"]) == (path, status, code)
    assert client.head()["tree_size"] == size  # nothing was recorded for them


def test_proofs_served_over_http_verify_and_are_fast(client: DuetClient, owner: Owner) -> None:
    cvm_id = start_cvm(client)
    client.run(cvm_id, [f"echo {i}" for i in range(5)])
    head = client.head()
    size, root = head["tree_size"], bytes.fromhex(head["root_hash"])
    entries = client.entries()
    timings = []
    for entry in entries:
        started = time.perf_counter()
        proof = client.get("/v1/ledger/proof/inclusion", index=entry["seq"], tree_size=size)
        timings.append(time.perf_counter() - started)
        path = [bytes.fromhex(h) for h in proof["audit_path"]]
        assert verify_inclusion(leaf_hash(canonical(entry)), entry["seq"], size, path, root)
    for first in range(size + 1):
        proof = client.get("/v1/ledger/proof/consistency", first=first, second=size)
        old = client.get("/v1/ledger/entries", start=0, end=first)["entries"]
        old_root = MerkleTree(leaf_hash(canonical(e)) for e in old).root()
        assert verify_consistency(first, size, old_root, root, [bytes.fromhex(h) for h in proof["proof"]])
    assert sorted(timings)[len(timings) // 2] < 0.05  # loopback round trip incl. signing; generous for CI
