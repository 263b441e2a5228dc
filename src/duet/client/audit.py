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
* outputs (``--long``): fetched blobs must hash to the SHA-256 the ledger recorded;
* the rules (:mod:`duet.protocol.lifecycle`): a ledger that hashes correctly can still show a
  command started while the CVM was in service, an actor outside the owner set, a final CVM
  reopened. The verified entries are replayed in order and every forbidden sequence is a
  finding: the controller signed it, so it is evidence against the controller (or its host);
* other views (``compare``): each auditor alone sees one consistent history, yet two copies of
  the controller's state may run side by side and show each its own. Another auditor's signed
  head (a file, or another copy's URL) must be consistent with ours, both ways.

The last-seen head is only replaced by a head proven consistent with it, so any two heads this
auditor ever accepted describe one linear history. When that fails, both signed heads are kept
as evidence: together they prove the fork to anyone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from duet.attestation.bundle import CvmRoots
from duet.client.evidence_check import recheck
from duet.client.sdk import ConnectionFailed
from duet.client.trust import (
    ControllerPin,
    unverified_ssl_context,
    user_state_dir,
    write_json_atomic,
)
from duet.errors import DuetError, VerificationError
from duet.ledger.heads import SignedHead, parse_head, verify_head
from duet.ledger.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from duet.protocol import lifecycle as lc
from duet.protocol.canonical import canonical, is_hex64, timestamp
from duet.protocol.envelope import ANSWER_FIELDS, new_nonce, request_target, verify_answer

PINPOINT_LIMIT = 10_000
"""When a whole-ledger root does not match, at most this many entries are proven one by one."""


class ProofSource(Protocol):
    """Answers ledger reads with results already checked against the pinned key."""

    def get(self, path: str, **query: Any) -> Any: ...


class AuditSource(ProofSource, Protocol):
    """What the auditor needs of a client; ``DuetClient`` is one."""

    url: str
    first_contact: bool

    def pin(self) -> ControllerPin: ...
    def blob(self, sha256: str) -> bytes: ...


class CompareError(DuetError):
    """Another view could not be read at all: a path or URL to fix, not a verdict on the controller."""

    code = "compare_unreadable"


@dataclass(frozen=True)
class Finding:
    """One thing that did not verify: a stable code, a plain message, the entry if any.

    ``rule`` marks a lifecycle violation: the entry itself verified (the controller signed
    it), but what it shows is forbidden, so it is not counted among the altered entries."""

    code: str
    message: str
    seq: int | None = None
    rule: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "seq": self.seq, "rule": self.rule}

    def __str__(self) -> str:
        return (f"seq {self.seq}: " if self.seq is not None else "") + f"{self.message} ({self.code})"


