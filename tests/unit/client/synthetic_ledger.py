"""A lawful ledger of any size whose entries are made on demand from their seq, and a
controller-like source serving it, for audits at scale (tests and bench/audit_scale.py).

Only the Merkle tree of leaf hashes is kept (64 bytes an entry); each page of entries is built
when asked for, so the memory an audit uses can be measured apart from the ledger's.

Layout: entry 0 is ``controller.owners``; then each of ``cvms`` CVMs is provisioned (an owner
request) and becomes ready; then commands run round-robin over the CVMs, each a
``command.started`` (its own owner request) and a ``command.finished``. Every rule holds and
every ``cvm_prev`` link is right, so an honest audit has no finding. Each owner request runs
``commands_per_request`` commands of one CVM (1: each its own request, the most the rules must
remember; ``duet cvm run`` takes up to 100).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

from duet import keys
from duet.client.audit_tree import entry_leaf
from duet.client.trust import ControllerPin
from duet.errors import NotFound
from duet.ledger.heads import sign_head
from duet.ledger.log import MAX_PAGE
from duet.ledger.merkle import MerkleTree
from duet.protocol import lifecycle as lc

KEY = keys.generate("ed25519")
CONTROLLER = keys.key_id(KEY.public_key())
OWNER = hashlib.sha256(b"the synthetic owner's key").hexdigest()
EMPTY = hashlib.sha256(b"").hexdigest()


class SyntheticLedger:
    def __init__(self, size: int, cvms: int = 100, commands_per_request: int = 1) -> None:
        self.per_request = commands_per_request
        self.cvms = [hashlib.sha256(f"cvm {c}".encode()).hexdigest() for c in range(cvms)]
        self.index = {cvm: c for c, cvm in enumerate(self.cvms)}
        self.first_command = 1 + 2 * cvms
        self.size = 0
        self.tree = MerkleTree()
        self.altered: dict[int, dict[str, Any]] = {}
        """Entries served in place of the real ones (the tree keeps the real ones)."""
        self.hidden: set[int] = set()
        """Entries left out of every page."""
        self.grow(size)

    def grow(self, count: int) -> None:
        """Append ``count`` entries (hashing each: about 15 µs an entry)."""
        if self.size == 0 and count > 0:
            self.tree = MerkleTree(entry_leaf(self.entry(seq)) for seq in range(count))
        else:
            for seq in range(self.size, self.size + count):
                self.tree.append(entry_leaf(self.entry(seq)))
        self.size += count

    def entry(self, seq: int) -> dict[str, Any]:
        time = f"2026-12-{1 + seq // 86_400_000 % 28:02d}T{seq // 3_600_000 % 24:02d}:{seq // 60_000 % 60:02d}:{seq // 1000 % 60:02d}.{seq % 1000:03d}Z"
        if seq == 0:
            return {
                "seq": 0,
                "time": time,
                "cvm": None,
                "cvm_prev": None,
                "event": lc.CONTROLLER_OWNERS,
                "actor": lc.CONTROLLER_ACTOR,
                "request_digest": None,
                "owners": [OWNER],
            }
        if seq < self.first_command:
            c, ready = divmod(seq - 1, 2)
            cvm = self.cvms[c]
            if not ready:
                return {
                    "seq": seq,
                    "time": time,
                    "cvm": cvm,
                    "cvm_prev": None,
                    "event": lc.CVM_PROVISIONING,
                    "actor": OWNER,
                    "request_digest": _digest(seq),
                    "type": "snp",
                    "provider": "local",
                    "job": f"job-start-{c}",
                }
            return {
                "seq": seq,
                "time": time,
                "cvm": cvm,
                "cvm_prev": seq - 1,
                "event": lc.CVM_READY,
                "actor": lc.CONTROLLER_ACTOR,
                "request_digest": None,
                "mode": lc.IN_UPDATE,
            }
        pair, finished = divmod(seq - self.first_command, 2)
        c = pair % len(self.cvms)
        cvm, command = self.cvms[c], f"echo step {pair}"
        if not finished:
            previous = 2 + 2 * c if pair < len(self.cvms) else self.first_command + 2 * (pair - len(self.cvms)) + 1
            return {
                "seq": seq,
                "time": time,
                "cvm": cvm,
                "cvm_prev": previous,
                "event": lc.COMMAND_STARTED,
                "actor": OWNER,
                "request_digest": _digest(
                    seq if self.per_request == 1 else -1 - c - len(self.cvms) * (pair // len(self.cvms) // self.per_request)
                ),
                "command": command,
            }
        return {
            "seq": seq,
            "time": time,
            "cvm": cvm,
            "cvm_prev": seq - 1,
            "event": lc.COMMAND_FINISHED,
            "actor": lc.CONTROLLER_ACTOR,
            "request_digest": None,
            "command": command,
            "started_seq": seq - 1,
            "exit_status": 0,
            "duration_ms": 5.25,
            "timed_out": False,
            "stdout_sha256": EMPTY,
            "stdout_size": 0,
            "stderr_sha256": EMPTY,
            "stderr_size": 0,
        }

    def cvm_seqs(self, cvm: str, start: int, end: int) -> Iterator[int]:
        """The seqs of one CVM's entries in ``[start, end)``, in order (``controller``: the entries
        about no CVM: the owner set, entry 0)."""
        if cvm == lc.CONTROLLER_SCOPE:
            yield from (seq for seq in (0,) if start <= seq < end)
            return
        c = self.index[cvm]
        for seq in (1 + 2 * c, 2 + 2 * c):
            if start <= seq < end:
                yield seq
        step = 2 * len(self.cvms)
        base = self.first_command + 2 * c
        k = max(0, -(-(start - base - 1) // step))  # first pair whose finished entry is >= start
        seq = base + k * step
        while seq < end:
            for s in (seq, seq + 1):
                if start <= s < end:
                    yield s
            seq += step

    def served(self, seq: int) -> dict[str, Any]:
        return dict(self.altered[seq]) if seq in self.altered else self.entry(seq)


class SyntheticSource:
    """Answers like a controller (``AuditSource``) from a :class:`SyntheticLedger`; counts the
    requests by path and keeps the entry ranges asked for."""

    url = "https://synthetic.test:6037"
    first_contact = False

    def __init__(self, ledger: SyntheticLedger) -> None:
        self.ledger = ledger
        self.requests: Counter[str] = Counter()
        self.ranges: list[tuple[int, int, str | None]] = []
        self._heads: dict[int, dict[str, Any]] = {}

    def pin(self) -> ControllerPin:
        return ControllerPin(CONTROLLER, keys.public_pem(KEY.public_key()).decode(), "none", owners=(OWNER,))

    def head(self) -> dict[str, Any]:
        size = self.ledger.size
        if size not in self._heads:
            unsigned = {"tree_size": size, "root_hash": self.ledger.tree.root().hex(), "timestamp": "2026-12-01T12:00:00.000Z"}
            self._heads[size] = sign_head({**unsigned, "controller": CONTROLLER}, KEY)
        return self._heads[size]

    def get(self, path: str, **query: Any) -> Any:
        self.requests[path] += 1
        ledger, tree = self.ledger, self.ledger.tree
        if path == "/v1/ledger/head":
            return self.head()
        if path == "/v1/ledger/entries":
            start, end, cvm = query["start"], query.get("end") or ledger.size, query.get("cvm")
            self.ranges.append((start, end, cvm))
            if cvm is None:
                stop = min(end, start + MAX_PAGE)
                shown = [ledger.served(seq) for seq in range(start, stop) if seq not in ledger.hidden]
                return {"entries": shown, "start": start, "end": stop}
            seqs = []
            for seq in ledger.cvm_seqs(cvm, start, end):
                seqs.append(seq)
                if len(seqs) == MAX_PAGE:
                    break
            stop = seqs[-1] + 1 if len(seqs) == MAX_PAGE else end
            return {"entries": [ledger.served(seq) for seq in seqs if seq not in ledger.hidden], "start": start, "end": stop}
        if path == "/v1/ledger/proof/inclusion":
            index, size = query["index"], query["tree_size"]
            return {"index": index, "tree_size": size, "audit_path": [h.hex() for h in tree.inclusion_proof(index, size)]}
        if path == "/v1/ledger/proof/consistency":
            first, second = query["first"], query["second"]
            return {"first": first, "second": second, "proof": [h.hex() for h in tree.consistency_proof(first, second)]}
        raise AssertionError(f"unexpected request {path}")

    def blob(self, sha256: str) -> bytes:
        if sha256 == EMPTY:
            return b""
        raise NotFound("no such output", code="unknown_blob")


def _digest(seq: int) -> str:
    return hashlib.sha256(b"request %d" % seq).hexdigest()
