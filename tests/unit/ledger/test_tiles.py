"""Tests for duet.ledger.tiles: C2SP tile paths, hash tiles, entry bundles and the streaming
reader, against the spec's examples, Tessera's paths and test log, and tlog-scales."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from duet.ledger.checkpoint import Checkpoint, parse_checkpoint, sign_checkpoint, verify_checkpoint
from duet.ledger.merkle import EMPTY_ROOT, MerkleTree, leaf_hash
from duet.ledger.note import NoteVerifier, parse_note
from duet.ledger.tiles import (
    ENTRIES,
    MAX_ENTRY_SIZE,
    EntryTooLarge,
    MalformedTile,
    TiledLog,
    TileId,
    TileMismatch,
    TileMissing,
    changed_tiles,
    decode_entry_bundle,
    encode_entry_bundle,
    entries_path,
    hash_tile,
    parse_tile_path,
    tile_path,
    tile_width,
    tiles_for_size,
    verify_tiled_log,
)
from duet.protocol.canonical import canonical
from duet.protocol.models import MAX_COMMAND_BYTES, MAX_COMMAND_LENGTH, RunParams

ASSETS = Path(__file__).parents[2] / "assets" / "c2sp"
TESSERA = json.loads((ASSETS / "vectors.json").read_text())["tessera_log"]


# --- paths -------------------------------------------------------------------------------------


def test_the_specs_index_example_and_tesseras_paths() -> None:
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(0, 0) == "tile/0/000"
    assert tile_path(0, 0, 255) == "tile/0/000.p/255"
    assert tile_path(1, 0) == "tile/1/000"
    assert tile_path(15, 455667) == "tile/15/x455/667"
    assert tile_path(15, 123456789, 41) == "tile/15/x123/x456/789.p/41"
    assert entries_path(0) == "tile/entries/000"
    assert entries_path(0, 8) == "tile/entries/000.p/8"
    assert entries_path(255) == "tile/entries/255"
    assert entries_path(255, 253) == "tile/entries/255.p/253"
    assert entries_path(123456789) == "tile/entries/x123/x456/789"
    assert entries_path(1, 1) == "tile/entries/001.p/1"


@pytest.mark.parametrize(
    "path, tile",
    [
        ("tile/0/x001/x234/067", TileId(0, 1234067)),
        ("tile/0/x001/x234/067.p/89", TileId(0, 1234067, 89)),
        ("tile/63/x999/x999/x999/x999/x999/999.p/255", TileId(63, 999999999999999999, 255)),
        ("tile/0/001", TileId(0, 1)),
        ("tile/entries/x123/x456/789", TileId(ENTRIES, 123456789)),
        ("tile/entries/000.p/1", TileId(ENTRIES, 0, 1)),
    ],
)
def test_tile_paths_parse(path: str, tile: TileId) -> None:
    assert parse_tile_path(path) == tile
    assert tile.path == path


@pytest.mark.parametrize(
    "path",
    [
        # Tessera's invalid paths (api/layout/paths_test.go)
        "tile/0/x001/x234/067.p/",
        "tile/0/x001/x234/067.p",
        "tile/1/x001/.p/abc",
        "tile/64/x001/002",
        "tile/-1/x001/002",
        "tile/abc/x001/002",
        "tile/8/001/002",
        "tile/8/x001/0002",
        "tile/8/x001/-002",
        "tile/8/x001/002.p/256",
        "tile/63/x999/x999/x999/x999/x999/x999/999.p/255",  # beyond 2^64
        # and ours: one path per tile
        "tile/00/001",
        "tile/0/x000/001",  # a leading x000 group
        "tile/0/001.p/0",
        "tile/0/001.p/007",
        "tile/0/1",
        "tile/0/x001",
        "tile/0/001/",
        "tile/0/001.p/5/6",
        "tiles/0/001",
        "tile/0",
        "tile/entry/000",
        "tile/0/٠٠١",
    ],
)
def test_invalid_tile_paths(path: str) -> None:
    with pytest.raises(ValueError):
        parse_tile_path(path)


@given(
    level=st.integers(-1, 63),
    index=st.integers(0, 2**64 - 1),
    width=st.integers(1, 256),
)
def test_every_tile_has_one_path_and_back(level: int, index: int, width: int) -> None:
    tile = TileId(level, index, width)
    assert parse_tile_path(tile.path) == tile


def test_paths_refuse_what_the_spec_does_not_allow() -> None:
    for call in (
        lambda: tile_path(64, 0),
        lambda: tile_path(-1, 0),
        lambda: tile_path(0, -1),
        lambda: tile_path(0, 0, 0),
        lambda: tile_path(0, 0, 257),
        lambda: entries_path(2**64),
    ):
        with pytest.raises(ValueError):
            call()


# --- which tiles a log has ---------------------------------------------------------------------


def test_the_specs_example_of_a_log_of_70000_entries() -> None:
    tiles = [t for t in tiles_for_size(70000) if t.level != ENTRIES]
    level0 = [t for t in tiles if t.level == 0]
    assert len([t for t in level0 if not t.partial]) == 273
    assert [t.width for t in level0 if t.partial] == [112]
    assert [(t.index, t.width) for t in tiles if t.level == 1] == [(0, 256), (1, 17)]
    assert [(t.index, t.width) for t in tiles if t.level == 2] == [(0, 1)]
    assert [t for t in tiles_for_size(70000) if t.level == ENTRIES] == [TileId(ENTRIES, t.index, t.width) for t in level0]


def test_a_log_of_256_entries_has_a_full_tile_and_a_level_one_tile_of_width_one() -> None:
    assert [t.path for t in tiles_for_size(256)] == ["tile/entries/000", "tile/0/000", "tile/1/000.p/1"]
    assert list(tiles_for_size(0)) == []
    assert tile_width(70000, 0, 273) == 112 and tile_width(70000, 0, 274) == 0 and tile_width(70000, 2, 0) == 1


def test_changed_tiles_write_full_tiles_once_and_every_new_partial() -> None:
    sizes = [0, 1, 2, 255, 256, 257, 511, 600, 65535, 65536, 65537, 70000]
    written: list[TileId] = []
    for old, new in zip(sizes, sizes[1:]):
        written += changed_tiles(old, new)
    full = [t for t in written if not t.partial]
    assert len(full) == len(set(full))
    assert {t for t in written} >= set(tiles_for_size(70000))
    assert [t.path for t in changed_tiles(0, 1)] == ["tile/entries/000.p/1", "tile/0/000.p/1"]
    assert [t.path for t in changed_tiles(255, 256)] == ["tile/entries/000", "tile/0/000", "tile/1/000.p/1"]
    assert list(changed_tiles(5, 5)) == []
    for old, new in zip(sizes, sizes[1:]):  # exactly what differs between the two sizes' tile sets
        assert set(changed_tiles(old, new)) == set(tiles_for_size(new)) - set(tiles_for_size(old))


# --- entry bundles -----------------------------------------------------------------------------


def test_entry_bundles_are_uint16_length_prefixed() -> None:
    assert encode_entry_bundle([b"one", b"two", b"three"]) == b"\x00\x03one\x00\x03two\x00\x05three"
    assert encode_entry_bundle([b""]) == b"\x00\x00"
    assert decode_entry_bundle(b"\x00\x03one\x00\x00", 2) == [b"one", b""]
    big = b"x" * MAX_ENTRY_SIZE
    assert decode_entry_bundle(encode_entry_bundle([big])) == [big]
    with pytest.raises(EntryTooLarge) as caught:
        encode_entry_bundle([b"a", b"x" * (MAX_ENTRY_SIZE + 1)], first_index=512)
    assert (caught.value.code, caught.value.index) == ("entry_too_large", 513)


@pytest.mark.parametrize(
    "data, width",
    [
        (b"\x00", None),  # half a length
        (b"\x00\x05abc", None),  # a short entry
        (b"\x00\x01a", 2),  # fewer entries than the width
        (b"\x00\x01a\x00\x01b", 1),  # more
        (b"\x00\x00" * 257, None),  # more than a bundle holds
    ],
)
def test_malformed_entry_bundles(data: bytes, width: int | None) -> None:
    with pytest.raises(MalformedTile) as caught:
        decode_entry_bundle(data, width, path="tile/entries/007")
    assert caught.value.path == "tile/entries/007"


def test_the_longest_command_the_ledger_accepts_fits_an_entry_bundle() -> None:
    """A command is refused once its JSON-escaped form passes MAX_COMMAND_BYTES, so its entries
    (command.started and command.finished hold it whole) fit a bundle; anything longer is refused."""
    entry = {
        "seq": 10**9, "time": "2026-12-01T00:00:00.000Z", "cvm": "c" * 64, "cvm_prev": 10**9 - 1,
        "event": "command.finished", "actor": "a" * 64, "request_digest": "d" * 64, "started_seq": 10**9 - 1,
        "exit_status": 255, "duration_ms": 123456.789, "timed_out": False, "stdout_sha256": "e" * 64,
        "stdout_size": 16 * 2**20, "stdout_truncated": True, "stderr_sha256": "f" * 64, "stderr_size": 16 * 2**20,
        "stderr_truncated": True, "protocol": "seed",
    }  # fmt: skip
    for command in ("x" * MAX_COMMAND_BYTES, "\x01" * (MAX_COMMAND_BYTES // 6)):
        RunParams(cvm_id="c" * 64, commands=[command])  # accepted
        encode_entry_bundle([canonical({**entry, "command": command})])  # and fits
    for command in ("x" * (MAX_COMMAND_BYTES - 1) + "\x01", "\x01" * MAX_COMMAND_LENGTH):
        with pytest.raises(ValidationError, match="bytes in the ledger"):
            RunParams(cvm_id="c" * 64, commands=[command])
    with pytest.raises(EntryTooLarge):
        encode_entry_bundle([canonical({**entry, "command": "x" * MAX_COMMAND_LENGTH})])


# --- the writer side: hash tiles from the tree ----------------------------------------------------


@dataclass
class Log:
    """A log published as tiles into a dict, as a bucket would hold it after several appends
    (partial tiles of earlier sizes left in place, as a store that never deletes does)."""

    tree: MerkleTree
    entries: list[bytes]
    files: dict[str, bytes]
    key: ed25519.Ed25519PrivateKey

    def checkpoint(self, size: int | None = None) -> Checkpoint:
        size = self.tree.size if size is None else size
        return Checkpoint("example.com/duet-test", size, self.tree.root(size))

    def fetch(self, path: str) -> bytes | None:
        return self.files.get(path)


def publish(tree: MerkleTree, entries: list[bytes], files: dict[str, bytes], old: int, new: int) -> None:
    for tile in changed_tiles(old, new):
        if tile.level == ENTRIES:
            first = tile.index * 256
            files[tile.path] = encode_entry_bundle(entries[first : first + tile.width], first_index=first)
        else:
            files[tile.path] = hash_tile(tree, tile.level, tile.index, tile.width)


def build_log(sizes: list[int]) -> Log:
    tree, entries, files = MerkleTree(), [], {}
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
    old = 0
    for size in sizes:
        while tree.size < size:
            entry = b"entry %d " % tree.size + b"." * (tree.size % 7)
            entries.append(entry)
            tree.append(leaf_hash(entry))
        publish(tree, entries, files, old, size)
        old = size
    log = Log(tree, entries, files, key)
    files["checkpoint"] = sign_checkpoint(log.checkpoint(), key)
    return log


@pytest.fixture(scope="module")
def big() -> Log:
    return build_log([1, 200, 256, 300, 65535, 65536, 65537, 70000])


def test_hash_tiles_are_the_trees_hashes_at_every_eighth_level(big: Log) -> None:
    tree = big.tree
    assert hash_tile(tree, 0, 0) == b"".join(tree.leaf(i) for i in range(256))
    assert hash_tile(tree, 0, 273) == b"".join(tree.leaf(i) for i in range(273 * 256, 70000))
    level1 = hash_tile(tree, 1, 0)
    assert len(level1) == 8192
    assert level1[:32] == MerkleTree([tree.leaf(i) for i in range(256)]).root()
    assert hash_tile(tree, 2, 0) == tree.root(65536)
    assert hash_tile(tree, 1, 1) == hash_tile(tree, 1, 1, 17) and len(hash_tile(tree, 1, 1)) == 17 * 32
    with pytest.raises(ValueError):
        hash_tile(tree, 0, 273, 113)
    with pytest.raises(ValueError):
        hash_tile(tree, 3, 0)


def test_the_tessera_test_log_is_reproduced_byte_for_byte() -> None:
    """Every tile and entry bundle of Tessera's test log, and every entry read back verified."""
    log_dir = ASSETS / "tessera-log"

    def fetch(path: str) -> bytes | None:
        file = log_dir / path
        return file.read_bytes() if file.is_file() else None

    verifier = NoteVerifier.from_vkey(TESSERA["vkey"])
    leaves = [leaf.encode() for leaf in TESSERA["leaves"]]
    tree = MerkleTree()
    for size in range(len(leaves) + 1):
        checkpoint = verify_checkpoint((log_dir / f"checkpoint.{size}").read_bytes(), verifier)
        assert list(TiledLog(fetch, checkpoint).entries()) == leaves[:size]
        if size:
            assert hash_tile(tree, 0, 0) == fetch(tile_path(0, 0, size))
            assert encode_entry_bundle(leaves[:size]) == fetch(entries_path(0, size))
        if size < len(leaves):
            tree.append(leaf_hash(leaves[size]))


