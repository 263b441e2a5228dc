"""Audits check the rules, not only the hashes (issue 9, item 7).

Each ledger here is intact: every entry hashes into the signed head. Yet each shows a sequence
the lifecycle forbids, and the audit must report it as a finding with the entry's seq and fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ledger_fakes import CVM, INTRUDER, OTHER_CVM, OWNER, EntryLedger, FakeSource, in_service, lawful

from duet.client.audit import Auditor, AuditResult, HeadStore
from duet.protocol import lifecycle as lc


def audit(ledger: EntryLedger, tmp_path: Path, *, cvm: str | None = None, owners: tuple[str, ...] = (OWNER,)) -> AuditResult:
    return Auditor(FakeSource(ledger, owners=owners), HeadStore(tmp_path / "auditor"), cvm=cvm).audit()


def findings(result: AuditResult) -> list[tuple[str, int | None]]:
    return [(f.code, f.seq) for f in result.findings]


def row(result: AuditResult, seq: int) -> dict[str, Any]:
    return next(r for r in result.to_json()["timeline"] if r["seq"] == seq)


@pytest.mark.parametrize("cvm", [None, CVM], ids=["whole-ledger", "one-cvm"])
def test_a_lawful_lifecycle_passes(tmp_path: Path, cvm: str | None) -> None:
    ledger = lawful()
    result = audit(ledger, tmp_path, cvm=cvm)
    assert result.ok and result.findings == []
    assert all(r["violation"] is None and r["verified"] for r in result.to_json()["timeline"])


def test_two_interleaved_lawful_cvms_pass(tmp_path: Path) -> None:
    ledger = EntryLedger()
    ledger.owners(OWNER)
    ledger.provision(CVM)
    ledger.provision(OTHER_CVM)
    ledger.ready(OTHER_CVM)
    ledger.ready(CVM)
    ledger.run(CVM)
    ledger.run(OTHER_CVM)
    ledger.mark(lc.IN_UPDATE, lc.IN_SERVICE, OTHER_CVM)
    for cvm in (None, CVM, OTHER_CVM):
        assert audit(ledger, tmp_path / str(cvm), cvm=cvm).findings == []


@pytest.mark.parametrize("cvm", [None, CVM], ids=["whole-ledger", "one-cvm"])
def test_a_command_started_in_service_is_a_finding(tmp_path: Path, cvm: str | None) -> None:
    ledger = in_service()
    started = ledger.run()  # attack 1: the database said in-update, the ledger says in-service
    result = audit(ledger, tmp_path, cvm=cvm)
    assert findings(result) == [("command_outside_update", started["seq"])] and not result.ok
    assert row(result, started["seq"])["violation"] == "command_outside_update"
    assert row(result, started["seq"])["verified"] is True  # the entry is genuine; what it shows is forbidden
    assert result.bad_seqs == set()


def test_anything_but_a_stop_after_the_lockdown_is_a_finding(tmp_path: Path) -> None:
    ledger = in_service()
    ledger.mark(lc.IN_SERVICE, lc.IN_SERVICE, final=True)
    ledger.locked()
    resumed = ledger.add(CVM, lc.CVM_RESUMED, host="10.0.0.9", port=22)
    result = audit(ledger, tmp_path)
    assert findings(result) == [("after_lockdown", resumed["seq"])] and not result.ok


@pytest.mark.parametrize("cvm", [None, CVM], ids=["whole-ledger", "one-cvm"])
def test_an_actor_outside_the_owner_set_is_a_finding(tmp_path: Path, cvm: str | None) -> None:
    ledger = in_service()
    reopened = ledger.mark(lc.IN_SERVICE, lc.IN_UPDATE, actor=INTRUDER)  # attack 4: an inserted owner key
    result = audit(ledger, tmp_path, cvm=cvm)
    assert findings(result) == [("unknown_actor", reopened["seq"])] and not result.ok


@pytest.mark.parametrize("cvm", [None, CVM], ids=["whole-ledger", "one-cvm"])
def test_an_owner_set_other_than_the_pinned_identitys_is_a_finding(tmp_path: Path, cvm: str | None) -> None:
    """A CVM's audit reads the controller's own entries too: the owner set in force is the ledger's,
    held to the pinned identity's (here the host's key was pinned, the ledger names the owner's)."""
    ledger = in_service()
    result = audit(ledger, tmp_path / "other-owners", cvm=cvm, owners=(INTRUDER,))
    owners_entry = next(e["seq"] for e in ledger.entries if e["event"] == lc.CONTROLLER_OWNERS)
    assert findings(result) == [("owners_not_as_pinned", owners_entry)] and not result.ok
    assert audit(ledger, tmp_path / "no-owners", cvm=cvm, owners=()).ok  # none pinned: nothing to compare


def test_a_mode_change_the_table_forbids_is_a_finding(tmp_path: Path) -> None:
    ledger = in_service()
    changed = ledger.mark(lc.IN_SERVICE, lc.STOPPED)
    result = audit(ledger, tmp_path)
    assert findings(result) == [("forbidden_transition", changed["seq"])] and not result.ok


