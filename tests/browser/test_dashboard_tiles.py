"""The dashboard reading a published tiled log as static files, no controller anywhere: a log made
here (entries, C2SP entry bundles and hash tiles, a checkpoint signed with the controller's key)
holds the events a controller of issue 14 writes (proposals, approvals, the approval policy) and
an event the page has never heard of; then the bucket is attacked (an entry bundle altered, the
log rolled back, a checkpoint signed by another key).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser_support import Visit, screenshot, wait_failure, wait_verified
from duet import keys
from duet.client.checkpoints import controller_log_verifier
from duet.dashboard import export
from duet.ledger.checkpoint import Checkpoint, controller_origin, sign_checkpoint
from duet.ledger.merkle import MerkleTree, leaf_hash
from duet.ledger.tiles import TILE_WIDTH, encode_entry_bundle, entries_path, hash_tile, tile_path
from duet.protocol.canonical import canonical

CVM = "c" * 64
OWNERS = ("a" * 64, "b" * 64)
PROPOSAL = "d" * 64


def ledger() -> list[dict[str, Any]]:
    """A small history: the controller's start and policy, a CVM, a command approved by two owners."""
    events: list[dict[str, Any]] = [
        {"cvm": None, "event": "controller.started", "actor": "controller", "resumed_from": 0},
        {"cvm": None, "event": "controller.owners", "actor": "controller", "owners": list(OWNERS)},
        {
            "cvm": None,
            "event": "controller.policy",
            "actor": "controller",
            "policy": {"thresholds": {"cvm.run": 2}},
            "policy_sha256": "e" * 64,
        },
        {"cvm": CVM, "event": "cvm.provisioning", "actor": OWNERS[0], "type": "snp", "provider": "local"},
        {"cvm": CVM, "event": "cvm.ready", "actor": "controller", "mode": "in-update"},
        {
            "cvm": CVM,
            "event": "proposal.created",
            "actor": OWNERS[0],
            "proposal": PROPOSAL,
            "operation": "cvm.run",
            "op": "cvm.run",
            "request": {"op": "cvm.run", "params": {"cvm_id": CVM, "commands": ["apt-get install -y nginx"]}},
            "expires_at": "2026-12-03T07:00:00.000Z",
            "threshold": 2,
        },
        {
            "cvm": CVM,
            "event": "proposal.approved",
            "actor": OWNERS[1],
            "proposal": PROPOSAL,
            "approvals": 2,
            "threshold": 2,
            "ready": True,
        },
        {
            "cvm": CVM,
            "event": "proposal.executed",
            "actor": "controller",
            "proposal": PROPOSAL,
            "operation": "cvm.run",
            "approvers": list(OWNERS),
            "threshold": 2,
        },
        {
            "cvm": CVM,
            "event": "command.started",
            "actor": OWNERS[0],
            "request_digest": PROPOSAL,  # the operation a proposal ran carries its id
            "command": "apt-get install -y nginx",
        },
        {"cvm": CVM, "event": "backup.snapshotted", "actor": "controller", "reason": "nightly"},
        {"cvm": CVM, "event": "mode.changed", "actor": OWNERS[0], "previous": "in-update", "mode": "in-service", "final": False},
    ]
    entries: list[dict[str, Any]] = []
    last: dict[str | None, int] = {}  # each entry names the previous one about the same CVM (or about none)
    for seq, event in enumerate(events):
        entry = {"seq": seq, "time": f"2026-12-02T07:00:{seq:02d}.000Z", "request_digest": None, **event}
        entry["cvm_prev"], last[event["cvm"]] = last.get(event["cvm"]), seq
        entries.append(entry)
    return entries


