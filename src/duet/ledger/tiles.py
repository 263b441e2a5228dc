"""C2SP tiled logs (c2sp.org/tlog-tiles): the ledger as static, cacheable files.

A tiled log is its checkpoint at ``<prefix>/checkpoint`` and two kinds of immutable files:

* hash tiles ``tile/<L>/<N>[.p/<W>]``: tile N of level L is the 256 consecutive Merkle tree
  hashes MTH(D[(N·256 + i)·256^L : (N·256 + i + 1)·256^L]), i = 0..255, so 32 × 256 = 8,192
  bytes; level 0 holds the leaf hashes, level L the hashes of full tiles of level L - 1;
* entry bundles ``tile/entries/<N>[.p/<W>]``: entries N·256 … N·256 + 255, each as a big-endian
  uint16 length and the entry's bytes, so no entry may be 65,536 bytes or more.

N is written in three-digit groups, all but the last prefixed ``x`` (1234067 is
``x001/x234/067``). The rightmost tile of a level is partial while it has fewer than 256 hashes
(``.p/<W>``, 1 ≤ W ≤ 255); partial tiles are replaced as the log grows, full ones never change.

The writer side makes the bytes from the controller's ``MerkleTree``; the reader side
(``TiledLog``) audits a log from nothing but a ``fetch(path)`` function and a verified checkpoint,
one tile at a time: every tile is authenticated before use (partial right-edge tiles by hashing
them to the checkpoint's root, every full tile by its hash in the tile above), and every entry by
its leaf hash in an authenticated level-0 tile. Memory stays at one tile per level and one entry
bundle, however long the log; a tile or bundle that does not match is named by its path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from duet.errors import DuetError, VerificationError
from duet.ledger.checkpoint import Checkpoint
from duet.ledger.merkle import EMPTY_ROOT, HASH_SIZE, MerkleTree, leaf_hash, node_hash

__all__ = [
    "ENTRIES",
    "MAX_ENTRY_SIZE",
    "MAX_LEVEL",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "EntryTooLarge",
    "MalformedTile",
    "TileError",
    "TileId",
    "TileMismatch",
    "TileMissing",
    "TiledLog",
    "changed_tiles",
    "decode_entry_bundle",
    "encode_entry_bundle",
    "entries_path",
    "hash_tile",
    "parse_tile_path",
    "tile_path",
    "tile_width",
    "tiles_for_size",
    "verify_tiled_log",
]

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_LEVEL = 63
ENTRIES = -1
"""The ``level`` of an entry bundle in a ``TileId`` (bundles sit beside level-0 tiles)."""
MAX_ENTRY_SIZE = 0xFFFF
"""The largest entry an entry bundle can carry (its length is a uint16)."""
MAX_INDEX = 2**64 - 1

Fetch = Callable[[str], bytes | None]
"""Reads one file of the log by its path under the prefix; None when there is no such file."""


# --- errors ------------------------------------------------------------------------------------


class TileError(VerificationError):
    """A tile or entry bundle of a tiled log is missing, malformed or wrong; ``path`` names it
    (for a mismatch at the log's right edge, ``paths`` names every tile it could be)."""

    code = "bad_tile"

    def __init__(self, message: str, *, path: str, paths: tuple[str, ...] = (), code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.path = path
        self.paths = paths or (path,)


class TileMissing(TileError):
    code = "tile_missing"


class MalformedTile(TileError):
    code = "malformed_tile"


class TileMismatch(TileError):
    """The tile's content is not what authenticates it (``tile_mismatch``: a hash tile against
    its parent; ``entry_mismatch``: an entry against its leaf hash, ``index`` the entry's;
    ``tiles_root_mismatch``: the right-edge tiles against the checkpoint's root)."""

    code = "tile_mismatch"

    def __init__(
        self, message: str, *, path: str, paths: tuple[str, ...] = (), index: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, path=path, paths=paths, code=code)
        self.index = index


class EntryTooLarge(DuetError):
    """An entry of 65,536 bytes or more cannot be written into a C2SP entry bundle."""

    code = "entry_too_large"

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(message)
        self.index = index


# --- paths -------------------------------------------------------------------------------------


def _index_path(index: int) -> str:
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_INDEX:
        raise ValueError(f"a tile index is an integer from 0 to 2^64 - 1, got {index!r}")
    groups = [f"{index % 1000:03d}"]
    while index >= 1000:
        index //= 1000
        groups.append(f"x{index % 1000:03d}")
    return "/".join(reversed(groups))


def _suffix(width: int) -> str:
    if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"a tile's width is 1 to {TILE_WIDTH} hashes or entries, got {width!r}")
    return "" if width == TILE_WIDTH else f".p/{width}"


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]``, the path of hash tile ``index`` of ``level``."""
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"a tile level is an integer from 0 to {MAX_LEVEL}, got {level!r}")
    return f"tile/{level}/{_index_path(index)}{_suffix(width)}"


def entries_path(index: int, width: int = TILE_WIDTH) -> str:
    """``tile/entries/<N>[.p/<W>]``, the path of entry bundle ``index``."""
    return f"tile/entries/{_index_path(index)}{_suffix(width)}"


@dataclass(frozen=True, order=True)
class TileId:
    """One tile (``level`` ≥ 0) or entry bundle (``level == ENTRIES``) at a given width."""

    level: int
    index: int
    width: int = TILE_WIDTH

    @property
    def path(self) -> str:
        if self.level == ENTRIES:
            return entries_path(self.index, self.width)
        return tile_path(self.level, self.index, self.width)

    @property
    def partial(self) -> bool:
        return self.width < TILE_WIDTH

    def full(self) -> TileId:
        return TileId(self.level, self.index)


_LEVEL = re.compile(r"0|[1-9][0-9]?")
_GROUP = re.compile(r"[0-9]{3}")
_WIDTH = re.compile(r"[1-9][0-9]{0,2}")


def parse_tile_path(path: str) -> TileId:
    """The tile a path names. Strict, so each tile has one path: no leading zeros in L or W,
    three-digit groups with ``x`` on all but the last, no leading ``x000`` group, W < 256."""

    def bad(why: str) -> ValueError:
        return ValueError(f"{path[:100]!r} is not a tile path: {why}")

    if not isinstance(path, str) or not path.isascii():
        raise ValueError(f"{path!r} is not a tile path")
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise bad("it does not start with tile/<level>/")
    if parts[1] == "entries":
        level = ENTRIES
    elif _LEVEL.fullmatch(parts[1]) and int(parts[1]) <= MAX_LEVEL:
        level = int(parts[1])
    else:
        raise bad(f"the level is a number from 0 to {MAX_LEVEL} without leading zeros, or 'entries'")
    groups = parts[2:]
    width = TILE_WIDTH
    if len(groups) >= 2 and groups[-2].endswith(".p"):
        if not _WIDTH.fullmatch(groups[-1]) or int(groups[-1]) >= TILE_WIDTH:
            raise bad("a partial tile's width is 1 to 255 without leading zeros")
        width = int(groups[-1])
        groups = [*groups[:-2], groups[-2][:-2]]
    if any(not g.startswith("x") for g in groups[:-1]) or groups[-1].startswith("x"):
        raise bad("every group of the index but the last starts with x")
    digits = [g.removeprefix("x") for g in groups]
    if not all(_GROUP.fullmatch(d) for d in digits):
        raise bad("the index is written in groups of three digits")
    if len(digits) > 1 and digits[0] == "000":
        raise bad("the index has a leading x000 group")
    index = int("".join(digits))
    if index > MAX_INDEX:
        raise bad("the index is beyond 2^64 - 1")
    return TileId(level, index, width)


# --- shape of a tree of a given size -------------------------------------------------------------


def _count(size: int, level: int) -> int:
    """How many hashes level ``level`` has in a tree of ``size`` leaves (entries: ``size``)."""
    return size if level == ENTRIES else size >> (TILE_HEIGHT * level)


def tile_width(size: int, level: int, index: int) -> int:
    """How many hashes (or entries) tile ``index`` of ``level`` holds in a tree of ``size``
    leaves: 256 for a full tile, 1–255 for the partial one, 0 where there is none."""
    return max(0, min(TILE_WIDTH, _count(size, level) - index * TILE_WIDTH))


def _levels(size: int) -> Iterator[int]:
    level = 0
    while level <= MAX_LEVEL and _count(size, level):
        yield level
        level += 1


def tiles_for_size(size: int) -> Iterator[TileId]:
    """Every entry bundle and hash tile a log of ``size`` entries publishes (full tiles, then the
    partial one, level by level), as the spec's example: 70,000 entries are 273 full level-0
    tiles and one of width 112, one full level-1 tile and one of width 17, one of width 1 at
    level 2 (and the entry bundles beside the level-0 tiles)."""
    for level in (ENTRIES, *_levels(size)):
        full, rest = divmod(_count(size, level), TILE_WIDTH)
        for index in range(full):
            yield TileId(level, index)
        if rest:
            yield TileId(level, full, rest)


def changed_tiles(old_size: int, new_size: int) -> Iterator[TileId]:
    """The tiles and bundles a log growing from ``old_size`` to ``new_size`` entries writes:
    new full ones (once, then never again) and the new partial ones."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"a log grows: 0 <= old size ({old_size}) <= new size ({new_size})")
    for level in (ENTRIES, *_levels(new_size)):
        old, new = _count(old_size, level), _count(new_size, level)
        if old == new:
            continue
        for index in range(old // TILE_WIDTH, -(-new // TILE_WIDTH)):
            width = tile_width(new_size, level, index)
            if width != tile_width(old_size, level, index):
                yield TileId(level, index, width)


# --- writer side ---------------------------------------------------------------------------------


def hash_tile(tree: MerkleTree, level: int, index: int, width: int | None = None) -> bytes:
    """The bytes of hash tile ``index`` of ``level`` (``width`` hashes; default: as many as the
    tree has now). Each hash is a stored block of the tree, so a tile costs no hashing."""
    available = tile_width(tree.size, level, index)
    width = available if width is None else width
    if not 1 <= width <= available:
        raise ValueError(
            f"tile {index} of level {level} has {available} hashes in a tree of {tree.size} entries; {width} were asked for"
        )
    height, first = TILE_HEIGHT * level, index * TILE_WIDTH
    # MerkleTree keeps every complete, aligned block of every height (see its docstring); a tile
    # hash of level L is exactly such a block of height 8·L.
    return b"".join(tree._block(height, first + i) for i in range(width))


def encode_entry_bundle(entries: Iterable[bytes], *, first_index: int = 0) -> bytes:
    """An entry bundle: each entry as a big-endian uint16 length and its bytes.

    ``first_index`` only serves to name an entry that is too large."""
    out = bytearray()
    count = 0
    for count, entry in enumerate(entries, start=1):
        if len(entry) > MAX_ENTRY_SIZE:
            raise EntryTooLarge(
                f"entry {first_index + count - 1} is {len(entry)} bytes; a C2SP entry bundle carries entries of at most "
                f"{MAX_ENTRY_SIZE} bytes",
                index=first_index + count - 1,
            )
        out += len(entry).to_bytes(2, "big") + entry
    if count > TILE_WIDTH:
        raise ValueError(f"an entry bundle holds at most {TILE_WIDTH} entries, got {count}")
    return bytes(out)


def decode_entry_bundle(data: bytes, width: int | None = None, *, path: str = "entry bundle") -> list[bytes]:
    """The entries of a bundle; with ``width``, there must be exactly that many. Raises
    MalformedTile, naming ``path``."""
    entries: list[bytes] = []
    view, pos = memoryview(data), 0
    while pos < len(view):
        if len(entries) == TILE_WIDTH:
            raise MalformedTile(f"{path} holds more than {TILE_WIDTH} entries", path=path)
        if pos + 2 > len(view):
            raise MalformedTile(f"{path} ends inside an entry's length", path=path)
        length = int.from_bytes(view[pos : pos + 2], "big")
        if pos + 2 + length > len(view):
            raise MalformedTile(f"{path} ends inside entry {len(entries)} ({length} bytes announced)", path=path)
        entries.append(bytes(view[pos + 2 : pos + 2 + length]))
        pos += 2 + length
    if width is not None and len(entries) != width:
        raise MalformedTile(f"{path} holds {len(entries)} entries, not {width}", path=path)
    return entries


# --- reader side ---------------------------------------------------------------------------------


def _fold(hashes: bytes) -> bytes:
    """MTH of a power-of-two run of hashes (a perfect subtree)."""
    level = [hashes[i : i + HASH_SIZE] for i in range(0, len(hashes), HASH_SIZE)]
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _fold_right(subtrees: list[bytes]) -> bytes:
    """RFC 6962's MTH of a tree given its perfect subtrees, largest first."""
    acc = subtrees[-1]
    for subtree in reversed(subtrees[:-1]):
        acc = node_hash(subtree, acc)
    return acc


class TiledLog:
    """A tiled log read at one checkpoint, every tile authenticated before it is used.

    Opening it fetches the right-edge (partial) tiles and checks that they hash to the
    checkpoint's root; the checkpoint itself must have been verified by the caller
    (``duet.ledger.checkpoint.verify_checkpoint``). Then ``entries`` streams verified entries and
    ``root_at`` gives the root of any smaller tree, which proves an older checkpoint consistent
    with this one without a consistency proof.

    ``fetch`` answers None for a file the log does not have; anything it raises (a network
    failure, say) reaches the caller as it is, to retry or report."""

    def __init__(self, fetch: Fetch, checkpoint: Checkpoint) -> None:
        self._fetch = fetch
        self.size = checkpoint.size
        self.root = checkpoint.root
        self._edge: dict[int, bytes] = {}
        self._cache: dict[int, tuple[int, bytes]] = {}  # one full tile per level: memory stays flat
        self._check_edge()

    # -- authenticated tiles --

    def _read(self, tile: TileId) -> tuple[bytes, TileId]:
        """The bytes of ``tile``, or of its full tile if the partial one is gone (the spec's
        fallback: the log may have grown since the checkpoint); with the tile they are of."""
        data = self._fetch(tile.path)
        if data is None and tile.partial:
            tile = tile.full()
            data = self._fetch(tile.path)
        if data is None:
            raise TileMissing(f"{tile.path} is missing from the log", path=tile.path)
        return data, tile

    def _read_hashes(self, tile: TileId) -> bytes:
        data, got = self._read(tile)
        if len(data) != got.width * HASH_SIZE:
            raise MalformedTile(f"{got.path} is {len(data)} bytes, not {got.width} hashes of {HASH_SIZE}", path=got.path)
        return data[: tile.width * HASH_SIZE]

    def _read_entries(self, bundle: TileId) -> tuple[list[bytes], str]:
        data, got = self._read(bundle)
        return decode_entry_bundle(data, got.width, path=got.path)[: bundle.width], got.path

    def _check_edge(self) -> None:
        subtrees: list[bytes] = []
        for level in reversed(list(_levels(self.size))):
            count = _count(self.size, level)
            width = count % TILE_WIDTH
            if not width:
                continue
            data = self._edge[level] = self._read_hashes(TileId(level, count // TILE_WIDTH, width))
            pos = 0
            for bit in range(TILE_HEIGHT - 1, -1, -1):
                if width >> bit & 1:
                    subtrees.append(_fold(data[pos * HASH_SIZE : (pos + (1 << bit)) * HASH_SIZE]))
                    pos += 1 << bit
        root = _fold_right(subtrees) if subtrees else EMPTY_ROOT
        if root != self.root:
            paths = tuple(
                TileId(level, _count(self.size, level) // TILE_WIDTH, _count(self.size, level) % TILE_WIDTH).path
                for level in sorted(self._edge)
            )
            raise TileMismatch(
                f"the log's right-edge tiles ({', '.join(paths) or 'none'}) do not hash to the checkpoint's root "
                f"{self.root.hex()[:16]}… for {self.size} entries: one of them is wrong, or the log is not the checkpoint's",
                path=paths[0] if paths else "checkpoint",
                paths=paths,
                code="tiles_root_mismatch",
            )

    def _tile(self, level: int, index: int) -> bytes:
        """Hash tile ``index`` of ``level`` as of this checkpoint, authenticated."""
        width = tile_width(self.size, level, index)
        if width == 0:
            raise ValueError(f"the log of {self.size} entries has no tile {index} at level {level}")
        if width < TILE_WIDTH:
            return self._edge[level]
        cached = self._cache.get(level)
        if cached is not None and cached[0] == index:
            return cached[1]
        parent = self._tile(level + 1, index // TILE_WIDTH)  # a full tile's hash is always in the tile above
        offset = index % TILE_WIDTH * HASH_SIZE
        tile = TileId(level, index)
        data = self._read_hashes(tile)
        if _fold(data) != parent[offset : offset + HASH_SIZE]:
            above = TileId(level + 1, index // TILE_WIDTH, tile_width(self.size, level + 1, index // TILE_WIDTH))
            raise TileMismatch(
                f"{tile.path} does not hash to its hash in {above.path}: the tile was altered", path=tile.path, index=None
            )
        self._cache[level] = (index, data)
        return data

    # -- what a reader gets --

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The entries ``start`` ≤ i < ``end``, in order, each proven by its leaf hash in an
        authenticated level-0 tile. A bundle is checked whole before any of its entries is given."""
        end = self.size if end is None else end
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"entries [{start}, {end}) are not within the log of {self.size}")
        for index in range(start // TILE_WIDTH, -(-end // TILE_WIDTH)):
            width = tile_width(self.size, 0, index)
            hashes = self._tile(0, index)
            entries, path = self._read_entries(TileId(ENTRIES, index, width))
            for i, entry in enumerate(entries):
                if leaf_hash(entry) != hashes[i * HASH_SIZE : (i + 1) * HASH_SIZE]:
                    seq = index * TILE_WIDTH + i
                    raise TileMismatch(
                        f"entry {seq} in {path} does not match its leaf hash in {tile_path(0, index, width)}: "
                        "the entry bundle was altered",
                        path=path,
                        index=seq,
                        code="entry_mismatch",
                    )
            first = index * TILE_WIDTH
            yield from entries[max(start - first, 0) : end - first]

    def root_at(self, size: int) -> bytes:
        """MTH of the first ``size`` entries, from authenticated tiles: an older checkpoint of
        that size is consistent with this one exactly when its root is this."""
        if not 0 <= size <= self.size:
            raise ValueError(f"no tree of {size} entries within the log of {self.size}")
        subtrees: list[bytes] = []
        pos = 0
        for height in range(size.bit_length() - 1, -1, -1):
            if size >> height & 1:
                level, below = divmod(height, TILE_HEIGHT)
                first = pos >> (TILE_HEIGHT * level)  # index of the block's first hash at that level
                data = self._tile(level, first // TILE_WIDTH)
                offset = first % TILE_WIDTH * HASH_SIZE
                subtrees.append(_fold(data[offset : offset + (HASH_SIZE << below)]))
                pos += 1 << height
        return _fold_right(subtrees) if subtrees else EMPTY_ROOT


def verify_tiled_log(fetch: Fetch, checkpoint: Checkpoint, *, start: int = 0) -> int:
    """Check every entry from ``start`` on, and every tile that proves them, against
    ``checkpoint`` (already verified); returns how many entries were checked."""
    return sum(1 for _ in TiledLog(fetch, checkpoint).entries(start))
