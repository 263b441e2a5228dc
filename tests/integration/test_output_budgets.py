"""Output budgets, quota, retention and bounded reads, on real controller processes (issue 12, items 2-3).

The limits are set small through ``duet controller serve``'s own flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from duet.client.sdk import ApiError, DuetClient
from duet.client.trust import TrustStore
from duet.errors import DuetError
from duet.protocol import seed
from duet.testing.process import ControllerProcess
from support import Owner, serving, start_cvm

KiB = 1024
MiB = 1024 * KiB


class TunedController(ControllerProcess):
    """A controller process whose peak memory the tests read."""

    def vm_hwm(self) -> int:
        """The controller's peak resident memory so far (bytes)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KiB
        raise AssertionError("no VmHWM")


def tuned(tmp_path: Path, owner: Owner, *flags: str) -> Iterator[tuple[TunedController, DuetClient]]:
    """A controller started with ``duet controller serve ... FLAGS``."""
    process = TunedController(tmp_path / "state", [owner.pub_path], extra_args=flags)
    with serving(process):
        with DuetClient(process.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client:
            yield process, client


def write(stdout: int, stderr: int = 0, char: str = "a") -> str:
    """A command writing ``stdout`` and ``stderr`` bytes."""
    return f"head -c {stdout} /dev/zero | tr '\\0' {char}; head -c {stderr} /dev/zero | tr '\\0' e >&2"


def finished(client: DuetClient, cvm_id: str) -> list[dict[str, Any]]:
    return [entry for entry in client.entries(cvm=cvm_id) if entry["event"] == "command.finished"]


# --- the per-request budget ------------------------------------------------------------------


@pytest.fixture
def small_budget(tmp_path: Path, owner: Owner) -> Iterator[tuple[TunedController, DuetClient]]:
    yield from tuned(tmp_path, owner, "--request-output-budget", str(64 * KiB))


def test_a_run_past_the_request_budget_is_cut_and_recorded(small_budget: tuple[TunedController, DuetClient]) -> None:
    _, client = small_budget
    cvm_id = start_cvm(client)
    answer = client.run(cvm_id, [write(40 * KiB, 40 * KiB)] * 4)
    results = answer["results"]
    assert all(result["exit_status"] == 0 for result in results)  # every command ran
    sizes = [(r["stdout_size"], r["stderr_size"]) for r in results]
    assert sizes == [(40 * KiB, 24 * KiB), (0, 0), (0, 0), (0, 0)]
    assert [(r["stdout_truncated"], r["stderr_truncated"]) for r in results] == [(False, True)] + [(True, True)] * 3
    assert results[0]["stdout"] == "a" * 40 * KiB and results[0]["stderr"] == "e" * 24 * KiB
    assert len(json.dumps(answer)) < 64 * KiB + 4 * KiB  # the outputs within the budget, plus the rows
    recorded = finished(client, cvm_id)
    assert [(e["stdout_truncated"], e["stderr_truncated"], e["stdout_size"], e["stderr_size"]) for e in recorded] == [
        (False, True, 40 * KiB, 24 * KiB),
        *[(True, True, 0, 0)] * 3,
    ]
    assert client.blob(recorded[0]["stderr_sha256"]) == b"e" * 24 * KiB
    # The next request has a budget of its own.
    assert client.run(cvm_id, [write(10)])["results"][0]["stdout"] == "a" * 10


# --- the per-CVM quota -------------------------------------------------------------------------


def test_a_cvm_at_its_output_quota_refuses_commands_with_a_clear_error(tmp_path: Path, owner: Owner) -> None:
    for _, client in tuned(tmp_path, owner, "--cvm-output-quota", str(100 * KiB)):
        cvm_id = start_cvm(client)
        assert client.run(cvm_id, [write(60 * KiB)])["results"][0]["stdout_size"] == 60 * KiB
        last = client.run(cvm_id, [write(60 * KiB)])["results"][0]
        assert (last["stdout_size"], last["stdout_truncated"]) == (40 * KiB, True)  # cut to what the quota left
        count = len(client.entries(cvm=cvm_id))
        with pytest.raises(ApiError) as refused:
            client.run(cvm_id, ["echo never"])
        assert (refused.value.code, refused.value.status) == ("output_quota_exceeded", 409)
        assert "quota of 102400 bytes" in refused.value.message
        assert len(client.entries(cvm=cvm_id)) == count  # refused before any entry: nothing ran
        other = start_cvm(client)  # the quota is per CVM
        assert client.run(other, ["echo fine"])["results"][0]["stdout"] == "fine\n"


# --- streamed blobs --------------------------------------------------------------------------------


@pytest.fixture
def big_outputs(tmp_path: Path, owner: Owner) -> Iterator[tuple[TunedController, DuetClient]]:
    yield from tuned(tmp_path, owner, "--request-output-budget", str(40 * MiB))


def _slow_readers(url: str, path: str, count: int) -> list[socket.socket]:
    """``count`` connections that ask for ``path`` and read (almost) nothing."""
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        sockets.append(sock)
    return sockets


def test_a_large_blob_is_streamed_checked_and_memory_stays_flat(big_outputs: tuple[TunedController, DuetClient]) -> None:
    process, client = big_outputs
    cvm_id = start_cvm(client)
    result = client.run(cvm_id, ["head -c 16777216 /dev/urandom"], output_limit=16 * MiB)["results"][0]
    sha = result["stdout_sha256"]
    assert result["stdout_size"] == 16 * MiB
    data = client.blob(sha)
    assert len(data) == 16 * MiB and hashlib.sha256(data).hexdigest() == sha
    del data, result

    process.restart()  # a fresh peak: the run itself held the output
    before = process.vm_hwm()
    readers = _slow_readers(process.url, f"/v1/blobs/{sha}", 12)
    try:
        time.sleep(3)
        for sock in readers:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert httpx.get(f"{process.url}/v1/ledger/head", timeout=5).status_code == 200  # the loop still answers
        grown = process.vm_hwm() - before
    finally:
        for sock in readers:
            sock.close()
    print(f"VmHWM {before / MiB:.0f} MiB -> +{grown / MiB:.1f} MiB with 12 slow readers of a 16 MiB blob")
    assert grown < 48 * MiB  # the whole blob once per reader would be 192 MiB or more


def test_an_altered_blob_is_never_served_whole(big_outputs: tuple[TunedController, DuetClient]) -> None:
    process, client = big_outputs
    cvm_id = start_cvm(client)
    results = client.run(cvm_id, ["head -c 3000000 /dev/urandom", "echo small"], output_limit=4 * MiB)["results"]
    large, small = results[0]["stdout_sha256"], results[1]["stdout_sha256"]
    assert hashlib.sha256(client.blob(large)).hexdigest() == large
    with sqlite3.connect(process.state_dir / "duet.sqlite3", isolation_level=None) as db:  # the host edits its disk
        db.execute("UPDATE blobs SET data = CAST(? AS BLOB) WHERE sha256 = ?", (b"a" * 3000000, large))
        db.execute("UPDATE blobs SET data = CAST(? AS BLOB) WHERE sha256 = ?", (b"smell\n", small))

    with httpx.stream("GET", f"{process.url}/v1/blobs/{large}", timeout=30) as response:
        assert response.status_code == 200 and response.headers["content-length"] == "3000000"
        received = bytearray()
        with pytest.raises(httpx.HTTPError):  # the stream is cut before its last chunk
            for chunk in response.iter_bytes():
                received += chunk
    assert len(received) < 3000000
    with pytest.raises(DuetError):
        client.blob(large)
    with pytest.raises(ApiError) as refused:  # small: checked before anything is sent
        client.blob(small)
    assert refused.value.code == "blob_altered"
    assert "altered on disk" in process.log()


# --- the seed's state, bounded -------------------------------------------------------------------


def test_the_seed_long_state_is_capped_with_a_marker(tmp_path: Path, owner: Owner) -> None:
    for process, client in tuned(tmp_path, owner, "--seed-api", "--seed-state-max-bytes", str(4 * KiB)):
        cvm_id = start_cvm(client)
        results = client.run(cvm_id, [write(100 * KiB, 10), "echo after"])["results"]

        def state(long: bool, url: str = process.url, cvm_id: str = cvm_id) -> tuple[int, dict[str, Any]]:
            response = httpx.post(f"{url}/get_cvm_state", json={"params": {"cvm_id": cvm_id, "should_be_long": long}}, timeout=30)
            return len(response.content), response.json()["result"]["state"]

        size, long = state(True)
        assert size < 4 * KiB + 4 * KiB  # the cap, the markers and the signature
        first, second = long["command_outputs"]
        assert first["output"][0].startswith("a") and len(first["output"]) == 1 + 1
        marker = first["output"][-1]
        assert marker.startswith("[duet: output truncated here") and results[0]["stdout_sha256"] in marker
        assert second["output"] == [
            marker.replace(results[0]["stdout_sha256"], results[1]["stdout_sha256"]).replace(
                results[0]["stderr_sha256"], results[1]["stderr_sha256"]
            )
        ]
        _, short = state(False)  # the short form still hashes the whole outputs
        whole = seed.output_lines("a" * 100 * KiB, "e" * 10)
        assert [item["output_hash"] for item in short["command_output_hashes"]] == [
            seed.output_hash(whole),
            seed.output_hash(["after\n"]),
        ]


# --- retention ------------------------------------------------------------------------------------


def test_pruned_outputs_keep_their_hashes_and_audit_as_pruned(tmp_path: Path, owner: Owner) -> None:
    for process, client in tuned(tmp_path, owner, "--output-retention-days", str(2 / 86400), "--output-prune-interval", "0.5"):
        cvm_id = start_cvm(client)
        result = client.run(cvm_id, ["echo old"])["results"][0]
        sha = result["stdout_sha256"]
        assert client.blob(sha) == b"old\n"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                client.blob(sha)
            except ApiError as exc:
                pruned = exc
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the output was not pruned")
        assert (pruned.code, pruned.status) == ("output_pruned", 410)
        assert "retention policy" in pruned.message
        assert finished(client, cvm_id)[0]["stdout_sha256"] == sha  # the hash stays in the ledger
        fresh = client.run(cvm_id, ["echo new"])["results"][0]
        assert client.blob(fresh["stdout_sha256"]) == b"new\n"

        proc = subprocess.run(
            [sys.executable, "-m", "duet", "--url", process.url, "--json", "audit", cvm_id, "--long"],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **os.environ,
                "DUET_HOME": str(tmp_path / "auditor"),
                "DUET_INSECURE": "1",
                "DUET_CVM_ROOTS": str(process.cvm_roots_file()),
            },
        )
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert proc.returncode == 0 and report["ok"], report["findings"]
        rows = [row for row in report["timeline"] if row["event"] == "command.finished"]
        assert rows[0]["stdout"].startswith("[pruned by the controller's retention policy")
        assert rows[1]["stdout"] == "new\n"