# --- the reader side ----------------------------------------------------------------------------


def test_every_entry_of_a_three_level_log_is_read_and_verified(big: Log) -> None:
    assert list(TiledLog(big.fetch, big.checkpoint()).entries()) == big.entries
    assert verify_tiled_log(big.fetch, big.checkpoint()) == 70000
    assert verify_tiled_log(big.fetch, big.checkpoint(), start=69990) == 10
    log = TiledLog(big.fetch, big.checkpoint())
    assert list(log.entries(255, 258)) == big.entries[255:258]
    assert list(log.entries(70000)) == []
    with pytest.raises(ValueError):
        list(log.entries(5, 70001))


@pytest.mark.parametrize("size", [1, 200, 256, 300, 65535, 65536, 65537])
def test_an_older_checkpoint_reads_from_the_same_bucket(big: Log, size: int) -> None:
    """Partial tiles of earlier sizes stay readable, so an older checkpoint still verifies."""
    assert verify_tiled_log(big.fetch, big.checkpoint(size)) == size


def test_without_its_partial_tiles_an_older_checkpoint_reads_the_full_ones(big: Log) -> None:
    current = {t.path for t in tiles_for_size(70000)}
    files = {p: d for p, d in big.files.items() if ".p/" not in p or p in current}  # a bucket that prunes old partials
    assert "tile/0/000.p/200" not in files and "tile/entries/000.p/200" not in files
    assert verify_tiled_log(files.get, big.checkpoint(200)) == 200  # the spec's fallback to the full tile
    assert verify_tiled_log(files.get, big.checkpoint()) == 70000


