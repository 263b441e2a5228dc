"""Assembles a running controller from its settings: keys, store, ledger, provider, TEE.

Both the HTTP app and the tests build controllers here, so there is one way to wire one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from duet import keys
from duet.attestation.bundle import CvmRoots
from duet.attestation.cvm_policy import DEFAULT_CVM_POLICY, CvmPolicy
from duet.attestation.sgx.roots import intel_sgx_root_key
from duet.attestation.snp.roots import amd_roots
from duet.controller.auth import RequestAuthenticator
from duet.controller.clock import FloorClock
from duet.controller.events import Streams
from duet.controller.identity import (
    SIGNING_KEY_FILE,
    ApprovalPolicyChanged,
    Identity,
    OwnerKeysChanged,
    check_owners,
    commit_first_start,
    load_signing_key,
)
from duet.controller.proposals import ProposalService, owners_digest
from duet.controller.sealed_state import ANCHOR_FILE, SealedState
from duet.controller.service import LifecycleService
from duet.controller.settings import Settings
from duet.controller.startup import VerifiedState, load_verified_state, recent_requests
from duet.controller.store import Store
from duet.controller.tls import TlsIdentity, load_or_create_tls
from duet.controller.witnessing import Checkpoints, WitnessSubmitter, configure_witnesses
from duet.errors import ConfigError
from duet.ledger.log import Ledger
from duet.protocol import approvals
from duet.protocol import lifecycle as lc
from duet.protocol.approvals import ApprovalPolicy
from duet.providers import make_provider
from duet.providers.base import Provider, SimulatedHardware
from duet.publish.stores import open_store
from duet.publish.tiles import TilePublisher
from duet.remote.ssh import CommandRunner, SshPool
from duet.storage import Database
from duet.tee.base import TeeBackend

log = logging.getLogger("duet.controller")

TEES: tuple[str, ...] = ("none", "simulated", "gramine")


def make_tee(settings: Settings) -> TeeBackend:
    if settings.tee == "none":
        from duet.tee.none import NoneTee

        return NoneTee(settings.state_dir)
    if settings.tee == "simulated":
        from duet.tee.simulated import SimulatedSgxTee

        return SimulatedSgxTee(settings.state_dir)
    if settings.tee == "gramine":
        from duet.tee.gramine import GramineTee

        return GramineTee(settings.gramine_attestation_dir, settings.gramine_sealed_dir)
    raise ConfigError(f"unknown TEE backend {settings.tee!r}; choose one of {', '.join(TEES)}", code="unknown_tee")


def _owner_keys(settings: Settings) -> dict[str, str]:
    owners: dict[str, str] = {}
    for path in settings.owner_keys:
        public_key = keys.load_public_key(path)
        owners[keys.key_id(public_key)] = keys.public_pem(public_key).decode()
    return owners


def _approval_policy(settings: Settings) -> ApprovalPolicy | None:
    """The policy file given at this start (read and checked before anything is written)."""
    if settings.approval_policy is None:
        return None
    try:
        text = settings.approval_policy.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the approval policy {settings.approval_policy}: {exc}", code="bad_approval_policy"
        ) from None
    return ApprovalPolicy.parse(text, str(settings.approval_policy))


@dataclass
class Controller:
    settings: Settings
    identity: Identity
    tee: TeeBackend
    store: Store
    ledger: Ledger
    service: LifecycleService
    authenticator: RequestAuthenticator
    tls: TlsIdentity | None = None
    streams: Streams = field(default_factory=Streams)
    """Open /v1/events streams, ended when the server stops."""
    seed_requests_at_start: set[str] = field(default_factory=set)
    """Single-use seed requests the verified ledger showed accepted (startup.VerifiedState)."""
    checkpoints: Checkpoints | None = None
    """The ledger's C2SP checkpoints and the witness cosignatures kept for them."""
    witnessing: WitnessSubmitter | None = None
    """Submits each new checkpoint to the configured witnesses; started with the app
    (``WitnessSubmitter.start``), None without witnesses."""
    publisher: TilePublisher | None = None
    """Publishes the ledger as tiles (``--publish-tiles``); started with the app, None without."""
    proposals: ProposalService | None = None
    """Proposals and governed changes (always set by ``open_controller``)."""

    def refresh_identity(self) -> None:
        """A governed change put another owner set or policy in force: the identity document
        (and so the TEE's report data) says so, naming the entries that did it."""
        assert self.proposals is not None
        replay = self.proposals.replay
        self.identity = dataclasses.replace(
            self.identity,
            owners=tuple(sorted(self.proposals.owners)),
            approval_policy=replay.policy.to_dict(),
            owners_seq=replay.owners_seq,
            policy_seq=replay.policy_seq,
        )

    def attestation(self) -> dict[str, Any]:
        return {"identity": self.identity.document(), "evidence": self.tee.quote(self.identity.report_data())}

    async def close(self) -> None:
        if self.witnessing is not None:
            await self.witnessing.close()
        if self.publisher is not None:
            await self.publisher.close(flush_timeout=5)
        if self.proposals is not None:
            await self.proposals.close()
        await self.service.close()
        self.store.close()


