"""The auditor behind ``duet audit``: trust no one, check everything the controller shows.

What is checked, and why each check is needed:

* every answer's signature and nonce (``DuetClient.get``): an answer cannot be forged or replayed;
* the signed tree head: it is the controller's own statement of what its ledger is;
* consistency of the new head with the last head this user saw from this controller (kept in
  the user's state directory): a rolled-back or edited disk, or a forked history, shows up as a
  smaller head, a head of the same size with another root, or a failing consistency proof;
* every entry shown: its leaf hash recomputed from JCS(entry) is included in the head (one
  inclusion proof each, or, for the whole ledger, the root rebuilt from all entries);
* completeness of one CVM's history: each entry's ``cvm_prev`` must be the previous entry shown;
* outputs (``--long``): fetched blobs must hash to the SHA-256 the ledger recorded.

The last-seen head is only replaced by a head proven consistent with it, so any two heads this
auditor ever accepted describe one linear history. When that fails, both signed heads are kept
as evidence: together they prove the fork to anyone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from duet.client.trust import ControllerPin, user_state_dir
from duet.errors import DuetError, VerificationError
from duet.ledger.heads import SignedHead, parse_head, verify_head
from duet.ledger.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from duet.protocol.canonical import canonical, timestamp

PINPOINT_LIMIT = 10_000
"""When a whole-ledger root does not match, at most this many entries are proven one by one."""


class AuditSource(Protocol):
    """What the auditor needs of a client; ``DuetClient`` is one."""

    url: str
    first_contact: bool

    def pin(self) -> ControllerPin: ...
    def get(self, path: str, **query: Any) -> Any: ...
    def blob(self, sha256: str) -> bytes: ...


@dataclass(frozen=True)
class Finding:
    """One thing that did not verify: a stable code, a plain message, the entry if any."""

    code: str
    message: str
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "seq": self.seq}

    def __str__(self) -> str:
        return (f"seq {self.seq}: " if self.seq is not None else "") + f"{self.message} ({self.code})"


class HeadStore:
    """The last signed head seen from each controller, in ``<state dir>/heads/<controller id>.json``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "heads"

    @classmethod
    def default(cls) -> "HeadStore":
        return cls(user_state_dir())

    def _path(self, controller: str) -> Path:
        if not all(c in "0123456789abcdef" for c in controller) or len(controller) != 64:
            raise VerificationError("a controller id is 64 lowercase hex characters", code="bad_controller_id")
        return self.directory / f"{controller}.json"

    def last(self, controller: str) -> SignedHead | None:
        try:
            return parse_head(json.loads(self._path(controller).read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, VerificationError):
            raise VerificationError(
                f"{self._path(controller)} is damaged; it held the last head seen from this controller. "
                "Restore it from a backup (removing it forgets what was seen)",
                code="bad_head_store",
            ) from None

    def save(self, head: SignedHead) -> None:
        self._write(self._path(head.controller), head.to_json())

    def save_evidence(self, kind: str, previous: SignedHead, current: SignedHead, proof: list[str] | None = None) -> Path:
        """Keep both signed heads: on their own they prove the controller's history forked."""
        stamp = timestamp().replace(":", "").replace(".", "")
        path = self.directory / f"{current.controller}.{kind}.{stamp}.json"
        self._write(path, {"kind": kind, "earlier_head": previous.to_json(), "later_head": current.to_json(), "consistency_proof": proof})
        return path

    def _write(self, path: Path, data: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)


@dataclass
class AuditResult:
    url: str
    controller: str
    cvm: str | None
    head: SignedHead | None = None
    previous: SignedHead | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    """The entries shown this round, in order (verified or not: see ``bad_seqs``)."""
    findings: list[Finding] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    """With --long: output SHA-256 -> text, each checked against its hash."""
    evidence: str | None = None
    first_contact: bool = False

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def bad_seqs(self) -> set[int]:
        return {f.seq for f in self.findings if f.seq is not None}

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "url": self.url,
            "controller": self.controller,
            "cvm": self.cvm,
            "head": self.head.to_json() if self.head else None,
            "previous_head": self.previous.to_json() if self.previous else None,
            "findings": [f.to_json() for f in self.findings],
            "timeline": timeline(self.entries, self.bad_seqs, self.outputs),
            "evidence": self.evidence,
            "first_contact": self.first_contact,
        }


