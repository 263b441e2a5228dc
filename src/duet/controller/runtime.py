"""Assembles a running controller from its settings: keys, store, ledger, provider, TEE.

Both the HTTP app and the tests build controllers here, so there is one way to wire one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from duet import keys
from duet.controller.auth import RequestAuthenticator
from duet.controller.identity import Identity, OwnerKeysChanged, load_or_create_signing_key, pin_owners
from duet.controller.service import LifecycleService
from duet.controller.settings import Settings
from duet.controller.store import StateCipher, Store
from duet.controller.tls import TlsIdentity, load_or_create_tls
from duet.errors import ConfigError
from duet.ledger.log import Ledger
from duet.providers import make_provider
from duet.remote.ssh import SshPool
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

    def attestation(self) -> dict[str, Any]:
        return {"identity": self.identity.document(), "evidence": self.tee.quote(self.identity.report_data())}

    async def close(self) -> None:
        await self.service.close()
        self.store.close()


def open_controller(settings: Settings) -> Controller:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.state_dir, 0o700)
    tee = make_tee(settings)
    sealed = tee.sealed_dir()
    signing_key = load_or_create_signing_key(sealed)
    controller_id = keys.key_id(signing_key.public_key())
    tls = load_or_create_tls(sealed, controller_id)
    store = Store(settings.database, StateCipher(sealed / "state.key"))
    ledger = Ledger(store, controller_id)
    try:
        owners = pin_owners(sealed, _owner_keys(settings))
    except OwnerKeysChanged as exc:
        _record_refused_owners(store, ledger, exc)
        store.close()
        log.error("%s", exc.message)
        raise
    except BaseException:
        store.close()
        raise
    _record_owners(store, ledger, owners)
    identity = Identity(signing_key=signing_key, owners=tuple(sorted(owners)), tls_cert_sha256=tls.cert_sha256)
    env = {**os.environ, **settings.provider_env}
    providers = {
        name: make_provider(name, settings.state_dir, env, controller_id=controller_id) for name in settings.providers
    }
    service = LifecycleService(settings, store, ledger, providers, SshPool())
    authenticator = RequestAuthenticator(store, controller_id, settings)
    return Controller(settings, identity, tee, store, ledger, service, authenticator, tls)


def _record_refused_owners(store: Store, ledger: Ledger, exc: OwnerKeysChanged) -> None:
    """A swapped owner-key file is an event auditors must see, even though nothing changed."""
    with store.transaction() as tx:
        ledger.append(tx, cvm=None, event="controller.owners_refused", actor="controller",
                      pinned=exc.pinned, given=exc.given)


def _record_owners(store: Store, ledger: Ledger, owners: dict[str, str]) -> None:
    """Every change of the owner set is a ledger event, so auditors see who could administer when."""
    if store.owners() == owners:
        return
    with store.transaction() as tx:
        store.replace_owners(tx, owners)
        ledger.append(
            tx, cvm=None, event="controller.owners", actor="controller", owners=sorted(owners),
            owners_digest=hashlib.sha256("\n".join(sorted(owners)).encode()).hexdigest(),
        )


def check_own_evidence(controller: Controller, maa_url: str) -> None:
    """Have Azure Attestation judge this controller's own quote before serving (the seed's check).

    The seed printed "Valid SGX controller: False" and served anyway; here a refusal, a token
    that does not verify, a debug enclave or a token about other report data stops the start.
    """
    import base64

    from duet.attestation.maa import MaaClient, MaaError

    evidence = controller.tee.quote(controller.identity.report_data())
    if "quote" not in evidence:
        raise ConfigError(f"--maa-url needs an SGX TEE (--tee gramine or simulated); this one is {controller.tee.name}",
                          code="maa_needs_sgx")
    try:
        with MaaClient(maa_url) as maa:
            _, claims = maa.attest_and_verify(base64.b64decode(evidence["quote"]))
    except MaaError as exc:
        raise ConfigError(f"Azure Attestation does not vouch for this controller ({exc.code}: {exc.message}); "
                          "refusing to serve", code="maa_refused_controller") from None
    if claims.report_data != controller.identity.report_data():
        raise ConfigError("Azure Attestation's token is about other report data than this controller's identity; "
                          "refusing to serve", code="maa_refused_controller")
    if claims.debug:
        raise ConfigError("Azure Attestation says this enclave is debuggable; refusing to serve",
                          code="maa_refused_controller")
    log.info("Azure Attestation (%s): valid SGX controller, MRENCLAVE %s, MRSIGNER %s", maa_url,
             claims.mr_enclave.hex(), claims.mr_signer.hex())