def open_controller(
    settings: Settings,
    *,
    providers: dict[str, Provider] | None = None,
    ssh: CommandRunner | None = None,
    clock: Callable[[], float] = time.time,
) -> Controller:
    """Open the controller's sealed state, verify the stored ledger and rows against it, and
    wire the service; any disagreement stops here with an error that says what differs.

    The composition root: the edges to the outside (providers, SSH, the clock requests are
    judged by) are made here from the settings unless given, so the lifecycle can be tested
    with the fakes of ``duet.testing``."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.state_dir, 0o700)
    tee = make_tee(settings)
    sealed_dir = tee.sealed_dir()
    given = _owner_keys(settings)  # before anything is written: a mistyped path must not leave half a first start
    witnesses, quorum = configure_witnesses(settings.witnesses, settings.witness_quorum)  # likewise
    policy_given = _approval_policy(settings)  # likewise
    first_start = not (sealed_dir / SIGNING_KEY_FILE).exists()
    if first_start and policy_given is not None and given:
        approvals.validate(policy_given, len(given))
    signing_key = load_signing_key(sealed_dir, first_start=first_start, anchored=(sealed_dir / ANCHOR_FILE).exists())
    controller_id = keys.key_id(signing_key.public_key())
    tls = load_or_create_tls(sealed_dir, controller_id)
    store = Store(Database(settings.database))
    floor = FloorClock(clock)
    try:
        sealed = SealedState.open(
            sealed_dir,
            signing_key,
            first_start=first_start and not (sealed_dir / ANCHOR_FILE).exists(),
            owners=given,
            approval_policy=policy_given.to_dict() if policy_given is not None else None,
        )
        if first_start:
            commit_first_start(sealed_dir)
        verified = load_verified_state(store, controller_id, sealed, floor)
        owners = check_owners(verified.owner_keys, given, verified.first_owners)
        policy = verified.approval_policy(sealed.approval_policy)
        if policy_given is not None and policy_given.sha256 not in (policy.sha256, verified.first_policy_sha256):
            raise ApprovalPolicyChanged(pinned=policy.sha256, given=policy_given.sha256)
    except OwnerKeysChanged as exc:
        _record_refused(store, verified, lc.CONTROLLER_OWNERS_REFUSED, exc.message, pinned=exc.pinned, given=exc.given)
        store.close()
        log.error("%s", exc.message)
        raise
    except ApprovalPolicyChanged as exc:
        _record_refused(store, verified, CONTROLLER_POLICY_REFUSED, exc.message, pinned=exc.pinned, given=exc.given)
        store.close()
        log.error("%s", exc.message)
        raise
    except BaseException:
        store.close()
        raise
    if owners != sealed.owners or policy.to_dict() != (sealed.approval_policy or ApprovalPolicy().to_dict()):
        sealed.govern(owners=owners, approval_policy=policy.to_dict())  # a crash came between a governed change and its seal
    not_before, requests = recent_requests(verified.ledger, settings.nonce_retention_s)
    floor.raise_to(not_before)  # from here on no entry is stamped earlier than the last one
    store.replace_owners(owners)  # a cache for people reading the database; never read back
    verified.ledger.subscribe(verified.proposals.apply)  # before this start's own entries
    _record_start(store, verified, owners, settings, policy)
    identity = Identity(
        signing_key=signing_key,
        owners=tuple(sorted(owners)),
        tls_cert_sha256=tls.cert_sha256,
        approval_policy=policy.to_dict(),
        owners_seq=verified.proposals.owners_seq,
        policy_seq=verified.proposals.policy_seq,
    )
    env = {**os.environ, **settings.provider_env}
    if providers is None:
        providers = {
            name: make_provider(name, settings.state_dir, env, controller_id=controller_id) for name in settings.providers
        }
    service = LifecycleService(
        settings,
        store,
        verified.ledger,
        providers,
        ssh
        if ssh is not None
        else SshPool(
            connect_timeout=settings.ssh_connect_timeout_s,
            channel_timeout=settings.ssh_channel_timeout_s,
            close_timeout=settings.ssh_close_timeout_s,
        ),
        sealed=sealed,
        replay=verified.replay,
        machines=verified.machines,
        histories=verified.histories,
        cvm_roots=cvm_roots(settings, providers),
        cvm_policy=CvmPolicy.load(settings.cvm_policy) if settings.cvm_policy else DEFAULT_CVM_POLICY,
        clock=floor,
    )
    authenticator = RequestAuthenticator(
        store, controller_id, settings, owners, clock=floor, not_before=not_before, recent_requests=requests
    )
    checkpoints = Checkpoints(verified.ledger, signing_key, controller_id, witnesses=witnesses, quorum=quorum)
    witnessing = (
        WitnessSubmitter(
            checkpoints,
            witnesses,
            timeout_s=settings.witness_timeout_s,
            retry_s=settings.witness_retry_s,
            retry_max_s=settings.witness_retry_max_s,
        )
        if witnesses
        else None
    )
    publisher = _tile_publisher(settings, verified.ledger, checkpoints)
    proposals = ProposalService(settings, store, verified.ledger, service, authenticator, sealed, replay=verified.proposals)
    controller = Controller(
        settings, identity, tee, store, verified.ledger, service, authenticator, tls,
        seed_requests_at_start=verified.seed_requests, checkpoints=checkpoints, witnessing=witnessing,
        publisher=publisher, proposals=proposals,
    )  # fmt: skip
    proposals.on_governance.append(controller.refresh_identity)
    return controller


def _tile_publisher(settings: Settings, ledger: Ledger, checkpoints: Checkpoints) -> TilePublisher | None:
    """The tiles publisher of ``--publish-tiles``: checkpoints carry the cosignatures kept so far,
    and a new cosignature makes it write the checkpoint again."""
    if not settings.publish_tiles:
        return None
    publisher = TilePublisher.for_ledger(
        ledger,
        open_store(settings.publish_tiles),
        checkpoints.signer,
        sign=checkpoints.sign_with_cosignatures,
        min_interval_s=settings.publish_tiles_interval_s,
    )
    checkpoints.on_cosignature.append(publisher.refresh)
    return publisher


def cvm_roots(settings: Settings, providers: dict[str, Provider]) -> CvmRoots:
    """AMD's and Intel's pinned roots; with ``trust_simulated_cvm``, also the roots of the
    local CVMs' SIMULATED hardware (made on first use), whose verdicts then say SIMULATED."""
    if not settings.trust_simulated_cvm:
        return CvmRoots()
    simulated: list[CvmRoots] = [p.simulated_roots() for p in providers.values() if isinstance(p, SimulatedHardware)]
    if not simulated:
        return CvmRoots()
    log.warning("trusting the SIMULATED hardware of local CVMs (--trust-simulated-cvm): their attestation proves nothing")
    return CvmRoots(
        amd=(*amd_roots(), *(root for r in simulated for root in r.amd or ())),
        intel=(intel_sgx_root_key(), *(key for r in simulated for key in r.intel or ())),
    )


