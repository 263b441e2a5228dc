"""SQLite persistence of what the controller knows (design.md §7): a claim, never a decision.

One database in WAL mode, owned by the host. Every state change commits in one transaction
together with the ledger entry that records it, but nothing here is read back to decide:
the running controller keeps what it enforces in memory, and at start it rebuilds that from
the ledger — verified against the head in sealed state (controller/sealed_state.py) — and
refuses to start when a row disagrees (controller/startup.py). CVM SSH keys are stored
encrypted, each under a data key of its own kept in sealed state.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from duet.errors import Conflict, DuetError, NotFound
from duet.protocol.canonical import timestamp
from duet.storage import Database, Transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS owners (
    key_id TEXT PRIMARY KEY, public_pem TEXT NOT NULL, added_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nonces (
    nonce TEXT PRIMARY KEY, signer TEXT NOT NULL, seen_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS nonces_seen ON nonces (seen_at);
CREATE TABLE IF NOT EXISTS cvms (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, provider TEXT NOT NULL, mode TEXT NOT NULL,
    final INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    machine TEXT, ssh_public_key TEXT NOT NULL, ssh_private_key BLOB, failure TEXT);
CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL);
"""


class StoredBlobAltered(DuetError):
    """A stored output no longer hashes to its address: the database was edited."""

    code = "blob_altered"


@dataclass(frozen=True)
class CvmRow:
    """A CVM as the database holds it: checked against the ledger at start, then only written."""

    id: str
    type: str
    provider: str
    mode: str
    final: bool
    created_at: str
    updated_at: str
    machine: dict[str, Any] | None
    ssh_public_key: str
    ssh_private_key: bytes | None
    failure: str | None


class Store:
    """The controller's tables on the shared database (the ledger keeps its own, ledger/log.py)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.create(SCHEMA)

    def transaction(self) -> AbstractContextManager[Transaction]:
        return self.db.transaction()

    def close(self) -> None:
        self.db.close()

    # --- owners (a cache of the sealed pin, for people who look at the database) ---------

    def replace_owners(self, owners: dict[str, str]) -> None:
        with self.transaction() as tx:
            tx.execute("DELETE FROM owners")
            for key_id, pem in owners.items():
                tx.execute("INSERT INTO owners (key_id, public_pem, added_at) VALUES (?, ?, ?)", (key_id, pem, timestamp()))

    # --- nonces ------------------------------------------------------------------------

    def consume_nonce(self, nonce: str, signer: str, *, now: float, keep_seconds: float) -> bool:
        """Record a nonce; False when it was seen before. Old nonces are pruned: a request
        that old is refused by its time anyway."""
        with self.transaction() as tx:
            tx.execute("DELETE FROM nonces WHERE seen_at < ?", (now - keep_seconds,))
            try:
                tx.execute("INSERT INTO nonces (nonce, signer, seen_at) VALUES (?, ?, ?)", (nonce, signer, now))
            except sqlite3.IntegrityError:
                return False
        return True

    def recent_nonces(self, since: float) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT nonce FROM nonces WHERE seen_at >= ?", (since,))}

    # --- CVMs (written with their ledger entries; read at start only) -------------------

    def insert_cvm(
        self, tx: Transaction, cvm_id: str, cvm_type: str, provider: str, ssh_public_key: str, sealed_private_key: bytes, now: str
    ) -> None:
        try:
            tx.execute(
                "INSERT INTO cvms (id, type, provider, mode, created_at, updated_at, ssh_public_key, ssh_private_key)"
                " VALUES (?, ?, ?, 'provisioning', ?, ?, ?, ?)",
                (cvm_id, cvm_type, provider, now, now, ssh_public_key, sealed_private_key),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"CVM {cvm_id} already exists", code="cvm_exists") from None

    def update_cvm(self, tx: Transaction, cvm_id: str, *, now: str, **fields: Any) -> None:
        allowed = {"mode", "final", "machine", "failure"}
        if not fields.keys() <= allowed:
            raise ValueError(f"cannot update {sorted(fields.keys() - allowed)}")
        values = {name: json.dumps(value) if name == "machine" and value is not None else value for name, value in fields.items()}
        assignments = ", ".join(f"{name} = ?" for name in values)
        tx.execute(f"UPDATE cvms SET {assignments}, updated_at = ? WHERE id = ?", (*values.values(), now, cvm_id))

    def destroy_ssh_key(self, tx: Transaction, cvm_id: str) -> None:
        """Drop the ciphertext too; what makes the key unrecoverable is its destroyed data key."""
        tx.execute("UPDATE cvms SET ssh_private_key = NULL WHERE id = ?", (cvm_id,))

    def ssh_private_key_ciphertext(self, cvm_id: str) -> bytes | None:
        row = self.db.execute("SELECT ssh_private_key FROM cvms WHERE id = ?", (cvm_id,)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def cvm_rows(self) -> list[CvmRow]:
        rows = self.db.execute(
            "SELECT id, type, provider, mode, final, created_at, updated_at, machine, ssh_public_key, ssh_private_key,"
            " failure FROM cvms ORDER BY created_at, id"
        ).fetchall()
        return [
            CvmRow(
                id=r[0],
                type=r[1],
                provider=r[2],
                mode=r[3],
                final=bool(r[4]),
                created_at=r[5],
                updated_at=r[6],
                machine=json.loads(r[7]) if r[7] else None,
                ssh_public_key=r[8],
                ssh_private_key=bytes(r[9]) if r[9] is not None else None,
                failure=r[10],
            )
            for r in rows
        ]

    # --- blobs (content-addressed: checked against their address on every read) -------

    def put_blob(self, tx: Transaction, sha256: str, data: bytes) -> None:
        tx.execute("INSERT OR IGNORE INTO blobs (sha256, data) VALUES (?, ?)", (sha256, data))

    def get_blob(self, sha256: str) -> bytes:
        row = self.db.execute("SELECT data FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            raise NotFound(f"no stored output with SHA-256 {sha256}", code="unknown_blob")
        data = bytes(row[0])
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StoredBlobAltered(f"the stored output {sha256[:16]}… was altered on disk; the controller will not serve it")
        return data
