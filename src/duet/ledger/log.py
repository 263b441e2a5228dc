"""The append-only ledger (design.md §6): entries in SQLite, their Merkle tree in memory.

Entries are written inside the caller's store transaction, so a state change and the entry
recording it commit together. The in-memory tree only learns of an entry once its
transaction has committed, and right then the new head is sealed (``LedgerAnchor.seal``),
before anything the entry announces may take effect.

The database belongs to the host, so nothing read back from it is believed on its own:

* at start the stored entries must reproduce the sealed head; entries after it (a crash
  between the commit and the seal) must carry the sealed MAC key's tag; each row's
  ``cvm_id`` column must be the entry's own hashed ``cvm``. Otherwise ``LedgerTampered``.
* while running, every entry read from disk is checked against its leaf hash in the
  in-memory tree before it is served or used, and one CVM's entries are found through an
  in-memory index built from the hashed ``cvm`` field, never through the column.

Each entry names ``cvm_prev``, the seq of the previous entry about the same CVM (``null`` for
the first), so an auditor reading one CVM's entries through the filtered view can tell when
one was left out: every link must lead to an entry it was shown.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

from duet.errors import ConfigError, DuetError, InvalidParams
from duet.ledger.merkle import MerkleTree, leaf_hash
from duet.protocol import lifecycle as lc
from duet.protocol.canonical import canonical, timestamp
from duet.storage import Database, Transaction

log = logging.getLogger("duet.ledger")

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY, cvm_id TEXT, entry BLOB NOT NULL, mac BLOB);
CREATE INDEX IF NOT EXISTS ledger_cvm ON ledger (cvm_id, seq);
"""
"""``cvm_id`` is for people reading the database; the controller finds a CVM's entries through
the hashed ``cvm`` field (``Ledger._by_cvm``), never through this column."""

RESERVED_FIELDS = frozenset({"seq", "time", "cvm", "event", "actor", "request_digest", "cvm_prev"})

MAX_PAGE = 1000
MAX_ENTRY_BYTES = 65_535
"""The largest entry (its canonical JSON): what a C2SP entry bundle can hold (ledger/tiles.py)."""
"""Most entries one read returns; a reader pages on from the answer's ``end``."""

EntryListener = Callable[[dict[str, Any]], object]


class Subscription:
    """New entries for one asyncio consumer, bounded so a slow one cannot grow memory.

    The listener may be called from any thread; entries are handed to the consumer's loop.
    When more than ``maxsize`` entries wait, the subscription is dropped (``overflowed``):
    the consumer ends its stream and the reader resumes from the entries it last saw.
    """

    def __init__(self, ledger: Ledger, maxsize: int) -> None:
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


class LedgerTampered(ConfigError):
    """The stored ledger is not the one the controller sealed: refuse to start on it."""

    code = "ledger_tampered"


class LedgerCorrupted(DuetError):
    """A stored entry changed on disk while the controller ran: it is not served."""

    code = "ledger_corrupted"


class SealedHeadLike(Protocol):
    @property
    def tree_size(self) -> int: ...
    @property
    def root(self) -> bytes: ...


class LedgerAnchor(Protocol):
    """What the ledger needs of sealed state (controller/sealed_state.py is one)."""

    @property
    def head(self) -> SealedHeadLike: ...

    def entry_mac(self, entry_bytes: bytes) -> bytes: ...
    def entry_mac_valid(self, entry_bytes: bytes, mac: bytes | None) -> bool: ...
    def seal(self, tree_size: int, root: bytes) -> None: ...


