"""The auditor behind ``duet audit``: trust no one, check everything the controller shows.

What is checked, and why each check is needed:

* every answer's signature and nonce (``DuetClient.get``): an answer cannot be forged or replayed;
* the signed tree head: it is the controller's own statement of what its ledger is;
* consistency of the new head with the last head this user saw from this controller (kept in
  the user's state directory): a rolled-back or edited disk, or a forked history, shows up as a
  smaller head, a head of the same size with another root, or a failing consistency proof;
* every entry shown: for the whole ledger, the root recomputed from the entries as they stream
  (only the tree's right edge is kept, :mod:`duet.client.audit_tree`) must be the signed root;
  for one CVM, each entry is proven in the signed tree, by proofs of the ranges that hold it
  where the CVM's entries are dense, else by one inclusion proof each;
* completeness of one CVM's history: each entry's ``cvm_prev`` must be the previous entry shown;
* outputs (``--long``): fetched blobs must hash to the SHA-256 the ledger recorded;
* the rules (:mod:`duet.protocol.lifecycle`): a ledger that hashes correctly can still show a
  command started while the CVM was in service, an actor outside the owner set, a final CVM
  reopened. The verified entries are replayed in order and every forbidden sequence is a
  finding: the controller signed it, so it is evidence against the controller (or its host);
* other views (``compare``): each auditor alone sees one consistent history, yet two copies of
  the controller's state may run side by side and show each its own. Another auditor's signed
  head (a file, or another copy's URL) must be consistent with ours, both ways;
* witnesses (``witnesses``, ``--witness``): the controller's C2SP checkpoint must be cosigned by
  enough of the witnesses the user names, and the head audited must be that checkpoint's tree or
  proven to extend it, every round (:mod:`duet.client.audit_witness`): with a majority quorum, at
  most one history of the controller can pass, whatever it shows others.

The same audit runs from the controller's published tiles (``tiles``, ``--tiles``,
:mod:`duet.client.audit_tiles`) without asking the controller anything: the head is the published
checkpoint, every entry is proven by the authenticated tiles, a consistency proof is the root of
the older tree computed from them, and a tile that fails is a finding naming its path. Blobs are
not published, so evidence and outputs are then counted as not checked. Its last head and audit
checkpoint are kept apart from a controller audit's, and each is held to the other's last head.

The last-seen head is only replaced by a head proven consistent with it, so any two heads this
auditor ever accepted describe one linear history. When that fails, both signed heads are kept
as evidence: together they prove the fork to anyone.

A whole-ledger audit is incremental: after an audit where everything held, the verified state
is kept (:mod:`duet.client.audit_checkpoint`: the head, its frontier, the rules' state), and the
next audit checks only the entries that came after it. Memory does not grow with the ledger:
entries are hashed and replayed as they stream and dropped, except the last ``timeline`` ones
kept for display; what the rules keep grows with the number of CVMs (and owner requests).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from duet.attestation.bundle import CvmRoots
from duet.client import audit_tiles, audit_witness
from duet.client.audit_checkpoint import (
    Checkpoint,
    CheckpointStore,
    CheckpointUnusable,
    decode_replay,
    encode_replay,
    fingerprint,
)
from duet.client.audit_tiles import TilesLedger, batches, decode_entry, tile_finding
from duet.client.audit_tree import (
    MAX_BLOCKS,
    Frontier,
    Pinpointer,
    ProofSource,
    ProofUnavailable,
    RecordingFrontier,
    Refetched,
    TreeOracle,
    entry_leaf,
)
from duet.client.audit_witness import Head, NoteHead, Witnessed, WitnessPolicy, parse_note_head
from duet.client.checkpoints import CheckpointHeadMismatch, check_checkpoint_matches_head
from duet.client.evidence_check import recheck
from duet.client.sdk import ApiError, ConnectionFailed
from duet.client.tiles_source import TilesSource
from duet.client.trust import (
    ControllerPin,
    unverified_ssl_context,
    user_state_dir,
    write_json_atomic,
)
from duet.errors import ConfigError, DuetError, VerificationError
from duet.ledger.heads import SignedHead, parse_head, verify_head
from duet.ledger.merkle import leaf_hash, verify_consistency
from duet.ledger.tiles import TiledLog, TileError
from duet.protocol import lifecycle as lc
from duet.protocol.canonical import is_hex64, timestamp
from duet.protocol.envelope import ANSWER_FIELDS, new_nonce, request_target, verify_answer
from duet.protocol.rules import RulesReplay

__all__ = [
    "AuditResult",
    "AuditSource",
    "Auditor",
    "CompareError",
    "Finding",
    "HeadStore",
    "OtherView",
    "ProofSource",
    "RemoteController",
    "load_view",
    "mode_label",
    "timeline",
]

PINPOINT_LIMIT = 100
"""When a recomputed root does not match, at most this many altered entries are named."""

TIMELINE = 1000
"""Entries a round keeps for its timeline by default (the last ones shown); the rest are checked
and dropped, so memory does not grow with the ledger."""

PAGE = 1000
"""Entries asked for per page (the controller's ``MAX_PAGE``; it may answer with fewer)."""

PAGE_COST = 35
"""What a page of ``PAGE`` entries costs, in inclusion-proof round trips (measured on loopback:
about 59 ms a page and 1.6 ms a proof, signatures checked). A CVM audit streams a range of the
ledger instead of proving the CVM's entries one by one when that is cheaper."""

CHUNK_PAGES = 5
"""A CVM audit streaming the ledger proves each run of at most this many pages with one
consistency proof (and keeps at most that many entries' hashes meanwhile)."""

PROOF_WORKERS = 4
"""Inclusion proofs in flight at once when a CVM's entries are proven one by one."""

OUTPUT_CACHE = 4096
"""Outputs already checked whose text is kept (``--long``), besides those of the timeline."""


class AuditSource(ProofSource, Protocol):
    """What the auditor needs of a client; ``DuetClient`` is one. With ``--tiles`` only
    ``pin()`` is used (the key pinned locally): nothing is asked of the controller."""

    url: str
    first_contact: bool

    def pin(self) -> ControllerPin: ...
    def blob(self, sha256: str) -> bytes: ...
    def checkpoint(self, *, witnessed: bool = False) -> bytes: ...


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
    path: str | None = None
    """``--tiles``: the tile or entry bundle that failed its check, by its path in the log."""

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "seq": self.seq, "rule": self.rule, "path": self.path}

    def __str__(self) -> str:
        return (f"seq {self.seq}: " if self.seq is not None else "") + f"{self.message} ({self.code})"


CONTROLLER = "controller"
TILES = "tiles"
"""Where an audit reads the ledger from: the controller's API, or its published tiles (``--tiles``)."""


