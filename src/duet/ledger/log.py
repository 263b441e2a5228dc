"""The append-only ledger (design.md §6): entries in SQLite, their Merkle tree in memory.

Entries are written inside the caller's store transaction, so a state change and the entry
recording it commit together. The in-memory tree only learns of an entry once its
transaction has committed; it is rebuilt from the stored entries at start, so whatever is on
disk is exactly what the tree commits to.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from duet.controller.store import Store, Transaction
from duet.errors import InvalidParams
from duet.ledger.merkle import MerkleTree, leaf_hash
from duet.protocol.canonical import canonical, timestamp

RESERVED_FIELDS = frozenset({"seq", "time", "cvm", "event", "actor", "request_digest"})

EntryListener = Callable[[dict[str, Any]], None]


class Ledger:
    def __init__(self, store: Store, controller_id: str) -> None:
        self.store = store
        self.controller_id = controller_id
        rows = store.db.execute("SELECT entry FROM ledger ORDER BY seq")
        self.tree = MerkleTree(leaf_hash(bytes(row[0])) for row in rows)
        self._listeners: list[EntryListener] = []

    @property
    def size(self) -> int:
        return self.tree.size

    def subscribe(self, listener: EntryListener) -> Callable[[], None]:
        """Call ``listener`` with each entry once committed; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def append(
        self,
        tx: Transaction,
        *,
        cvm: str | None,
        event: str,
        actor: str,
        request_digest: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Write an entry in ``tx``; it joins the tree when ``tx`` commits."""
        clash = RESERVED_FIELDS & fields.keys()
        if clash:
            raise ValueError(f"ledger fields {sorted(clash)} are reserved")
        pending = tx.ledger_entries
        if not pending:
            tx.on_commit(lambda: self._committed(tx))
        entry = {
            "seq": self.tree.size + len(pending),
            "time": timestamp(),
            "cvm": cvm,
            "event": event,
            "actor": actor,
            "request_digest": request_digest,
            **fields,
        }
        data = canonical(entry)
        tx.execute("INSERT INTO ledger (seq, cvm_id, entry) VALUES (?, ?, ?)", (entry["seq"], cvm, data))
        pending.append(data)
        return entry

    def _committed(self, tx: Transaction) -> None:
        for data in tx.ledger_entries:
            self.tree.append(leaf_hash(data))
            entry = json.loads(data)
            for listener in list(self._listeners):
                listener(entry)

    def head(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree.size,
            "root_hash": self.tree.root().hex(),
            "timestamp": timestamp(),
            "controller": self.controller_id,
        }

    def entries(self, start: int = 0, end: int | None = None, cvm: str | None = None) -> list[dict[str, Any]]:
        end = self.tree.size if end is None else end
        if start < 0 or end < start or end > self.tree.size:
            raise InvalidParams(
                f"entry range [{start}, {end}) is outside the ledger (size {self.tree.size})", code="bad_range"
            )
        if cvm is None:
            rows = self.store.db.execute("SELECT entry FROM ledger WHERE seq >= ? AND seq < ? ORDER BY seq", (start, end))
        else:
            rows = self.store.db.execute(
                "SELECT entry FROM ledger WHERE cvm_id = ? AND seq >= ? AND seq < ? ORDER BY seq", (cvm, start, end)
            )
        return [json.loads(row[0]) for row in rows]
