"""Verified start: rebuild what the controller enforces from what the host cannot forge.

Order matters. The sealed anchor (sealed_state.py) is the only trusted input; the ledger
must reproduce its head (ledger/log.py); the state the controller enforces is replayed from
those entries (protocol/lifecycle.py); and only then are the database's CVM rows compared
with it. Any disagreement stops the start and says what differs: an edited mode, a reopened
final CVM, a machine pointed elsewhere, a deleted row. A row is never "repaired" from the
ledger silently, because a row that disagrees means someone other than the controller wrote
to its disk, and the owner must hear of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from duet import keys
from duet.controller.sealed_state import SealedState, SealedStateError
from duet.controller.service import machine_digest
from duet.controller.store import CvmRow, Store
from duet.errors import DuetError
from duet.ledger.history import HistoryIndex
from duet.ledger.log import Ledger
from duet.protocol import lifecycle as lc
from duet.protocol.approvals import CONTROLLER_POLICY, ApprovalPolicy, ProposalReplay
from duet.protocol.canonical import parse_timestamp
from duet.protocol.lifecycle import CvmFacts, LifecycleReplay
from duet.providers.base import Machine

log = logging.getLogger("duet.controller")


class StoredStateTampered(SealedStateError):
    """A database row disagrees with the verified ledger."""

    code = "state_tampered"


@dataclass
class VerifiedState:
    ledger: Ledger
    replay: LifecycleReplay
    machines: dict[str, Machine]
    resumed_from: int
    """The ledger size this start resumed from (recorded as ``controller.started``)."""
    histories: HistoryIndex
    """Each CVM's counts and recent rows (the state answer), built in the verifying pass too."""
    seed_requests: set[str]
    """Digests of the single-use seed requests the verified ledger shows accepted (collected in
    the same pass that verifies the ledger, so the seed listener never reads it a second time)."""
    proposals: ProposalReplay
    """Every proposal, and the owner set and approval policy in force, recounted in the same pass."""
    owner_keys: dict[str, str]
    """The owner set in force (key id → public PEM): sealed state's, after the governed changes
    the ledger recorded (sealed state follows each one; a crash may have kept it a change behind)."""
    first_owners: frozenset[str] | None = None
    first_policy_sha256: str | None = None
    """What the first start recorded (its ``controller.owners`` and ``controller.policy``): files
    given again at a later start may name these, as a measured command line (Gramine) always
    does, and are then ignored in favour of what is in force."""

    def approval_policy(self, pinned: dict[str, Any] | None) -> ApprovalPolicy:
        """The policy in force: the ledger's last ``controller.policy``, else the one pinned in
        sealed state at first start (None: the default)."""
        if self.proposals.policy_recorded:
            return self.proposals.policy
        return ApprovalPolicy.from_dict(pinned, "the sealed approval policy") if pinned is not None else ApprovalPolicy()


def load_verified_state(
    store: Store, controller_id: str, sealed: SealedState, clock: Callable[[], float] = time.time
) -> VerifiedState:
    replay = LifecycleReplay()
    histories = HistoryIndex()
    proposals = ProposalReplay()
    seed_requests: set[str] = set()
    known_keys = dict(sealed.owners)
    first: dict[str, Any] = {}

    def on_entry(entry: dict[str, Any]) -> None:
        replay.apply(entry)
        histories.apply(entry)
        proposals.apply(entry)
        event = entry.get("event")
        if event == lc.CONTROLLER_OWNERS:
            known_keys.update(added_owner_keys(entry))
            owners = entry.get("owners")
            first.setdefault("owners", frozenset(o for o in owners if isinstance(o, str)) if isinstance(owners, list) else None)
        elif event == CONTROLLER_POLICY:
            first.setdefault("policy", entry.get("policy_sha256"))
        digest = single_use_seed_digest(entry)
        if digest is not None:
            seed_requests.add(digest)

    ledger = Ledger(store.db, controller_id, sealed, on_entry=on_entry, clock=clock)
    violations = sorted([*replay.violations, *proposals.violations], key=lambda v: v.seq or 0)
    if violations:
        shown = "; ".join(f"seq {v.seq}: {v.message} ({v.code})" for v in violations[:5])
        raise StoredStateTampered(
            f"the stored ledger verifies, but it shows what this controller never does: {shown}. Refusing to start "
            "on a history that breaks the lifecycle's rules (spliced from two copies of the state?)"
        )
    machines = _check_rows(store.cvm_rows(), replay.cvms, sealed)
    _shred_destroyed_keys(replay, sealed)
    owner_keys = dict(sealed.owners)
    if replay.owners is not None:
        missing = sorted(replay.owners - known_keys.keys())
        if missing:
            raise StoredStateTampered(
                f"the ledger names owner key(s) {', '.join(k[:16] + '…' for k in missing)} whose public key neither sealed "
                "state nor the ledger holds; refusing to start"
            )
        owner_keys = {key_id: known_keys[key_id] for key_id in sorted(replay.owners)}
    return VerifiedState(
        ledger, replay, machines, ledger.size, histories, seed_requests, proposals, owner_keys,
        first_owners=first.get("owners"), first_policy_sha256=first.get("policy"),
    )  # fmt: skip


