"""The duet SDK: talk to a verified controller, verify and pin one, audit its ledger.

What programs (the ``duet`` CLI among them) use is exported here; everything else in
``duet.client.*`` is an implementation detail::

    from duet.client import DuetClient, TrustStore, verify_controller

    verdict = verify_controller(url, policy=Policy())
    if verdict.ok and verdict.pin is not None:
        TrustStore.default().pin_verified(url, verdict.pin)   # keeps the re-pin rule
    with DuetClient(url) as client:                          # every answer checked against the pin
        print(client.list_cvms())

Failures are typed: a :class:`TrustError` (:class:`NotVerified`, :class:`ControllerChanged`,
:class:`UntrustedAnswer`, :class:`DamagedPin`) means nothing the controller said was used;
:class:`ApiError` is a refusal the controller signed; :class:`ConnectionFailed`, no answer at
all. Each error's ``code`` names precisely what failed.

The names are imported when first used (module ``__getattr__``): importing ``duet.client``, or
one of its modules, costs nothing more, so a CLI call pays only for what it runs (the verifier
pulls in the attestation code, the auditor the ledger's).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from duet.errors import (
    ControllerChanged,
    DamagedPin,
    DuetError,
    NotVerified,
    TrustError,
    UntrustedAnswer,
    VerificationError,
)

if TYPE_CHECKING:
    from duet.client.audit import (
        Auditor,
        AuditResult,
        CompareError,
        Finding,
        HeadStore,
        OtherView,
        load_view,
    )
    from duet.client.sdk import ApiError, ConnectionFailed, DuetClient, load_owner_key
    from duet.client.trust import (
        ControllerPin,
        TrustStore,
        certificate_pem,
        check_repin,
        check_same_identity,
        user_state_dir,
    )
    from duet.client.verify import STEPS, Check, ControllerVerdict, verify_attestation, verify_controller

__all__ = [
    # talking to a controller
    "DuetClient",
    "load_owner_key",
    # trust: pins and the rules that keep them
    "TrustStore",
    "ControllerPin",
    "check_repin",
    "check_same_identity",
    "certificate_pem",
    "user_state_dir",
    # verifying a controller
    "verify_controller",
    "verify_attestation",
    "ControllerVerdict",
    "Check",
    "STEPS",
    # auditing its ledger
    "Auditor",
    "AuditResult",
    "Finding",
    "HeadStore",
    "OtherView",
    "load_view",
    "CompareError",
    # errors
    "DuetError",
    "ApiError",
    "ConnectionFailed",
    "VerificationError",
    "TrustError",
    "NotVerified",
    "ControllerChanged",
    "UntrustedAnswer",
    "DamagedPin",
]

_LAZY = {
    **dict.fromkeys(("DuetClient", "load_owner_key", "ApiError", "ConnectionFailed"), "duet.client.sdk"),
    **dict.fromkeys(
        ("TrustStore", "ControllerPin", "check_repin", "check_same_identity", "certificate_pem", "user_state_dir"),
        "duet.client.trust",
    ),
    **dict.fromkeys(
        ("verify_controller", "verify_attestation", "ControllerVerdict", "Check", "STEPS"),
        "duet.client.verify",
    ),
    **dict.fromkeys(
        ("Auditor", "AuditResult", "Finding", "HeadStore", "OtherView", "load_view", "CompareError"),
        "duet.client.audit",
    ),
}


def __getattr__(name: str) -> Any:
    """A public name, from the module that defines it, looked up at each use (not cached here,
    so that what the module holds, e.g. a test's stand-in, is what is used)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
