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
from duet.controller.identity import Identity, load_or_create_signing_key
from duet.controller.service import LifecycleService
from duet.controller.settings import Settings
from duet.controller.store import StateCipher, Store
from duet.errors import ConfigError
from duet.ledger.log import Ledger
from duet.providers import make_provider
from duet.remote.ssh import SshPool
from duet.tee.base import TeeBackend

log = logging.getLogger("duet.controller")

TEES: tuple[str, ...] = ("none", "simulated")


def make_tee(settings: Settings) -> TeeBackend:
    if settings.tee == "none":
        from duet.tee.none import NoneTee

        return NoneTee(settings.state_dir)
    if settings.tee == "simulated":
        from duet.tee.simulated import SimulatedSgxTee

        return SimulatedSgxTee(settings.state_dir)
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
    store = Store(settings.database, StateCipher(sealed / "state.key"))
    controller_id = keys.key_id(signing_key.public_key())
    ledger = Ledger(store, controller_id)
    owners = _owner_keys(settings)
    if not owners:
        raise ConfigError("no owner key given: pass --owner-key PUB at least once", code="no_owner_keys")
    _record_owners(store, ledger, owners)
    identity = Identity(signing_key=signing_key, owners=tuple(sorted(owners)))
    provider = make_provider(settings.provider, settings.state_dir, {**os.environ, **settings.provider_env})
    service = LifecycleService(settings, store, ledger, provider, SshPool())
    authenticator = RequestAuthenticator(store, controller_id, settings)
    return Controller(settings, identity, tee, store, ledger, service, authenticator)


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
