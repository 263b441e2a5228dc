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
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
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
CREATE TABLE IF NOT EXISTS pruned_blobs (sha256 TEXT PRIMARY KEY, pruned_at REAL NOT NULL);
"""

BLOB_CHUNK = 256 * 1024
"""Bytes read from a stored output at a time (streamed answers, verified prefixes)."""


class StoredBlobAltered(DuetError):
    """A stored output no longer hashes to its address: the database was edited."""

    code = "blob_altered"


class OutputPruned(DuetError):
    """A stored output was deleted by the retention policy; its SHA-256 stays in the ledger."""

    code = "output_pruned"


class OutputQuotaExceeded(Conflict):
    """A CVM's stored outputs reached its quota: no more commands until older outputs are pruned.

    A conflict with the CVM's state (409), as a command in the wrong mode is, not a failure of
    the controller: nothing is wrong with the server, and the owner can act on it."""

    code = "output_quota_exceeded"


@dataclass(frozen=True)
class BlobLocation:
    """Where a stored output is: its row and its size, for chunked reads."""

    sha256: str
    rowid: int
    size: int


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
        if "stored_at" not in {row[1] for row in db.execute("PRAGMA table_info(blobs)")}:
            # Outputs stored before the retention policy existed count from the upgrade.
            db.execute("ALTER TABLE blobs ADD COLUMN stored_at REAL")
            db.execute("UPDATE blobs SET stored_at = ? WHERE stored_at IS NULL", (time.time(),))
        db.execute("CREATE INDEX IF NOT EXISTS blobs_stored_at ON blobs (stored_at)")
        self._reader_lock = threading.Lock()
        self._reader = self._open_reader()

    def transaction(self) -> AbstractContextManager[Transaction]:
        return self.db.transaction()

    def close(self) -> None:
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        self.db.close()

    def _open_reader(self) -> sqlite3.Connection | None:
        """A read-only connection of its own for outputs, usable from worker threads: reads of
        large outputs run off the event loop, and never inside the writer's transactions."""
        path = self.db.execute("PRAGMA database_list").fetchone()[2]
        if not path:
            return None  # an in-memory database: read through the main connection
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

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
    #
    # Reads may run in worker threads (``asyncio.to_thread``): they go through the read-only
    # connection, one chunk at a time under a lock, each chunk its own short read transaction
    # (a slow reader never pins the WAL). Writes stay on the main connection.

    def put_blob(self, tx: Transaction, sha256: str, data: bytes) -> None:
        """Store an output (again): a repeat refreshes its time, so retention counts from its last use."""
        now = time.time()
        tx.execute(
            "INSERT INTO blobs (sha256, data, stored_at) VALUES (?, ?, ?)"
            " ON CONFLICT(sha256) DO UPDATE SET stored_at = excluded.stored_at",
            (sha256, data, now),
        )
        tx.execute("DELETE FROM pruned_blobs WHERE sha256 = ?", (sha256,))

    def _read(self, sql: str, args: tuple[Any, ...]) -> Any:
        with self._reader_lock:
            if self._reader is None:
                return self.db.execute(sql, args).fetchone()
            return self._reader.execute(sql, args).fetchone()

    def locate_blob(self, sha256: str) -> BlobLocation:
        """Where an output is; ``OutputPruned`` when the retention policy deleted it, ``NotFound``
        when it was never stored (or the host deleted it)."""
        row = self._read("SELECT rowid, length(data) FROM blobs WHERE sha256 = ?", (sha256,))
        if row is not None:
            return BlobLocation(sha256, int(row[0]), int(row[1]))
        pruned = self._read("SELECT pruned_at FROM pruned_blobs WHERE sha256 = ?", (sha256,))
        if pruned is not None:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(pruned[0])))
            raise OutputPruned(
                f"the output with SHA-256 {sha256} was pruned by the controller's retention policy on {when}; "
                "its hash stays in the ledger"
            )
        raise NotFound(f"no stored output with SHA-256 {sha256}", code="unknown_blob")

    def read_blob(self, where: BlobLocation, offset: int, size: int = BLOB_CHUNK) -> bytes:
        """Up to ``size`` bytes of an output from ``offset``, unchecked: the caller hashes the
        whole. Empty when the row is gone or changed size (the caller's hash then fails)."""
        with self._reader_lock:
            connection = self._reader
            if connection is None:
                row = self.db.execute(
                    "SELECT substr(data, ?, ?) FROM blobs WHERE rowid = ?", (offset + 1, size, where.rowid)
                ).fetchone()
                return bytes(row[0]) if row else b""
            try:
                with connection.blobopen("blobs", "data", where.rowid, readonly=True) as blob:
                    if len(blob) != where.size:
                        return b""
                    blob.seek(offset)
                    return blob.read(size)
            except sqlite3.Error:
                return b""

    def chunks(self, where: BlobLocation, *, first: bytes = b"") -> Iterator[bytes]:
        """The output's bytes chunk by chunk (after ``first``, already read), unchecked."""
        offset = len(first)
        while offset < where.size:
            chunk = self.read_blob(where, offset)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk

    def blob_prefix(self, sha256: str, limit: int) -> tuple[bytes, int]:
        """The first ``limit`` bytes of an output and its size, after hashing all of it against
        its address (memory: the prefix and one chunk). Blocking: call it off the event loop."""
        where = self.locate_blob(sha256)
        digest = hashlib.sha256()
        kept = bytearray()
        total = 0
        for chunk in self.chunks(where):
            digest.update(chunk)
            total += len(chunk)
            if len(kept) < limit:
                kept += chunk[: limit - len(kept)]
        if total != where.size or digest.hexdigest() != sha256:
            raise StoredBlobAltered(f"the stored output {sha256[:16]}… was altered on disk; the controller will not serve it")
        return bytes(kept), total

    def get_blob(self, sha256: str) -> bytes:
        """A whole output, checked against its address (small outputs only: this holds it all)."""
        return self.blob_prefix(sha256, 2**62)[0]

    def prune_blobs(self, cutoff: float, *, batch: int = 64) -> int:
        """Delete up to ``batch`` outputs last stored before ``cutoff`` (epoch seconds), remembering
        that they were pruned; returns how many. The ledger keeps their hashes."""
        with self.transaction() as tx:
            rows = tx.execute("SELECT sha256 FROM blobs WHERE stored_at < ? LIMIT ?", (cutoff, batch)).fetchall()
            now = time.time()
            for (sha256,) in rows:
                tx.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
                tx.execute("INSERT OR REPLACE INTO pruned_blobs (sha256, pruned_at) VALUES (?, ?)", (sha256, now))
        return len(rows)