class HeadStore:
    """The last head seen from each controller, in ``<state dir>/heads/<controller id>.json``:
    its signed head as the controller served it. The last checkpoint read from its published
    tiles is kept apart, in ``<controller id>.tiles.json`` (``kind="tiles"``)."""

    def __init__(self, directory: Path, *, kind: str = CONTROLLER) -> None:
        if kind not in (CONTROLLER, TILES):
            raise ValueError(f"a head store is of kind {CONTROLLER!r} or {TILES!r}")
        self.directory = directory / "heads"
        self.kind = kind

    @classmethod
    def default(cls) -> HeadStore:
        return cls(user_state_dir())

    def of_kind(self, kind: str) -> HeadStore:
        """The store beside this one that keeps heads of ``kind``."""
        return self if kind == self.kind else HeadStore(self.directory.parent, kind=kind)

    def _path(self, controller: str) -> Path:
        if not is_hex64(controller):
            raise VerificationError("a controller id is 64 lowercase hex characters", code="bad_controller_id")
        return self.directory / (f"{controller}.json" if self.kind == CONTROLLER else f"{controller}.{self.kind}.json")

    def last(self, controller: str) -> Head | None:
        try:
            data = json.loads(self._path(controller).read_text())
            return parse_head(data) if self.kind == CONTROLLER else parse_note_head(data)
        except FileNotFoundError:
            return None
        except (ValueError, VerificationError):
            raise VerificationError(
                f"{self._path(controller)} is damaged; it held the last head seen from this controller. "
                "Restore it from a backup (removing it forgets what was seen)",
                code="bad_head_store",
            ) from None

    def save(self, head: Head) -> None:
        self._write(self._path(head.controller), head.to_json())

    def save_evidence(self, kind: str, previous: Head, current: Head, proof: list[str] | None = None) -> Path:
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
    head: Head | None = None
    """The head this round verified: the controller's signed head, or with ``--tiles`` the
    published checkpoint (a :class:`~duet.client.audit_witness.NoteHead`)."""
    previous: Head | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    """The entries shown this round, in order (verified or not: see ``bad_seqs``); only the last
    ``Auditor.timeline`` of them when more were checked (``checked`` says how many)."""
    findings: list[Finding] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    """With --long: output SHA-256 -> text, each checked against its hash (those of ``entries``)."""
    evidence: str | None = None
    first_contact: bool = False
    modes: list[str | None] | None = None
    """The CVM's mode after each entry of ``entries``, from the auditor's replay (None: not replayed)."""
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    """One record per other view compared (``Auditor.compare``)."""
    checked: int = 0
    """Entries shown and checked this round (all of them, kept in ``entries`` or not)."""
    start: int = 0
    """The ledger position this round started from: 0, or the size already verified (by an
    earlier round, or the checkpoint ``resumed``)."""
    resumed: Head | None = None
    """The head of the checkpoint this audit went on from (None: it started from the first entry)."""
    notes: list[str] = field(default_factory=list)
    """What the user should know that is not a finding (e.g. why a checkpoint was not used)."""
    read_from: str = CONTROLLER
    """``controller`` (its API), or ``tiles`` (its published log at ``url``; the controller was
    not contacted)."""
    witnesses: dict[str, Any] | None = None
    """With a witness policy: the checkpoint held to it, who cosigned it, who did not."""
    not_checked: dict[str, int] = field(default_factory=dict)
    """``--tiles``: what could not be checked, by kind (``evidence``: CVM attestations whose
    evidence is not in the published log; ``outputs``, with ``--long``): not findings."""

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
            "checked": self.checked,
            "start": self.start,
            "resumed_from": self.resumed.to_json() if self.resumed else None,
            "notes": list(self.notes),
            "evidence": self.evidence,
            "first_contact": self.first_contact,
            "comparisons": self.comparisons,
            "read_from": self.read_from,
            "witnesses": self.witnesses,
            "not_checked": dict(self.not_checked),
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