def test_the_root_of_any_older_size_comes_from_the_tiles(big: Log) -> None:
    log = TiledLog(big.fetch, big.checkpoint())
    for size in [0, 1, 2, 3, 255, 256, 257, 511, 512, 4097, 65535, 65536, 65537, 69999, 70000]:
        assert log.root_at(size) == big.tree.root(size), size
    assert log.root_at(0) == EMPTY_ROOT
    with pytest.raises(ValueError):
        log.root_at(70001)


def test_an_empty_log_has_no_tiles() -> None:
    assert verify_tiled_log(lambda path: None, Checkpoint("o", 0, EMPTY_ROOT)) == 0
    with pytest.raises(TileMismatch):
        TiledLog(lambda path: None, Checkpoint("o", 0, bytes(32)))


def altered(files: dict[str, bytes], path: str, change: Callable[[bytes], bytes]) -> Callable[[str], bytes | None]:
    copy = dict(files)
    copy[path] = change(copy[path])
    return copy.get


def flip(offset: int) -> Callable[[bytes], bytes]:
    return lambda data: data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]


@pytest.mark.parametrize("path", ["tile/0/000", "tile/0/017", "tile/0/272", "tile/1/000"])
def test_an_altered_full_tile_is_named(big: Log, path: str) -> None:
    fetch = altered(big.files, path, flip(100))
    with pytest.raises(TileMismatch) as caught:
        verify_tiled_log(fetch, big.checkpoint())
    assert (caught.value.code, caught.value.path) == ("tile_mismatch", path)


