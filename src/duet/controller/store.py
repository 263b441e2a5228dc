"""SQLite persistence of everything the controller knows (design.md §7).

One database in WAL mode. Every state change commits in one transaction together with the
ledger entry that records it, so after a crash the state and the history always agree.
Secrets (CVM SSH private keys) are stored encrypted with the state key from the sealed
directory and are only decrypted in memory, right before use.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from duet.errors import ConfigError, Conflict, NotFound
from duet.protocol.canonical import timestamp

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owners (
    key_id TEXT PRIMARY KEY, public_pem TEXT NOT NULL, added_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nonces (
    nonce TEXT PRIMARY KEY, signer TEXT NOT NULL, seen_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS nonces_seen ON nonces (seen_at);
CREATE TABLE IF NOT EXISTS cvms (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, provider TEXT NOT NULL, mode TEXT NOT NULL,
    final INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    machine TEXT, ssh_public_key TEXT NOT NULL, ssh_private_key BLOB, failure TEXT);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, cvm_id TEXT NOT NULL, status TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '', error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS running_commands (
    started_seq INTEGER PRIMARY KEY, cvm_id TEXT NOT NULL, command TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY, cvm_id TEXT, entry BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_cvm ON ledger (cvm_id, seq);
CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL);
"""

ACTIVE_MODES = ("in-update", "in-service")


@dataclass(frozen=True)
class CvmRecord:
    id: str
    type: str
    provider: str
    mode: str
    final: bool
    created_at: str
    updated_at: str
    machine: dict[str, Any] | None
    ssh_public_key: str
    has_key: bool
    failure: str | None

    def public(self) -> dict[str, Any]:
        """What anybody may see about the CVM (no key material, no provider internals)."""
        machine = self.machine or {}
        return {
            "cvm_id": self.id,
            "type": self.type,
            "provider": self.provider,
            "mode": self.mode,
            "final": self.final,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "host_key": machine.get("host_key") or None,
            "failure": self.failure,
        }


@dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    cvm_id: str
    status: str
    step: str
    error: dict[str, str] | None
    created_at: str
    updated_at: str

    def public(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "kind": self.kind,
            "cvm_id": self.cvm_id,
            "status": self.status,
            "step": self.step,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class Transaction:
    """A write transaction; callbacks registered with ``on_commit`` run only if it commits."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self._after_commit: list[Callable[[], None]] = []
        self.ledger_entries: list[bytes] = []
        """Canonical bytes of the ledger entries written in this transaction, in order."""

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, args)

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)


class StateCipher:
    """AES-256-GCM with the state key, bound to the record it protects."""

    def __init__(self, key_path: Path) -> None:
        if not key_path.exists():
            key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, AESGCM.generate_key(bit_length=256))
            finally:
                os.close(fd)
        key = key_path.read_bytes()
        if len(key) != 32:
            raise ConfigError(f"state key {key_path} is damaged (expected 32 bytes)", code="bad_state_key")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, bound_to: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, bound_to.encode())

    def open(self, sealed: bytes, bound_to: str) -> bytes:
        return self._aead.decrypt(sealed[:12], sealed[12:], bound_to.encode())


class Store:
    def __init__(self, db_path: Path, cipher: StateCipher) -> None:
        self.db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.cipher = cipher

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        tx = Transaction(self.db)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield tx
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        for callback in tx._after_commit:
            callback()

    # --- meta and owners -------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, tx: Transaction, key: str, value: str) -> None:
        tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def owners(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key_id, public_pem FROM owners ORDER BY key_id"))

    def replace_owners(self, tx: Transaction, owners: dict[str, str]) -> None:
        tx.execute("DELETE FROM owners")
        for key_id, pem in owners.items():
            tx.execute("INSERT INTO owners (key_id, public_pem, added_at) VALUES (?, ?, ?)", (key_id, pem, timestamp()))

    # --- nonces ------------------------------------------------------------------------

    def consume_nonce(self, nonce: str, signer: str, *, keep_seconds: float) -> bool:
        """Record a nonce; False when it was seen before. Old nonces are pruned: a request
        that old is refused by its time anyway."""
        now = time.time()
        with self.transaction() as tx:
            tx.execute("DELETE FROM nonces WHERE seen_at < ?", (now - keep_seconds,))
            try:
                tx.execute("INSERT INTO nonces (nonce, signer, seen_at) VALUES (?, ?, ?)", (nonce, signer, now))
            except sqlite3.IntegrityError:
                return False
        return True

    # --- CVMs --------------------------------------------------------------------------

    def insert_cvm(self, tx: Transaction, cvm_id: str, cvm_type: str, provider: str, ssh_public_key: str, ssh_private_key: str) -> None:
        now = timestamp()
        try:
            tx.execute(
                "INSERT INTO cvms (id, type, provider, mode, created_at, updated_at, ssh_public_key, ssh_private_key)"
                " VALUES (?, ?, ?, 'provisioning', ?, ?, ?, ?)",
                (cvm_id, cvm_type, provider, now, now, ssh_public_key, self.cipher.seal(ssh_private_key.encode(), cvm_id)),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"CVM {cvm_id} already exists", code="cvm_exists") from None

    def update_cvm(self, tx: Transaction, cvm_id: str, **fields: Any) -> None:
        allowed = {"mode", "final", "machine", "failure"}
        if not fields.keys() <= allowed:
            raise ValueError(f"cannot update {sorted(fields.keys() - allowed)}")
        values = {name: json.dumps(value) if name == "machine" and value is not None else value for name, value in fields.items()}
        assignments = ", ".join(f"{name} = ?" for name in values)
        tx.execute(f"UPDATE cvms SET {assignments}, updated_at = ? WHERE id = ?", (*values.values(), timestamp(), cvm_id))

    def destroy_ssh_key(self, tx: Transaction, cvm_id: str) -> None:
        tx.execute("UPDATE cvms SET ssh_private_key = NULL WHERE id = ?", (cvm_id,))

    def ssh_private_key(self, cvm_id: str) -> str | None:
        row = self.db.execute("SELECT ssh_private_key FROM cvms WHERE id = ?", (cvm_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        return self.cipher.open(row[0], cvm_id).decode()

    _CVM_COLUMNS = "id, type, provider, mode, final, created_at, updated_at, machine, ssh_public_key, ssh_private_key IS NOT NULL, failure"

    @staticmethod
    def _cvm(row: tuple[Any, ...]) -> CvmRecord:
        return CvmRecord(
            id=row[0], type=row[1], provider=row[2], mode=row[3], final=bool(row[4]), created_at=row[5],
            updated_at=row[6], machine=json.loads(row[7]) if row[7] else None, ssh_public_key=row[8],
            has_key=bool(row[9]), failure=row[10],
        )

    def find_cvm(self, cvm_id: str) -> CvmRecord | None:
        row = self.db.execute(f"SELECT {self._CVM_COLUMNS} FROM cvms WHERE id = ?", (cvm_id,)).fetchone()
        return self._cvm(row) if row else None

    def get_cvm(self, cvm_id: str) -> CvmRecord:
        cvm = self.find_cvm(cvm_id)
        if cvm is None:
            raise NotFound(f"no CVM with id {cvm_id}; `duet cvm list` shows the known ones", code="unknown_cvm")
        return cvm

    def list_cvms(self, modes: tuple[str, ...] | None = None) -> list[CvmRecord]:
        rows = self.db.execute(f"SELECT {self._CVM_COLUMNS} FROM cvms ORDER BY created_at, id").fetchall()
        cvms = [self._cvm(row) for row in rows]
        return [cvm for cvm in cvms if modes is None or cvm.mode in modes]

    # --- jobs --------------------------------------------------------------------------

    def insert_job(self, tx: Transaction, job_id: str, kind: str, cvm_id: str) -> None:
        now = timestamp()
        tx.execute(
            "INSERT INTO jobs (id, kind, cvm_id, status, created_at, updated_at) VALUES (?, ?, ?, 'running', ?, ?)",
            (job_id, kind, cvm_id, now, now),
        )

    def update_job(self, job_id: str, *, step: str | None = None, status: str | None = None, error: dict[str, str] | None = None) -> None:
        with self.transaction() as tx:
            self.update_job_in(tx, job_id, step=step, status=status, error=error)

    def update_job_in(self, tx: Transaction, job_id: str, *, step: str | None = None, status: str | None = None, error: dict[str, str] | None = None) -> None:
        tx.execute(
            "UPDATE jobs SET step = COALESCE(?, step), status = COALESCE(?, status), error = COALESCE(?, error), updated_at = ? WHERE id = ?",
            (step, status, json.dumps(error) if error else None, timestamp(), job_id),
        )

    def get_job(self, job_id: str) -> JobRecord:
        row = self.db.execute(
            "SELECT id, kind, cvm_id, status, step, error, created_at, updated_at FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no job with id {job_id}", code="unknown_job")
        return JobRecord(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]) if row[5] else None, row[6], row[7])

    def running_jobs(self) -> list[JobRecord]:
        ids = [row[0] for row in self.db.execute("SELECT id FROM jobs WHERE status = 'running'")]
        return [self.get_job(job_id) for job_id in ids]

    # --- commands in flight (to report the ones a crash interrupted) -------------------

    def command_started(self, tx: Transaction, seq: int, cvm_id: str, command: str) -> None:
        tx.execute("INSERT INTO running_commands (started_seq, cvm_id, command) VALUES (?, ?, ?)", (seq, cvm_id, command))

    def command_ended(self, tx: Transaction, seq: int) -> None:
        tx.execute("DELETE FROM running_commands WHERE started_seq = ?", (seq,))

    def interrupted_commands(self) -> list[tuple[int, str, str]]:
        return list(self.db.execute("SELECT started_seq, cvm_id, command FROM running_commands ORDER BY started_seq"))

    # --- blobs -------------------------------------------------------------------------

    def put_blob(self, tx: Transaction, sha256: str, data: bytes) -> None:
        tx.execute("INSERT OR IGNORE INTO blobs (sha256, data) VALUES (?, ?)", (sha256, data))

    def get_blob(self, sha256: str) -> bytes:
        row = self.db.execute("SELECT data FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            raise NotFound(f"no stored output with SHA-256 {sha256}", code="unknown_blob")
        return bytes(row[0])
