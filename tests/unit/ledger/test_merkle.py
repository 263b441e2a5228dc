"""Tests for duet.ledger.merkle: public CT vectors, a naive RFC 9162 reference, properties."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duet.controller.api import http_status
from duet.ledger.merkle import (
    EMPTY_ROOT,
    MerkleError,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS = json.loads((Path(__file__).parents[2] / "assets" / "ct_merkle_vectors.json").read_text())
H = bytes.fromhex


# --- naive reference: RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1 written as plainly as possible -------


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def ref_mth(d: tuple[bytes, ...]) -> bytes:
    if len(d) == 0:
        return _sha(b"")
    if len(d) == 1:
        return _sha(b"\x00" + d[0])
    k = _k(len(d))
    return _sha(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: tuple[bytes, ...], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_proof(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    return ref_subproof(m, d, True)


def ref_path_shape(m: int, n: int) -> list[str]:
    """Which side each audit-path node sits on; the only thing an inclusion proof binds of n."""
    if n == 1:
        return []
    k = _k(n)
    return ref_path_shape(m, k) + ["R"] if m < k else ref_path_shape(m - k, n - k) + ["L"]


def data(i: int) -> bytes:
    """Distinct leaf data, so no two leaves share a hash (equal siblings make order unobservable)."""
    return b"entry-%d" % i


# --- known answers from public CT test data ----------------------------------------------------


def test_hasher_vectors() -> None:
    for case in VECTORS["hasher"]:
        if "leaf_data" in case:
            assert leaf_hash(H(case["leaf_data"])).hex() == case["want"], case["desc"]
        else:
            assert node_hash(H(case["left"]), H(case["right"])).hex() == case["want"], case["desc"]
    assert EMPTY_ROOT.hex() == VECTORS["empty_tree_root"]
    assert MerkleTree().root() == EMPTY_ROOT


@pytest.fixture(scope="module")
def ct_tree() -> MerkleTree:
    return MerkleTree(leaf_hash(H(x)) for x in VECTORS["leaves"])


def test_known_roots(ct_tree: MerkleTree) -> None:
    for size, root in enumerate(VECTORS["roots"], start=1):
        assert ct_tree.root(size).hex() == root
        incremental = MerkleTree()
        for x in VECTORS["leaves"][:size]:
            incremental.append(leaf_hash(H(x)))
        assert incremental.root().hex() == root


def test_known_inclusion_proofs(ct_tree: MerkleTree) -> None:
    for v in VECTORS["inclusion_proofs"]:
        index, size, want = v["leaf"] - 1, v["size"], [H(p) for p in v["proof"]]
        assert ct_tree.inclusion_proof(index, size) == want
        leaf = leaf_hash(H(VECTORS["leaves"][index]))
        root = H(VECTORS["roots"][size - 1])
        assert verify_inclusion(leaf, index, size, want, root)
        for bad in _inclusion_corruptions(leaf, index, size, want, root):
            assert not verify_inclusion(*bad[1:]), bad[0]


def test_known_consistency_proofs(ct_tree: MerkleTree) -> None:
    for v in VECTORS["consistency_proofs"]:
        first, second, want = v["size1"], v["size2"], [H(p) for p in v["proof"]]
        assert ct_tree.consistency_proof(first, second) == want
        r1, r2 = H(VECTORS["roots"][first - 1]), H(VECTORS["roots"][second - 1])
        assert verify_consistency(first, second, r1, r2, want)
        if want:
            for bad in _consistency_corruptions(first, second, r1, r2, want):
                assert not verify_consistency(*bad[1:]), bad[0]
    probe = VECTORS["consistency_probe"]
    assert (
        verify_consistency(probe["size1"], probe["size2"], H(probe["root1"]), H(probe["root2"]), [H(p) for p in probe["proof"]])
        is not probe["wantErr"]
    )


SOME_HASH = H("abacaba000000000000000000000000000000000000000000060061e00123456")


def _flip(proof: list[bytes], i: int, bit: int) -> list[bytes]:
    out = list(proof)
    out[i] = bytes([out[i][0] ^ bit]) + out[i][1:]
    return out


def _inclusion_corruptions(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> list[tuple]:
    """The corruptions transparency-dev/merkle's log_verifier_test.go applies to known-good proofs."""
    bad: list[tuple] = [
        ("index - 1", leaf, index - 1, size, proof, root),
        ("index + 1", leaf, index + 1, size, proof, root),
        ("index ^ 2", leaf, index ^ 2, size, proof, root),
        ("size * 2", leaf, index, size * 2, proof, root),
        ("size // 2", leaf, index, size // 2, proof, root),
        ("wrong leaf", b"WrongLeaf", index, size, proof, root),
        ("empty root", leaf, index, size, proof, EMPTY_ROOT),
        ("random root", leaf, index, size, proof, SOME_HASH),
        ("trailing garbage", leaf, index, size, proof + [b""], root),
        ("trailing root", leaf, index, size, proof + [root], root),
        ("preceding garbage", leaf, index, size, [b""] + proof, root),
        ("preceding root", leaf, index, size, [root] + proof, root),
    ]
    bad += [(f"flipped proof[{i}]", leaf, index, size, _flip(proof, i, 8), root) for i in range(len(proof))]
    if proof:
        bad.append(("removed component", leaf, index, size, proof[:-1], root))
    if len(proof) > 1:
        bad.append(("inserted component", leaf, index, size, [proof[0], SOME_HASH] + proof[1:], root))
    return bad


def _consistency_corruptions(m: int, n: int, r1: bytes, r2: bytes, proof: list[bytes]) -> list[tuple]:
    bad: list[tuple] = [
        ("first - 1", m - 1, n, r1, r2, proof),
        ("first + 1", m + 1, n, r1, r2, proof),
        ("first ^ 2", m ^ 2, n, r1, r2, proof),
        ("second * 2", m, n * 2, r1, r2, proof),
        ("second // 2", m, n // 2, r1, r2, proof),
        ("wrong root1", m, n, b"WrongRoot", r2, proof),
        ("wrong root2", m, n, r1, b"WrongRoot", proof),
        ("swapped roots", m, n, r2, r1, proof),
        ("empty proof", m, n, r1, r2, []),
        ("trailing garbage", m, n, r1, r2, proof + [b""]),
        ("trailing root1", m, n, r1, r2, proof + [r1]),
        ("trailing root2", m, n, r1, r2, proof + [r2]),
        ("preceding garbage", m, n, r1, r2, [b""] + proof),
        ("preceding root1", m, n, r1, r2, [r1] + proof),
        ("preceding root2", m, n, r1, r2, [r2] + proof),
        ("preceding proof[0]", m, n, r1, r2, [proof[0]] + proof),
        ("truncated", m, n, r1, r2, proof[:-1]),
    ]
    bad += [(f"flipped proof[{i}]", m, n, r1, r2, _flip(proof, i, 16)) for i in range(len(proof))]
    return bad


# --- exhaustive cross-check against the naive reference ----------------------------------------


def test_matches_reference_for_all_small_trees() -> None:
    d = tuple(data(i) for i in range(64))
    full = MerkleTree(leaf_hash(x) for x in d)
    grown = MerkleTree()
    assert full.root(0) == grown.root() == ref_mth(())
    for n in range(1, 65):
        assert grown.append(leaf_hash(d[n - 1])) == n
        assert full.root(n) == grown.root() == ref_mth(d[:n])
        for m in range(n):
            want = ref_path(m, d[:n])
            assert full.inclusion_proof(m, n) == grown.inclusion_proof(m, n) == want, (m, n)
            assert verify_inclusion(leaf_hash(d[m]), m, n, want, ref_mth(d[:n]))
        for m in range(1, n):
            want = ref_proof(m, d[:n])
            assert full.consistency_proof(m, n) == grown.consistency_proof(m, n) == want, (m, n)
            assert verify_consistency(m, n, ref_mth(d[:m]), ref_mth(d[:n]), want)


# --- properties on random trees up to 2,000 leaves ---------------------------------------------

_TREES: dict[int, MerkleTree] = {}


def tree_of(n: int) -> MerkleTree:
    if n not in _TREES:
        _TREES[n] = MerkleTree(leaf_hash(data(i)) for i in range(n))
    return _TREES[n]


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(st.data())
def test_inclusion_property(draw: st.DataObject) -> None:
    size = draw.draw(st.integers(1, 2000), label="size")
    index = draw.draw(st.integers(0, size - 1), label="index")
    tree = tree_of(2000)
    root, leaf = tree.root(size), leaf_hash(data(index))
    proof = tree.inclusion_proof(index, size)
    assert verify_inclusion(leaf, index, size, proof, root)
    assert tree_of(size).inclusion_proof(index, size) == proof  # historic == live

    assert not verify_inclusion(leaf_hash(b"changed"), index, size, proof, root)
    for i in range(len(proof)):
        assert not verify_inclusion(leaf, index, size, _flip(proof, i, 1), root)
    assert not verify_inclusion(leaf, index, size, proof + [SOME_HASH], root)
    assert not verify_inclusion(leaf, index, size, [SOME_HASH] + proof, root)
    if proof:
        assert not verify_inclusion(leaf, index, size, proof[:-1], root)
        assert not verify_inclusion(leaf, index, size, proof[1:], root)
    other = draw.draw(st.integers(0, 2 * size).filter(lambda i: i != index), label="wrong index")
    assert not verify_inclusion(leaf, other, size, proof, root)
    # A wrong size fails against that size's real root, and against the signed root too unless
    # the path has the very same shape (RFC 9162: the signed tree head binds size to root).
    wrong = draw.draw(st.integers(0, 2 * size + 2).filter(lambda s: s != size), label="wrong size")
    if 0 < wrong <= tree.size:
        assert not verify_inclusion(leaf, index, wrong, proof, tree.root(wrong))
    same_shape = index < wrong and ref_path_shape(index, wrong) == ref_path_shape(index, size)
    assert verify_inclusion(leaf, index, wrong, proof, root) is same_shape


@PROPS
@given(st.data())
def test_consistency_property(draw: st.DataObject) -> None:
    second = draw.draw(st.integers(1, 2000), label="second")
    first = draw.draw(st.integers(1, second), label="first")
    tree = tree_of(2000)
    r1, r2 = tree.root(first), tree.root(second)
    proof = tree.consistency_proof(first, second)
    assert verify_consistency(first, second, r1, r2, proof)
    assert tree_of(second).consistency_proof(first, second) == proof
    if first == second:
        assert proof == []
        return

    forked = MerkleTree(leaf_hash(data(i) if i != first - 1 else b"forked") for i in range(second))
    assert not verify_consistency(first, second, r1, forked.root(), proof)  # changed leaf
    assert not verify_consistency(first, second, forked.root(first), r2, proof)
    for i in range(len(proof)):
        assert not verify_consistency(first, second, r1, r2, _flip(proof, i, 1))
    assert not verify_consistency(first, second, r1, r2, proof + [SOME_HASH])
    assert not verify_consistency(first, second, r1, r2, [SOME_HASH] + proof)
    assert not verify_consistency(first, second, r1, r2, proof[:-1])
    assert not verify_consistency(first, second, r1, r2, proof[1:])
    # Wrong sizes, checked against the roots those sizes really have.
    wrong_first = draw.draw(st.integers(1, second).filter(lambda s: s != first), label="wrong first")
    assert not verify_consistency(wrong_first, second, tree.root(wrong_first), r2, proof)
    wrong_second = draw.draw(st.integers(first, 2000).filter(lambda s: s != second), label="wrong second")
    if wrong_second != first:
        assert not verify_consistency(first, wrong_second, r1, tree.root(wrong_second), proof)


# --- edge cases and argument errors ------------------------------------------------------------


def test_edges_of_consistency() -> None:
    tree = tree_of(10)
    assert tree.consistency_proof(0, 0) == tree.consistency_proof(0, 7) == tree.consistency_proof(7, 7) == []
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert verify_consistency(0, 7, EMPTY_ROOT, tree.root(7), [])
    assert not verify_consistency(0, 7, tree.root(1), tree.root(7), [])
    assert not verify_consistency(0, 7, EMPTY_ROOT, tree.root(7), [tree.root(7)])
    assert verify_consistency(7, 7, tree.root(7), tree.root(7), [])
    assert not verify_consistency(7, 7, tree.root(7), tree.root(6), [])
    assert not verify_consistency(7, 7, tree.root(7), tree.root(7), [tree.root(7)])
    assert not verify_consistency(1, 2, tree.root(1), tree.root(2), [])


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.inclusion_proof(10, 10),
        lambda t: t.inclusion_proof(-1, 5),
        lambda t: t.inclusion_proof(0, 0),
        lambda t: t.inclusion_proof(0, 11),
        lambda t: t.inclusion_proof(True, 5),
        lambda t: t.consistency_proof(6, 5),
        lambda t: t.consistency_proof(-1, 5),
        lambda t: t.consistency_proof(5, 11),
        lambda t: t.root(11),
        lambda t: t.root(-1),
        lambda t: t.append(b"short"),
        lambda t: MerkleTree([b"x" * 31]),
    ],
)
def test_bad_requests_raise_typed_errors(call: Callable[[MerkleTree], object]) -> None:
    with pytest.raises(MerkleError) as info:
        call(tree_of(10))
    assert info.value.code == "bad_proof_request"
    assert http_status(info.value) == 422  # pure RFC 9162 code knows no HTTP; the API maps it


