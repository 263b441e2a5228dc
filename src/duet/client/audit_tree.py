"""The auditor's Merkle arithmetic: a tree's right edge kept while entries stream, the true
hashes a controller's proofs carry, and the search that names altered entries.

An RFC 9162 tree of ``n`` leaves is fixed by its *frontier*: the hashes of the perfect,
aligned subtrees that tile ``[0, n)``, one per set bit of ``n`` (largest first). Appending a
leaf merges the frontier's smallest subtrees like a binary counter; the root folds the frontier
from the right. So an auditor can recompute a root from streamed entries in O(log n) memory
(:class:`Frontier`), and continue from a frontier it verified earlier.

The controller's proofs carry true subtree hashes, each bound to the signed root:

* a consistency proof ``PROOF(m, n)`` holds the frontier of the first ``m`` leaves (for ``m``
  not a power of two; for a power of two, the old root itself is the verifier's). Folded, they
  must give an old root that, with the proof, verifies against the signed root of ``n``: so
  they are the true frontier (anything else would be a SHA-256 collision);
* with it, "are my first ``b`` leaves the true ones?" is one proof (:meth:`TreeOracle.prefix_ok`).

When a recomputed root does not match, :class:`Pinpointer` names the altered entries without
keeping them: the stream also kept a bounded number of aligned block hashes
(:class:`RecordingFrontier`, at most ``MAX_BLOCKS``, coarsened as the log grows), and a binary
search over those blocks with prefix proofs finds each altered block in O(log blocks) proofs;
only that block's entries are fetched again and searched the same way.

Every check here trusts nothing the controller says except through the signed root.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from duet.errors import DuetError
from duet.ledger.merkle import EMPTY_ROOT, HASH_SIZE, node_hash, verify_consistency, verify_inclusion
from duet.protocol.canonical import canonical, is_hex64

MAX_BLOCKS = 2048
"""Block hashes a recording stream keeps (64 KiB of hashes); the block size doubles beyond."""

SMALL_REGION = 2048
"""A region of at most this many entries is searched with its entries held in memory."""


class ProofSource(Protocol):
    """Answers ledger reads with results already checked against the pinned key."""

    def get(self, path: str, **query: Any) -> Any: ...


class ProofUnavailable(DuetError):
    """The controller gave no proof, or one that does not verify against its own signed root."""

    code = "no_inclusion_proof"


# --- leaves ----------------------------------------------------------------------------------

_MAX_INT = 2**53 - 1
_ENCODE = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False).encode
NO_LEAF = hashlib.sha256(b"duet: an entry with no canonical form, so it is not in any ledger").digest()
"""The hash used for an entry that has no RFC 8785 form: it can never match the signed tree."""


class _Slow(Exception):
    """The value needs the reference RFC 8785 serializer."""


def _plain(value: Any) -> Any:
    """``value`` in a form ``json`` serializes exactly as RFC 8785 does, or raise :class:`_Slow`.

    Equal for: ASCII keys (code-point order is then UTF-16 order), strings (the same escapes;
    a lone surrogate fails to encode to UTF-8 and goes the slow way, which refuses it), safe
    integers, booleans, null, and floats that Python's shortest repr prints without an
    exponent (1e-4 <= |x| < 1e16: the same digits ECMAScript prints); integral floats become
    ints ("5.0" is "5" in JCS). Anything else goes to the reference implementation."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if -_MAX_INT <= value <= _MAX_INT:
            return value
        raise _Slow
    if kind is float:
        if value.is_integer() and -1e16 < value < 1e16:
            return int(value)
        if 1e-4 <= abs(value) < 1e16:
            return value
        raise _Slow
    if kind is dict:
        try:
            if not "".join(value).isascii():  # also refuses keys that are not strings (TypeError)
                raise _Slow
        except TypeError:
            raise _Slow from None
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            kind = type(item)
            if kind is str or item is None or kind is bool:
                continue
            if kind is int:
                if -_MAX_INT <= item <= _MAX_INT:
                    continue
                raise _Slow
            plain = _plain(item)
            if plain is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = plain
        return value if changed is None else changed
    if kind is list:
        items = [_plain(item) for item in value]
        return value if all(a is b for a, b in zip(items, value)) else items
    raise _Slow