def test_a_final_cvm_back_in_update_is_a_finding(tmp_path: Path) -> None:
    ledger = in_service()
    ledger.mark(lc.IN_SERVICE, lc.IN_SERVICE, final=True)
    reopened = ledger.mark(lc.IN_SERVICE, lc.IN_UPDATE, final=True)  # attack 2: mode='in-update' written back
    result = audit(ledger, tmp_path)
    assert findings(result) == [("final_reopened", reopened["seq"])] and not result.ok


def test_an_event_in_a_mode_that_forbids_it_is_a_finding(tmp_path: Path) -> None:
    ledger = in_service()
    stopped = ledger.add(CVM, lc.CVM_STOPPED, key_destroyed=True)  # stopped without stopping
    result = audit(ledger, tmp_path)
    assert findings(result) == [("forbidden_in_mode", stopped["seq"])] and not result.ok


def test_a_controller_start_that_resumed_elsewhere_is_a_finding(tmp_path: Path) -> None:
    ledger = in_service()
    started = ledger.add(None, lc.CONTROLLER_STARTED, resumed_from=ledger.size - 2)  # entries vanished in between
    result = audit(ledger, tmp_path)
    assert findings(result) == [("resumed_elsewhere", started["seq"])] and not result.ok
    honest = in_service()
    honest.add(None, lc.CONTROLLER_STARTED, resumed_from=honest.size)
    assert audit(honest, tmp_path / "honest").ok


def test_an_owner_set_changed_without_governance_is_a_finding(tmp_path: Path) -> None:
    ledger = in_service()
    changed = ledger.owners(OWNER, INTRUDER)  # attack 5: the owner key file swapped at a restart
    result = audit(ledger, tmp_path)
    assert findings(result) == [("owners_changed", changed["seq"])] and not result.ok


def test_an_outcome_of_no_running_command_is_a_finding(tmp_path: Path) -> None:
    ledger = in_service()
    started = next(e for e in ledger.entries if e["event"] == lc.COMMAND_STARTED)
    again = ledger.add(CVM, lc.COMMAND_FINISHED, command=started["command"], started_seq=started["seq"], exit_status=0)
    result = audit(ledger, tmp_path)
    assert findings(result) == [("orphan_outcome", again["seq"])] and not result.ok


def test_events_about_a_cvm_never_provisioned_are_a_finding(tmp_path: Path) -> None:
    ledger = in_service()
    ghost = ledger.add(OTHER_CVM, lc.COMMAND_STARTED, OWNER, command="cat /etc/shadow")
    result = audit(ledger, tmp_path)
    assert findings(result) == [("unknown_cvm", ghost["seq"])] and not result.ok


def test_follow_keeps_one_replay_across_rounds(tmp_path: Path) -> None:
    ledger = in_service()
    source = FakeSource(ledger)
    auditor = Auditor(source, HeadStore(tmp_path / "auditor"), cvm=CVM)
    assert auditor.audit().ok
    assert auditor.follow().findings == []  # nothing new: nothing fed twice
    started = ledger.run()  # only the replay of the earlier round knows the CVM is in service
    result = auditor.follow()
    assert [e["seq"] for e in result.entries] == [started["seq"], started["seq"] + 1]
    assert findings(result) == [("command_outside_update", started["seq"])]
    assert row(result, started["seq"])["mode"] == lc.IN_SERVICE
    ledger.mark(lc.IN_SERVICE, lc.IN_UPDATE)
    assert auditor.follow().findings == []  # reported once, in the round that showed it
    fresh = auditor.audit()  # a new audit replays from the start and finds it again
    assert findings(fresh) == [("command_outside_update", started["seq"])]


def test_a_round_whose_hashes_fail_is_not_replayed(tmp_path: Path) -> None:
    """Rules are judged on entries the controller signed; an altered entry is reported as
    altered, and what it claims is not held against the controller."""
    ledger = in_service()
    started = next(e for e in ledger.entries if e["event"] == lc.COMMAND_STARTED)
    source = FakeSource(ledger)
    source.tamper[started["seq"]] = {**started, "actor": INTRUDER}
    result = Auditor(source, HeadStore(tmp_path / "auditor")).audit()
    assert findings(result) == [("entry_altered", started["seq"])]


def test_the_timeline_shows_a_pending_lockdown(tmp_path: Path) -> None:
    ledger = in_service()
    final = ledger.mark(lc.IN_SERVICE, lc.IN_SERVICE, final=True)
    failed = ledger.locked(ok=False)
    done = ledger.locked(ok=True)
    result = audit(ledger, tmp_path)
    assert result.ok, result.findings
    assert row(result, final["seq"])["mode"] == "in-service (final, lockdown pending)"
    assert row(result, failed["seq"])["mode"] == "in-service (final, lockdown pending)"
    assert row(result, done["seq"])["mode"] == "in-service (final)"
    assert row(result, 1)["mode"] == lc.PROVISIONING and row(result, 2)["mode"] == lc.IN_UPDATE
