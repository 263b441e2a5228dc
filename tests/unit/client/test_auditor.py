"""The auditor against in-process ledgers: every kind of lie is reported, honest ledgers pass.

``LedgerSource`` answers like a controller (signed heads, pages, proofs) straight from a real
Ledger, and can be switched to another ledger with the same key: that is a controller (or its
disk) presenting a different history.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from duet import keys
from duet.client.audit import Auditor, HeadStore
from duet.client.trust import ControllerPin
from duet.errors import NotFound, VerificationError
from duet.ledger.heads import sign_head
from duet.ledger.log import Ledger
from duet.protocol.canonical import canonical
from support import open_ledger

KEY = keys.generate("ed25519")
CONTROLLER = keys.key_id(KEY.public_key())


class LedgerSource:
    url = "http://controller.test"
    first_contact = False

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.blobs: dict[str, bytes] = {}
        self.tamper: dict[int, dict[str, Any]] = {}
        self.hide: set[int] = set()

    def pin(self) -> ControllerPin:
        return ControllerPin(CONTROLLER, keys.public_pem(KEY.public_key()).decode(), "none")

    def get(self, path: str, **query: Any) -> Any:
        if path == "/v1/ledger/head":
            return sign_head(self.ledger.head(), KEY)
        if path == "/v1/ledger/entries":
            page = self.ledger.page(query["start"], query["end"], query.get("cvm"))
            page["entries"] = [self.tamper.get(e["seq"], e) for e in page["entries"] if e["seq"] not in self.hide]
            return page
        if path == "/v1/ledger/proof/inclusion":
            return self.ledger.inclusion(query["index"], query["tree_size"])
        if path == "/v1/ledger/proof/consistency":
            return self.ledger.consistency(query["first"], query["second"])
        raise AssertionError(path)

    def blob(self, sha256: str) -> bytes:
        if sha256 not in self.blobs:
            raise NotFound("no such output", code="unknown_blob")
        if hashlib.sha256(self.blobs[sha256]).hexdigest() != sha256:
            raise VerificationError("does not match its hash", code="blob_mismatch")
        return self.blobs[sha256]


def new_ledger(directory: Path) -> Ledger:
    return open_ledger(directory, CONTROLLER)


def append(ledger: Ledger, cvm: str | None = "a", event: str = "x", **fields: Any) -> dict[str, Any]:
    with ledger.db.transaction() as tx:
        return ledger.append(tx, cvm=cvm, event=event, actor="test", **fields)


def history(ledger: Ledger, n: int, tag: str = "") -> None:
    """Entries about CVMs a and b; each CVM's first is its provisioning, so audits find the
    history lawful (the other events mean nothing to the lifecycle rules)."""
    for i in range(n):
        cvm = "a" if i % 2 else "b"
        append(ledger, cvm, "x" if ledger.entries(cvm=cvm) else "cvm.provisioning", n=f"{tag}{i}")


def codes(result: Any) -> list[str]:
    return [f.code for f in result.findings]


def test_an_honest_ledger_verifies_and_its_head_is_kept(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "c")
    history(ledger, 9)
    store = HeadStore(tmp_path / "user")
    for cvm in (None, "a"):
        result = Auditor(LedgerSource(ledger), store, cvm=cvm).audit()
        assert result.ok, result.findings
        assert [e["seq"] for e in result.entries] == (list(range(9)) if cvm is None else [1, 3, 5, 7])
    assert store.last(CONTROLLER).tree_size == 9  # type: ignore[union-attr]


def test_a_grown_ledger_is_proven_consistent(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "c")
    history(ledger, 5)
    store = HeadStore(tmp_path / "user")
    assert Auditor(LedgerSource(ledger), store).audit().ok
    history(ledger, 6)
    result = Auditor(LedgerSource(ledger), store, cvm="a").audit()
    assert result.ok and result.previous.tree_size == 5 and result.head.tree_size == 11  # type: ignore[union-attr]


def test_a_shrunk_ledger_is_a_rollback(tmp_path: Path) -> None:
    store = HeadStore(tmp_path / "user")
    old, new = new_ledger(tmp_path / "old"), new_ledger(tmp_path / "new")
    history(old, 3)
    history(new, 5)
    assert Auditor(LedgerSource(new), store).audit().ok
    result = Auditor(LedgerSource(old), store).audit()
    assert codes(result) == ["ledger_shrank"] and "ROLLBACK" in result.findings[0].message
    evidence = json.loads(Path(result.evidence).read_text())  # type: ignore[arg-type]
    assert evidence["earlier_head"]["tree_size"] == 5 and evidence["later_head"]["tree_size"] == 3
    assert store.last(CONTROLLER).tree_size == 5  # type: ignore[union-attr]  # the bad head is not adopted


def test_two_histories_of_one_size_are_a_fork(tmp_path: Path) -> None:
    store = HeadStore(tmp_path / "user")
    one, two = new_ledger(tmp_path / "1"), new_ledger(tmp_path / "2")
    history(one, 4, "one")
    history(two, 4, "two")
    assert Auditor(LedgerSource(one), store).audit().ok
    result = Auditor(LedgerSource(two), store).audit()
    assert codes(result) == ["fork"]
    assert Auditor(LedgerSource(two), store).audit().findings[0].code == "fork"  # and it stays reported


def test_a_longer_rewritten_history_fails_consistency(tmp_path: Path) -> None:
    store = HeadStore(tmp_path / "user")
    one, two = new_ledger(tmp_path / "1"), new_ledger(tmp_path / "2")
    history(one, 4, "one")
    history(two, 7, "two")
    assert Auditor(LedgerSource(one), store).audit().ok
    assert codes(Auditor(LedgerSource(two), store).audit()) == ["inconsistent_head"]


def test_an_altered_entry_is_named(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "c")
    history(ledger, 8)
    for cvm in (None, "a"):
        source = LedgerSource(ledger)
        entry = ledger.entries(5, 6)[0]
        source.tamper[5] = {**entry, "n": "rewritten"}
        result = Auditor(source, HeadStore(tmp_path / f"user-{cvm}"), cvm=cvm).audit()
        assert codes(result) == ["entry_altered"] and result.findings[0].seq == 5
        assert result.bad_seqs == {5}


def test_a_hidden_entry_is_named(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "c")
    history(ledger, 8)
    for cvm in (None, "a"):
        source = LedgerSource(ledger)
        source.hide.add(3)
        result = Auditor(source, HeadStore(tmp_path / f"user-{cvm}"), cvm=cvm).audit()
        assert "entry_missing" in codes(result) and result.findings[0].seq == 3, result.findings


def test_an_entry_of_another_cvm_in_a_cvm_view_is_reported(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "c")
    history(ledger, 4)
    source = LedgerSource(ledger)
    source.tamper[1] = ledger.entries(0, 1)[0]  # serve entry 0 (CVM b) in place of entry 1 (CVM a)
    result = Auditor(source, HeadStore(tmp_path / "user"), cvm="a").audit()
    assert "wrong_cvm" in codes(result) or "entry_misplaced" in codes(result)
    assert not result.ok


def test_long_checks_outputs_against_their_hashes(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "c")
    good, bad = b"hello\n", b"evil\n"
    good_sha, bad_sha = hashlib.sha256(good).hexdigest(), hashlib.sha256(b"original\n").hexdigest()
    append(ledger, "a", "cvm.provisioning")
    append(ledger, "a", "cvm.ready", mode="in-update")
    started = append(ledger, "a", "command.started", command="echo hello")
    append(
        ledger,
        "a",
        "command.finished",
        command="echo hello",
        started_seq=started["seq"],
        stdout_sha256=good_sha,
        stderr_sha256=bad_sha,
        exit_status=0,
    )
    source = LedgerSource(ledger)
    source.blobs = {good_sha: good, bad_sha: bad}
    result = Auditor(source, HeadStore(tmp_path / "user"), cvm="a", long=True).audit()
    assert codes(result) == ["output_altered"] and result.outputs == {good_sha: "hello\n"}


def test_follow_checks_only_new_entries_and_new_heads(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path / "c")
    history(ledger, 3)
    source = LedgerSource(ledger)
    auditor = Auditor(source, HeadStore(tmp_path / "user"), cvm="a")
    assert auditor.audit().ok
    append(ledger, "a", "cvm.ready", mode="in-update")
    append(ledger, "b")
    result = auditor.follow()
    assert result.ok and [e["seq"] for e in result.entries] == [3]
    assert auditor.follow().entries == []
    other = new_ledger(tmp_path / "other")
    history(other, 5)
    source.ledger = other  # the controller's disk was swapped under the follower
    assert codes(auditor.follow()) == ["fork"]


@settings(max_examples=40, deadline=None)
@given(
    common=st.integers(0, 6),
    tails=st.tuples(st.integers(0, 6), st.integers(0, 6)),
    order=st.lists(st.tuples(st.sampled_from([0, 1]), st.integers(0, 12)), min_size=1, max_size=6),
)
def test_an_auditor_never_accepts_two_histories_that_diverge(
    tmp_path_factory: Any, common: int, tails: tuple[int, int], order: list[tuple[int, int]]
) -> None:
    """Whatever heads of two diverging histories it is shown, in any order and at any sizes,
    every pair of heads the auditor accepted is a prefix of one history."""
    base = tmp_path_factory.mktemp("fork")
    ledgers = [new_ledger(base / "0"), new_ledger(base / "1")]
    for ledger in ledgers:
        history(ledger, common, "shared")
    for which, ledger in enumerate(ledgers):
        history(ledger, tails[which], f"branch{which}")
    full = [[canonical(e) for e in ledger.entries()] for ledger in ledgers]
    # Shadow ledgers grow to the size the auditor is shown next (size = what the controller shows).
    shown = [new_ledger(base / "s0"), new_ledger(base / "s1")]
    store = HeadStore(base / "user")
    accepted: list[tuple[int, int]] = []
    for which, grow in order:
        target = min(shown[which].size + grow, len(full[which]))
        for data in full[which][shown[which].size : target]:
            entry = json.loads(data)
            with shown[which].db.transaction() as tx:
                shown[which].append(tx, cvm=entry["cvm"], event=entry["event"], actor="test", n=entry["n"])
        if Auditor(LedgerSource(shown[which]), store).audit().ok:
            accepted.append((which, shown[which].size))
    for (w1, s1), (w2, s2) in zip(accepted, accepted[1:]):
        assert s1 <= s2
        if w1 != w2:  # switching branches is only accepted while still inside the shared prefix
            assert s1 <= common
