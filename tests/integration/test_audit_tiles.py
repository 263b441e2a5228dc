"""``duet audit --tiles URL``: a real controller publishes its ledger (``serve --publish-tiles``),
and the real CLI audits it from the published tiles alone (issue 13, item 5 and its must-hold
"an audit from the bucket equals an audit from the controller; a tile altered in the bucket is
detected and named").

* Azure Blob Storage (Azurite on loopback, tests/fakes/object_stores.py), read anonymously over
  HTTP as from a CDN and through ``azure://`` with credentials: the audit equals the
  controller's (same entries checked, same root, same findings, same timeline; one CVM too),
  still works with the controller stopped, and names a tile altered in the container.
* A directory served by a static HTTP server, the controller's checkpoints cosigned by a
  witness: ``--tiles URL --witness VKEY`` reports the witness.

The auditor's key is the one ``duet --insecure verify`` pinned (these controllers run without a
TEE); with ``--tiles`` nothing is sent to the controller.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.fakes.fake_witness import FakeWitness

from duet.client.checkpoints import controller_log_verifier
from duet.client.sdk import DuetClient
from duet.client.tiles_source import open_tiles_source
from duet.client.trust import TrustStore
from duet.ledger.checkpoint import verify_cosigned_checkpoint
from duet.publish.stores import AzureBlobStore
from duet.testing.process import ControllerProcess
from fakes.object_stores import Azurite
from support import Owner, serving, start_cvm, wait_until

WAIT_S = 60.0
SAME = ("checked", "start", "findings", "timeline")
"""What an audit from the tiles and one from the controller must have equal (and the head's size and root)."""


def duet(home: Path, url: str, *args: str, env: dict[str, str] | None = None, json_output: bool = True) -> tuple[int, Any, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "duet", "--url", url, *(["--json"] if json_output else []), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DUET_HOME": str(home), "DUET_INSECURE": "1", "COLUMNS": "250", **(env or {})},
    )
    if not json_output:
        return proc.returncode, proc.stdout, proc.stderr
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, json.loads(lines[-1]) if lines else None, proc.stderr


def pin(home: Path, controller: ControllerProcess) -> None:
    """``duet --insecure verify``: the controller's key pinned in ``home`` (without attestation)."""
    rc, report, err = duet(home, controller.url, "verify")
    assert rc == 0 and report["ok"], err


def audit_report(home: Path, controller: ControllerProcess, *args: str) -> dict[str, Any]:
    rc, report, err = duet(home, controller.url, "audit", *args, env={"DUET_CVM_ROOTS": str(controller.cvm_roots_file())})
    assert rc == 0 and report["ok"], (report, err)
    return report  # type: ignore[no-any-return]


def assert_same(from_tiles: dict[str, Any], from_controller: dict[str, Any]) -> None:
    assert from_tiles["read_from"] == "tiles" and from_controller["read_from"] == "controller"
    for name in ("tree_size", "root_hash"):
        assert from_tiles["head"][name] == from_controller["head"][name]
    for name in SAME:
        assert from_tiles[name] == from_controller[name], name


def published_size(url: str, client: DuetClient) -> int:
    pinned = client.pin()
    try:
        with open_tiles_source(url, timeout=5) as source:
            return source.read_checkpoint(controller_log_verifier(pinned.controller, pinned.public_key())).size
    except Exception:
        return -1


def busy(client: DuetClient, commands: int) -> str:
    """A CVM and ``commands`` commands: 2 ledger entries each, so past the first full tile."""
    cvm_id = start_cvm(client)
    for first in range(0, commands, 50):
        client.run(cvm_id, [f"echo {i}" for i in range(first, min(commands, first + 50))])
    client.mark(cvm_id, "in-service")
    return cvm_id


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def test_an_audit_from_azure_blob_storage_equals_the_controllers_without_contacting_it(
    tmp_path: Path, owner: Owner, azurite: Azurite
) -> None:
    container = f"ledger-{uuid.uuid4().hex[:12]}"
    admin = AzureBlobStore.from_connection_string(azurite.connection_string, container)
    admin.create_container(public_read=True)
    credentials = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    public = azurite.container_url(container)
    process = ControllerProcess(
        tmp_path / "state",
        [owner.pub_path],
        extra_args=("--publish-tiles", f"azure://devstoreaccount1/{container}"),
        env=credentials,
    )
    with (
        serving(process),
        DuetClient(process.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        cvm_id = busy(client, 130)
        size = client.head()["tree_size"]
        assert size > 256  # a full tile, and a partial one
        wait_until(lambda: published_size(public, client) == size, "the container to hold the whole ledger", WAIT_S)

        by_controller, by_tiles = tmp_path / "by-controller", tmp_path / "by-tiles"
        pin(by_controller, process)
        pin(by_tiles, process)
        from_controller = audit_report(by_controller, process)
        from_tiles = audit_report(by_tiles, process, "--tiles", public)
        assert_same(from_tiles, from_controller)
        assert from_tiles["url"] == public and from_tiles["checked"] == size
        assert from_tiles["not_checked"]["evidence"] >= 1  # the CVM's attestations: their evidence is not in the bucket

        cvm_controller = audit_report(by_controller, process, cvm_id)
        cvm_tiles = audit_report(by_tiles, process, cvm_id, "--tiles", public, "--long")
        assert_same(cvm_tiles, cvm_controller)
        assert {row["cvm"] for row in cvm_tiles["timeline"]} == {cvm_id}
        assert cvm_tiles["not_checked"]["outputs"] >= 2 * 130  # --long: the outputs are not in the bucket either

        # The same container through the Azure API (credentials from the environment), from the checkpoint kept.
        rc, again, err = duet(by_tiles, process.url, "audit", "--tiles", f"azure://devstoreaccount1/{container}", env=credentials)
        assert rc == 0 and again["ok"], err
        assert again["resumed_from"] is not None, again["notes"]
        assert again["resumed_from"]["tree_size"] == size and again["checked"] == 0

        # The controller and the auditor that read it agree with what the tiles showed, both ways.
        assert audit_report(by_tiles, process)["comparisons"][0]["consistent"] is True

    # The controller is stopped: the bucket alone still proves the log, and says what was altered in it.
    with pytest.raises(httpx.TransportError):
        httpx.get(process.url + "/v1/ledger/head", timeout=2)
    rc, alone, err = duet(by_tiles, process.url, "audit", "--tiles", public, "--from-start")
    assert rc == 0 and alone["ok"], err
    assert_same(alone, from_controller)

    tile = httpx.get(f"{public}/tile/0/000").content
    admin.container.upload_blob("tile/0/000", flip(tile, 100), overwrite=True)
    rc, altered, _ = duet(by_tiles, process.url, "audit", "--tiles", public, "--from-start")
    assert rc == 3 and not altered["ok"]
    assert [(f["code"], f["path"]) for f in altered["findings"]] == [("tile_mismatch", "tile/0/000")]
    assert "tile/0/000" in altered["findings"][0]["message"]
    rc, said, err = duet(by_tiles, process.url, "audit", "--tiles", public, "--from-start", json_output=False)
    assert rc == 3 and "AUDIT FAILED" in err and "tile/0/000" in " ".join(err.split())
    admin.container.upload_blob("tile/0/000", tile, overwrite=True)

    bundle = httpx.get(f"{public}/tile/entries/000").content
    admin.container.upload_blob("tile/entries/000", bundle.replace(b'"echo 1"', b'"echo 7"', 1), overwrite=True)
    rc, altered, _ = duet(by_tiles, process.url, "audit", "--tiles", public, "--from-start")
    assert rc == 3 and [(f["code"], f["path"]) for f in altered["findings"]] == [("entry_mismatch", "tile/entries/000")]


def test_a_directory_over_http_with_a_witness(tmp_path: Path, owner: Owner) -> None:
    bucket = tmp_path / "bucket"
    witness = FakeWitness("witness.example/w1").start()
    other = FakeWitness("witness.example/w2")  # never asked by the controller: never cosigns
    process = ControllerProcess(
        tmp_path / "state", [owner.pub_path], extra_args=("--publish-tiles", str(bucket), "--witness", witness.option)
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(bucket))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with (
            serving(process),
            DuetClient(process.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
        ):
            pinned = client.pin()
            log = controller_log_verifier(pinned.controller, pinned.public_key())
            witness.trust(log)
            cvm_id = busy(client, 20)
            size = client.head()["tree_size"]

            def cosigned() -> bool:
                try:
                    with open_tiles_source(url, timeout=5) as source:
                        note = source.checkpoint_note()
                    checked = verify_cosigned_checkpoint(note, log, [witness.signer.verifier()], quorum=1)
                except Exception:
                    return False
                return checked.checkpoint.size == size

            wait_until(cosigned, "the published checkpoint to carry the witness's cosignature", WAIT_S)
            home = tmp_path / "auditor"
            pin(home, process)
            from_controller = audit_report(tmp_path / "by-controller", process)
            report = audit_report(home, process, "--tiles", url, "--witness", witness.vkey)
            assert_same(report, from_controller)
            assert report["witnesses"]["signed_by"] == [witness.name] and report["witnesses"]["ok"]

            rc, refused, _ = duet(home, process.url, "audit", "--tiles", url, "--witness", witness.vkey, "--witness", other.vkey)
            assert rc == 3 and [f["code"] for f in refused["findings"]] == ["witness_quorum_not_met"]
            assert refused["witnesses"]["missing"] == [other.name]

            cvm_report = audit_report(home, process, cvm_id, "--tiles", url)
            assert cvm_report["checked"] == len([e for e in client.entries() if e["cvm"] == cvm_id])
            rc, out, _ = duet(home, process.url, "audit", "--tiles", url, "--witness", witness.vkey, json_output=False)
            said = " ".join(out.split())
            assert rc == 0 and "its log as published at" in said and f"cosigned by {witness.name}" in said
    finally:
        server.shutdown()
        server.server_close()
        witness.stop()
