"""The ledger log: entries in SQLite, proofs and heads from the in-memory tree, live feed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from duet import keys
from duet.controller.api import http_status
from duet.controller.sealed_state import SealedStateError, read_anchor_file
from duet.errors import InvalidParams, VerificationError
from duet.ledger.heads import sign_head, verify_head
from duet.ledger.log import MAX_PAGE, Ledger, LedgerCorrupted, LedgerTampered
from duet.ledger.merkle import MerkleError, leaf_hash, verify_consistency, verify_inclusion
from duet.protocol.canonical import canonical
from duet.storage import Database
from support import open_ledger


def make_ledger(directory: Path, controller: str = "c" * 64) -> Ledger:
    return open_ledger(directory, controller)


def add(ledger: Ledger, cvm: str | None, event: str = "x", **fields: object) -> dict[str, object]:
    with ledger.db.transaction() as tx:
        return ledger.append(tx, cvm=cvm, event=event, actor="test", **fields)


def test_proofs_on_the_wire_verify_against_the_head(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    for i in range(13):
        add(ledger, f"cvm{i % 3}", n=i)
    head = ledger.head()
    root = bytes.fromhex(head["root_hash"])
    for entry in ledger.entries():
        proof = ledger.inclusion(entry["seq"], head["tree_size"])
        assert proof["index"] == entry["seq"] and proof["tree_size"] == 13
        path = [bytes.fromhex(h) for h in proof["audit_path"]]
        assert verify_inclusion(leaf_hash(canonical(entry)), entry["seq"], 13, path, root)
    old_root = ledger.tree.root(5)
    proof = ledger.consistency(5, 13)
    assert (proof["first"], proof["second"]) == (5, 13)
    assert verify_consistency(5, 13, old_root, root, [bytes.fromhex(h) for h in proof["proof"]])
    assert all(h == h.lower() and len(h) == 64 for h in proof["proof"])


@pytest.mark.parametrize("index,size", [(13, 13), (-1, 5), (0, 0), (0, 14)])
def test_bad_proof_requests_are_typed_4xx_errors(tmp_path: Path, index: int, size: int) -> None:
    ledger = make_ledger(tmp_path)
    for i in range(13):
        add(ledger, None, n=i)
    with pytest.raises(MerkleError) as caught:
        ledger.inclusion(index, size)
    assert http_status(caught.value) == 422  # the API answers it as invalid parameters
    with pytest.raises(MerkleError):
        ledger.consistency(7, 3)


def test_the_tree_is_rebuilt_from_disk_with_the_same_root(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    for i in range(10):
        add(ledger, "a", n=i)
    root = ledger.head()["root_hash"]
    ledger.db.close()
    again = make_ledger(tmp_path)
    assert again.size == 10 and again.head()["root_hash"] == root


def test_an_edited_disk_is_refused_at_open(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    for i in range(4):
        add(ledger, "a", n=i)
    entry = json.loads(ledger.db.execute("SELECT entry FROM ledger WHERE seq = 2").fetchone()[0])
    entry["n"] = 99
    ledger.db.execute("UPDATE ledger SET entry = ? WHERE seq = 2", (canonical(entry),))
    ledger.db.close()
    with pytest.raises(LedgerTampered, match="do not hash to the root sealed"):
        make_ledger(tmp_path)


@pytest.mark.parametrize(
    "attack,message",
    [
        ("DELETE FROM ledger WHERE seq = 5", "its tail was deleted"),
        ("DELETE FROM ledger WHERE seq = 2", "not contiguous"),
        ("UPDATE ledger SET cvm_id = NULL WHERE seq = 3", "re-tagged"),
    ],
)
def test_a_truncated_or_retagged_ledger_is_refused_at_open(tmp_path: Path, attack: str, message: str) -> None:
    ledger = make_ledger(tmp_path)
    for i in range(6):
        add(ledger, "a", n=i)
    ledger.db.execute(attack)
    ledger.db.close()
    with pytest.raises(LedgerTampered, match=message):
        make_ledger(tmp_path)


def test_an_entry_appended_by_the_host_is_refused_but_a_crash_tail_is_kept(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    for i in range(3):
        add(ledger, "a", n=i)
    sealed_size = ledger.anchor.head.tree_size
    # A commit whose seal never happened (a crash in between): the entry carries the MAC.
    forged_free = {"seq": 3, "time": "t", "cvm": "a", "cvm_prev": 2, "event": "x", "actor": "test", "request_digest": None}
    data = canonical(forged_free)
    ledger.db.execute("INSERT INTO ledger (seq, cvm_id, entry, mac) VALUES (3, 'a', ?, ?)", (data, ledger.anchor.entry_mac(data)))
    ledger.db.close()
    again = make_ledger(tmp_path)
    assert sealed_size == 3 and again.size == 4 and again.anchor.head.tree_size == 4
    # The host's own entry: no valid MAC.
    forged = canonical({**forged_free, "seq": 4, "cvm_prev": 3, "event": "mode.changed"})
    again.db.execute("INSERT INTO ledger (seq, cvm_id, entry, mac) VALUES (4, 'a', ?, ?)", (forged, b"\0" * 32))
    again.db.close()
    with pytest.raises(LedgerTampered, match="not written by this controller"):
        make_ledger(tmp_path)


def test_entries_edited_while_running_are_not_served_and_the_index_ignores_the_column(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    for i in range(6):
        add(ledger, "a" if i % 2 else "b", n=i)
    ledger.db.execute("UPDATE ledger SET cvm_id = NULL WHERE cvm_id = 'a'")
    assert [e["seq"] for e in ledger.entries(cvm="a")] == [1, 3, 5]
    assert [e["cvm_prev"] for e in ledger.entries(cvm="a")] == [None, 1, 3]
    assert add(ledger, "a")["cvm_prev"] == 5
    entry = json.loads(ledger.db.execute("SELECT entry FROM ledger WHERE seq = 3").fetchone()[0])
    ledger.db.execute("UPDATE ledger SET entry = ? WHERE seq = 3", (canonical({**entry, "n": 99}),))
    with pytest.raises(LedgerCorrupted, match="entry 3 was altered"):
        ledger.entries(cvm="a")
    ledger.db.execute("DELETE FROM ledger WHERE seq = 3")
    with pytest.raises(LedgerCorrupted, match="deleted"):
        ledger.page(0, None, "a")


def test_each_entry_links_to_the_previous_entry_of_its_cvm(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    with ledger.db.transaction() as tx:  # several entries in one transaction link too
        ledger.append(tx, cvm="a", event="x", actor="t")
        ledger.append(tx, cvm="b", event="x", actor="t")
        ledger.append(tx, cvm="a", event="x", actor="t")
    add(ledger, None)
    add(ledger, "a")
    add(ledger, None)
    assert [(e["seq"], e["cvm_prev"]) for e in ledger.entries()] == [(0, None), (1, None), (2, 0), (3, None), (4, 2), (5, 3)]
    with pytest.raises(ValueError):
        add(ledger, "a", cvm_prev=1)


def test_pages_are_bounded_and_say_where_the_next_starts(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    with ledger.db.transaction() as tx:
        for i in range(MAX_PAGE + 50):
            ledger.append(tx, cvm="a" if i % 2 else "b", event="x", actor="t")
    page = ledger.page(0)
    assert len(page["entries"]) == MAX_PAGE and page["end"] == MAX_PAGE and page["tree_size"] == MAX_PAGE + 50
    rest = ledger.page(page["end"])
    assert len(rest["entries"]) == 50 and rest["end"] == MAX_PAGE + 50
    small = ledger.page(10, 30, cvm="a", limit=4)
    assert [e["seq"] for e in small["entries"]] == [11, 13, 15, 17] and small["end"] == 18
    assert ledger.page(18, 30, cvm="a")["end"] == 30
    for start, end in [(-1, 3), (5, 4), (0, MAX_PAGE + 51)]:
        with pytest.raises(InvalidParams):
            ledger.page(start, end)


def test_signed_heads_verify_and_any_change_breaks_them(tmp_path: Path) -> None:
    key = keys.generate("ed25519")
    controller = keys.key_id(key.public_key())
    ledger = make_ledger(tmp_path, controller)
    add(ledger, "a")
    head = sign_head(ledger.head(), key)
    assert verify_head(head, controller=controller, public_key=key.public_key()).tree_size == 1
    for name, value in [("tree_size", 2), ("root_hash", "0" * 64), ("timestamp", "2020-01-01T00:00:00.000Z")]:
        with pytest.raises(VerificationError) as caught:
            verify_head({**head, name: value}, controller=controller, public_key=key.public_key())
        assert caught.value.code == "bad_head_signature"
    other = keys.generate("ed25519")
    with pytest.raises(VerificationError):
        verify_head(head, controller=controller, public_key=other.public_key())
    with pytest.raises(VerificationError) as caught:
        verify_head({**head, "extra": 1}, controller=controller, public_key=key.public_key())
    assert caught.value.code == "bad_head"


async def test_a_subscription_sees_each_committed_entry_once(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    subscription = ledger.subscription(maxsize=8)
    with ledger.db.transaction() as tx:
        ledger.append(tx, cvm="a", event="x", actor="t")
        ledger.append(tx, cvm="a", event="y", actor="t")
    with pytest.raises(RuntimeError), ledger.db.transaction() as tx:  # rolled back: never announced
        ledger.append(tx, cvm="a", event="lost", actor="t")
        raise RuntimeError
    add(ledger, "a", "z")
    got = [await subscription.get(timeout=1) for _ in range(3)]
    assert [e["event"] for e in got] == ["x", "y", "z"] and [e["seq"] for e in got] == [0, 1, 2]
    with pytest.raises(TimeoutError):
        await subscription.get(timeout=0.01)
    subscription.close()


async def test_a_slow_subscriber_is_dropped_not_buffered(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    slow = ledger.subscription(maxsize=4)
    for i in range(10):
        add(ledger, "a", n=i)
    assert slow.overflowed
    assert ledger._listeners == []  # no longer fed
    seen = []
    while (entry := await slow.get(timeout=1)) is not None:
        seen.append(entry["seq"])
    assert seen == [0, 1, 2, 3]  # the rest is read back from the ledger on resume


async def test_end_stops_a_feed_from_another_thread(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    subscription = ledger.subscription()
    await asyncio.to_thread(subscription.end)
    assert await subscription.get(timeout=1) is None


def test_the_sealed_anchor_survives_a_torn_write_of_its_newer_slot(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    for i in range(3):
        add(ledger, "a", n=i)
    path = ledger.anchor.path  # type: ignore[attr-defined]
    generation, slot_size, data = read_anchor_file(path)
    assert data["head"]["tree_size"] == 3
    image = bytearray(path.read_bytes())
    newer = (generation % 2) * slot_size
    image[newer + 100 : newer + 110] = b"x" * 10  # a crash in the middle of writing it
    path.write_bytes(bytes(image))
    assert read_anchor_file(path)[0] == generation - 1 and read_anchor_file(path)[2]["head"]["tree_size"] == 2
    image[slot_size - newer + 100 : slot_size - newer + 110] = b"x" * 10  # both slots torn: nothing to trust
    path.write_bytes(bytes(image))
    with pytest.raises(SealedStateError, match="no intact slot"):
        read_anchor_file(path)


def test_an_older_anchor_accepts_only_the_transaction_right_after_it(tmp_path: Path) -> None:
    """The host keeps a copy of the sealed anchor, lets history grow, then puts the copy back and
    cuts the database where it likes: only the one transaction after the old head may verify."""
    ledger = make_ledger(tmp_path)
    add(ledger, "a", n=0)
    path = ledger.anchor.path  # type: ignore[attr-defined]
    old_anchor = path.read_bytes()
    for i in range(1, 6):
        add(ledger, "a", n=i)  # one transaction each
    ledger.db.close()
    path.write_bytes(old_anchor)

    with pytest.raises(LedgerTampered, match="entry 2 lies after the sealed head"):
        make_ledger(tmp_path)  # the whole newer ledger: entry 2 was written after another head
    cut = Database(tmp_path / "db.sqlite3")
    cut.execute("DELETE FROM ledger WHERE seq >= 3")
    cut.close()
    with pytest.raises(LedgerTampered, match="entry 2 lies after the sealed head"):
        make_ledger(tmp_path)  # cut after a later transaction: still refused
    cut = Database(tmp_path / "db.sqlite3")
    cut.execute("DELETE FROM ledger WHERE seq >= 2")
    cut.close()
    assert make_ledger(tmp_path).size == 2  # the transaction right after the old head: a crash window