class Ledger:
    def __init__(
        self,
        db: Database,
        controller_id: str,
        anchor: LedgerAnchor,
        on_entry: Callable[[dict[str, Any]], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Load and verify the stored ledger; ``on_entry`` sees every entry once, in order
        (the controller derives its state from them)."""
        self.db = db
        self._clock = clock
        db.create(SCHEMA)
        self.controller_id = controller_id
        self.anchor = anchor
        self.tree = MerkleTree()
        self._by_cvm: dict[str | None, list[int]] = {}
        self._listeners: list[EntryListener] = []
        self._load(on_entry)

    def _load(self, on_entry: Callable[[dict[str, Any]], object] | None) -> None:
        sealed = self.anchor.head
        rows = self.db.execute("SELECT seq, cvm_id, entry, mac FROM ledger ORDER BY seq")
        for position, (seq, column_cvm, data, mac) in enumerate(rows):
            data = bytes(data)
            if seq != position:
                raise LedgerTampered(
                    f"the stored ledger is not contiguous: entry {position} is missing (the next row has "
                    f"seq {seq}); refusing to start on a ledger edited outside the controller"
                )
            if position == sealed.tree_size and self.tree.root() != sealed.root:
                raise _root_mismatch(sealed.tree_size)
            if position >= sealed.tree_size and not self.anchor.entry_mac_valid(data, mac):
                raise LedgerTampered(
                    f"entry {position} lies after the sealed head ({sealed.tree_size} entries) and was not "
                    "written by this controller (its MAC does not verify): refusing to start"
                )
            try:
                entry = json.loads(data)
            except ValueError:
                raise LedgerTampered(f"entry {position} is not JSON; refusing to start") from None
            if not isinstance(entry, dict) or entry.get("seq") != position:
                raise LedgerTampered(f"entry {position} names another seq; refusing to start")
            if column_cvm != entry.get("cvm"):
                raise LedgerTampered(
                    f"entry {position} is filed under CVM {str(column_cvm)[:16]}… in the database but is "
                    f"about {str(entry.get('cvm'))[:16]}…: the row was re-tagged; refusing to start"
                )
            self.tree.append(leaf_hash(data))
            self._by_cvm.setdefault(entry.get("cvm"), []).append(position)
            if on_entry is not None:
                on_entry(entry)
        if self.tree.size < sealed.tree_size:
            raise LedgerTampered(
                f"the stored ledger has {self.tree.size} entries, but the sealed head says "
                f"{sealed.tree_size}: its tail was deleted; refusing to start"
            )
        if self.tree.size == sealed.tree_size and self.tree.root() != sealed.root:
            raise _root_mismatch(sealed.tree_size)
        if self.tree.size != sealed.tree_size:
            log.warning(
                "%d ledger entries were committed after the last sealed head (a crash before sealing); "
                "their MACs verify, sealing them now",
                self.tree.size - sealed.tree_size,
            )
            self.anchor.seal(self.tree.size, self.tree.root())

    def _now(self) -> str:
        return timestamp(datetime.fromtimestamp(self._clock(), UTC))

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
        at: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Write an entry in ``tx``; it joins the tree when ``tx`` commits. ``at``: its time, when
        a decision was made at that very time (a proposal's expiry is judged by it); never earlier
        than the entries before it (the caller took it from the same clock, just now)."""
        clash = RESERVED_FIELDS & fields.keys()
        if clash:
            raise ValueError(f"ledger fields {sorted(clash)} are reserved")
        pending: _Pending | None = tx.scratch.get(self)
        if pending is None:
            pending = tx.scratch[self] = _Pending()
            tx.on_commit(lambda: self._committed(pending))
        entry = {
            "seq": self.tree.size + len(pending.entries),
            "time": at or self._now(),
            "cvm": cvm,
            "cvm_prev": self._previous(pending, cvm),
            "event": event,
            "actor": actor,
            "request_digest": request_digest,
            **fields,
        }
        data = canonical(entry)
        if len(data) > MAX_ENTRY_BYTES:  # fail closed: the fields that can be long are capped where they are made
            raise ValueError(
                f"a ledger entry of {len(data)} bytes ({event}); at most {MAX_ENTRY_BYTES} fit a tile's entry bundle"
            )
        tx.execute(
            "INSERT INTO ledger (seq, cvm_id, entry, mac) VALUES (?, ?, ?, ?)",
            (entry["seq"], cvm, data, self.anchor.entry_mac(data)),
        )
        pending.entries.append(data)
        pending.cvms.append(cvm)
        return entry

    def _previous(self, pending: _Pending, cvm: str | None) -> int | None:
        """The seq of the CVM's latest entry, this transaction's own included (from memory)."""
        for offset in range(len(pending.cvms) - 1, -1, -1):
            if pending.cvms[offset] == cvm:
                return self.tree.size + offset
        seqs = self._by_cvm.get(cvm)
        return seqs[-1] if seqs else None

    def _committed(self, pending: _Pending) -> None:
        entries = []
        for data, cvm in zip(pending.entries, pending.cvms):
            self._by_cvm.setdefault(cvm, []).append(self.tree.size)
            self.tree.append(leaf_hash(data))
            entries.append(json.loads(data))
        # Sealed before anything the entries announce takes effect: callers act only after
        # the transaction (and so this callback) has returned.
        self.anchor.seal(self.tree.size, self.tree.root())
        for entry in entries:
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
            "timestamp": self._now(),
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
                f"entry range [{start}, {end}) is outside the ledger (size {self.tree.size}); use 0 <= start <= end <= tree_size",
                code="bad_range",
            )

    def _seqs(self, start: int, end: int, cvm: str | None, limit: int | None) -> list[int]:
        if cvm is None:
            stop = end if limit is None else min(end, start + limit)
            return list(range(start, stop))
        seqs = self._by_cvm.get(None if cvm == lc.CONTROLLER_SCOPE else cvm, [])
        low, high = bisect.bisect_left(seqs, start), bisect.bisect_left(seqs, end)
        if limit is not None:
            high = min(high, low + limit)
        return seqs[low:high]

    def _read(self, seqs: list[int]) -> Iterator[dict[str, Any]]:
        """The entries at ``seqs`` (ascending), each checked against its leaf hash in memory."""
        for chunk_start in range(0, len(seqs), 500):
            chunk = seqs[chunk_start : chunk_start + 500]
            if chunk[-1] - chunk[0] + 1 == len(chunk):
                rows = self.db.execute(
                    "SELECT seq, entry FROM ledger WHERE seq >= ? AND seq <= ? ORDER BY seq", (chunk[0], chunk[-1])
                ).fetchall()
            else:
                marks = ",".join("?" * len(chunk))
                rows = self.db.execute(f"SELECT seq, entry FROM ledger WHERE seq IN ({marks}) ORDER BY seq", chunk).fetchall()
            if [row[0] for row in rows] != chunk:
                missing = sorted(set(chunk) - {row[0] for row in rows})
                raise LedgerCorrupted(
                    f"ledger entries {missing[:5]} were deleted from the database while the controller ran; they are not served"
                )
            for seq, data in rows:
                data = bytes(data)
                if leaf_hash(data) != self.tree.leaf(seq):
                    log.error("ledger entry %d on disk no longer matches its hash: the database was edited", seq)
                    raise LedgerCorrupted(
                        f"ledger entry {seq} was altered in the database while the controller ran; "
                        "the controller serves only entries that match its tree"
                    )
                yield json.loads(data)

    def entries(self, start: int = 0, end: int | None = None, cvm: str | None = None) -> list[dict[str, Any]]:
        end = self.tree.size if end is None else end
        self._check_range(start, end)
        return list(self._read(self._seqs(start, end, cvm, None)))

    def page(self, start: int = 0, end: int | None = None, cvm: str | None = None, limit: int = MAX_PAGE) -> dict[str, Any]:
        """At most ``limit`` entries of [start, end); ``end`` in the answer is where the next page starts."""
        end = self.tree.size if end is None else end
        self._check_range(start, end)
        limit = max(1, min(limit, MAX_PAGE))
        seqs = self._seqs(start, end, cvm, limit)
        stop = seqs[-1] + 1 if len(seqs) == limit else end
        return {
            "entries": list(self._read(seqs)),
            "start": start,
            "end": min(stop, end),
            "tree_size": self.tree.size,
        }


class _Pending:
    """A transaction's entries, in order, until it commits (kept in ``Transaction.scratch``)."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.cvms: list[str | None] = []


def _root_mismatch(size: int) -> LedgerTampered:
    return LedgerTampered(
        f"the first {size} stored ledger entries do not hash to the root sealed by this controller: "
        "an entry was edited, removed or re-ordered in the database; refusing to start"
    )