def test_an_altered_entry_is_named_with_its_bundle(big: Log) -> None:
    bundle = big.files["tile/entries/010"]
    fetch = altered(big.files, "tile/entries/010", lambda data: data.replace(b"entry 2600", b"entry 2601", 1))
    assert fetch("tile/entries/010") != bundle
    with pytest.raises(TileMismatch) as caught:
        verify_tiled_log(fetch, big.checkpoint())
    assert (caught.value.code, caught.value.path, caught.value.index) == ("entry_mismatch", "tile/entries/010", 2600)
    # entries before the altered bundle were read, checked and handed out before it was found
    seen: list[bytes] = []
    with pytest.raises(TileMismatch):
        for entry in TiledLog(fetch, big.checkpoint()).entries():
            seen.append(entry)
    assert seen == big.entries[:2560]


def test_an_altered_right_edge_tile_fails_the_root_and_names_the_candidates(big: Log) -> None:
    fetch = altered(big.files, "tile/0/273.p/112", flip(5))
    with pytest.raises(TileMismatch) as caught:
        TiledLog(fetch, big.checkpoint())
    assert caught.value.code == "tiles_root_mismatch"
    assert set(caught.value.paths) == {"tile/0/273.p/112", "tile/1/001.p/17", "tile/2/000.p/1"}