CONTROLLER_POLICY_REFUSED = "controller.policy_refused"
"""A start given another approval policy file than the one in force (``pinned``, ``given``: their SHA-256)."""


def _record_refused(store: Store, verified: VerifiedState, event: str, message: str, **fields: Any) -> None:
    """A swapped owner-key or policy file is an event auditors must see, even though nothing changed."""
    with store.transaction() as tx:
        verified.ledger.append(tx, cvm=None, event=event, actor=lc.CONTROLLER_ACTOR, **fields)


SEED_REPLAYS_ALLOWED = "controller.seed_replays_allowed"
"""Recorded right after ``controller.started`` when the operator let the seed listener accept
replays (``Settings.seed_allow_replays``): auditors see from which start on, and until which
next ``controller.started``, a copied seed request could start CVMs or reopen them."""
SEED_REPLAYS_REASON = (
    "the operator allowed replays on the seed protocol (--seed-allow-replays): a captured signed seed "
    "start_cvm or mark_cvm in-update request is accepted again, so whoever copied one can start CVMs "
    "or reopen a CVM the owner closed"
)


def _record_start(
    store: Store, verified: VerifiedState, owners: dict[str, str], settings: Settings, policy: ApprovalPolicy
) -> None:
    """Each start is an entry naming the size it resumed from, so auditors can tell when
    entries appeared or vanished between two runs; the owner set is recorded when the ledger
    does not show it yet (first start), so auditors know who could administer from when; and
    an opt-in to seed replays is recorded, in the same commit, at every start it is in force."""
    with store.transaction() as tx:
        ledger = verified.ledger
        ledger.append(tx, cvm=None, event=lc.CONTROLLER_STARTED, actor=lc.CONTROLLER_ACTOR, resumed_from=verified.resumed_from)
        if settings.seed_api and settings.seed_allow_replays:
            ledger.append(tx, cvm=None, event=SEED_REPLAYS_ALLOWED, actor=lc.CONTROLLER_ACTOR, reason=SEED_REPLAYS_REASON)
        elif settings.seed_allow_replays:
            log.warning("seed_allow_replays is set but the seed protocol is not served (--seed-api): it has no effect")
        if verified.replay.owners != frozenset(owners):
            ledger.append(
                tx,
                cvm=None,
                event=lc.CONTROLLER_OWNERS,
                actor=lc.CONTROLLER_ACTOR,
                owners=sorted(owners),
                owners_digest=owners_digest(sorted(owners)),
                added=[owners[key_id] for key_id in sorted(owners)],  # the public keys: anyone can check each vote
            )
        if not verified.proposals.policy_recorded:  # first start (or the first since approvals exist)
            spec = approvals.policy_entry(policy)
            ledger.append(tx, cvm=None, event=spec.event, actor=spec.actor, request_digest=spec.request_digest, **spec.fields)