def test_bad_request_message_says_what_is_allowed() -> None:
    with pytest.raises(MerkleError, match=r"between 1 and the tree size 10"):
        tree_of(10).inclusion_proof(0, 11)
    with pytest.raises(MerkleError, match=r"0 <= index < size \(5\)"):
        tree_of(10).inclusion_proof(5, 5)


@pytest.mark.parametrize(
    "args",
    [
        (b"\x00" * 32, 0, 1, [], b"\x00" * 31),
        (b"\x00" * 31, 0, 1, [], b"\x00" * 32),
        (b"\x00" * 32, 1, 1, [], b"\x00" * 32),
        (b"\x00" * 32, 0, 0, [], EMPTY_ROOT),
        (b"\x00" * 32, -1, 1, [], b"\x00" * 32),
        (b"\x00" * 32, 0, 2, [None], b"\x00" * 32),
        (b"\x00" * 32, 0, 2, "not a list", b"\x00" * 32),
        ("str", "0", None, None, object()),
        (b"\x00" * 32, 0, 2**70, [b"\x00" * 32] * 200, b"\x00" * 32),
    ],
)
def test_verify_inclusion_rejects_malformed_input_without_raising(args: tuple) -> None:
    assert verify_inclusion(*args) is False


@pytest.mark.parametrize(
    "args",
    [
        (2, 1, b"\x00" * 32, b"\x00" * 32, []),
        (-1, 1, EMPTY_ROOT, b"\x00" * 32, []),
        (1, 2, b"\x00" * 31, b"\x00" * 32, [b"\x00" * 32]),
        (1, 2, b"\x00" * 32, b"\x00" * 32, [b"\x00" * 33]),
        (1, 2, b"\x00" * 32, b"\x00" * 32, None),
        (None, "2", 3, 4, 5),
        (3, 2**70, b"\x00" * 32, b"\x00" * 32, [b"\x00" * 32] * 200),
    ],
)
def test_verify_consistency_rejects_malformed_input_without_raising(args: tuple) -> None:
    assert verify_consistency(*args) is False


def test_historic_answers_do_not_change_as_the_tree_grows() -> None:
    tree = MerkleTree()
    seen: dict[int, tuple[bytes, list[bytes]]] = {}
    for n in range(1, 300):
        tree.append(leaf_hash(data(n - 1)))
        seen[n] = (tree.root(), tree.inclusion_proof(n // 2, n))
    for n, (root, proof) in seen.items():
        assert tree.root(n) == root
        assert tree.inclusion_proof(n // 2, n) == proof