class HeadStore:
    """The last signed head seen from each controller, in ``<state dir>/heads/<controller id>.json``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "heads"

    @classmethod
    def default(cls) -> HeadStore:
        return cls(user_state_dir())

    def _path(self, controller: str) -> Path:
        if not is_hex64(controller):
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
        suffix = 1
        while path.exists():  # two findings in one millisecond (e.g. several --compare): keep both
            path, suffix = self.directory / f"{current.controller}.{kind}.{stamp}-{suffix}.json", suffix + 1
        self._write(
            path, {"kind": kind, "earlier_head": previous.to_json(), "later_head": current.to_json(), "consistency_proof": proof}
        )
        return path

    def _write(self, path: Path, data: Any) -> None:
        write_json_atomic(path, data)


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
    modes: list[str | None] | None = None
    """The CVM's mode after each entry of ``entries``, from the auditor's replay (None: not replayed)."""
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    """One record per other view compared (``Auditor.compare``)."""

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def bad_seqs(self) -> set[int]:
        """Entries that did not verify (altered, missing, misplaced); forbidden ones did verify."""
        return {f.seq for f in self.findings if f.seq is not None and not f.rule}

    @property
    def violations(self) -> dict[int, str]:
        """Seq -> code of the first rule each forbidden entry breaks."""
        found: dict[int, str] = {}
        for finding in self.findings:
            if finding.rule and finding.seq is not None:
                found.setdefault(finding.seq, finding.code)
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "url": self.url,
            "controller": self.controller,
            "cvm": self.cvm,
            "head": self.head.to_json() if self.head else None,
            "previous_head": self.previous.to_json() if self.previous else None,
            "findings": [f.to_json() for f in self.findings],
            "timeline": timeline(self.entries, self.bad_seqs, self.outputs, modes=self.modes, violations=self.violations),
            "evidence": self.evidence,
            "first_contact": self.first_contact,
            "comparisons": self.comparisons,
        }


@dataclass(frozen=True)
class OtherView:
    """Another auditor's view of the audited controller: one signed head, and where it came from.

    ``data`` is kept as read (a bare signed head, a signed answer holding one, or a ``duet audit
    --json`` report) and believed only once it verifies with the audited controller's pinned
    key. ``proofs`` is set when the view is a live copy of the controller: it can then prove
    that its larger head extends ours. ``nonce`` is what was sent with the request, if any, and
    ``target`` the request target the answer must name (see protocol/envelope.py), if any.
    """

    where: str
    data: Any
    nonce: str | None = None
    proofs: ProofSource | None = None
    target: str | None = None


class Auditor:
    """Audits one controller (optionally one CVM of it); ``follow`` re-audits incrementally."""

    def __init__(
        self,
        source: AuditSource,
        store: HeadStore,
        *,
        cvm: str | None = None,
        long: bool = False,
        cvm_roots: CvmRoots | None = None,
    ) -> None:
        """``cvm_roots``: the roots recorded CVM evidence must chain to (AMD's and Intel's by
        default; simulated ones only when the auditor passes them)."""
        self.source = source
        self.cvm_roots = cvm_roots or CvmRoots()
        self.store = store
        self.cvm = cvm
        self.long = long
        self.verified_size = 0
        """Entries [0, verified_size) have been checked in an earlier round."""
        self._last_by_cvm: dict[str | None, int] = {}
        self._replay: lc.LifecycleReplay | None = None
        """The lifecycle replayed over exactly the verified entries [0, verified_size) shown."""

    def audit(self) -> AuditResult:
        """Check the head and every entry shown (all of them, or all of one CVM's)."""
        self.verified_size, self._last_by_cvm, self._replay = 0, {}, None
        return self.follow()

    def follow(self) -> AuditResult:
        """Check a fresh head and the entries that appeared since the last round.

        The rules are replayed over a round's entries only once all of them verified; the
        replay then advances with ``verified_size``, so each entry is fed once, in order, and a
        rule violation is reported in the round that shows it (``audit`` reports it again)."""
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
        if result.ok:
            self._check_rules(pin, result)
            self._check_evidence(result)
            self.verified_size = head.tree_size
        if self.long:
            self._check_outputs(result)
        return result

    def compare(self, view: OtherView, result: AuditResult) -> None:
        """Check the head this audit verified against another view's signed head, both ways.

        Both heads must be signed with the pinned key, and the smaller must be a prefix of the
        larger: same size, same root; else a consistency proof from whoever holds the larger
        one. Anything else is a ``fork`` finding with both signed heads kept as evidence."""
        ours = result.head
        if ours is None:
            return  # no verified head to compare with; the audit's own finding says why
        pin = self.source.pin()
        record: dict[str, Any] = {"source": view.where, "head": None, "consistent": False, "relation": None, "evidence": None}
        result.comparisons.append(record)
        try:
            other = verify_head(_head_data(view, pin), controller=pin.controller, public_key=pin.public_key())
        except VerificationError as exc:
            result.findings.append(
                Finding(
                    "compare_bad_signature",
                    f"the head from {view.where} is not one this controller signed ({exc.code}): {exc.message}",
                )
            )
            return
        record["head"] = other.to_json()
        relation, problem, proof = self._relate(ours, other, view)
        if problem is None:
            record.update(consistent=True, relation=relation)
            return
        earlier, later = (other, ours) if other.tree_size <= ours.tree_size else (ours, other)
        record["evidence"] = str(self.store.save_evidence("fork", earlier, later, proof))
        result.findings.append(
            Finding("fork", f"FORK: {problem}. Both signed heads are kept as evidence in {record['evidence']}")
        )

    def _relate(self, ours: SignedHead, other: SignedHead, view: OtherView) -> tuple[str | None, str | None, list[str] | None]:
        """How ``other`` relates to ``ours``: (relation, None, proof) or (None, what is wrong, proof)."""
        if other.tree_size == ours.tree_size:
            if other.root_hash == ours.root_hash:
                return "same", None, None
            return (
                None,
                (
                    f"{view.where} holds a head of {other.tree_size} entries with root {other.root_hash[:16]}… (signed "
                    f"{other.timestamp}), this controller now shows root {ours.root_hash[:16]}… for the same size: "
                    "two histories under one identity"
                ),
                None,
            )
        if other.tree_size < ours.tree_size:
            proven, proof, refusal = _proven_extension(self.source, other, ours, "the controller")
            if proven:
                return "prefix", None, proof
            return (
                None,
                (
                    f"this controller's head of {ours.tree_size} entries does not extend the head of {other.tree_size} "
                    f"entries (signed {other.timestamp}) from {view.where}{refusal}: they show different histories"
                ),
                proof,
            )
        if view.proofs is None:
            return (
                None,
                (
                    f"{view.where} holds a head of {other.tree_size} entries this controller signed on {other.timestamp}, "
                    f"but it now shows only {ours.tree_size}: its history was rolled back, or it shows different "
                    "histories to different auditors"
                ),
                None,
            )
        proven, proof, refusal = _proven_extension(view.proofs, ours, other, view.where)
        if proven:
            return "extension", None, proof
        return (
            None,
            (
                f"the head of {other.tree_size} entries served by {view.where} does not extend this controller's head of "
                f"{ours.tree_size} entries{refusal}: they show different histories"
            ),
            proof,
        )

    # --- heads -------------------------------------------------------------------------

    def _consistent(self, result: AuditResult) -> bool:
        previous, head = result.previous, result.head
        assert head is not None
        if previous is None:
            return True
        if head.tree_size < previous.tree_size:
            result.evidence = str(self.store.save_evidence("rollback", previous, head))
            result.findings.append(
                Finding(
                    "ledger_shrank",
                    f"ROLLBACK: the controller now shows {head.tree_size} ledger entries, but on {previous.timestamp} it "
                    f"signed a head of {previous.tree_size}; its history was rolled back or rewritten. "
                    f"Both signed heads are kept as evidence in {result.evidence}",
                )
            )
            return False
        if head.tree_size == previous.tree_size:
            if head.root_hash == previous.root_hash:
                return True
            result.evidence = str(self.store.save_evidence("fork", previous, head))
            result.findings.append(
                Finding(
                    "fork",
                    f"FORK: the controller signed two different histories of {head.tree_size} entries "
                    f"(root {previous.root_hash[:16]}… on {previous.timestamp}, root {head.root_hash[:16]}… now). "
                    f"Both signed heads are kept as evidence in {result.evidence}",
                )
            )
            return False
        proven, proof, refusal = _proven_extension(self.source, previous, head, "the controller")
        if proven:
            return True
        result.evidence = str(self.store.save_evidence("inconsistent", previous, head, proof))
        result.findings.append(
            Finding(
                "inconsistent_head",
                f"INCONSISTENT HISTORY: the head of {head.tree_size} entries does not extend the head of "
                f"{previous.tree_size} entries seen on {previous.timestamp}: the ledger was rolled back or rewritten{refusal}. "
                f"Both signed heads are kept as evidence in {result.evidence}",
            )
        )
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
                result.findings.append(
                    Finding(
                        "entry_missing" if isinstance(seq, int) and seq > position else "entry_misplaced",
                        f"expected entry {position} but was shown seq {seq!r}: entries are missing or out of place",
                        position,
                    )
                )
                return
            leaves.append(leaf_hash(canonical(entry)))
        if len(leaves) != head.tree_size:
            result.findings.append(
                Finding(
                    "entry_missing", f"the head covers {head.tree_size} entries but only {len(leaves)} were served", len(leaves)
                )
            )
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
                result.findings.append(
                    Finding("entry_misplaced", f"entry with seq {seq!r} is out of order", seq if isinstance(seq, int) else None)
                )
                continue
            if self.cvm is not None and entry.get("cvm") != self.cvm:
                result.findings.append(
                    Finding("wrong_cvm", f"entry belongs to CVM {entry.get('cvm')!r}, not the one asked for", seq)
                )
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
            result.findings.append(
                Finding(
                    "entry_altered",
                    f"entry {seq} ({entry.get('event')!r}) is not in the signed ledger as shown: it was altered",
                    seq,
                )
            )

    def _chain(self, entries: list[dict[str, Any]], result: AuditResult) -> None:
        """Each entry names the previous one of its CVM; a link to an unseen entry means one was hidden."""
        for entry in entries:
            if not isinstance(entry, dict) or "cvm_prev" not in entry or not isinstance(entry.get("seq"), int):
                continue
            cvm, seq = entry.get("cvm"), entry["seq"]
            seen = self._last_by_cvm.get(cvm)
            if entry["cvm_prev"] != seen:
                missing = entry["cvm_prev"]
                result.findings.append(
                    Finding(
                        "entry_missing",
                        f"entry {seq} follows entry {missing} of the same CVM, which was not shown "
                        f"(the previous one shown is {seen}): entries were deleted or hidden",
                        missing if isinstance(missing, int) else seq,
                    )
                )
            self._last_by_cvm[cvm] = seq

    # --- rules -------------------------------------------------------------------------

    def _check_rules(self, pin: ControllerPin, result: AuditResult) -> None:
        """Replay the lifecycle over this round's verified entries; each forbidden sequence is a finding."""
        if self._replay is None:
            # The whole ledger names its owner sets itself (``controller.owners``); one CVM's
            # entries do not, so they are held to the owner set of the attested identity.
            self._replay = lc.LifecycleReplay(initial_owners=None if self.cvm is None else (pin.owners or None))
        result.modes, violations = _replay(self._replay, result.entries)
        result.findings += [Finding(v.code, v.message, v.seq, rule=True) for v in violations]

    def _check_evidence(self, result: AuditResult) -> None:
        """Every passing CVM attestation shown: its evidence verified again, here (docs/audit.md)."""
        for entry in result.entries:
            if entry.get("event") != lc.CVM_ATTESTED or entry.get("ok") is not True:
                continue
            seq, digest = entry.get("seq"), entry.get("evidence_sha256")
            try:
                evidence = self.source.blob(str(digest))
            except DuetError as exc:
                if exc.code != "output_pruned":  # pruned: a signed answer, the retention policy's
                    code = "evidence_altered" if exc.code in ("blob_altered", "blob_mismatch") else "evidence_missing"
                    result.findings.append(Finding(code, f"the attestation's evidence: {exc.message}", seq))
                continue
            problem = recheck(entry, evidence, self.cvm_roots)
            if problem is not None:
                result.findings.append(Finding("evidence_unverified", f"CVM attestation entry {seq}: {problem}", seq))

    # --- outputs -----------------------------------------------------------------------

    def _check_outputs(self, result: AuditResult) -> None:
        for entry in result.entries:
            if entry.get("event") != lc.COMMAND_FINISHED or entry.get("seq") in result.bad_seqs:
                continue
            for stream in ("stdout", "stderr"):
                digest = entry.get(f"{stream}_sha256")
                if not isinstance(digest, str) or digest in result.outputs:
                    continue
                try:
                    result.outputs[digest] = self.source.blob(digest).decode(errors="replace")
                except DuetError as exc:
                    if exc.code == "output_pruned":  # a signed answer: deleted by the retention policy
                        result.outputs[digest] = f"[pruned by the controller's retention policy: {exc.message}]"
                        continue
                    code = "output_altered" if exc.code == "blob_mismatch" else "output_missing"
                    result.findings.append(
                        Finding(code, f"{stream} of `{entry.get('command')}`: {exc.message}", entry.get("seq"))
                    )


def _proven_extension(source: ProofSource, older: SignedHead, newer: SignedHead, who: str) -> tuple[bool, list[str] | None, str]:
    """Ask ``source`` for the consistency proof from ``older`` to ``newer`` and check it against
    both signed roots. Returns whether it holds, the proof as served (kept as evidence), and
    why none was given (empty when one was)."""
    try:
        answer = source.get("/v1/ledger/proof/consistency", first=older.tree_size, second=newer.tree_size)
    except DuetError as exc:
        return False, None, f"; {who} refused the proof: {exc.message}"
    served = answer.get("proof") if isinstance(answer, dict) else None
    proof = _hashes(served)
    proven = (
        proof is not None
        and answer.get("first") == older.tree_size
        and answer.get("second") == newer.tree_size
        and verify_consistency(older.tree_size, newer.tree_size, older.root, newer.root, proof)
    )
    return proven, served if isinstance(served, list) else None, ""


def _hashes(values: Any) -> list[bytes] | None:
    if not isinstance(values, list):
        return None
    return [bytes.fromhex(v) for v in values] if all(is_hex64(v) for v in values) else None


# --- other views of the controller (``duet audit --compare``) --------------------------------

HEAD_PATH = "/v1/ledger/head"


class RemoteController:
    """Another copy of the audited controller at ``url``, held to the audited controller's PINNED key.

    Its own identity is never fetched or believed: every answer must verify with the key the
    user pinned, and the proofs it serves are checked against signed roots anyway. Nothing
    rests on the channel, so its TLS certificate is not checked (a copy someone else runs has
    no pin of its own), as for any mirror of a transparency log.
    """

    def __init__(
        self, url: str, pin: ControllerPin, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.pin = pin
        self._timeout = timeout
        self._transport = transport

    def answer(self, path: str, **query: Any) -> tuple[Any, str, str]:
        """The answer to a read, as served (not verified yet), the nonce it must echo and the
        request target it must name."""
        nonce = new_nonce()
        params = {**{name: str(value) for name, value in query.items() if value is not None}, "nonce": nonce}
        data = _get_json(self.url + path, params, self._transport, self._timeout)
        return data, nonce, request_target("GET", path, params)

    def get(self, path: str, **query: Any) -> Any:
        """The result of a read whose answer verifies with the pinned key (``ProofSource``)."""
        data, nonce, target = self.answer(path, **query)
        result = verify_answer(
            data, controller=self.pin.controller, public_key=self.pin.public_key(), nonce=nonce, request_target=target
        )
        if isinstance(result, dict) and isinstance(result.get("error"), dict):
            error = result["error"]
            raise DuetError(f"{self.url} refused: {error.get('message')}", code=str(error.get("code", "error")))
        return result


def load_view(spec: str, pin: ControllerPin, *, transport: httpx.BaseTransport | None = None) -> OtherView:
    """Read another view: a file (a saved head) or an http(s) URL (another copy, or a checkpoint).

    A URL whose path is empty or ends in ``/v1/ledger/head`` is taken as a controller, which
    can then prove that a larger head extends ours; any other URL as one published head.
    Raises :class:`CompareError` (or ``ConnectionFailed``) when nothing could be read."""
    if not spec.startswith(("http://", "https://")):
        return OtherView(spec, _head_file(Path(spec)))
    base = _controller_base(spec)
    if base is None:
        return OtherView(spec, _get_json(spec, {}, transport))
    remote = RemoteController(base, pin, transport=transport)
    data, nonce, target = remote.answer(HEAD_PATH)
    return OtherView(spec, data, nonce, remote, target)


def _controller_base(url: str) -> str | None:
    """The controller's base URL if ``url`` names one (``https://h:p`` or ``…/v1/ledger/head``)."""
    parsed = httpx.URL(url)
    path = parsed.path.rstrip("/")
    if path and not path.endswith(HEAD_PATH):
        return None
    return str(parsed.copy_with(path=path[: -len(HEAD_PATH)] if path else "", query=None)).rstrip("/")


def _head_file(path: Path) -> Any:
    """A file's JSON, refused at once unless it holds something shaped like a signed head: a
    wrong path is the user's to fix (exit 1), a head that does not verify is a finding (exit 3)."""
    hint = "give another auditor's saved head (their <state dir>/heads/<controller id>.json) or a URL serving a signed head"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CompareError(f"cannot read {path}: {exc.strerror}; {hint}") from None
    except ValueError:
        raise CompareError(f"{path} is not JSON; {hint}") from None
    try:
        parse_head(data["result"] if _is_answer(data) else _unwrapped(data))
    except VerificationError as exc:
        raise CompareError(f"{path} holds no signed tree head ({exc.message}); {hint}") from None
    return data


def _get_json(url: str, params: dict[str, str], transport: httpx.BaseTransport | None, timeout: float = 30.0) -> Any:
    try:
        with httpx.Client(transport=transport, timeout=timeout, verify=unverified_ssl_context()) as http:
            response = http.get(url, params=params)
    except httpx.HTTPError as exc:
        raise ConnectionFailed(f"cannot reach {url} to compare heads: {exc}") from None
    try:
        return response.json()
    except ValueError:
        raise CompareError(
            f"{url} answered HTTP {response.status_code} with something that is not JSON; give the URL of a "
            f"signed head (e.g. https://HOST:PORT{HEAD_PATH})"
        ) from None


def _head_data(view: OtherView, pin: ControllerPin) -> Any:
    """The signed head inside what the view holds; a signed answer must verify with the pinned key."""
    if _is_answer(view.data):
        return verify_answer(
            view.data, controller=pin.controller, public_key=pin.public_key(), nonce=view.nonce, request_target=view.target
        )
    return _unwrapped(view.data)


def _is_answer(data: Any) -> bool:
    return isinstance(data, dict) and ANSWER_FIELDS <= data.keys()


def _unwrapped(data: Any) -> Any:
    """The head of a ``duet audit --json`` report; anything else as it is (a bare signed head)."""
    return data["head"] if isinstance(data, dict) and isinstance(data.get("head"), dict) else data


# --- the timeline users read ------------------------------------------------------------


def timeline(
    entries: list[dict[str, Any]],
    bad: set[int] = frozenset(),  # type: ignore[assignment]
    outputs: dict[str, str] | None = None,
    *,
    modes: list[str | None] | None = None,
    violations: dict[int, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per entry: when, which CVM, what happened, the mode after it, command and exit.

    ``modes`` come from the auditor's replay when it ran (it knows CVMs from earlier rounds);
    otherwise the entries shown are replayed here, for display only. A row whose entry breaks
    a rule names it in ``violation``."""
    if modes is None:
        modes, _ = _replay(lc.LifecycleReplay(), entries)
    rows = []
    for entry, mode in zip(entries, modes):
        if not isinstance(entry, dict):
            continue
        event = entry.get("event")
        row: dict[str, Any] = {
            "seq": entry.get("seq"),
            "time": entry.get("time"),
            "cvm": entry.get("cvm"),
            "event": event,
            "mode": mode,
            "actor": entry.get("actor"),
            "command": entry.get("command"),
            "exit_status": entry.get("exit_status"),
            "verified": entry.get("seq") not in bad,
            "violation": (violations or {}).get(entry.get("seq")),  # type: ignore[arg-type]
            "protocol": entry.get("protocol", "v1"),
            "detail": _detail(entry),
        }
        if outputs is not None and event == lc.COMMAND_FINISHED:
            for stream in ("stdout", "stderr"):
                digest = entry.get(f"{stream}_sha256")
                if digest in outputs:
                    row[stream] = outputs[digest]
        rows.append(row)
    return rows


def _replay(replay: lc.LifecycleReplay, entries: list[Any]) -> tuple[list[str | None], list[lc.Violation]]:
    """Feed ``entries`` to ``replay`` in order: the mode label after each, and the violations found."""
    labels: list[str | None] = []
    violations: list[lc.Violation] = []
    for entry in entries:
        if isinstance(entry, dict):
            violations += replay.apply(entry)
        labels.append(mode_label(replay, entry))
    return labels, violations


def mode_label(replay: lc.LifecycleReplay, entry: Any) -> str | None:
    """The mode of the entry's CVM as people read it; a final CVM is "lockdown pending" until
    a ``cvm.locked`` entry says the controller verifiably locked itself out."""
    cvm = entry.get("cvm") if isinstance(entry, dict) else None
    facts = replay.cvms.get(cvm) if isinstance(cvm, str) else None
    if facts is None:
        return None
    if facts.final and facts.mode == lc.IN_SERVICE:
        return f"{lc.IN_SERVICE} (final)" if facts.lockdown == lc.LOCKDOWN_DONE else f"{lc.IN_SERVICE} (final, lockdown pending)"
    return facts.mode


def _detail(entry: dict[str, Any]) -> str:
    event = entry.get("event")
    if event == lc.COMMAND_FINISHED:
        return (
            f"{entry.get('duration_ms', 0):.0f} ms, stdout {entry.get('stdout_size', 0)} B, stderr {entry.get('stderr_size', 0)} B"
            + (", timed out" if entry.get("timed_out") else "")
        )
    if event == lc.MODE_CHANGED:
        return f"{entry.get('previous')} → {entry.get('mode')}"
    for name in ("reason", "error", "uname", "host_key_fingerprint"):
        if entry.get(name):
            return f"{name}: {entry[name]}"
    if event == lc.CONTROLLER_OWNERS:
        return f"owners: {', '.join(o[:12] + '…' for o in entry.get('owners', []))}"
    return ""