def added_owner_keys(entry: dict[str, Any]) -> dict[str, str]:
    """The public keys a governed ``controller.owners`` entry added (``added``: PEMs), by key id."""
    added = entry.get("added")
    found: dict[str, str] = {}
    for pem in added if isinstance(added, list) else ():
        try:
            found[keys.key_id(keys.load_public_key_bytes(str(pem).encode(), "an added owner key"))] = str(pem)
        except DuetError:
            continue
    return found


def _check_rows(rows: list[CvmRow], derived: dict[str, CvmFacts], sealed: SealedState) -> dict[str, Machine]:
    """Compare each stored row with the ledger's account; return the verified machines."""
    problems: list[str] = []
    machines: dict[str, Machine] = {}
    by_id = {row.id: row for row in rows}
    for cvm_id in sorted(derived.keys() - by_id.keys()):
        problems.append(f"CVM {cvm_id[:16]}… is in the ledger but its database row was deleted")
    for row in rows:
        cvm = derived.get(row.id)
        if cvm is None:
            problems.append(f"CVM {row.id[:16]}… has a database row but no ledger entry (the row was inserted)")
            continue
        for name, stored, expected in (
            ("mode", row.mode, cvm.mode),
            ("final", row.final, cvm.final),
            ("type", row.type, cvm.type),
            ("provider", row.provider, cvm.provider),
            ("failure", row.failure, cvm.failure),
        ):
            if stored != expected:
                problems.append(f"CVM {row.id[:16]}…: {name} is {stored!r} in the database but {expected!r} in the ledger")
        stored_digest = machine_digest(Machine.from_json(row.machine)) if row.machine else None
        if stored_digest != cvm.machine_sha256:
            problems.append(f"CVM {row.id[:16]}…: its machine record (address, host key) is not the one the ledger recorded")
        elif row.machine:
            machines[row.id] = Machine.from_json(row.machine)
        if cvm.key_destroyed and row.ssh_private_key is not None:
            problems.append(f"CVM {row.id[:16]}…: its SSH key was destroyed, yet the database holds a key again")
        if not cvm.key_destroyed and cvm.mode in lc.ACTIVE_MODES and not sealed.has_data_key(row.id):
            problems.append(
                f"CVM {row.id[:16]}…: the ledger says the controller holds its key, but sealed state has "
                "no data key for it (sealed state was replaced)"
            )
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise StoredStateTampered(
            f"the state database disagrees with the verified ledger, so someone else wrote to it: "
            f"{shown}. Refusing to start; restore the database from a backup of this controller."
        )
    return machines


def _shred_destroyed_keys(replay: LifecycleReplay, sealed: SealedState) -> None:
    """A key the ledger says was destroyed is destroyed, whatever sealed state held (a crash
    between the commit and the seal, or an older anchor written back)."""
    stale = {cvm_id for cvm_id in sealed.cvms_with_keys() if cvm_id not in replay.cvms or replay.cvms[cvm_id].key_destroyed}
    for cvm_id in stale:
        sealed.destroy_data_key(cvm_id)
    if stale:
        sealed.seal(sealed.head.tree_size, sealed.head.root)


def recent_requests(ledger: Ledger, window_s: float) -> tuple[float, dict[str, float]]:
    """The time of the last entry, and the owner requests recorded within ``window_s`` before it.

    Read from the end of the verified ledger, page by page, until entries are older than the
    window: the authenticator refuses these digests again whatever the nonce table or the
    clock says after a restart."""
    last_time, end = 0.0, ledger.size
    requests: dict[str, float] = {}
    while end > 0:
        entries = ledger.entries(max(0, end - 500), end)
        for entry in reversed(entries):
            moment = parse_timestamp(str(entry["time"])).timestamp()
            last_time = max(last_time, moment)
            if moment < last_time - window_s:
                return last_time, requests
            digest = entry.get("request_digest")
            if entry.get("actor") != lc.CONTROLLER_ACTOR and isinstance(digest, str):
                requests.setdefault(digest, moment)
        end -= len(entries)
    return last_time, requests


SEED_PROTOCOL = "seed"
"""The ``protocol`` of ledger entries caused by a request of the seed's protocol (controller/seed_api.py)."""


def single_use_seed_digest(entry: dict[str, Any]) -> str | None:
    """The digest of the seed request that caused ``entry``, if that request may be accepted once only:
    a ``start_cvm`` (its ``cvm.provisioning``) or a ``mark_cvm in-update`` that reopened a CVM (its
    ``mode.changed``). Other seed requests (run_commands, mark in-service, stop) are not single-use."""
    if entry.get("protocol") != SEED_PROTOCOL or entry.get("actor") == lc.CONTROLLER_ACTOR:
        return None
    digest = entry.get("request_digest")
    event = entry.get("event")
    if not isinstance(digest, str):
        return None
    if event == lc.CVM_PROVISIONING or (event == lc.MODE_CHANGED and entry.get("mode") == lc.IN_UPDATE):
        return digest
    return None
