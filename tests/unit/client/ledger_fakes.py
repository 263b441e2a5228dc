"""Ledgers of plain entry dicts and a controller-like source serving them, for auditor tests.

Entries are built the way the controller builds them (``seq``, ``time``, ``cvm``,
``cvm_prev``, ``event``, ``actor``, ``request_digest``, event fields) and hashed as
``leaf_hash(canonical(entry))`` into a real RFC 9162 tree; heads are signed with a real
Ed25519 key. Nothing here uses the controller's store or ledger classes, so these tests pin
the auditor's behaviour independently of how the controller keeps its ledger.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from duet import keys
from duet.client.trust import ControllerPin
from duet.errors import NotFound
from duet.ledger.heads import sign_head
from duet.ledger.merkle import MerkleTree, leaf_hash
from duet.protocol import approvals as ap
from duet.protocol import lifecycle as lc
from duet.protocol.approvals import ApprovalPolicy
from duet.protocol.canonical import canonical
from duet.protocol.envelope import request_digest

KEY = keys.generate("ed25519")
CONTROLLER = keys.key_id(KEY.public_key())
OWNER = hashlib.sha256(b"the owner's key").hexdigest()
INTRUDER = hashlib.sha256(b"the host operator's key").hexdigest()
CVM = "c1" * 32
OTHER_CVM = "c2" * 32
SECOND = hashlib.sha256(b"the second owner's key").hexdigest()
THIRD = hashlib.sha256(b"the third owner's key").hexdigest()


class EntryLedger:
    """An append-only list of entries and the Merkle tree over them."""

    def __init__(self, entries: list[dict[str, Any]] | None = None) -> None:
        self.entries: list[dict[str, Any]] = []
        self.tree = MerkleTree()
        for entry in entries or []:
            self._append(entry)

    @property
    def size(self) -> int:
        return len(self.entries)

    def add(self, cvm: str | None, event: str, actor: str = lc.CONTROLLER_ACTOR, **fields: Any) -> dict[str, Any]:
        """Append an entry as the controller would; returns it."""
        previous = [e["seq"] for e in self.entries if e["cvm"] == cvm]
        entry = {
            "seq": self.size,
            "time": f"2026-12-01T10:00:{self.size:02d}Z",
            "cvm": cvm,
            "cvm_prev": previous[-1] if previous else None,
            "event": event,
            "actor": actor,
            "request_digest": hashlib.sha256(f"request {self.size}".encode()).hexdigest()
            if actor != lc.CONTROLLER_ACTOR
            else None,
            **fields,
        }
        self._append(entry)
        return entry

    def _append(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        self.tree.append(leaf_hash(canonical(entry)))

    def prefix(self, size: int) -> EntryLedger:
        """A copy of the first ``size`` entries: the start of a fork, or an older view."""
        return EntryLedger(copy.deepcopy(self.entries[:size]))

    def head(self, size: int | None = None, key: keys.PrivateKey = KEY) -> dict[str, Any]:
        size = self.size if size is None else size
        return sign_head(
            {
                "tree_size": size,
                "root_hash": self.tree.root(size).hex(),
                "timestamp": f"2026-12-01T11:00:{size:02d}Z",
                "controller": keys.key_id(key.public_key()),
            },
            key,
        )

    # --- the lifecycle, step by step --------------------------------------------------------

    def owners(self, *owners: str) -> dict[str, Any]:
        return self.add(None, lc.CONTROLLER_OWNERS, owners=sorted(owners))

    def provision(self, cvm: str = CVM, actor: str = OWNER) -> dict[str, Any]:
        return self.add(cvm, lc.CVM_PROVISIONING, actor, type="snp", provider="local", job=f"job-start-{cvm[:4]}")

    def ready(self, cvm: str = CVM) -> dict[str, Any]:
        return self.add(cvm, lc.CVM_READY, mode=lc.IN_UPDATE)

    def run(self, cvm: str = CVM, command: str = "apt-get install -y nginx", actor: str = OWNER) -> dict[str, Any]:
        started = self.add(cvm, lc.COMMAND_STARTED, actor, command=command)
        self.add(
            cvm,
            lc.COMMAND_FINISHED,
            command=command,
            started_seq=started["seq"],
            exit_status=0,
            duration_ms=5.0,
            stdout_sha256=hashlib.sha256(b"").hexdigest(),
            stdout_size=0,
            stderr_sha256=hashlib.sha256(b"").hexdigest(),
            stderr_size=0,
        )
        return started

    def mark(self, previous: str, mode: str, cvm: str = CVM, *, final: bool = False, actor: str = OWNER) -> dict[str, Any]:
        return self.add(cvm, lc.MODE_CHANGED, actor, previous=previous, mode=mode, final=final)

    def locked(self, cvm: str = CVM, *, ok: bool = True) -> dict[str, Any]:
        return self.add(cvm, lc.CVM_LOCKED, ok=ok, error=None if ok else "unreachable", key_destroyed=ok)

    def stop(self, previous: str = lc.IN_SERVICE, cvm: str = CVM, actor: str = OWNER) -> dict[str, Any]:
        self.add(cvm, lc.CVM_STOPPING, actor, previous=previous, job=f"job-stop-{cvm[:4]}")
        return self.add(cvm, lc.CVM_STOPPED, key_destroyed=True)

    # --- approvals (docs/approvals.md) ------------------------------------------------------

    def policy(self, thresholds: dict[str, int], *, actor: str = lc.CONTROLLER_ACTOR) -> dict[str, Any]:
        policy = ApprovalPolicy.from_dict({"thresholds": thresholds})
        return self.add(None, ap.CONTROLLER_POLICY, actor, policy=policy.to_dict(), policy_sha256=policy.sha256)

    def propose(self, operation: str, cvm: str | None = CVM, *, actor: str = OWNER, mode: str = lc.IN_SERVICE) -> str:
        """A ``proposal.created`` (its request not inline); returns the proposal id."""
        pid = hashlib.sha256(f"proposal {self.size}".encode()).hexdigest()
        self.add(
            cvm, ap.PROPOSAL_CREATED, actor, request_digest=pid, proposal=pid, operation=operation,
            op="cvm.mark" if operation.startswith("cvm.mark") else operation, request=None, signature=None,
            expires_at="2026-12-02T10:00:00Z", cvm_mode=mode if cvm else None, cvm_mode_seq=None, cvm_final=False if cvm else None,
        )  # fmt: skip
        return pid

    def approve(self, pid: str, cvm: str | None = CVM, *, actor: str) -> dict[str, Any]:
        """A vote as recorded: its signed request (the owners' keys are not in these ledgers, so the
        signature itself is not checked) and that request's digest."""
        request = {
            "op": ap.APPROVE_OP, "controller": CONTROLLER, "nonce": hashlib.sha256(f"nonce {self.size}".encode()).hexdigest()[:32],
            "issued_at": f"2026-12-01T10:00:{self.size:02d}Z", "params": {"proposal_id": pid},
        }  # fmt: skip
        return self.add(
            cvm,
            ap.PROPOSAL_APPROVED,
            actor,
            request_digest=request_digest(request),
            proposal=pid,
            request=request,
            signature="c2ln",
        )

    def executed(self, pid: str, operation: str, cvm: str | None = CVM, *, approvers: list[str]) -> dict[str, Any]:
        return self.add(
            cvm, ap.PROPOSAL_EXECUTED, request_digest=pid, proposal=pid, operation=operation, approvers=sorted(approvers),
            approvals=[], threshold=2, policy_sha256=None,
        )  # fmt: skip


