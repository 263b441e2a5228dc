"""RFC 9162 (Certificate Transparency v2) Merkle tree for the duet ledger.

Hashing is fixed by RFC 9162 §2.1.1 so that any CT-style auditor can check our proofs:
leaf = SHA-256(0x00 ‖ data), node = SHA-256(0x01 ‖ left ‖ right), MTH({}) = SHA-256("").

Storage: level k holds, packed in one ``bytearray`` (32 bytes per hash), the hash of every
complete, aligned block of 2^k leaves (level 0 = the leaf hashes). A 1M-entry tree therefore
costs ~64 MB and no per-object overhead. Every node an RFC proof needs is either such a stored
block (O(1)) or the "right edge" of a historic tree, folded from at most log2(n) stored blocks,
and each proof contains at most one right-edge node. So historic roots and every proof are
O(log n) and appending is amortised O(1) (at most log2(n) hashes per append).

Edge cases (decided here, RFC 9162 §2.1.4 only defines 0 < first < second):

* ``consistency_proof(m, m)`` is ``[]``; it verifies iff both roots are equal.
* ``consistency_proof(0, n)`` is ``[]``: every tree extends the empty tree, so it verifies iff
  ``first_root == EMPTY_ROOT``; ``second_root`` is not constrained by the proof (it is bound
  by the signed tree head).
* An inclusion proof does not by itself bind ``size``: like every RFC 9162 verifier, a proof
  also verifies for another size whose tree has the same path shape for that index. The
  signed tree head is what binds a size to a root.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from duet.errors import DuetError

HASH_SIZE = 32

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleError",
    "MerkleTree",
    "leaf_hash",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]


class MerkleError(DuetError):
    """A proof or root was requested for an index or size the tree cannot answer (pure RFC 9162:
    no HTTP here; the API answers it as invalid parameters)."""

    code = "bad_proof_request"


def leaf_hash(data: bytes) -> bytes:
    """The 0x00 prefix keeps a leaf from ever being mistaken for an interior node."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The 0x01 prefix is the interior-node half of RFC 9162's domain separation."""
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hash(value: object) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_SIZE