@dataclass
class _Round:
    """What one round saw, held until it is known whether all its entries verified: the rules,
    the evidence and the chain are judged only on entries the controller signed."""

    start: int
    rows: deque[tuple[Any, str | None]]
    """The last entries shown (the timeline), each with the mode after it."""
    shown: int = 0
    fed: bool = False
    expected: int = 0
    findings: list[Finding] = field(default_factory=list)
    """Entries that did not verify: missing, misplaced, altered, unproven."""
    chain: list[Finding] = field(default_factory=list)
    rules: list[Finding] = field(default_factory=list)
    evidence: list[Finding] = field(default_factory=list)
    outputs: list[Finding] = field(default_factory=list)
    texts: OrderedDict[str, str] = field(default_factory=OrderedDict)
    last: dict[str | None, int] = field(default_factory=dict)
    """The last entry of each CVM shown this round (on top of ``Auditor._last_by_cvm``)."""
    frontier: Frontier | None = None
    """Whole ledger: the frontier of the signed head, once the entries hashed to its root."""
    unchecked_evidence: int = 0
    unchecked_outputs: int = 0
    """``--tiles``: CVM attestations whose evidence, and outputs, are not in the published log."""
    governance: deque[dict[str, Any]] = field(default_factory=deque)
    """A CVM's audit: the controller's own entries not fed to the replay yet (``_govern``)."""


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
        from_start: bool = False,
        timeline: int | None = TIMELINE,
        progress: Callable[[int, int], None] | None = None,
        witnesses: Sequence[str] | WitnessPolicy | None = None,
        witness_quorum: int | None = None,
        tiles: str | TilesSource | TilesLedger | None = None,
    ) -> None:
        """``cvm_roots``: the roots recorded CVM evidence must chain to (AMD's and Intel's by
        default; simulated ones only when the auditor passes them). ``from_start``: a
        whole-ledger audit checks every entry from the first instead of going on from the
        checkpoint kept by the last audit (and keeps a new one). ``timeline``: how many of a
        round's entries ``AuditResult.entries`` keeps, the last ones (None: all, which makes
        memory grow with the ledger). ``progress``: called with (entries done, entries in the
        round) as pages are checked.

        ``witnesses`` (cosignature/v1 vkeys) and ``witness_quorum`` (default: all of them): each
        round also holds a checkpoint of the controller to this policy, and the head it audits
        to that checkpoint (:mod:`duet.client.audit_witness`). ``tiles``: read the ledger from
        its published tiles at this URL (or source), never from the controller; ``source`` is
        then asked only for the key pinned locally (:mod:`duet.client.audit_tiles`). Raises
        ``ConfigError`` for a witness policy that cannot work."""
        self.source = source
        self.cvm_roots = cvm_roots or CvmRoots()
        if witnesses is None or isinstance(witnesses, WitnessPolicy):
            if witnesses is None and witness_quorum is not None:
                raise ConfigError("--witness-quorum needs at least one --witness VKEY", code="bad_quorum")
            self.witnesses = witnesses
        else:
            vkeys = list(witnesses)
            if not vkeys and witness_quorum is None:
                self.witnesses = None
            else:
                self.witnesses = WitnessPolicy.from_vkeys(vkeys, witness_quorum)
        if tiles is None or isinstance(tiles, TilesLedger):
            self._tiles = tiles
        elif isinstance(tiles, str):
            self._tiles = TilesLedger.at(tiles)
        else:
            self._tiles = TilesLedger(tiles)
        self._log: TiledLog | None = None
        """``--tiles``: the published log at the head of the current round."""
        self.kind = CONTROLLER if self._tiles is None else TILES
        self._who = "the controller" if self._tiles is None else "the published log"
        # A tiles audit keeps its own last head and audit checkpoint (docs/audit.md, "--tiles").
        self.store = store.of_kind(self.kind)
        self._other_store = store.of_kind(TILES if self.kind == CONTROLLER else CONTROLLER)
        self.checkpoints = CheckpointStore(store.directory.parent, kind=self.kind)
        self.cvm = cvm
        self.long = long
        self.from_start = from_start
        self.timeline = timeline
        self.progress = progress
        self.page_cost: float = PAGE_COST
        """Break-even of streaming versus proving a CVM's entries one by one (see PAGE_COST)."""
        self.verified_size = 0
        """Entries [0, verified_size) have been checked in an earlier round (or the checkpoint)."""
        self._frontier = Frontier()
        """Whole ledger: the frontier of the first ``verified_size`` entries, computed here."""
        self._last_by_cvm: dict[str | None, int] = {}
        self._replay: RulesReplay | None = None
        """The lifecycle replayed over exactly the verified entries [0, verified_size) shown."""
        self._fresh = True
        """``_replay`` has been fed nothing yet (a failed round then starts it again)."""
        self._snapshot: dict[str, Any] | None = None
        """``encode_replay(_replay)`` at ``verified_size``, to undo a round that did not verify."""
        self._resume = False
        self._clean = True
        """No finding in this audit so far: only then may a checkpoint be kept."""
        self._saved = 0
        self._print: str | None = None

    def audit(self) -> AuditResult:
        """Check the head and every entry shown (all of them, or all of one CVM's); a whole-ledger
        audit goes on from the checkpoint kept by the last one, unless ``from_start``. Then the
        head is held to the last one seen the other way (from the controller, or its tiles)."""
        self.verified_size, self._frontier, self._last_by_cvm = 0, Frontier(), {}
        self._replay, self._fresh, self._snapshot = None, True, None
        self._resume, self._clean, self._saved = self.cvm is None and not self.from_start, True, 0
        result = self.follow()
        if self.witnesses is not None:
            result.notes[:0] = self.witnesses.notes
        try:
            self._cross_check(result)
        except TileError as exc:
            result.findings.append(_tile_finding(exc))
        return result

    def close(self) -> None:
        """Close the tiles source this auditor opened (``tiles`` given as a URL)."""
        if self._tiles is not None:
            self._tiles.close()

    def follow(self) -> AuditResult:
        """Check a fresh head and the entries that appeared since the last round.

        The rules are replayed over a round's entries as they stream, and what they find is
        reported only once all of them verified (else the replay is put back as it was): the
        replay advances with ``verified_size``, so each entry is fed once, in order, and a
        rule violation is reported in the round that shows it (``audit`` reports it again)."""
        pin = self.source.pin()
        if self._tiles is not None:
            result = AuditResult(self._tiles.location, pin.controller, self.cvm, read_from=TILES)
        else:
            result = AuditResult(self.source.url, pin.controller, self.cvm, first_contact=self.source.first_contact)
        self._log = None
        try:
            self._round(pin, result)
        except TileError as exc:  # a tile needed to prove a head consistent with an earlier one
            result.findings.append(_tile_finding(exc))
            self._clean = False
        return result

    def _round(self, pin: ControllerPin, result: AuditResult) -> None:
        head, witnessed = self._head(pin, result)
        if head is None:
            self._clean = False
            return
        result.head = head
        result.previous = self.store.last(pin.controller)
        if result.previous is not None and not self._extends(result.previous, head, result):
            self._clean = False
            return
        if not result.ok:  # the head is the controller's, but it failed the witness policy: not adopted
            self._clean = False
            return
        if witnessed is not None and isinstance(head, SignedHead):
            if not self._tie(witnessed.head, head, result):
                self._clean = False
                return
            if witnessed.head.tree_size < head.tree_size:
                result.notes.append(
                    f"the witnesses cosigned the checkpoint of the first {witnessed.head.tree_size:,} of the "
                    f"{head.tree_size:,} entries (the newest one they cosigned); the head is proven to extend it"
                )
        if self._resume:  # before the head is adopted: it must extend the checkpoint's too
            self._resume = False
            if not self._resume_from_checkpoint(pin, head, result):
                self._clean = False
                return
        self.store.save(head)
        if head.tree_size < self.verified_size:  # cannot happen after a consistent head; belt and braces
            result.findings.append(Finding("ledger_shrank", "the ledger is smaller than in the previous round"))
            self._clean = False
            return
        if self._replay is None:
            # The ledger names its owner sets and approval policies itself (``controller.owners``,
            # ``controller.policy``, entries about no CVM).
            # A CVM's audit is fed the controller's own entries too (``_controller_entries``), in order.
            self._replay = RulesReplay()
            self._fresh, self._snapshot = True, None
        rnd = _Round(self.verified_size, deque(maxlen=self.timeline), expected=self.verified_size)
        result.start = rnd.start
        if self._log is not None:
            self._check_tiles(self._log, head, rnd)
        elif self.cvm is None:
            self._check_ledger(head, rnd)
        else:
            self._check_cvm(head, rnd, pin)
        self._finish(head, rnd, result)
        self._compare_owners(pin, result)

    def _compare_owners(self, pin: ControllerPin, result: AuditResult) -> None:
        """The owner set the ledger puts in force must be the attested identity's one the user pinned:
        a key the host slipped in shows here even where no entry of it was audited yet."""
        replay = self._replay
        owners = replay.lifecycle.owners if replay is not None else None
        if not result.ok or not pin.owners or owners is None or set(owners) == set(pin.owners):
            return
        changed = replay.proposals.owners_seq if replay is not None else None
        result.findings.append(
            Finding(
                "owners_not_as_pinned",
                f"the ledger's owner set in force ({len(owners)} key(s), from entry {changed}) is not the one of the identity "
                f"you pinned ({len(pin.owners)} key(s)); if the owners changed it (a governed owners.change), verify the "
                "controller again (`duet verify --replace`), else the host put other keys in",
                changed,
            )
        )

    # --- the head of a round, and the witnesses ------------------------------------------

    def _head(self, pin: ControllerPin, result: AuditResult) -> tuple[Head | None, Witnessed | None]:
        """The head this round audits against (None, with a finding, when none verifies), and
        the checkpoint held to the witness policy, if there is one."""
        if self._tiles is not None:
            try:
                witnessed = self._tiles.read(pin, self.witnesses)
            except VerificationError as exc:
                result.findings.append(
                    Finding(
                        exc.code,
                        f"the checkpoint published at {self._tiles.location} is not one the pinned controller signed: {exc.message}",
                    )
                )
                return None, None
            self._witnessing(witnessed, result)
            result.head = witnessed.head
            self._log = self._tiles.open(witnessed.head)  # the right edge against the root; TileError: a finding
            return witnessed.head, witnessed
        checkpoint = self._checkpoint(pin, result) if self.witnesses is not None else None
        try:
            head = verify_head(self.source.get("/v1/ledger/head"), controller=pin.controller, public_key=pin.public_key())
        except VerificationError as exc:
            result.findings.append(Finding(exc.code, exc.message))
            return None, checkpoint
        return head, checkpoint

    def _checkpoint(self, pin: ControllerPin, result: AuditResult) -> Witnessed | None:
        """The controller's checkpoint held to the witness policy, fetched before its head (so
        the head is at least as large). With a quorum, the newest checkpoint the controller
        says its witnesses cosigned, else its latest; the better of the two when neither meets
        the policy. None (with a finding) when the controller serves none that it signed."""
        policy = self.witnesses
        assert policy is not None
        best: Witnessed | None = None
        refused: Finding | None = None
        for served in ("witnessed", "latest") if policy.quorum else ("latest",):
            try:
                note = self.source.checkpoint(witnessed=served == "witnessed")
                found = policy.check(note, pin.controller, pin.public_key(), served=served)
            except ApiError as exc:  # a signed refusal: e.g. no witnessed checkpoint kept yet
                refused = Finding(exc.code, f"the controller served no {served} checkpoint: {exc.message}")
                continue
            except VerificationError as exc:
                result.findings.append(Finding(exc.code, f"the controller's checkpoint does not verify: {exc.message}"))
                return None
            if found.refusal is None:
                best = found
                break
            if best is None or len(found.signed_by) > len(best.signed_by):
                best = found
        if best is None:
            result.findings.append(refused or Finding("no_checkpoint", "the controller served no checkpoint"))
            return None
        self._witnessing(best, result)
        return best

    def _witnessing(self, witnessed: Witnessed, result: AuditResult) -> None:
        """Report who cosigned; too few is a finding (the head is then not adopted)."""
        if self.witnesses is None:
            return
        result.witnesses = self.witnesses.record(witnessed)
        if witnessed.refusal is not None:
            result.findings.append(Finding(witnessed.refusal.code, witnessed.refusal.message))

    def _tie(self, checkpoint: NoteHead, head: SignedHead, result: AuditResult) -> bool:
        """The witnessed checkpoint must be the tree of the signed head this round audits, or a
        prefix of it the controller proves; else both are kept as evidence of two trees."""
        served: list[str] | None = None
        proof: list[bytes] | None = [] if checkpoint.tree_size == 0 else None
        refusal = ""
        if 0 < checkpoint.tree_size < head.tree_size:
            try:
                answer = self.source.get("/v1/ledger/proof/consistency", first=checkpoint.tree_size, second=head.tree_size)
            except DuetError as exc:
                answer, refusal = None, f" (the controller refused the proof: {exc.message})"
            if isinstance(answer, dict) and (answer.get("first"), answer.get("second")) == (
                checkpoint.tree_size,
                head.tree_size,
            ):
                served = answer.get("proof") if isinstance(answer.get("proof"), list) else None
                proof = _hashes(served)
        try:
            check_checkpoint_matches_head(checkpoint.checkpoint(), head, proof=proof)
        except CheckpointHeadMismatch as exc:
            earlier, later = (checkpoint, head) if checkpoint.tree_size <= head.tree_size else (head, checkpoint)
            result.evidence = str(self.store.save_evidence("fork", earlier, later, served))
            result.findings.append(Finding(exc.code, f"{exc.message}{refusal}. Both are kept as evidence in {result.evidence}"))
            return False
        return True

    # --- other views -------------------------------------------------------------------

    def compare(self, view: OtherView, result: AuditResult) -> None:
        """Check the head this audit verified against another view's signed head, both ways.

        Both heads must be signed with the pinned key, and the smaller must be a prefix of the
        larger: same size, same root; else a consistency proof from whoever holds the larger
        one. Anything else is a ``fork`` finding with both signed heads kept as evidence."""
        if result.head is None:
            return  # no verified head to compare with; the audit's own finding says why
        pin = self.source.pin()
        try:
            other = verify_head(_head_data(view, pin), controller=pin.controller, public_key=pin.public_key())
        except VerificationError as exc:
            result.comparisons.append(
                {"source": view.where, "head": None, "consistent": False, "relation": None, "evidence": None}
            )
            result.findings.append(
                Finding(
                    "compare_bad_signature",
                    f"the head from {view.where} is not one this controller signed ({exc.code}): {exc.message}",
                )
            )
            return
        self._compare_head(view, other, result)

    def _compare_head(self, view: OtherView, other: Head, result: AuditResult) -> None:
        ours = result.head
        assert ours is not None
        record: dict[str, Any] = {
            "source": view.where,
            "head": other.to_json(),
            "consistent": False,
            "relation": None,
            "evidence": None,
        }
        result.comparisons.append(record)
        relation, problem, proof = self._relate(ours, other, view)
        if problem is None:
            record.update(consistent=True, relation=relation, proven_by=self._who if relation == "prefix" else view.where)
            return
        earlier, later = (other, ours) if other.tree_size <= ours.tree_size else (ours, other)
        record["evidence"] = str(self.store.save_evidence("fork", earlier, later, proof))
        result.findings.append(
            Finding("fork", f"FORK: {problem}. Both signed heads are kept as evidence in {record['evidence']}")
        )

    def _cross_check(self, result: AuditResult) -> None:
        """Hold the head this audit verified to the last one seen the other way: from the
        controller's API when reading its tiles, from its tiles when reading its API. The two
        are kept apart (docs/audit.md) but describe one log: a controller that shows its API's
        users one history and publishes another is caught here, both heads kept as evidence.

        A published log behind the controller's head cannot prove it is a prefix of it (only
        the controller gives consistency proofs for older sizes): that is said, not found."""
        ours = result.head
        if ours is None or not result.ok:
            return
        other = self._other_store.last(result.controller)
        if other is None:
            return
        if self._tiles is not None and other.tree_size > ours.tree_size:
            result.notes.append(
                f"the published log ({ours.tree_size:,} entries) is behind the head of {other.tree_size:,} entries you "
                "verified from the controller; that they agree is checked once the published log reaches it "
                "(or by an audit from the controller)"
            )
            return
        where = (
            "the last head you verified from the controller's API"
            if self._tiles is not None
            else "the last checkpoint you verified from the controller's published tiles"
        )
        self._compare_head(OtherView(where, other.to_json()), other, result)

    def _relate(self, ours: Head, other: Head, view: OtherView) -> tuple[str | None, str | None, list[str] | None]:
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
            proven, proof, refusal = self._prove_extension(other, ours)
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

    def _prove_extension(self, older: Head, newer: Head) -> tuple[bool, list[str] | None, str]:
        """Whether ``newer`` (this round's head) extends ``older``: a consistency proof from the
        controller, or with ``--tiles`` the root of the first ``older.tree_size`` entries,
        computed from the authenticated tiles (raises ``TileError`` for a tile that is not)."""
        if self._tiles is None:
            return _proven_extension(self.source, older, newer, "the controller")
        log = self._log
        if log is None or newer.tree_size != log.size or older.tree_size > log.size:
            return False, None, "; the published log does not reach that size"
        return log.root_at(older.tree_size) == older.root, None, ""

    def _extends(self, previous: Head, head: Head, result: AuditResult) -> bool:
        """Whether ``head`` extends ``previous`` (a head this auditor accepted); if not, a
        finding, with both signed heads kept as evidence."""
        if head.tree_size < previous.tree_size:
            result.evidence = str(self.store.save_evidence("rollback", previous, head))
            if self._tiles is not None:
                message = (
                    f"ROLLBACK: the published log now shows {head.tree_size} ledger entries, but on {previous.timestamp} "
                    f"it showed a checkpoint of {previous.tree_size} the controller signed: the published log was rolled "
                    "back, or this is a stale copy of it"
                )
            else:
                message = (
                    f"ROLLBACK: the controller now shows {head.tree_size} ledger entries, but on {previous.timestamp} it "
                    f"signed a head of {previous.tree_size}; its history was rolled back or rewritten"
                )
            result.findings.append(
                Finding("ledger_shrank", f"{message}. Both signed heads are kept as evidence in {result.evidence}")
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
        proven, proof, refusal = self._prove_extension(previous, head)
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

    # --- the checkpoint kept between audits ----------------------------------------------

    def _fingerprint(self) -> str:
        if self._print is None:
            sources = (__file__, audit_tiles.__file__, audit_witness.__file__)
            if self.kind == CONTROLLER:
                self._print = fingerprint(self.cvm_roots, *sources)
            else:  # no evidence is checked (so the roots do not matter), and never one a controller audit goes on from
                self._print = hashlib.sha256(f"{self.kind}\n{fingerprint(CvmRoots(), *sources)}".encode()).hexdigest()
        return self._print

    def _resume_from_checkpoint(self, pin: ControllerPin, head: Head, result: AuditResult) -> bool:
        """Go on from the checkpoint the last clean audit kept, if there is a usable one. False
        (with a finding) when the controller's head does not extend the checkpoint's."""
        try:
            data = self.checkpoints.read(pin.controller)
            if data is None:
                return True
            checkpoint = Checkpoint.from_json(
                data, controller=pin.controller, public_key=pin.public_key(), fingerprint=self._fingerprint()
            )
            replay = decode_replay(checkpoint.replay)
        except CheckpointUnusable as exc:
            result.notes.append(f"the audit checkpoint was not used ({exc}): every entry is checked from the first")
            return True
        kept, previous = checkpoint.head, result.previous
        if previous is None or (previous.tree_size, previous.root_hash) != (kept.tree_size, kept.root_hash):
            if not self._extends(kept, head, result):  # the last head seen was forgotten, or moved on since
                return False
        self.verified_size, self._frontier, self._last_by_cvm = kept.tree_size, checkpoint.frontier, dict(checkpoint.last_by_cvm)
        self._replay, self._fresh, self._snapshot = replay, False, checkpoint.replay
        self._saved = kept.tree_size
        result.resumed = kept
        return True

    def _save_checkpoint(self, head: Head, result: AuditResult) -> None:
        assert self._replay is not None
        encoded = encode_replay(self._replay)
        checkpoint = Checkpoint(head, self._frontier.copy(), dict(self._last_by_cvm), encoded, self._fingerprint())
        try:
            self.checkpoints.save(checkpoint)
        except (OSError, ValueError) as exc:
            result.notes.append(f"the audit checkpoint could not be kept ({exc}); the next audit checks every entry again")
            return
        self._saved, self._snapshot = head.tree_size, encoded

    # --- a round -----------------------------------------------------------------------

    def _finish(self, head: Head, rnd: _Round, result: AuditResult) -> None:
        result.checked = rnd.shown
        if rnd.unchecked_evidence or rnd.unchecked_outputs:
            result.not_checked = {"evidence": rnd.unchecked_evidence, "outputs": rnd.unchecked_outputs}
            result.notes.append(
                f"not checked: the evidence of {rnd.unchecked_evidence} CVM attestation(s) and {rnd.unchecked_outputs} "
                "output(s); the published log holds the entries, not the blobs they name (an audit from the controller "
                "checks them)"
            )
        result.entries = [entry for entry, _ in rnd.rows]
        result.modes = [mode for _, mode in rnd.rows]
        result.findings += rnd.findings + rnd.chain
        if result.ok:  # every entry verified: what the rules and the evidence say now counts
            result.findings += rnd.rules + rnd.evidence
            self.verified_size = head.tree_size
            if rnd.frontier is not None:
                self._frontier = rnd.frontier
            self._last_by_cvm.update(rnd.last)
            if rnd.fed:
                self._fresh, self._snapshot = False, None
        elif rnd.fed:  # undo what the round fed the replay
            self._replay = None if self._fresh else decode_replay(self._snapshot)
        bad = result.bad_seqs
        result.findings += [finding for finding in rnd.outputs if finding.seq not in bad]
        if self.long and self._tiles is None:
            result.outputs = self._outputs_shown(result.entries, rnd.texts, bad)
        if not result.ok:
            self._clean = False
        elif self.cvm is None and self._clean and head.tree_size > self._saved:
            self._save_checkpoint(head, result)

    def _take(self, rnd: _Round, entry: Any) -> None:
        """An entry shown this round, in order: linked, replayed, its evidence and outputs checked."""
        replay = self._feeding(rnd)
        rnd.shown += 1
        if isinstance(entry, dict):
            self._link(rnd, entry)
            if rnd.governance and isinstance(entry.get("seq"), int):
                self._govern(rnd, before=entry["seq"])
            rnd.rules += [Finding(v.code, v.message, v.seq, rule=True) for v in replay.apply(entry)]
            event = entry.get("event")
            if event == lc.CVM_ATTESTED and entry.get("ok") is True:
                if self._tiles is None:
                    self._check_evidence(rnd, entry)
                else:
                    rnd.unchecked_evidence += 1
            elif event == lc.COMMAND_FINISHED and self.long:
                if self._tiles is None:
                    self._check_outputs(rnd, entry)
                else:
                    rnd.unchecked_outputs += sum(isinstance(entry.get(f"{s}_sha256"), str) for s in ("stdout", "stderr"))
        rnd.rows.append((entry, mode_label(replay, entry)))

    def _show(self, rnd: _Round, entry: Any) -> None:
        """An entry shown out of place: in the timeline, not fed to anything."""
        rnd.shown += 1
        rnd.rows.append((entry, None))

    def _link(self, rnd: _Round, entry: dict[str, Any]) -> None:
        """Each entry names the previous one of its CVM; a link to an unseen entry means one was hidden."""
        if "cvm_prev" not in entry or not isinstance(entry.get("seq"), int):
            return
        cvm = entry.get("cvm")
        key = cvm if cvm is None or isinstance(cvm, str) else json.dumps(cvm, sort_keys=True)
        seq = entry["seq"]
        seen = rnd.last[key] if key in rnd.last else self._last_by_cvm.get(key)
        if entry["cvm_prev"] != seen:
            missing = entry["cvm_prev"]
            rnd.chain.append(
                Finding(
                    "entry_missing",
                    f"entry {seq} follows entry {missing} of the same CVM, which was not shown "
                    f"(the previous one shown is {seen}): entries were deleted or hidden",
                    missing if isinstance(missing, int) else seq,
                )
            )
        rnd.last[key] = seq

    def _report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

    # --- pages -------------------------------------------------------------------------

    def _page(self, start: int, end: int, cvm: str | None) -> tuple[list[Any], int]:
        page = self.source.get("/v1/ledger/entries", start=start, end=end, cvm=cvm)
        entries, stop = (
            page.get("entries") if isinstance(page, dict) else None,
            page.get("end") if isinstance(page, dict) else None,
        )
        if not isinstance(entries, list) or not isinstance(stop, int) or stop <= start or stop > end:
            raise VerificationError(f"the controller's page of entries from {start} is malformed", code="bad_entries_page")
        return entries, stop

    def _pages(self, start: int, end: int, cvm: str | None) -> Iterator[tuple[list[Any], int]]:
        position = start
        while position < end:
            entries, position = self._page(position, end, cvm)
            yield entries, position

    def _prefetched(self, start: int, end: int, *, report: bool = True) -> Generator[tuple[list[Any], int], None, None]:
        """The pages of ``[start, end)``, the next one fetched while this one is checked (the
        controller signs and sends while the auditor hashes); ``report``: progress after each."""
        return self._streamed(self._pages(start, end, None), start, end, report=report)

    def _streamed(
        self, pages: Iterable[tuple[list[Any], int]], start: int, end: int, *, report: bool = True
    ) -> Generator[tuple[list[Any], int], None, None]:
        """``pages`` (each a list and the position after it) read ahead in a thread when there
        is more than one page of ``[start, end)``: the next page is read while this one is checked."""
        if end - start <= PAGE:
            for entries, stop in pages:
                yield entries, stop
                if report:
                    self._report(stop - start, end - start)
            return
        queued: queue.Queue[Any] = queue.Queue(maxsize=2)
        stopping = threading.Event()

        def put(item: Any) -> bool:
            while not stopping.is_set():
                try:
                    queued.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for page in pages:
                    if not put(page):
                        return
                put(None)
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)

        worker = threading.Thread(target=produce, name="duet-audit-pages", daemon=True)
        worker.start()
        try:
            while True:
                item = queued.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
                if report:
                    self._report(item[1] - start, end - start)
        finally:
            stopping.set()
            worker.join()

    # --- the whole ledger --------------------------------------------------------------

    def _check_ledger(self, head: Head, rnd: _Round) -> None:
        """Hash the new entries onto the verified frontier: their root must be the signed one.
        Proves all of them, in order, with nothing missing, in memory that does not grow."""
        end, position = head.tree_size, rnd.start
        stream = RecordingFrontier(self._frontier, MAX_BLOCKS)
        with closing(self._prefetched(rnd.start, end)) as pages:
            for entries, _ in pages:
                for entry in entries:
                    seq = entry.get("seq") if isinstance(entry, dict) else None
                    if seq != position:
                        self._show(rnd, entry)
                        rnd.findings.append(
                            Finding(
                                "entry_missing" if isinstance(seq, int) and seq > position else "entry_misplaced",
                                f"expected entry {position} but was shown seq {seq!r}: entries are missing or out of place",
                                position,
                            )
                        )
                        return
                    stream.append(entry_leaf(entry))
                    self._take(rnd, entry)
                    position += 1
        if position != end:
            rnd.findings.append(
                Finding("entry_missing", f"the head covers {end} entries but only {position} were served", position)
            )
            return
        if stream.root() == head.root:
            rnd.frontier = Frontier(stream.size, stream.nodes)
            return
        rnd.chain.clear()  # links are judged on entries that verified
        self._pinpoint(TreeOracle(self.source, end, head.root), stream, rnd)

    def _pinpoint(self, oracle: TreeOracle, stream: RecordingFrontier, rnd: _Round) -> None:
        """The root did not match: name the altered entries (proofs of prefixes, see audit_tree)."""
        finder = Pinpointer(oracle, self._refetch, limit=PINPOINT_LIMIT)
        try:
            finder.recorded(stream)
        except ProofUnavailable as exc:
            rnd.findings.append(
                Finding("no_inclusion_proof", f"the entries served do not hash to the signed root, and {exc.message}")
            )
        except Refetched as exc:
            rnd.findings.append(Finding("root_mismatch", f"the entries served do not hash to the signed root, and {exc.message}"))
        for position, entry in finder.found:
            event = entry.get("event") if isinstance(entry, dict) else None
            rnd.findings.append(
                Finding(
                    "entry_altered",
                    f"entry {position} ({event!r}) is not in the signed ledger as shown: it was altered",
                    position,
                )
            )
        if finder.full:
            rnd.findings.append(
                Finding("root_mismatch", f"the search stopped after naming {PINPOINT_LIMIT} altered entries; there may be more")
            )
        if not rnd.findings:
            rnd.findings.append(Finding("root_mismatch", "the entries served do not hash to the signed root"))

    def _refetch(self, lo: int, hi: int) -> Iterator[Any]:
        position = lo
        for entries, _ in self._pages(lo, hi, None):
            for entry in entries:
                if not isinstance(entry, dict) or entry.get("seq") != position:
                    raise Refetched(f"asked again for entries {lo} to {hi - 1}, the controller served others")
                yield entry
                position += 1
        if position != hi:
            raise Refetched(f"asked again for entries {lo} to {hi - 1}, the controller served fewer")

    # --- the published tiles (--tiles) ---------------------------------------------------

    def _check_tiles(self, log: TiledLog, head: Head, rnd: _Round) -> None:
        """The entries from ``rnd.start`` on, read from the published tiles: each is proven by
        ``TiledLog`` (its leaf hash in an authenticated tile) before it is given, so a tile or
        bundle that does not match is a finding naming its path, and none can be left out.
        The whole ledger's entries are also hashed onto the verified frontier (kept for the next
        audit); one CVM's are those of the stream that name it (a bucket has no index by CVM)."""
        end, position = head.tree_size, rnd.start
        frontier = self._frontier.copy() if self.cvm is None else None
        try:
            with closing(self._streamed(batches(log, rnd.start, end, PAGE), rnd.start, end)) as pages:
                for datas, _ in pages:
                    for data in datas:
                        if frontier is not None:
                            frontier.append(leaf_hash(data))
                        entry = decode_entry(data)
                        seq = entry.get("seq") if isinstance(entry, dict) else None
                        if seq != position:
                            self._show(rnd, entry)
                            rnd.findings.append(
                                Finding(
                                    "entry_misplaced",
                                    f"entry {position} of the signed log says it is seq {seq!r}: entries are out of place",
                                    position,
                                )
                            )
                            return
                        if self.cvm is None or entry.get("cvm") == self.cvm:
                            self._take(rnd, entry)
                        elif entry.get("cvm") is None:  # a CVM's audit replays the controller's own entries too
                            self._replay_only(rnd, entry)
                        position += 1
        except TileError as exc:
            rnd.findings.append(_tile_finding(exc))
            return
        if frontier is not None:
            if frontier.root() != head.root:  # TiledLog proved each entry: only a bug gets here
                rnd.findings.append(Finding("root_mismatch", "the published entries do not hash to the checkpoint's root"))
                return
            rnd.frontier = frontier

    # --- one CVM -----------------------------------------------------------------------

    def _check_cvm(self, head: Head, rnd: _Round, pin: ControllerPin) -> None:
        """The CVM's entries from ``rnd.start`` on, each proven in the signed tree.

        Page by page of the CVM's entries: where they are dense, the range of the ledger that
        holds them is streamed instead and proven as a whole (one consistency proof per
        ``CHUNK_PAGES`` pages), the CVM's entries taken from it; else each entry gets its own
        inclusion proof, ``PROOF_WORKERS`` in flight."""
        oracle = TreeOracle(self.source, head.tree_size, head.root)
        end, position, streaming = head.tree_size, rnd.start, True
        with ThreadPoolExecutor(PROOF_WORKERS, thread_name_prefix="duet-audit-proofs") as pool:
            self._controller_entries(oracle, rnd, pool, pin)
            while position < end:
                entries, stop = self._page(position, end, self.cvm)
                if streaming and self._in_order(entries, rnd.expected, stop):
                    first = entries[0]["seq"]
                    if self._dense(len(entries), entries[-1]["seq"] + 1 - first):
                        shown = {entry["seq"]: entry_leaf(entry) for entry in entries}
                        position, streaming = self._stream_cvm(oracle, first, end, rnd, pool, shown)
                        continue
                self._prove_page(oracle, entries, rnd, pool)
                position = stop
                self._report(position - rnd.start, end - rnd.start)
        self._govern(rnd, before=end)

    def _controller_entries(self, oracle: TreeOracle, rnd: _Round, pool: ThreadPoolExecutor, pin: ControllerPin) -> None:
        """For a CVM's audit: the entries about no CVM (owner sets, approval policies, proposals on
        no CVM, starts) from ``rnd.start`` on, each proven in the signed tree and linked to the one
        before it, kept to be replayed in order with the CVM's (``_govern``): a command is judged by
        the owner set and policy in force at its seq, as in the whole-ledger audit."""
        position, end, jobs = rnd.start, oracle.size, []
        while position < end:
            entries, position = self._page(position, end, lc.CONTROLLER_SCOPE)
            for entry in entries:
                seq = entry.get("seq") if isinstance(entry, dict) else None
                last = rnd.governance[-1]["seq"] if rnd.governance else rnd.start - 1
                if not isinstance(seq, int) or not last < seq < end or entry.get("cvm") is not None:
                    where = seq if isinstance(seq, int) else None
                    rnd.findings.append(Finding("entry_misplaced", f"entry {seq!r} is not the controller's next one", where))
                    continue
                self._link(rnd, entry)
                rnd.governance.append(entry)
                jobs.append((seq, entry_leaf(entry), entry.get("event")))
        rnd.findings += _proofs(oracle, jobs, pool)
        shown = {seq for seq, _, _ in jobs}
        for named in {pin.owners_seq, pin.policy_seq}:  # the attested identity names the entries that put these in force
            if isinstance(named, int) and rnd.start <= named < end and named not in shown:
                rnd.chain.append(
                    Finding(
                        "entry_missing",
                        f"entry {named}, which the controller's attested identity names as putting its owner set or "
                        "approval policy in force, was left out of the controller's entries",
                        named,
                    )
                )

    def _govern(self, rnd: _Round, *, before: int) -> None:
        """Feed the replay the controller's own entries that come before seq ``before``."""
        while rnd.governance and rnd.governance[0]["seq"] < before:
            self._replay_only(rnd, rnd.governance.popleft())

    def _replay_only(self, rnd: _Round, entry: dict[str, Any]) -> None:
        """A CVM's audit: one of the controller's own entries, replayed (not shown in the timeline)."""
        rnd.rules += [Finding(v.code, v.message, v.seq, rule=True) for v in self._feeding(rnd).apply(entry)]

    def _feeding(self, rnd: _Round) -> RulesReplay:
        """The replay, about to be fed this round: its state kept first, to undo a round that does not verify."""
        replay = self._replay
        assert replay is not None
        if not rnd.fed:
            rnd.fed = True
            if not self._fresh and self._snapshot is None:
                self._snapshot = encode_replay(replay)
        return replay

    def _in_order(self, entries: list[Any], expected: int, stop: int) -> bool:
        """A page of this CVM's entries in strictly increasing order, from ``expected`` on."""
        previous = expected - 1
        for entry in entries:
            seq = entry.get("seq") if isinstance(entry, dict) else None
            if not isinstance(seq, int) or isinstance(seq, bool) or not previous < seq < stop or entry.get("cvm") != self.cvm:
                return False
            previous = seq
        return bool(entries)

    def _dense(self, count: int, span: int) -> bool:
        """Whether proving ``count`` entries spread over ``span`` costs more than streaming them."""
        return count > 2 + self.page_cost * -(-span // PAGE)

    def _prove_page(self, oracle: TreeOracle, entries: list[Any], rnd: _Round, pool: ThreadPoolExecutor) -> None:
        proven: list[dict[str, Any]] = []
        for entry in entries:
            seq = entry.get("seq") if isinstance(entry, dict) else None
            if not isinstance(seq, int) or seq < rnd.expected:
                if isinstance(entry, dict):
                    self._take(rnd, entry)
                else:
                    self._show(rnd, entry)
                rnd.findings.append(
                    Finding("entry_misplaced", f"entry with seq {seq!r} is out of order", seq if isinstance(seq, int) else None)
                )
                continue
            if entry.get("cvm") != self.cvm:
                rnd.findings.append(
                    Finding("wrong_cvm", f"entry belongs to CVM {entry.get('cvm')!r}, not the one asked for", seq)
                )
            rnd.expected = seq + 1
            self._take(rnd, entry)
            proven.append(entry)
        rnd.findings += _proofs(oracle, [(entry["seq"], entry_leaf(entry), entry.get("event")) for entry in proven], pool)

    def _stream_cvm(
        self, oracle: TreeOracle, start: int, end: int, rnd: _Round, pool: ThreadPoolExecutor, shown: dict[int, bytes]
    ) -> tuple[int, bool]:
        """Stream the ledger from ``start`` while the CVM's entries stay dense; returns where to
        go on from and whether streaming may be tried again. ``shown``: the leaf of each entry
        of the CVM's page that led here, by seq; the stream must show the same ones."""
        floor = rnd.expected  # entries before it were shown already (or are not this CVM's)
        try:
            frontier = oracle.frontier(start)
            if frontier is None and start <= PAGE:  # no proof carries F(start) (start 1): stream from the first entry
                start, frontier = 0, Frontier()
        except ProofUnavailable:
            frontier = None
        if frontier is None:
            return start, False
        position, pages, last_shown = start, 0, max(shown, default=-1)
        held_jobs: list[tuple[int, bytes, Any]] = []  # (seq, leaf, event) of the CVM's entries not proven yet
        with closing(self._prefetched(start, end, report=False)) as stream:
            for entries, _ in stream:
                mine = 0
                for entry in entries:
                    if not isinstance(entry, dict) or entry.get("seq") != position:  # not a sound view of the ledger
                        rnd.findings += _proofs(oracle, held_jobs, pool)
                        rnd.expected = position
                        return position, False
                    leaf = entry_leaf(entry)
                    frontier.append(leaf)
                    position += 1
                    if floor < position <= last_shown + 1:
                        self._as_shown(rnd, entry, leaf, shown)
                    if entry.get("cvm") == self.cvm and position > floor:
                        self._take(rnd, entry)
                        held_jobs.append((position - 1, leaf, entry.get("event")))
                        mine += 1
                pages += 1
                rnd.expected = position
                self._report(position - rnd.start, end - rnd.start)
                sparse = 2 * mine * PAGE < self.page_cost * len(entries)
                if not (sparse or pages >= CHUNK_PAGES or position >= end):
                    continue
                try:
                    proven = oracle.prefix_ok(frontier)
                except ProofUnavailable:
                    proven = False
                if not proven:  # name which of the CVM's entries are not in the signed tree
                    rnd.findings += _proofs(oracle, held_jobs, pool)
                    try:
                        anchor = oracle.frontier(position)
                    except ProofUnavailable:
                        anchor = None
                    if anchor is None:
                        return position, False
                    frontier = anchor
                held_jobs.clear()
                pages = 0
                if sparse:
                    return position, True
        if held_jobs:  # the pages ended short of the head: prove what was taken, go on from there
            rnd.findings += _proofs(oracle, held_jobs, pool)
            return position, False
        return position, True

    def _as_shown(self, rnd: _Round, entry: dict[str, Any], leaf: bytes, shown: dict[int, bytes]) -> None:
        """Hold the CVM's entries as its page showed them to the ledger as streamed: the same
        entries, unaltered, none left out (``shown`` empties as the stream passes them)."""
        seq, mine = entry["seq"], entry.get("cvm") == self.cvm
        served = shown.pop(seq, None)
        if served is None and mine:
            rnd.findings.append(
                Finding("entry_missing", f"entry {seq} of this CVM was left out of the CVM's entries as served", seq)
            )
        elif served is not None and not mine:
            rnd.findings.append(Finding("wrong_cvm", f"entry {seq}, shown among this CVM's, belongs to another CVM", seq))
        elif served is not None and served != leaf:
            rnd.findings.append(
                Finding(
                    "entry_altered", f"entry {seq} was served altered among this CVM's entries: it is not in the ledger so", seq
                )
            )

    # --- evidence and outputs ----------------------------------------------------------

    def _check_evidence(self, rnd: _Round, entry: dict[str, Any]) -> None:
        """A passing CVM attestation shown: its evidence verified again, here (docs/audit.md)."""
        seq, digest = entry.get("seq"), entry.get("evidence_sha256")
        try:
            evidence = self.source.blob(str(digest))
        except DuetError as exc:
            if exc.code != "output_pruned":  # pruned: a signed answer, the retention policy's
                code = "evidence_altered" if exc.code in ("blob_altered", "blob_mismatch") else "evidence_missing"
                rnd.evidence.append(Finding(code, f"the attestation's evidence: {exc.message}", seq))
            return
        problem = recheck(entry, evidence, self.cvm_roots)
        if problem is not None:
            rnd.evidence.append(Finding("evidence_unverified", f"CVM attestation entry {seq}: {problem}", seq))

    def _check_outputs(self, rnd: _Round, entry: dict[str, Any]) -> None:
        for stream in ("stdout", "stderr"):
            digest = entry.get(f"{stream}_sha256")
            if not isinstance(digest, str):
                continue
            if digest in rnd.texts:
                rnd.texts.move_to_end(digest)
                continue
            text = self._output(digest, rnd, entry, stream)
            if text is None:
                continue
            rnd.texts[digest] = text
            if self.timeline is not None and len(rnd.texts) > OUTPUT_CACHE + 2 * self.timeline:
                rnd.texts.popitem(last=False)

    def _output(self, digest: str, rnd: _Round | None, entry: dict[str, Any], stream: str) -> str | None:
        try:
            return self.source.blob(digest).decode(errors="replace")
        except DuetError as exc:
            if exc.code == "output_pruned":  # a signed answer: deleted by the retention policy
                return f"[pruned by the controller's retention policy: {exc.message}]"
            if rnd is not None:
                code = "output_altered" if exc.code == "blob_mismatch" else "output_missing"
                rnd.outputs.append(Finding(code, f"{stream} of `{entry.get('command')}`: {exc.message}", entry.get("seq")))
            return None

    def _outputs_shown(self, entries: list[Any], texts: OrderedDict[str, str], bad: set[int]) -> dict[str, str]:
        """The checked outputs of the timeline's entries (fetched again if no longer kept)."""
        shown: dict[str, str] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("event") != lc.COMMAND_FINISHED or entry.get("seq") in bad:
                continue
            for stream in ("stdout", "stderr"):
                digest = entry.get(f"{stream}_sha256")
                if not isinstance(digest, str) or digest in shown:
                    continue
                text = texts.get(digest)
                if text is None:
                    text = self._output(digest, None, entry, stream)
                if text is not None:
                    shown[digest] = text
        return shown


def _tile_finding(exc: TileError) -> Finding:
    code, message, path, seq = tile_finding(exc)
    return Finding(code, message, seq, path=path)


def _proof_finding(oracle: TreeOracle, seq: int, leaf: bytes, event: Any) -> Finding | None:
    """What is wrong with entry ``seq`` (hashing to ``leaf``) given its inclusion proof, if anything."""
    if not 0 <= seq < oracle.size:
        return Finding("entry_misplaced", f"entry seq {seq!r} is outside the signed head", None)
    try:
        if oracle.leaf_ok(seq, leaf):
            return None
    except ProofUnavailable as exc:
        return Finding("no_inclusion_proof", exc.message, seq)
    return Finding("entry_altered", f"entry {seq} ({event!r}) is not in the signed ledger as shown: it was altered", seq)


def _proofs(oracle: TreeOracle, jobs: list[tuple[int, bytes, Any]], pool: ThreadPoolExecutor) -> list[Finding]:
    """One inclusion proof per job, several in flight; the findings, in order."""
    return [finding for finding in pool.map(lambda job: _proof_finding(oracle, *job), jobs) if finding is not None]


def _proven_extension(source: ProofSource, older: Head, newer: Head, who: str) -> tuple[bool, list[str] | None, str]:
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
        modes, _ = _replay(RulesReplay(), entries)
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


def _replay(replay: lc.LifecycleReplay | RulesReplay, entries: list[Any]) -> tuple[list[str | None], list[lc.Violation]]:
    """Feed ``entries`` to ``replay`` in order: the mode label after each, and the violations found."""
    labels: list[str | None] = []
    violations: list[lc.Violation] = []
    for entry in entries:
        if isinstance(entry, dict):
            violations += replay.apply(entry)
        labels.append(mode_label(replay, entry))
    return labels, violations


def mode_label(replay: lc.LifecycleReplay | RulesReplay, entry: Any) -> str | None:
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