def canonical_fast(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of ``value``, the same as :func:`duet.protocol.canonical.canonical`
    (and raising the same way), about seven times faster for ledger entries."""
    try:
        return _ENCODE(_plain(value)).encode()
    except (_Slow, UnicodeEncodeError, ValueError, RecursionError):
        return canonical(value)


def entry_leaf(entry: Any) -> bytes:
    """The RFC 9162 leaf hash of an entry as served, SHA-256(0x00 ‖ JCS(entry)); :data:`NO_LEAF`
    when it has no canonical form (it cannot be what the controller hashed)."""
    try:
        data = canonical_fast(entry)
    except Exception:  # rfc8785 refuses it (a huge integer, a lone surrogate, a non-JSON type)
        return NO_LEAF
    return hashlib.sha256(b"\x00" + data).digest()


# --- frontiers -------------------------------------------------------------------------------


def levels(size: int) -> list[int]:
    """The heights of the perfect subtrees tiling ``[0, size)``, largest first."""
    return [level for level in range(size.bit_length() - 1, -1, -1) if size >> level & 1]


class Frontier:
    """The right edge of an RFC 9162 tree of ``size`` leaves: one hash per set bit of ``size``,
    largest subtree first. O(log n) memory; appending is amortised one node hash per leaf."""

    __slots__ = ("size", "nodes")

    def __init__(self, size: int = 0, nodes: Iterable[bytes] = ()) -> None:
        self.nodes: list[bytes] = [bytes(node) for node in nodes]
        if size < 0 or len(self.nodes) != size.bit_count() or any(len(n) != HASH_SIZE for n in self.nodes):
            raise ValueError(f"a frontier of {size} leaves has {size.bit_count()} hashes of {HASH_SIZE} bytes")
        self.size = size

    def copy(self) -> Frontier:
        clone = Frontier.__new__(Frontier)
        clone.size, clone.nodes = self.size, list(self.nodes)
        return clone

    def append(self, leaf: bytes) -> None:
        nodes, size, node = self.nodes, self.size, leaf
        while size & 1:
            node = node_hash(nodes.pop(), node)
            size >>= 1
        nodes.append(node)
        self.size += 1

    def append_node(self, node: bytes, level: int) -> None:
        """Append a perfect subtree of 2**level leaves (the size must be a multiple of it)."""
        if self.size & ((1 << level) - 1):
            raise ValueError(f"a subtree of 2**{level} leaves cannot follow {self.size} leaves")
        count = self.size >> level
        while count & 1:
            node = node_hash(self.nodes.pop(), node)
            count >>= 1
        self.nodes.append(node)
        self.size += 1 << level

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        acc = self.nodes[-1]
        for node in reversed(self.nodes[:-1]):
            acc = node_hash(node, acc)
        return acc

    def to_json(self) -> list[str]:
        return [node.hex() for node in self.nodes]

    @classmethod
    def from_json(cls, size: int, data: Any) -> Frontier:
        if not isinstance(data, list) or not all(is_hex64(h) for h in data):
            raise ValueError("a frontier is a list of 64-hex hashes")
        return cls(size, [bytes.fromhex(h) for h in data])


class RecordingFrontier(Frontier):
    """A frontier that also keeps the hashes of the aligned blocks of ``2**level`` leaves
    appended to it (at most ``max_blocks``; beyond, pairs merge and the level rises).

    ``anchor`` is the true frontier the stream started from. ``base`` is the frontier at the
    first recorded block (``anchor`` plus the few leaves before it). :meth:`tiles` then covers
    ``[base.size, size)`` with perfect subtrees that can be appended to any frontier of
    ``base.size`` leaves, so a block can be checked against the true one before it."""

    __slots__ = ("anchor", "base", "level", "first", "blocks", "max_blocks")

    def __init__(self, anchor: Frontier, max_blocks: int = MAX_BLOCKS) -> None:
        super().__init__()
        self.size, self.nodes = anchor.size, list(anchor.nodes)
        self.anchor, self.base = anchor.copy(), anchor.copy()
        self.level, self.first, self.max_blocks = 0, anchor.size, max(2, max_blocks)
        self.blocks: list[bytes] = []

    def append(self, leaf: bytes) -> None:
        nodes, size, node, level, record = self.nodes, self.size, leaf, 0, self.level
        if record == 0:
            self.blocks.append(leaf)
        while size & 1:
            node = node_hash(nodes.pop(), node)
            size >>= 1
            level += 1
            if level == record:
                self.blocks.append(node)
        nodes.append(node)
        self.size += 1
        if len(self.blocks) > self.max_blocks:
            self._coarsen()

    def _coarsen(self) -> None:
        blocks = self.blocks
        if self.first & 1:  # the first block has no partner among the recorded ones
            self.base.append_node(blocks[0], self.level)
            blocks, self.first = blocks[1:], self.first + 1
        # An unpaired last block is dropped: the frontier will merge it with its partner and
        # record the pair at the new level (or it stays in the tail, see tiles()).
        self.blocks = [node_hash(blocks[i], blocks[i + 1]) for i in range(0, len(blocks) - 1, 2)]
        self.first >>= 1
        self.level += 1

    def tiles(self) -> list[Tile]:
        """Perfect subtrees covering ``[base.size, size)`` in order: the recorded blocks, then the
        frontier's subtrees smaller than a block (the tail)."""
        tail = [Tile(level, node) for level, node in zip(levels(self.size), self.nodes) if level < self.level]
        return [Tile(self.level, block) for block in self.blocks] + tail


@dataclass(frozen=True)
class Tile:
    """A perfect subtree of ``2**level`` leaves as this auditor computed it (``entry``: the entry
    of a one-leaf tile, when known)."""

    level: int
    hash: bytes
    entry: Any = None


# --- what the controller's proofs say --------------------------------------------------------


def _hashes(values: Any) -> list[bytes] | None:
    if not isinstance(values, list) or not all(is_hex64(v) for v in values):
        return None
    return [bytes.fromhex(v) for v in values]


def frontier_in_consistency_proof(first: int, second: int, proof: Sequence[bytes]) -> list[bytes] | None:
    """The frontier of the first ``first`` leaves as it appears in ``PROOF(first, second)``
    (``first`` not a power of two, 0 < first < second), largest first; None if the proof has
    not the shape of one. Not checked: see :meth:`TreeOracle.frontier`."""
    if first <= 0 or first >= second or first & (first - 1) == 0 or not proof:
        return None
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    left = [proof[0]]
    for node in proof[1:]:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            left.append(node)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        fn, sn = fn >> 1, sn >> 1
    left.reverse()
    return left if len(left) == first.bit_count() else None


class TreeOracle:
    """The true subtree hashes of the tree a signed head names, from the controller's proofs,
    each believed only once it verifies against the signed root. Counts its requests."""

    def __init__(self, source: ProofSource, size: int, root: bytes) -> None:
        self.source, self.size, self.root = source, size, root
        self.requests = 0

    def consistency(self, first: int) -> list[bytes]:
        self.requests += 1
        try:
            answer = self.source.get("/v1/ledger/proof/consistency", first=first, second=self.size)
        except DuetError as exc:
            raise ProofUnavailable(f"the controller gave no consistency proof from {first} entries: {exc.message}") from None
        proof = _hashes(answer.get("proof")) if isinstance(answer, dict) else None
        if proof is None or answer.get("first") != first or answer.get("second") != self.size:
            raise ProofUnavailable(f"the controller's consistency proof from {first} entries is malformed")
        return proof

    def inclusion(self, index: int) -> list[bytes]:
        self.requests += 1
        try:
            answer = self.source.get("/v1/ledger/proof/inclusion", index=index, tree_size=self.size)
        except DuetError as exc:
            raise ProofUnavailable(f"the controller gave no inclusion proof: {exc.message}") from None
        path = _hashes(answer.get("audit_path")) if isinstance(answer, dict) else None
        if path is None:
            raise ProofUnavailable("the controller's inclusion proof is malformed")
        return path

    def leaf_ok(self, index: int, leaf: bytes) -> bool:
        return verify_inclusion(leaf, index, self.size, self.inclusion(index), self.root)

    def prefix_ok(self, mine: Frontier) -> bool:
        """Whether the leaves ``mine`` was built from are the signed tree's first ones."""
        if mine.size == 0:
            return True
        if mine.size == self.size:
            return mine.root() == self.root
        if mine.size > self.size:
            return False
        return verify_consistency(mine.size, self.size, mine.root(), self.root, self.consistency(mine.size))

    def frontier(self, size: int) -> Frontier | None:
        """The true frontier of the first ``size`` leaves (0 <= size < tree size), or None where
        no proof carries it: size 1, and a power of two with no second leaf after it."""
        if size == 0:
            return Frontier()
        if size >= self.size:
            return None
        carrier = size if size & (size - 1) else size + 1  # a power of two is the first node of F(size + 1)
        if carrier & (carrier - 1) == 0 or carrier >= self.size:  # size 1: F(2) is one node, leaf 0 is not in it
            return None
        proof = self.consistency(carrier)
        nodes = frontier_in_consistency_proof(carrier, self.size, proof)
        if nodes is None:
            raise ProofUnavailable(f"the controller's consistency proof from {carrier} entries has not the shape of one")
        found = Frontier(carrier, nodes)
        if not verify_consistency(carrier, self.size, found.root(), self.root, proof):
            raise ProofUnavailable(f"the controller's consistency proof from {carrier} entries does not verify")
        return found if carrier == size else Frontier(size, nodes[:-1])


# --- naming the altered entries ---------------------------------------------------------------


class Refetched(DuetError):
    """The controller served other entries when asked again for the same range."""

    code = "entries_changed"


@dataclass
class Pinpointer:
    """Finds which of the entries a stream hashed are not the signed tree's.

    ``fetch(lo, hi)`` yields the entries ``[lo, hi)`` as served again (it raises
    :class:`Refetched` when they are not the same positions); ``leaf`` hashes one. ``found``
    collects (position, entry) of altered entries, at most ``limit``."""

    oracle: TreeOracle
    fetch: Callable[[int, int], Iterator[Any]]
    leaf: Callable[[Any], bytes] = entry_leaf
    limit: int = 100
    max_blocks: int = MAX_BLOCKS
    found: list[tuple[int, Any]] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return len(self.found) >= self.limit

    def recorded(self, stream: RecordingFrontier) -> None:
        """Search what ``stream`` hashed (its anchor true, its root not the signed one)."""
        base = stream.base
        current: Frontier | None = base
        if base.size > stream.anchor.size and not self.oracle.prefix_ok(base):
            self.region(stream.anchor.size, base.size, stream.anchor)
            current = self.oracle.frontier(base.size)
        self._tiles(current, base.size, stream.tiles())

    def region(self, lo: int, hi: int, anchor: Frontier | None) -> None:
        """Search the entries ``[lo, hi)`` fetched again; ``anchor`` is the true frontier at
        ``lo`` (None: none is known, each entry is proven on its own)."""
        if self.full or lo >= hi:
            return
        if anchor is None:
            for position, entry in enumerate(self.fetch(lo, hi), lo):
                if not self.oracle.leaf_ok(position, self.leaf(entry)):
                    self.found.append((position, entry))
                    if self.full:
                        return
            return
        if hi - lo <= SMALL_REGION:
            tiles = [Tile(0, self.leaf(entry), entry) for entry in self.fetch(lo, hi)]
            self._tiles(anchor.copy(), lo, tiles)
            return
        stream = RecordingFrontier(anchor, self.max_blocks)
        for entry in self.fetch(lo, hi):
            stream.append(self.leaf(entry))
        if not self.oracle.prefix_ok(stream):
            self.recorded(stream)

    def _tiles(self, current: Frontier | None, position: int, tiles: list[Tile]) -> None:
        """Find the tiles (covering ``position`` on) that hold altered leaves; ``current`` is
        the true frontier at ``position``."""
        i = 0
        while i < len(tiles) and not self.full:
            if current is None:  # no proof carries the frontier here: the next tile is one leaf
                tile = tiles[i]
                width = 1 << tile.level
                if tile.level == 0 and tile.entry is not None:
                    if not self.oracle.leaf_ok(position, tile.hash):
                        self.found.append((position, tile.entry))
                else:
                    self.region(position, position + width, None)
                position, i = position + width, i + 1
                current = self.oracle.frontier(position) if i < len(tiles) else None
                continue

            def prefix(j: int, start: Frontier = current, first: int = i) -> Frontier:
                built = start.copy()
                for tile in tiles[first : j + 1]:
                    built.append_node(tile.hash, tile.level)
                return built

            if self.oracle.prefix_ok(prefix(len(tiles) - 1)):
                return
            good, bad = i - 1, len(tiles) - 1  # prefix(good) is true, prefix(bad) is not
            while bad - good > 1:
                middle = (good + bad) // 2
                if self.oracle.prefix_ok(prefix(middle)):
                    good = middle
                else:
                    bad = middle
            before = prefix(good) if good >= i else current
            start = position + sum(1 << tile.level for tile in tiles[i:bad])
            tile = tiles[bad]
            width = 1 << tile.level
            if tile.level == 0 and tile.entry is not None:
                self.found.append((start, tile.entry))
            else:
                self.region(start, start + width, before)
            position, i = start + width, bad + 1
            current = self.oracle.frontier(position) if i < len(tiles) else None
