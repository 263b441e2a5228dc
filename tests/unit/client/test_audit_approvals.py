"""`duet audit` recounts every vote: crafted ledgers in which an operation ran without its quorum
are findings, for the whole ledger and for one CVM's entries (which replay the controller's own
entries, its owner sets and policies, too), from the controller or from the published tiles."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from ledger_fakes import CVM, KEY, OWNER, SECOND, THIRD, EntryLedger, FakeSource
from tiles_fakes import MemoryTiles, publish

from duet.client.audit import Auditor, AuditResult, HeadStore
from duet.client.trust import ControllerPin
from duet.protocol import lifecycle as lc

REOPEN = "cvm.mark.in-update"
POLICY = {REOPEN: 2}


def lawful_with_owners() -> EntryLedger:
    ledger = EntryLedger()
    ledger.owners(OWNER, SECOND, THIRD)
    ledger.policy(POLICY)
    ledger.provision(CVM)
    ledger.ready(CVM)
    ledger.mark(lc.IN_UPDATE, lc.IN_SERVICE, CVM)
    return ledger


def audit(ledger: EntryLedger, tmp_path: Path, *, cvm: str | None = None, tiles: bool = False) -> AuditResult:
    source = FakeSource(ledger, owners=(OWNER, SECOND, THIRD))
    bucket = MemoryTiles(publish(ledger.tree, lambda seq: ledger.entries[seq], ledger.size, KEY)) if tiles else None
    return Auditor(source, HeadStore(tmp_path / "auditor"), cvm=cvm, tiles=bucket).audit()


def codes(result: AuditResult) -> list[str]:
    return [f.code for f in result.findings]


@pytest.mark.parametrize("cvm", [None, CVM], ids=["whole-ledger", "one-cvm"])
def test_a_reopening_approved_by_two_owners_passes(tmp_path: Path, cvm: str | None) -> None:
    ledger = lawful_with_owners()
    pid = ledger.propose(REOPEN, CVM)
    ledger.approve(pid, CVM, actor=SECOND)
    ledger.executed(pid, REOPEN, CVM, approvers=[OWNER, SECOND])
    ledger.add(CVM, lc.MODE_CHANGED, OWNER, request_digest=pid, previous=lc.IN_SERVICE, mode=lc.IN_UPDATE, final=False)

    result = audit(ledger, tmp_path, cvm=cvm)

    assert result.ok and codes(result) == []


@pytest.mark.parametrize("cvm", [None, CVM], ids=["whole-ledger", "one-cvm"])
def test_an_execution_without_its_quorum_is_a_finding(tmp_path: Path, cvm: str | None) -> None:
    ledger = lawful_with_owners()
    pid = ledger.propose(REOPEN, CVM)
    executed = ledger.executed(pid, REOPEN, CVM, approvers=[OWNER, SECOND])  # claims two; the ledger holds one vote
    ledger.add(CVM, lc.MODE_CHANGED, OWNER, request_digest=pid, previous=lc.IN_SERVICE, mode=lc.IN_UPDATE, final=False)

    result = audit(ledger, tmp_path, cvm=cvm)

    assert not result.ok
    assert [(f.code, f.seq) for f in result.findings if f.code == "quorum_not_met"] == [("quorum_not_met", executed["seq"])]


@pytest.mark.parametrize("tiles", [False, True], ids=["controller", "tiles"])
@pytest.mark.parametrize("cvm", [None, CVM], ids=["whole-ledger", "one-cvm"])
def test_a_reopening_on_one_signature_is_a_finding(tmp_path: Path, cvm: str | None, tiles: bool) -> None:
    ledger = lawful_with_owners()
    reopened = ledger.mark(lc.IN_SERVICE, lc.IN_UPDATE, CVM)  # no proposal at all

    result = audit(ledger, tmp_path, cvm=cvm, tiles=tiles)

    assert ("quorum_not_met", reopened["seq"]) in [(f.code, f.seq) for f in result.findings]


def test_votes_counted_twice_or_by_strangers_do_not_make_a_quorum(tmp_path: Path) -> None:
    ledger = lawful_with_owners()
    pid = ledger.propose(REOPEN, CVM)
    ledger.approve(pid, CVM, actor=OWNER)  # the proposer again
    stranger = ledger.approve(pid, CVM, actor="e" * 64)
    executed = ledger.executed(pid, REOPEN, CVM, approvers=[OWNER, "e" * 64])
    ledger.add(CVM, lc.MODE_CHANGED, OWNER, request_digest=pid, previous=lc.IN_SERVICE, mode=lc.IN_UPDATE, final=False)

    found = [(f.code, f.seq) for f in audit(ledger, tmp_path).findings]

    assert ("duplicate_approval", executed["seq"] - 2) in found
    assert ("approval_by_non_owner", stranger["seq"]) in found
    assert ("quorum_not_met", executed["seq"]) in found


def test_a_policy_changed_by_the_controller_itself_is_a_finding(tmp_path: Path) -> None:
    ledger = lawful_with_owners()
    relaxed = ledger.policy({REOPEN: 1})  # actor: the controller, not an owner's governed change
    ledger.mark(lc.IN_SERVICE, lc.IN_UPDATE, CVM)

    assert ("policy_changed", relaxed["seq"]) in [(f.code, f.seq) for f in audit(ledger, tmp_path).findings]


class HidingControllerEntries(FakeSource):
    """Serves the controller's own entries (``?cvm=controller``) without the last ones, whose
    absence no later link would show; the pinned identity names the policy entry."""

    def __init__(self, ledger: EntryLedger, hidden: set[int], policy_seq: int) -> None:
        super().__init__(ledger, owners=(OWNER, SECOND, THIRD))
        self.hidden, self.policy_seq = hidden, policy_seq

    def pin(self) -> ControllerPin:
        return dataclasses.replace(super().pin(), policy_seq=self.policy_seq)

    def get(self, path: str, **query: Any) -> Any:
        answer = super().get(path, **query)
        if path == "/v1/ledger/entries" and query.get("cvm") == lc.CONTROLLER_SCOPE:
            answer["entries"] = [e for e in answer["entries"] if e["seq"] not in self.hidden]
        return answer


def test_a_cvm_audit_misses_no_policy_entry_the_identity_names(tmp_path: Path) -> None:
    ledger = lawful_with_owners()
    raised = ledger.policy({REOPEN: 3}, actor=SECOND)  # the latest policy: nothing after it links to it
    source = HidingControllerEntries(ledger, {raised["seq"]}, policy_seq=raised["seq"])

    result = Auditor(source, HeadStore(tmp_path / "auditor"), cvm=CVM).audit()

    assert ("entry_missing", raised["seq"]) in [(f.code, f.seq) for f in result.findings] and not result.ok
