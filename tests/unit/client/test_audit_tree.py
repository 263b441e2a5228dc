"""The auditor's Merkle arithmetic (client/audit_tree.py) against the controller's own tree.

A frontier must give the root ``MerkleTree`` gives for every size; the frontier a consistency
proof carries must be the true one, and a forged one refused; block hashes kept while streaming
must tile what was streamed; the search must name exactly the altered entries; and the fast
canonical form must be RFC 8785's byte for byte (else an honest entry would look altered).
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duet.client.audit_tree import (
    NO_LEAF,
    Frontier,
    Pinpointer,
    ProofUnavailable,
    RecordingFrontier,
    TreeOracle,
    canonical_fast,
    entry_leaf,
    frontier_in_consistency_proof,
)
from duet.ledger.merkle import MerkleTree, leaf_hash
from duet.protocol.canonical import canonical


class TreeSource:
    """Proofs from a MerkleTree, as the controller serves them; ``forge`` alters consistency proofs."""

    def __init__(self, tree: MerkleTree) -> None:
        self.tree = tree
        self.forge = False
        self.requests = 0

    def get(self, path: str, **query: Any) -> Any:
        self.requests += 1
        if path == "/v1/ledger/proof/consistency":
            proof = self.tree.consistency_proof(query["first"], query["second"])
            if self.forge and proof:
                proof[0] = leaf_hash(b"forged")
            return {"first": query["first"], "second": query["second"], "proof": [h.hex() for h in proof]}
        if path == "/v1/ledger/proof/inclusion":
            return {"audit_path": [h.hex() for h in self.tree.inclusion_proof(query["index"], query["tree_size"])]}
        raise AssertionError(path)


LEAVES = [leaf_hash(b"entry %d" % i) for i in range(300)]
TREE = MerkleTree(LEAVES)


def frontier_of(size: int) -> Frontier:
    frontier = Frontier()
    for leaf in LEAVES[:size]:
        frontier.append(leaf)
    return frontier


def test_a_frontier_gives_the_root_of_every_size() -> None:
    frontier = Frontier()
    for size, leaf in enumerate(LEAVES):
        assert frontier.size == size and frontier.root() == TREE.root(size)
        assert len(frontier.nodes) == bin(size).count("1")  # O(log n): one hash per set bit
        frontier.append(leaf)
    again = Frontier.from_json(frontier.size, json.loads(json.dumps(frontier.to_json())))
    assert again.root() == TREE.root()


def test_appending_a_block_is_appending_its_leaves() -> None:
    frontier = frontier_of(64)
    frontier.append_node(MerkleTree(LEAVES[64:96]).root(), 5)
    assert frontier.root() == TREE.root(96)
    with pytest.raises(ValueError):
        frontier_of(65).append_node(LEAVES[65], 1)  # a block of 2 cannot start at 65


@pytest.mark.parametrize("second", [2, 3, 7, 8, 9, 100, 255, 256, 257, 300])
def test_the_frontier_a_proof_carries_is_the_true_one(second: int) -> None:
    oracle = TreeOracle(TreeSource(TREE), second, TREE.root(second))
    for first in range(second):
        found = oracle.frontier(first)
        if found is None:  # documented gaps: F(1), and a power of two with no second leaf after it
            assert first == 1 or (first & (first - 1) == 0 and first + 1 >= second), first
            continue
        assert (found.size, found.nodes) == (first, frontier_of(first).nodes)
        assert oracle.prefix_ok(frontier_of(first))
        if 0 < first:
            wrong = frontier_of(first)
            wrong.nodes[-1] = leaf_hash(b"not it")
            assert not oracle.prefix_ok(wrong)


def test_a_forged_consistency_proof_is_refused() -> None:
    source = TreeSource(TREE)
    source.forge = True
    oracle = TreeOracle(source, 300, TREE.root())
    with pytest.raises(ProofUnavailable):
        oracle.frontier(100)
    assert frontier_in_consistency_proof(8, 300, TREE.consistency_proof(8, 300)) is None  # a power of two carries none
    assert frontier_in_consistency_proof(5, 300, []) is None


@pytest.mark.parametrize("start", [0, 1, 5, 64, 77])
@pytest.mark.parametrize("max_blocks", [2, 3, 8, 1000])
def test_recorded_blocks_tile_what_was_streamed(start: int, max_blocks: int) -> None:
    for end in (start, start + 1, start + 31, 300):
        stream = RecordingFrontier(frontier_of(start), max_blocks)
        for leaf in LEAVES[start:end]:
            stream.append(leaf)
        assert len(stream.blocks) <= max(2, max_blocks)
        rebuilt = stream.base.copy()
        for tile in stream.tiles():
            rebuilt.append_node(tile.hash, tile.level)
        assert rebuilt.size == end and rebuilt.root() == TREE.root(end) == stream.root()
        assert start <= stream.base.size <= end


ENTRIES = [{"seq": i, "event": "x", "n": i} for i in range(6000)]
ENTRY_TREE = MerkleTree(leaf_hash(canonical(e)) for e in ENTRIES)


@pytest.mark.parametrize("seed", range(12))
def test_the_search_names_exactly_the_altered_entries_with_few_proofs(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([2, 3, 17, 1000, 2049, 6000])
    start = rng.randrange(size)
    altered = set(rng.sample(range(start, size), min(size - start, rng.randint(1, 4))))
    served = [{**e, "n": "evil"} if e["seq"] in altered else e for e in ENTRIES[:size]]
    source = TreeSource(ENTRY_TREE)
    oracle = TreeOracle(source, size, ENTRY_TREE.root(size))
    anchor = Frontier()
    for entry in ENTRIES[:start]:
        anchor.append(entry_leaf(entry))
    stream = RecordingFrontier(anchor, max_blocks=64)
    for entry in served[start:]:
        stream.append(entry_leaf(entry))
    assert not oracle.prefix_ok(stream)
    finder = Pinpointer(oracle, lambda lo, hi: iter(served[lo:hi]), max_blocks=64)
    finder.recorded(stream)
    assert sorted(position for position, _ in finder.found) == sorted(altered)
    assert [entry["n"] for _, entry in finder.found] == ["evil"] * len(altered)
    assert source.requests <= len(altered) * 4 * (math.log2(size) + 2)  # O(log n) proofs per altered entry


def test_the_search_stops_at_its_limit() -> None:
    served = [{**e, "n": "evil"} if e["seq"] % 7 == 0 else e for e in ENTRIES[:700]]
    oracle = TreeOracle(TreeSource(ENTRY_TREE), 700, ENTRY_TREE.root(700))
    stream = RecordingFrontier(Frontier())
    for entry in served:
        stream.append(entry_leaf(entry))
    finder = Pinpointer(oracle, lambda lo, hi: iter(served[lo:hi]), limit=5)
    finder.recorded(stream)
    assert [position for position, _ in finder.found] == [0, 7, 14, 21, 28] and finder.full


# --- the canonical form ------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


def same_as_rfc8785(value: Any) -> None:
    try:
        expected: bytes | type[Exception] = canonical(value)
    except Exception as exc:  # no RFC 8785 form: the fast path must refuse it too
        expected = type(exc)
    try:
        got: bytes | type[Exception] = canonical_fast(value)
    except Exception as exc:
        got = type(exc)
    assert got == expected, value


@settings(max_examples=600, deadline=None)
@given(JSON_VALUES)
def test_the_fast_canonical_form_is_rfc8785(value: Any) -> None:
    same_as_rfc8785(value)


@settings(max_examples=2000, deadline=None)
@given(st.floats(min_value=-1e17, max_value=1e17, allow_nan=False) | st.floats(min_value=-1e-3, max_value=1e-3))
def test_floats_print_as_ecmascript_does(value: float) -> None:
    """The fast path keeps Python's shortest repr for 1e-4 <= |x| < 1e16 (and prints integral
    floats as integers): that must be RFC 8785's (ECMAScript's) number form."""
    same_as_rfc8785({"duration_ms": value, "nested": [value]})


@pytest.mark.parametrize(
    "value",
    [
        5.0,
        -0.0,
        0.1,
        1e-4,
        9.999e-5,
        1e16,
        123456789012345.6,
        1e21,
        2**53 - 1,
        2**53,
        -(2**53),
        "\ud800",
        '\u2028\u007f\x00\x1f"\\/é😀',
        {"é": 1, "e": 2},
        {"\U0001f600": 1, "\ufb01": 2},  # UTF-16 order differs from code points here
        {1: "not a string key"},
        [1.5, {"a": [2.0, None, True]}],
        float("nan"),
    ],
)
def test_the_fast_canonical_form_at_its_edges(value: Any) -> None:
    same_as_rfc8785(value)


def test_an_entry_with_no_canonical_form_hashes_to_no_leaf() -> None:
    assert entry_leaf({"seq": 2**60}) == NO_LEAF
    assert entry_leaf({"seq": 1, "x": "\ud800"}) == NO_LEAF
    assert entry_leaf({"seq": 1}) == leaf_hash(canonical({"seq": 1}))
