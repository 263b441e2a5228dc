"""The append-only ledger (design.md §6): entries in SQLite, their Merkle tree in memory.

Entries are written inside the caller's store transaction, so a state change and the entry
recording it commit together. The in-memory tree only learns of an entry once its
transaction has committed; it is rebuilt from the stored entries at start, so whatever is on
disk is exactly what the tree commits to — a disk that was rolled back or edited while the
controller was down therefore yields heads that auditors find inconsistent with the ones
they saw before.

Each entry names ``cvm_prev``, the seq of the previous entry about the same CVM (``null`` for
the first), so an auditor reading one CVM's entries through the filtered view can tell when
one was left out: every link must lead to an entry it was shown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from duet.controller.store import Store, Transaction
from duet.errors import InvalidParams
from duet.ledger.merkle import MerkleTree, leaf_hash
from duet.protocol.canonical import canonical, timestamp

log = logging.getLogger("duet.ledger")

RESERVED_FIELDS = frozenset({"seq", "time", "cvm", "event", "actor", "request_digest", "cvm_prev"})

MAX_PAGE = 1000
"""Most entries one read returns; a reader pages on from the answer's ``end``."""

EntryListener = Callable[[dict[str, Any]], None]


class Subscription:
    """New entries for one asyncio consumer, bounded so a slow one cannot grow memory.

    The listener may be called from any thread; entries are handed to the consumer's loop.
    When more than ``maxsize`` entries wait, the subscription is dropped (``overflowed``):
    the consumer ends its stream and the reader resumes from the entries it last saw.
    """

    def __init__(self, ledger: "Ledger", maxsize: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._maxsize = maxsize
        # Unbounded as a type, bounded by _put: the end marker must always fit behind the entries.
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.overflowed = False
        self._unsubscribe = ledger.subscribe(self._deliver)

    def _deliver(self, entry: dict[str, Any]) -> None:
        if threading.get_ident() == self._thread:
            self._put(entry)
        else:
            self._loop.call_soon_threadsafe(self._put, entry)

    def _put(self, entry: dict[str, Any]) -> None:
        if self.overflowed:
            return
        if self._queue.qsize() >= self._maxsize:
            self.overflowed = True
            self.end()  # the reader resumes after the last entry it saw
            return
        self._queue.put_nowait(entry)

    async def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next entry; None once the subscription has ended (too slow, or ``end()``).

        Raises TimeoutError when nothing arrived within ``timeout`` seconds."""
        return await asyncio.wait_for(self._queue.get(), timeout)

    def end(self) -> None:
        """Stop the feed: the consumer's next ``get`` returns None (e.g. at shutdown)."""
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.end)
            return
        self.close()
        self._queue.put_nowait(None)

    def close(self) -> None:
        try:
            self._unsubscribe()
        except ValueError:  # already removed
            pass


class Ledger:
    def __init__(self, store: Store, controller_id: str) -> None:
        self.store = store
        self.controller_id = controller_id
        hashes, problems = [], []
        for position, (seq, data) in enumerate(store.db.execute("SELECT seq, entry FROM ledger ORDER BY seq")):
            hashes.append(leaf_hash(bytes(data)))
            if seq != position and len(problems) < 5:
                problems.append(f"row {position} has seq {seq}")
        self.tree = MerkleTree(hashes)
        if problems:
            # Serve what is on disk as it is: auditors then see exactly what is wrong with it.
            log.error("the stored ledger is not contiguous (%s): it was edited outside the controller", "; ".join(problems))
        self._listeners: list[EntryListener] = []

    @property
    def size(self) -> int:
        return self.tree.size

    def subscribe(self, listener: EntryListener) -> Callable[[], None]:
        """Call ``listener`` with each entry once committed; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def subscription(self, maxsize: int = 1024) -> Subscription:
        """A bounded queue of new entries for an asyncio consumer (the SSE stream)."""
        return Subscription(self, maxsize)

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
        # Sees this transaction's own uncommitted entries too; (cvm_id, seq) is indexed.
        prev = tx.execute("SELECT max(seq) FROM ledger WHERE cvm_id IS ?", (cvm,)).fetchone()[0]
        entry = {
            "seq": self.tree.size + len(pending),
            "time": timestamp(),
            "cvm": cvm,
            "cvm_prev": prev,
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
                try:
                    listener(entry)
                except Exception:  # a listener must never undo or block a committed write
                    log.exception("a ledger listener failed")

    # --- reads -----------------------------------------------------------------------

    def head(self) -> dict[str, Any]:
        """The unsigned tree head; ``duet.ledger.heads.sign_head`` makes it portable."""
        return {
            "tree_size": self.tree.size,
            "root_hash": self.tree.root().hex(),
            "timestamp": timestamp(),
            "controller": self.controller_id,
        }

    def inclusion(self, index: int, tree_size: int) -> dict[str, Any]:
        """Wire form of an inclusion proof; O(log n), no entry is read."""
        path = self.tree.inclusion_proof(index, tree_size)
        return {"index": index, "tree_size": tree_size, "audit_path": [node.hex() for node in path]}

    def consistency(self, first: int, second: int) -> dict[str, Any]:
        """Wire form of a consistency proof; O(log n), no entry is read."""
        proof = self.tree.consistency_proof(first, second)
        return {"first": first, "second": second, "proof": [node.hex() for node in proof]}

    def _check_range(self, start: int, end: int) -> None:
        if start < 0 or end < start or end > self.tree.size:
            raise InvalidParams(
                f"entry range [{start}, {end}) is outside the ledger (size {self.tree.size}); "
                "use 0 <= start <= end <= tree_size",
                code="bad_range",
            )

    def entries(self, start: int = 0, end: int | None = None, cvm: str | None = None) -> list[dict[str, Any]]:
        end = self.tree.size if end is None else end
        self._check_range(start, end)
        where, args = _range_filter(start, end, cvm)
        rows = self.store.db.execute(f"SELECT entry FROM ledger WHERE {where} ORDER BY seq", args)
        return [json.loads(row[0]) for row in rows]

    def page(self, start: int = 0, end: int | None = None, cvm: str | None = None, limit: int = MAX_PAGE) -> dict[str, Any]:
        """At most ``limit`` entries of [start, end); ``end`` in the answer is where the next page starts."""
        end = self.tree.size if end is None else end
        self._check_range(start, end)
        limit = max(1, min(limit, MAX_PAGE))
        where, args = _range_filter(start, end, cvm)
        rows = self.store.db.execute(f"SELECT seq, entry FROM ledger WHERE {where} ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        stop = rows[-1][0] + 1 if len(rows) == limit else end
        return {
            "entries": [json.loads(row[1]) for row in rows],
            "start": start,
            "end": min(stop, end),
            "tree_size": self.tree.size,
        }


def _range_filter(start: int, end: int, cvm: str | None) -> tuple[str, tuple[Any, ...]]:
    """SQL condition and arguments for entries start <= seq < end, optionally of one CVM."""
    if cvm is None:
        return "seq >= ? AND seq < ?", (start, end)
    return "cvm_id = ? AND seq >= ? AND seq < ?", (cvm, start, end)
