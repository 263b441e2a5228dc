"""The state database's connection and transactions, shared by the ledger and the controller.

Neutral ground, so that dependencies flow one way: the ledger (``duet.ledger.log``) owns its
table and the controller (``duet.controller.store``) owns its tables, both on one SQLite
connection, and a state change commits in the same transaction as the ledger entry that
records it. Nothing here knows what the tables mean.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Transaction:
    """A write transaction; callbacks registered with ``on_commit`` run only if it commits.

    ``scratch`` holds what a component accumulates during the transaction (the ledger keeps
    its uncommitted entries there), keyed by that component."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._after_commit: list[Callable[[], None]] = []
        self.scratch: dict[object, Any] = {}

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self._connection.execute(sql, args)

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)


class Database:
    """One SQLite database in WAL mode (readers never wait for the writer)."""

    def __init__(self, path: Path) -> None:
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")

    def create(self, schema: str) -> None:
        """Create a component's tables (``CREATE ... IF NOT EXISTS`` statements)."""
        self._connection.executescript(schema)

    def execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Cursor:
        """A read (or a statement outside any transaction, e.g. in tests that play the host)."""
        return self._connection.execute(sql, args)

    def close(self) -> None:
        self._connection.close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        tx = Transaction(self._connection)
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield tx
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")
        for callback in tx._after_commit:
            callback()