def check_own_evidence(controller: Controller, maa_url: str) -> None:
    """Have Azure Attestation judge this controller's own quote before serving (the seed's check).

    The seed printed "Valid SGX controller: False" and served anyway; here a refusal, a token
    that does not verify, a debug enclave or a token about other report data stops the start.
    """
    import base64

    from duet.attestation.maa import MaaClient, MaaError

    evidence = controller.tee.quote(controller.identity.report_data())
    if "quote" not in evidence:
        raise ConfigError(
            f"--maa-url needs an SGX TEE (--tee gramine or simulated); this one is {controller.tee.name}", code="maa_needs_sgx"
        )
    try:
        with MaaClient(maa_url) as maa:
            _, claims = maa.attest_and_verify(base64.b64decode(evidence["quote"]))
    except MaaError as exc:
        raise ConfigError(
            f"Azure Attestation does not vouch for this controller ({exc.code}: {exc.message}); refusing to serve",
            code="maa_refused_controller",
        ) from None
    if claims.report_data != controller.identity.report_data():
        raise ConfigError(
            "Azure Attestation's token is about other report data than this controller's identity; refusing to serve",
            code="maa_refused_controller",
        )
    if claims.debug:
        raise ConfigError("Azure Attestation says this enclave is debuggable; refusing to serve", code="maa_refused_controller")
    log.info(
        "Azure Attestation (%s): valid SGX controller, MRENCLAVE %s, MRSIGNER %s",
        maa_url,
        claims.mr_enclave.hex(),
        claims.mr_signer.hex(),
    )