def _split(n: int) -> int:
    """RFC 9162's k: the largest power of two strictly smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """Append-only; proofs stay cheap as it grows.

    One writer; readers only ever touch blocks that lie inside ``size``, which is published
    after the blocks it covers are written, so a reader racing an append sees a whole tree.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        leaves = [self._checked_leaf(h) for h in leaf_hashes]
        self._levels: list[bytearray] = [bytearray(b"".join(leaves))]
        # Bulk build: pair up each level once instead of paying per-append bookkeeping.
        level, count = 0, len(leaves)
        while count >= 2:
            below, above = self._levels[level], bytearray()
            for i in range(0, (count // 2) * 2 * HASH_SIZE, 2 * HASH_SIZE):
                above += node_hash(bytes(below[i : i + HASH_SIZE]), bytes(below[i + HASH_SIZE : i + 2 * HASH_SIZE]))
            self._levels.append(above)
            level, count = level + 1, count // 2
        self._size = len(leaves)

    @staticmethod
    def _checked_leaf(h: bytes) -> bytes:
        if not _is_hash(h):
            raise MerkleError(
                f"a leaf hash must be {HASH_SIZE} bytes (leaf_hash(data)), got {type(h).__name__} "
                f"of length {len(h) if isinstance(h, (bytes, bytearray)) else 'n/a'}"
            )
        return bytes(h)

    def append(self, leaf_hash: bytes) -> int:
        """Add one leaf and every perfect block it completes; returns the new size."""
        node = self._checked_leaf(leaf_hash)
        index = self._size
        self._levels[0] += node
        level = 0
        while index & 1:  # the new node closes an aligned pair: store its parent too
            node = node_hash(self._block(level, index - 1), node)
            level, index = level + 1, index >> 1
            if level == len(self._levels):
                self._levels.append(bytearray())
            self._levels[level] += node
        self._size += 1
        return self._size

    @property
    def size(self) -> int:
        return self._size

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves, so historic tree heads can be re-derived."""
        if size is None:
            size = self._size
        self._check_size("size", size, lowest=0)
        return self._range_hash(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 §2.1.3.1 PATH(index, D[size]), leaf-side sibling first."""
        self._check_size("size", size, lowest=1)
        if not _is_size(index) or not 0 <= index < size:
            raise MerkleError(f"index must be an integer with 0 <= index < size ({size}), got {index!r}")
        path: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:  # walk down from the root, collecting the sibling at each split
            k = _split(hi - lo)
            if index < lo + k:
                path.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._range_hash(lo, lo + k))
                lo += k
        path.reverse()
        return path

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """RFC 9162 §2.1.4.1 PROOF(first, D[second]); ``[]`` when first is 0 or equals second."""
        self._check_size("second", second, lowest=0)
        if not _is_size(first) or not 0 <= first <= second:
            raise MerkleError(f"first must be an integer with 0 <= first <= second ({second}), got {first!r}")
        if first in (0, second):
            return []
        proof: list[bytes] = []
        lo, hi, known = 0, second, True  # known: MTH(D[0:first]) is the verifier's own root
        while first - lo != hi - lo:
            k = _split(hi - lo)
            if first - lo <= k:
                proof.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_hash(lo, lo + k))
                lo, known = lo + k, False
        if not known:
            proof.append(self._range_hash(lo, hi))
        proof.reverse()
        return proof

    def _check_size(self, name: str, size: object, *, lowest: int) -> None:
        if not _is_size(size) or not lowest <= size <= self._size:  # type: ignore[operator]
            raise MerkleError(f"{name} must be an integer between {lowest} and the tree size {self._size}, got {size!r}")

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index`` (to check an entry read back from storage)."""
        self._check_size("index", index, lowest=0)
        if index >= self.size:
            raise MerkleError(f"leaf {index} is beyond the tree of size {self.size}")
        return self._block(0, index)

    def _block(self, level: int, index: int) -> bytes:
        start = index * HASH_SIZE
        return bytes(self._levels[level][start : start + HASH_SIZE])

    def _range_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for the ranges RFC proofs use: start aligned to the top bit of
        end - start, so the range splits into stored blocks of strictly decreasing size."""
        blocks: list[bytes] = []
        pos, width = start, end - start
        for level in range(width.bit_length() - 1, -1, -1):
            if width >> level & 1:
                blocks.append(self._block(level, pos >> level))
                pos += 1 << level
        acc = blocks.pop()
        while blocks:  # RFC MTH folds from the right: the left part is always the bigger block
            acc = node_hash(blocks.pop(), acc)
        return acc


def _shift_while_even(fn: int, sn: int) -> tuple[int, int]:
    while fn and not fn & 1:
        fn, sn = fn >> 1, sn >> 1
    return fn, sn


def _proof_ok(proof: object) -> bool:
    return isinstance(proof, (list, tuple)) and all(_is_hash(p) for p in proof)


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2. Never raises: any malformed input is simply not a valid proof."""
    if not (_is_hash(leaf_hash) and _is_hash(root) and _proof_ok(proof)):
        return False
    if not (_is_size(index) and _is_size(size) and 0 <= index < size):
        return False
    fn, sn, r = index, size - 1, bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _shift_while_even(fn, sn)
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and hmac.compare_digest(r, root)


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, proof: list[bytes]) -> bool:
    """RFC 9162 §2.1.4.2, extended to first == 0 and first == second (see module docstring)."""
    if not (_is_hash(first_root) and _is_hash(second_root) and _proof_ok(proof)):
        return False
    if not (_is_size(first) and _is_size(second) and 0 <= first <= second):
        return False
    if first == 0:
        return len(proof) == 0 and hmac.compare_digest(first_root, EMPTY_ROOT)
    if first == second:
        return len(proof) == 0 and hmac.compare_digest(first_root, second_root)
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # first is a power of two: its root is a node of the new tree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = bytes(path[0])
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            fn, sn = _shift_while_even(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and hmac.compare_digest(fr, first_root) and hmac.compare_digest(sr, second_root)
