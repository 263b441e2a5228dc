"""A controller's ledger published as C2SP tiles in memory, and witnesses cosigning checkpoints,
for the auditor's ``--tiles`` and ``--witness`` tests.

The tiles are made as the publisher makes them (``duet.ledger.tiles``: hash tiles from the
ledger's Merkle tree, entry bundles of the entries' canonical JSON) and the checkpoint is signed
with the fake controller's key (ledger_fakes.KEY / synthetic_ledger.KEY), so nothing here is the
publisher's code: the auditor is checked against the formats.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from duet import keys
from duet.client.tiles_source import TilesSource
from duet.ledger.checkpoint import Checkpoint, CosignatureSigner, controller_origin, cosign, sign_checkpoint
from duet.ledger.merkle import MerkleTree
from duet.ledger.note import NoteSignature, NoteSigner, parse_signature_lines
from duet.ledger.tiles import ENTRIES, TILE_WIDTH, encode_entry_bundle, hash_tile, tiles_for_size
from duet.protocol.canonical import canonical


class Witness:
    """A witness's key: cosigns whatever checkpoint it is given (the policy is the auditor's)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = ed25519.Ed25519PrivateKey.generate()
        self.vkey = CosignatureSigner(name, self.key).vkey

    def cosign(self, checkpoint: Checkpoint) -> NoteSignature:
        (signature,) = parse_signature_lines(cosign(checkpoint, self.key, self.name, int(time.time())).encode())
        return signature


def checkpoint_note(
    tree: MerkleTree, size: int, key: keys.PrivateKey, *, witnesses: Sequence[Witness] = (), root: bytes | None = None
) -> bytes:
    """The controller's checkpoint of the first ``size`` entries, cosigned by ``witnesses``."""
    controller = keys.key_id(key.public_key())
    origin = controller_origin(controller)
    checkpoint = Checkpoint(origin, size, tree.root(size) if root is None else root)
    return sign_checkpoint(checkpoint, NoteSigner(origin, key), keep=[w.cosign(checkpoint) for w in witnesses])


def publish(
    tree: MerkleTree,
    entry: Callable[[int], Any],
    size: int,
    key: keys.PrivateKey,
    *,
    witnesses: Sequence[Witness] = (),
    files: dict[str, bytes] | None = None,
) -> dict[str, bytes]:
    """The files of a tiled log of the first ``size`` entries (``entry(seq)`` gives each), added
    to ``files`` (a bucket that grows: full tiles already there are the same bytes)."""
    files = {} if files is None else files
    for tile in tiles_for_size(size):
        if tile.level == ENTRIES:
            first = tile.index * TILE_WIDTH
            files[tile.path] = encode_entry_bundle(canonical(entry(seq)) for seq in range(first, first + tile.width))
        else:
            files[tile.path] = hash_tile(tree, tile.level, tile.index, tile.width)
    files["checkpoint"] = checkpoint_note(tree, size, key, witnesses=witnesses)
    return files


class MemoryTiles(TilesSource):
    """A bucket in memory; ``reads`` lists the paths read, in order."""

    location = "memory://bucket"

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = {} if files is None else files
        self.reads: list[str] = []

    def __call__(self, path: str) -> bytes | None:
        self.reads.append(path)
        return self.files.get(path)
