"""A log to feed witnesses: a Merkle tree and an Ed25519 key that signs its checkpoints, with the
add-checkpoint bodies (old size, consistency proof, signed checkpoint) a real log would send."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ed25519

from duet.ledger.checkpoint import Checkpoint, sign_checkpoint
from duet.ledger.merkle import MerkleTree, leaf_hash
from duet.ledger.note import NoteSigner, b64encode

WITNESS_NAME = "witness.test/w1"


class FakeLog:
    def __init__(self, origin: str = "example.com/log", key: ed25519.Ed25519PrivateKey | None = None, tag: str = "") -> None:
        self.origin = origin
        self.key = key or ed25519.Ed25519PrivateKey.generate()
        self.signer = NoteSigner(origin, self.key)
        self.tree = MerkleTree()
        self.tag = tag

    @property
    def vkey(self) -> str:
        return self.signer.vkey

    @property
    def size(self) -> int:
        return self.tree.size

    def grow(self, count: int) -> FakeLog:
        for _ in range(count):
            self.tree.append(leaf_hash(f"{self.tag}entry {self.tree.size}".encode()))
        return self

    def fork(self, at: int) -> FakeLog:
        """The same log (origin, key) whose history agrees up to ``at`` leaves, then differs."""
        other = FakeLog(self.origin, self.key, tag=self.tag + "fork ")
        other.tree = MerkleTree([self.tree.leaf(i) for i in range(at)])
        return other

    def checkpoint(self, size: int | None = None) -> Checkpoint:
        size = self.size if size is None else size
        return Checkpoint(self.origin, size, self.tree.root(size))

    def note(self, size: int | None = None, *, signer: NoteSigner | None = None) -> bytes:
        return sign_checkpoint(self.checkpoint(size), signer or self.signer)

    def body(self, old: int, size: int | None = None, *, proof: list[bytes] | None = None, note: bytes | None = None) -> bytes:
        size = self.size if size is None else size
        if proof is None:
            proof = self.tree.consistency_proof(old, size) if old else []
        head = "".join(f"{line}\n" for line in [f"old {old}", *(b64encode(p) for p in proof)])
        return head.encode() + b"\n" + (note if note is not None else self.note(size))