def publish(directory: Path, entries: list[dict[str, Any]], key: keys.PrivateKey, controller: str) -> None:
    """Write the log as a publisher would: entry bundles, level-0 hash tiles, the checkpoint last."""
    if directory.exists():
        shutil.rmtree(directory)
    datas = [canonical(entry) for entry in entries]
    tree = MerkleTree(leaf_hash(data) for data in datas)
    for index in range(0, len(datas), TILE_WIDTH):
        chunk = datas[index : index + TILE_WIDTH]
        for path, body in (
            (entries_path(index // TILE_WIDTH, len(chunk)), encode_entry_bundle(chunk)),
            (tile_path(0, index // TILE_WIDTH, len(chunk)), hash_tile(tree, 0, index // TILE_WIDTH, len(chunk))),
        ):
            (directory / path).parent.mkdir(parents=True, exist_ok=True)
            (directory / path).write_bytes(body)
    note = sign_checkpoint(Checkpoint(controller_origin(controller), tree.size, tree.root()), key)
    (directory / "checkpoint").write_bytes(note)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")  # the test rewrites files between loads
        super().end_headers()


class Bucket:
    def __init__(self, root: Path) -> None:
        self.key = keys.generate()
        self.controller = keys.key_id(self.key.public_key())
        self.vkey = controller_log_verifier(self.controller, self.key.public_key()).vkey
        self.log = root / "log"
        export(root)
        self.entries = ledger()
        publish(self.log, self.entries, self.key, self.controller)

    def url(self, origin: str, **query: str) -> str:
        return f"{origin}/index.html?" + "&".join(
            f"{n}={v}" for n, v in {"tiles": "log/", "controller": self.vkey, **query}.items()
        )


@pytest.fixture
def bucket(tmp_path: Path) -> Iterator[tuple[Bucket, str]]:
    made = Bucket(tmp_path)
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield made, f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()


def test_approvals_and_unknown_events_are_shown_verified(bucket: tuple[Bucket, str], visit: Visit) -> None:
    made, origin = bucket
    page = visit.page(made.url(origin, cvm=CVM))
    wait_verified(page)
    assert page.locator("#entries li").count() == 8 and page.locator("#entries li[data-state='verified']").count() == 8
    created = page.locator("#entries li[data-event='proposal.created']")
    assert "Proposal created" in created.inner_text() and "$ apt-get install -y nginx" in created.inner_text()
    assert "cvm.run: approved by owner" in page.inner_text("#entries li[data-event='proposal.approved']")
    assert "2 of 2 approvals threshold met" in page.inner_text("#entries li[data-event='proposal.approved']")
    assert "cvm.run run commands\n2 of 2 approvals by" in page.inner_text("#entries li[data-event='proposal.executed']")
    assert "as approved in proposal" in page.inner_text("#entries li[data-event='command.started']")
    unknown = page.inner_text("#entries li[data-event='backup.snapshotted']")
    assert "backup.snapshotted" in unknown and "reason: nightly" in unknown  # an event the page does not know, shown as it is
    page.wait_for_selector(f"#cvm-list [data-cvm='{CVM}'] [data-mode='in-service']")  # the list, from the verified entries
    screenshot(page, "dashboard-approvals-tiles")

    page.locator("#cvm-list [data-cvm=''] button").click()
    page.wait_for_selector("#entries li[data-event='controller.policy'][data-state='verified']")
    assert "Approval policy set" in page.inner_text("#entries li[data-event='controller.policy']")
    assert visit.outside(origin) == []


def test_an_entry_bundle_altered_in_the_bucket_is_named(bucket: tuple[Bucket, str], visit: Visit) -> None:
    made, origin = bucket
    bundle = made.log / entries_path(0, len(made.entries))
    data = bundle.read_bytes()
    bundle.write_bytes(data.replace(b"apt-get install -y nginx", b"apt-get install -y ngin$"))
    page = visit.page(made.url(origin, cvm=CVM))
    banner = wait_failure(page, "entry_altered")
    assert "ALTERED ENTRY" in banner and "entry 5 in tile/entries/000.p/11" in banner
    assert page.locator("#entries li[data-state='verified']").count() == 0


def test_a_bucket_rolled_back_shows_rollback(bucket: tuple[Bucket, str], visit: Visit) -> None:
    made, origin = bucket
    page = visit.page(made.url(origin, cvm=CVM))
    wait_verified(page)
    publish(made.log, made.entries[:7], made.key, made.controller)  # an older copy of the log, signed then
    page.reload()
    banner = wait_failure(page, "rollback")
    assert "the published log now shows 7 ledger entries" in banner and "a head of 11" in banner


def test_a_checkpoint_signed_by_another_key_shows_bad_signature(bucket: tuple[Bucket, str], visit: Visit) -> None:
    made, origin = bucket
    other = keys.generate()
    note = sign_checkpoint(Checkpoint(controller_origin(made.controller), 11, bytes(32)), other)
    (made.log / "checkpoint").write_bytes(note)
    page = visit.page(made.url(origin, cvm=CVM))
    banner = wait_failure(page, "bad_signature")
    assert "BAD SIGNATURE" in banner and "not signed by the pinned controller key" in banner
    assert page.locator("#entries li").count() == 0