class Auditor:
    """Audits one controller (optionally one CVM of it); ``follow`` re-audits incrementally."""

    def __init__(self, source: AuditSource, store: HeadStore, *, cvm: str | None = None, long: bool = False) -> None:
        self.source = source
        self.store = store
        self.cvm = cvm
        self.long = long
        self.verified_size = 0
        """Entries [0, verified_size) have been checked in an earlier round."""
        self._last_by_cvm: dict[str | None, int] = {}

    def audit(self) -> AuditResult:
        """Check the head and every entry shown (all of them, or all of one CVM's)."""
        self.verified_size, self._last_by_cvm = 0, {}
        return self.follow()

    def follow(self) -> AuditResult:
        """Check a fresh head and the entries that appeared since the last round."""
        pin = self.source.pin()
        result = AuditResult(self.source.url, pin.controller, self.cvm, first_contact=self.source.first_contact)
        try:
            head = verify_head(self.source.get("/v1/ledger/head"), controller=pin.controller, public_key=pin.public_key())
        except VerificationError as exc:
            result.findings.append(Finding(exc.code, exc.message))
            return result
        result.head = head
        result.previous = self.store.last(pin.controller)
        if not self._consistent(result):
            return result
        self.store.save(head)
        if head.tree_size < self.verified_size:  # cannot happen after a consistent head; belt and braces
            result.findings.append(Finding("ledger_shrank", "the ledger is smaller than in the previous round"))
            return result
        start = self.verified_size
        if self.cvm is None and start == 0:
            self._check_whole_ledger(head, result)
        else:
            self._check_each_entry(head, start, result)
        if self.long:
            self._check_outputs(result)
        if result.ok:
            self.verified_size = head.tree_size
        return result

    # --- heads -------------------------------------------------------------------------

    def _consistent(self, result: AuditResult) -> bool:
        previous, head = result.previous, result.head
        assert head is not None
        if previous is None:
            return True
        if head.tree_size < previous.tree_size:
            result.evidence = str(self.store.save_evidence("rollback", previous, head))
            result.findings.append(Finding(
                "ledger_shrank",
                f"ROLLBACK: the controller now shows {head.tree_size} ledger entries, but on {previous.timestamp} it "
                f"signed a head of {previous.tree_size}; its history was rolled back or rewritten. "
                f"Both signed heads are kept as evidence in {result.evidence}",
            ))
            return False
        if head.tree_size == previous.tree_size:
            if head.root_hash == previous.root_hash:
                return True
            result.evidence = str(self.store.save_evidence("fork", previous, head))
            result.findings.append(Finding(
                "fork",
                f"FORK: the controller signed two different histories of {head.tree_size} entries "
                f"(root {previous.root_hash[:16]}… on {previous.timestamp}, root {head.root_hash[:16]}… now). "
                f"Both signed heads are kept as evidence in {result.evidence}",
            ))
            return False
        try:
            answer = self.source.get("/v1/ledger/proof/consistency", first=previous.tree_size, second=head.tree_size)
            proof = _hashes(answer.get("proof")) if isinstance(answer, dict) else None
        except DuetError as exc:
            answer, proof = None, None
            refusal = f"; the controller refused the proof: {exc.message}"
        else:
            refusal = ""
        if proof is not None and answer.get("first") == previous.tree_size and answer.get("second") == head.tree_size \
                and verify_consistency(previous.tree_size, head.tree_size, previous.root, head.root, proof):
            return True
        result.evidence = str(self.store.save_evidence(
            "inconsistent", previous, head, answer.get("proof") if isinstance(answer, dict) else None))
        result.findings.append(Finding(
            "inconsistent_head",
            f"INCONSISTENT HISTORY: the head of {head.tree_size} entries does not extend the head of "
            f"{previous.tree_size} entries seen on {previous.timestamp}: the ledger was rolled back or rewritten{refusal}. "
            f"Both signed heads are kept as evidence in {result.evidence}",
        ))
        return False

    # --- entries -------------------------------------------------------------------------

    def _pages(self, start: int, end: int, cvm: str | None) -> Iterator[dict[str, Any]]:
        position = start
        while position < end:
            page = self.source.get("/v1/ledger/entries", start=position, end=end, cvm=cvm)
            entries, stop = page.get("entries"), page.get("end")
            if not isinstance(entries, list) or not isinstance(stop, int) or stop <= position or stop > end:
                raise VerificationError(f"the controller's page of entries from {position} is malformed", code="bad_entries_page")
            yield from entries
            position = stop

    def _check_whole_ledger(self, head: SignedHead, result: AuditResult) -> None:
        """Rebuild the root from every entry: proves all of them, in order, with nothing missing."""
        leaves: list[bytes] = []
        for position, entry in enumerate(self._pages(0, head.tree_size, None)):
            result.entries.append(entry)
            seq = entry.get("seq") if isinstance(entry, dict) else None
            if seq != position:
                result.findings.append(Finding(
                    "entry_missing" if isinstance(seq, int) and seq > position else "entry_misplaced",
                    f"expected entry {position} but was shown seq {seq!r}: entries are missing or out of place", position,
                ))
                return
            leaves.append(leaf_hash(canonical(entry)))
        if len(leaves) != head.tree_size:
            result.findings.append(Finding(
                "entry_missing", f"the head covers {head.tree_size} entries but only {len(leaves)} were served", len(leaves)))
            return
        if MerkleTree(leaves).root() == head.root:
            self._chain(result.entries, result)
            return
        # Something was altered: prove entries one by one to say which.
        for entry in result.entries[:PINPOINT_LIMIT]:
            self._prove(entry, head, result)
        if result.ok:
            result.findings.append(Finding("root_mismatch", "the entries served do not hash to the signed root"))

    def _check_each_entry(self, head: SignedHead, start: int, result: AuditResult) -> None:
        expected = start
        for entry in self._pages(start, head.tree_size, self.cvm):
            result.entries.append(entry)
            seq = entry.get("seq") if isinstance(entry, dict) else None
            if not isinstance(seq, int) or seq < expected:
                result.findings.append(Finding("entry_misplaced", f"entry with seq {seq!r} is out of order", seq if isinstance(seq, int) else None))
                continue
            if self.cvm is not None and entry.get("cvm") != self.cvm:
                result.findings.append(Finding("wrong_cvm", f"entry belongs to CVM {entry.get('cvm')!r}, not the one asked for", seq))
            elif self.cvm is None and seq != expected:
                result.findings.append(Finding("entry_missing", f"entries {expected}..{seq - 1} were not served", expected))
            expected = seq + 1
            self._prove(entry, head, result)
        self._chain(result.entries, result)

    def _prove(self, entry: dict[str, Any], head: SignedHead, result: AuditResult) -> None:
        seq = entry.get("seq")
        if not isinstance(seq, int) or not 0 <= seq < head.tree_size:
            result.findings.append(Finding("entry_misplaced", f"entry seq {seq!r} is outside the signed head", None))
            return
        try:
            proof = self.source.get("/v1/ledger/proof/inclusion", index=seq, tree_size=head.tree_size)
            path = _hashes(proof.get("audit_path")) if isinstance(proof, dict) else None
        except DuetError as exc:
            result.findings.append(Finding("no_inclusion_proof", f"the controller gave no inclusion proof: {exc.message}", seq))
            return
        if path is None or not verify_inclusion(leaf_hash(canonical(entry)), seq, head.tree_size, path, head.root):
            result.findings.append(Finding(
                "entry_altered",
                f"entry {seq} ({entry.get('event')!r}) is not in the signed ledger as shown: it was altered", seq))

    def _chain(self, entries: list[dict[str, Any]], result: AuditResult) -> None:
        """Each entry names the previous one of its CVM; a link to an unseen entry means one was hidden."""
        for entry in entries:
            if not isinstance(entry, dict) or "cvm_prev" not in entry or not isinstance(entry.get("seq"), int):
                continue
            cvm, seq = entry.get("cvm"), entry["seq"]
            seen = self._last_by_cvm.get(cvm)
            if entry["cvm_prev"] != seen:
                missing = entry["cvm_prev"]
                result.findings.append(Finding(
                    "entry_missing",
                    f"entry {seq} follows entry {missing} of the same CVM, which was not shown "
                    f"(the previous one shown is {seen}): entries were deleted or hidden",
                    missing if isinstance(missing, int) else seq,
                ))
            self._last_by_cvm[cvm] = seq

    # --- outputs -----------------------------------------------------------------------

    def _check_outputs(self, result: AuditResult) -> None:
        for entry in result.entries:
            if entry.get("event") != "command.finished" or entry.get("seq") in result.bad_seqs:
                continue
            for stream in ("stdout", "stderr"):
                digest = entry.get(f"{stream}_sha256")
                if not isinstance(digest, str) or digest in result.outputs:
                    continue
                try:
                    result.outputs[digest] = self.source.blob(digest).decode(errors="replace")
                except DuetError as exc:
                    code = "output_altered" if exc.code == "blob_mismatch" else "output_missing"
                    result.findings.append(Finding(code, f"{stream} of `{entry.get('command')}`: {exc.message}", entry.get("seq")))