def lawful(ledger: EntryLedger | None = None, cvm: str = CVM) -> EntryLedger:
    """start, ready, run, mark in-service, mark in-update, run, mark in-service --final,
    the lockdown verified, stop: every rule holds."""
    ledger = ledger if ledger is not None else EntryLedger()
    if not any(e["event"] == lc.CONTROLLER_OWNERS for e in ledger.entries):
        ledger.owners(OWNER)
    ledger.provision(cvm)
    ledger.ready(cvm)
    ledger.run(cvm)
    ledger.mark(lc.IN_UPDATE, lc.IN_SERVICE, cvm)
    ledger.mark(lc.IN_SERVICE, lc.IN_UPDATE, cvm)
    ledger.run(cvm, "systemctl restart nginx")
    ledger.mark(lc.IN_UPDATE, lc.IN_SERVICE, cvm, final=True)
    ledger.locked(cvm)
    ledger.stop(lc.IN_SERVICE, cvm)
    return ledger


def in_service(cvm: str = CVM) -> EntryLedger:
    """owners, start, ready, one command, mark in-service: the usual prefix of a forbidden sequence."""
    ledger = EntryLedger()
    ledger.owners(OWNER)
    ledger.provision(cvm)
    ledger.ready(cvm)
    ledger.run(cvm)
    ledger.mark(lc.IN_UPDATE, lc.IN_SERVICE, cvm)
    return ledger


class FakeSource:
    """Answers like a controller (``AuditSource``): signed heads, pages of entries, proofs.

    ``owners`` is the owner set of the pinned, attested identity."""

    url = "https://controller.test:6037"
    first_contact = False

    def __init__(self, ledger: EntryLedger, *, owners: tuple[str, ...] = (OWNER,)) -> None:
        self.ledger = ledger
        self.owners = owners
        self.tamper: dict[int, dict[str, Any]] = {}
        self.requests: list[str] = []

    def pin(self) -> ControllerPin:
        return ControllerPin(CONTROLLER, keys.public_pem(KEY.public_key()).decode(), "none", owners=self.owners)

    def get(self, path: str, **query: Any) -> Any:
        self.requests.append(path)
        tree = self.ledger.tree
        if path == "/v1/ledger/head":
            return self.ledger.head()
        if path == "/v1/ledger/entries":
            start, end, cvm = query["start"], query["end"], query.get("cvm")
            scope = None if cvm == lc.CONTROLLER_SCOPE else cvm
            chosen = [e for e in self.ledger.entries[start:end] if cvm is None or e["cvm"] == scope]
            shown = [self.tamper.get(e["seq"], e) for e in chosen]
            return {"entries": copy.deepcopy(shown), "end": end, "tree_size": self.ledger.size}
        if path == "/v1/ledger/proof/inclusion":
            index, size = query["index"], query["tree_size"]
            return {"index": index, "tree_size": size, "audit_path": [h.hex() for h in tree.inclusion_proof(index, size)]}
        if path == "/v1/ledger/proof/consistency":
            first, second = query["first"], query["second"]
            return {"first": first, "second": second, "proof": [h.hex() for h in tree.consistency_proof(first, second)]}
        raise AssertionError(f"unexpected request {path}")

    def blob(self, sha256: str) -> bytes:
        raise NotFound("no such output", code="unknown_blob")