def test_a_missing_or_malformed_tile_is_named(big: Log) -> None:
    files = dict(big.files)
    del files["tile/0/005"]
    with pytest.raises(TileMissing) as missing:
        verify_tiled_log(files.get, big.checkpoint())
    assert (missing.value.code, missing.value.path) == ("tile_missing", "tile/0/005")
    with pytest.raises(MalformedTile) as malformed:
        verify_tiled_log(altered(big.files, "tile/0/006", lambda d: d + b"\x00"), big.checkpoint())
    assert malformed.value.path == "tile/0/006"
    with pytest.raises(MalformedTile) as bad_bundle:
        verify_tiled_log(altered(big.files, "tile/entries/007", lambda d: d[:-1]), big.checkpoint())
    assert bad_bundle.value.path == "tile/entries/007"


def test_a_checkpoint_for_another_log_fails_at_once(big: Log) -> None:
    with pytest.raises(TileMismatch):
        TiledLog(big.fetch, Checkpoint("o", 70000, big.tree.root(69999)))


def test_memory_does_not_grow_with_the_log(big: Log) -> None:
    small = build_log([3000])

    def peak(log: Log) -> int:
        tracemalloc.start()
        try:
            for _ in TiledLog(log.fetch, log.checkpoint()).entries():
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small_peak, big_peak = peak(small), peak(big)
    assert big_peak < 256 * 1024  # one tile per level and one bundle, for a 2.6 MB log
    assert big_peak < 2 * small_peak + 64 * 1024


def test_a_checkpoint_read_from_the_bucket_verifies_the_bucket(big: Log) -> None:
    """The whole reader's path: /checkpoint, its signature, then the tiles."""
    verifier = NoteVerifier("example.com/duet-test", big.key.public_key())
    checkpoint = verify_checkpoint(big.files["checkpoint"], verifier)
    assert verify_tiled_log(big.fetch, checkpoint) == 70000


# --- an independent implementation: tlog-scales (PyPI) ---------------------------------------------


def test_tlog_scales_writes_the_same_log_and_reads_ours(tmp_path: Path) -> None:
    writer = pytest.importorskip("tlog_scales.writer")
    signing = pytest.importorskip("tlog_scales.signing")
    reader = pytest.importorskip("tlog_scales.reader")
    origin, seed = "example.com/duet-interop", bytes(range(32))
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    theirs = writer.TilesWriter.create(tmp_path / "log", origin)
    signer = signing.PlainEd25519Signer(origin, seed)
    tree, entries, files, old = MerkleTree(), [], {}, 0
    for batch in (1, 255, 1, 300, 65000, 120):
        for _ in range(batch):
            entry = b"entry %d" % len(entries) * (1 + len(entries) % 3)
            entries.append(entry)
            theirs.add_leaf(entry)
            tree.append(leaf_hash(entry))
        theirs.commit([signer])
        publish(tree, entries, files, old, tree.size)
        old = tree.size
        # their checkpoint is ours, byte for byte
        their_checkpoint = (tmp_path / "log" / "checkpoint").read_bytes()
        checkpoint = Checkpoint(origin, tree.size, tree.root())
        assert their_checkpoint == sign_checkpoint(checkpoint, key)
        assert parse_checkpoint(parse_note(their_checkpoint).text) == checkpoint

    # every file they wrote (their partial tiles of earlier sizes too) is the file we publish
    on_disk = {str(p.relative_to(tmp_path / "log")): p.read_bytes() for p in (tmp_path / "log").rglob("*") if p.is_file()}
    del on_disk["checkpoint"]
    assert set(on_disk) >= {t.path for t in tiles_for_size(tree.size)}
    assert all(files[path] == data for path, data in on_disk.items())

    # we verify their log; they read ours and compute the same root and proofs
    checkpoint = Checkpoint(origin, tree.size, tree.root())
    assert list(TiledLog(lambda p: on_disk.get(p), checkpoint).entries()) == entries

    class DictBackend:
        def get(self, *path: str) -> bytes | None:
            return files.get("/".join(path))

    ours = reader.TilesReader(DictBackend())
    ours.set_size(tree.size)
    assert ours.calculate_root_hash() == tree.root()
    for index in (0, 255, 256, 65535, 65536, tree.size - 1):
        assert ours.get_entry(index) == entries[index]
        assert ours.get_inclusion_proof(index, tree.size).node_hashes == tree.inclusion_proof(index, tree.size)
    for first in (1, 256, 257, 65536, 65600):
        assert ours.get_consistency_proof(first, tree.size).node_hashes == tree.consistency_proof(first, tree.size)