def _hashes(values: Any) -> list[bytes] | None:
    if not isinstance(values, list):
        return None
    try:
        return [bytes.fromhex(v) for v in values if isinstance(v, str) and len(v) == 64] if all(
            isinstance(v, str) and len(v) == 64 for v in values) else None
    except ValueError:
        return None


# --- the timeline users read ------------------------------------------------------------

_MODE_AFTER = {
    "cvm.provisioning": "provisioning", "cvm.ready": "in-update", "cvm.failed": "failed",
    "cvm.stopping": "stopping", "cvm.stopped": "stopped",
}


def timeline(entries: list[dict[str, Any]], bad: set[int] = frozenset(), outputs: dict[str, str] | None = None) -> list[dict[str, Any]]:  # type: ignore[assignment]
    """One row per entry: when, which CVM, what happened, the mode after it, command and exit."""
    modes: dict[Any, str] = {}
    rows = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        event, cvm = entry.get("event"), entry.get("cvm")
        if event == "mode.changed":
            modes[cvm] = str(entry.get("mode")) + (" (final)" if entry.get("final") else "")
        elif event in _MODE_AFTER:
            modes[cvm] = _MODE_AFTER[event]
        row: dict[str, Any] = {
            "seq": entry.get("seq"), "time": entry.get("time"), "cvm": cvm, "event": event,
            "mode": modes.get(cvm), "actor": entry.get("actor"), "command": entry.get("command"),
            "exit_status": entry.get("exit_status"), "verified": entry.get("seq") not in bad,
            "protocol": entry.get("protocol", "v1"),
            "detail": _detail(entry),
        }
        if outputs is not None and event == "command.finished":
            for stream in ("stdout", "stderr"):
                digest = entry.get(f"{stream}_sha256")
                if digest in outputs:
                    row[stream] = outputs[digest]
        rows.append(row)
    return rows


def _detail(entry: dict[str, Any]) -> str:
    event = entry.get("event")
    if event == "command.finished":
        return f"{entry.get('duration_ms', 0):.0f} ms, stdout {entry.get('stdout_size', 0)} B, stderr {entry.get('stderr_size', 0)} B" + (
            ", timed out" if entry.get("timed_out") else "")
    if event == "mode.changed":
        return f"{entry.get('previous')} → {entry.get('mode')}"
    for name in ("reason", "error", "uname", "host_key_fingerprint"):
        if entry.get(name):
            return f"{name}: {entry[name]}"
    if event == "controller.owners":
        return f"owners: {', '.join(o[:12] + '…' for o in entry.get('owners', []))}"
    return ""
