"""A pinned controller that later shows another identity is refused, in the SDK and in ``duet verify``.

The controller itself refuses to start with another owner set than the one sealed at its first
start, so "the identity later shows another set" is simulated here at the client: by a pin that
remembers another set (``check_repin``, ``duet verify``), or by a stub controller on an httpx
``MockTransport`` that serves a signed identity naming other owners (``DuetClient.check_identity``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from duet import keys
from duet.client.sdk import DuetClient
from duet.client.trust import ControllerPin, TrustStore, check_repin
from duet.client.verify import Check, ControllerVerdict
from duet.errors import VerificationError
from duet.protocol.canonical import canonical
from duet.protocol.envelope import request_target, sign_answer

URL = "https://controller.test:6037"
KEY = keys.generate()
OTHER_KEY = keys.generate()
OWNER_A, OWNER_B, OWNER_C = "aa" * 32, "bb" * 32, "cc" * 32
TLS = hashlib.sha256(b"the controller's certificate").hexdigest()


def identity(key: keys.PrivateKey = KEY, *, owners: tuple[str, ...] = (OWNER_A, OWNER_B), tls: str = TLS) -> dict[str, Any]:
    """An identity document as ``GET /v1/attestation`` serves it."""
    return {
        "controller": keys.key_id(key.public_key()),
        "signing_key": keys.public_pem(key.public_key()).decode(),
        "tls_cert_sha256": tls,
        "owners": sorted(owners),
        "version": "0.1.0",
    }


def pin_of(document: dict[str, Any], *, verified: bool = True) -> ControllerPin:
    """The pin ``duet verify`` stores for ``document``."""
    return ControllerPin(
        controller=document["controller"],
        signing_key=document["signing_key"],
        tee="simulated-sgx",
        tls_cert_sha256=document["tls_cert_sha256"],
        owners=tuple(document["owners"]),
        attested=True,
        verified_at="2026-11-27T10:00:00Z" if verified else None,
    )


PINNED = pin_of(identity())


# --- check_repin: the rule `duet verify` applies before it overwrites a pin ----------------------


def test_a_first_pin_an_unverified_pin_and_the_same_identity_are_pinned() -> None:
    check_repin(None, PINNED, url=URL, replace=False)
    check_repin(replace(PINNED, verified_at=None), pin_of(identity(owners=(OWNER_C,))), url=URL, replace=False)
    check_repin(PINNED, replace(PINNED, verified_at="2026-11-28T10:00:00Z"), url=URL, replace=False)
    check_repin(PINNED, replace(PINNED, owners=(OWNER_B, OWNER_A)), url=URL, replace=False)  # order is not a change


@pytest.mark.parametrize(
    "new", [pin_of(identity(OTHER_KEY)), pin_of(identity(tls="ee" * 32))], ids=["another key", "another TLS certificate"]
)
def test_another_controller_is_refused_unless_replace(new: ControllerPin) -> None:
    with pytest.raises(VerificationError) as refused:
        check_repin(PINNED, new, url=URL, replace=False)
    assert refused.value.code == "controller_changed"
    assert URL in refused.value.message and PINNED.verified_at in refused.value.message  # type: ignore[operator]
    assert "--replace" in refused.value.message
    check_repin(PINNED, new, url=URL, replace=True)


def test_another_owner_set_of_the_same_controller_is_refused_naming_added_and_removed() -> None:
    new = pin_of(identity(owners=(OWNER_A, OWNER_C)))
    with pytest.raises(VerificationError) as refused:
        check_repin(PINNED, new, url=URL, replace=False)
    assert refused.value.code == "owners_changed"
    message = refused.value.message
    assert f"added {OWNER_C[:16]}…" in message and f"removed {OWNER_B[:16]}…" in message
    assert OWNER_A[:16] not in message  # unchanged owners are not listed
    assert "ledger" in message and "--replace" in message and URL in message
    check_repin(PINNED, new, url=URL, replace=True)


def test_an_owner_set_that_only_grew_or_only_shrank_says_so() -> None:
    with pytest.raises(VerificationError, match="added .*; removed none") as grown:
        check_repin(PINNED, pin_of(identity(owners=(OWNER_A, OWNER_B, OWNER_C))), url=URL, replace=False)
    assert grown.value.code == "owners_changed"
    with pytest.raises(VerificationError, match="added none; removed") as shrunk:
        check_repin(PINNED, pin_of(identity(owners=(OWNER_A,))), url=URL, replace=False)
    assert shrunk.value.code == "owners_changed"


# --- DuetClient.check_identity: the served identity against the pin ------------------------------


class StubController:
    """Serves ``GET /v1/attestation`` like a controller: the identity, signed, echoing the nonce."""

    def __init__(self, document: dict[str, Any], key: keys.PrivateKey = KEY) -> None:
        self.document, self.key = document, key
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.url.path == "/v1/attestation"
        result = {"identity": self.document, "evidence": {"type": "simulated-sgx"}}
        body = sign_answer(
            canonical(result),
            controller=self.document["controller"],
            signing_key=self.key,
            request_digest=None,
            nonce=request.url.params["nonce"],
            request_target=request_target("GET", "/v1/attestation", {"nonce": request.url.params["nonce"]}),
        )
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})


def pinned_client(tmp_path: Path, stub: StubController, pin: ControllerPin = PINNED) -> DuetClient:
    trust = TrustStore(tmp_path / "user")
    trust.put(URL, pin)
    return DuetClient(URL, trust=trust, transport=httpx.MockTransport(stub))


def test_check_identity_accepts_the_pinned_identity_with_one_request(tmp_path: Path) -> None:
    stub = StubController(identity())
    with pinned_client(tmp_path, stub) as client:
        shown = client.check_identity()
    assert (shown.controller, shown.tls_cert_sha256, set(shown.owners)) == (PINNED.controller, TLS, {OWNER_A, OWNER_B})
    assert len(stub.requests) == 1


def test_check_identity_refuses_another_owner_set_and_keeps_the_pin(tmp_path: Path) -> None:
    stub = StubController(identity(owners=(OWNER_A, OWNER_C)))
    with pinned_client(tmp_path, stub) as client, pytest.raises(VerificationError) as refused:
        client.check_identity()
    assert refused.value.code == "owners_changed"
    assert f"added {OWNER_C[:16]}…" in refused.value.message and f"removed {OWNER_B[:16]}…" in refused.value.message
    assert f"duet --url {URL} verify" in refused.value.message
    assert TrustStore(tmp_path / "user").get(URL) == PINNED


@pytest.mark.parametrize(
    ("key", "served"),
    [(OTHER_KEY, identity(OTHER_KEY)), (KEY, identity(tls="ee" * 32))],
    ids=["another key", "another TLS certificate"],
)
def test_check_identity_refuses_another_controller(tmp_path: Path, key: keys.PrivateKey, served: dict[str, Any]) -> None:
    with pinned_client(tmp_path, StubController(served, key)) as client, pytest.raises(VerificationError) as refused:
        client.check_identity()
    assert refused.value.code == "controller_changed" and "--replace" in refused.value.message
    assert TrustStore(tmp_path / "user").get(URL) == PINNED


def test_check_identity_without_a_pin_holds_to_the_identity_seen_at_first_contact(tmp_path: Path) -> None:
    stub = StubController(identity())
    with DuetClient(URL, trust=TrustStore(tmp_path / "user"), transport=httpx.MockTransport(stub), insecure=True) as client:
        assert set(client.check_identity().owners) == {OWNER_A, OWNER_B} and len(stub.requests) == 1
        stub.document = identity(owners=(OWNER_C,))
        with pytest.raises(VerificationError, match="first contact") as refused:
            client.check_identity()
    assert refused.value.code == "owners_changed" and len(stub.requests) == 2
    assert TrustStore(tmp_path / "user").get(URL) is None  # insecure use pins nothing


# --- `duet verify`: the CLI applies the same rule ------------------------------------------------


def _verdict(pin: ControllerPin) -> ControllerVerdict:
    """A verdict where every check held, as ``verify_controller`` returns for ``pin``'s identity."""
    document = {
        "controller": pin.controller,
        "signing_key": pin.signing_key,
        "tls_cert_sha256": pin.tls_cert_sha256,
        "owners": list(pin.owners),
        "version": "0.1.0",
    }
    return ControllerVerdict(
        url=URL, checks=[Check("identity", True, "ok")], identity=document, evidence_type="simulated-sgx", answer={}, pin=pin
    )


def _verify_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shown: ControllerPin, *args: str) -> tuple[int, Any]:
    from duet.cli.main import app

    monkeypatch.setenv("DUET_HOME", str(tmp_path / "user"))
    monkeypatch.setattr("duet.client.verify.verify_controller", lambda *a, **k: _verdict(shown))
    result = CliRunner().invoke(app, ["--json", "--url", URL, "verify", *args])
    return result.exit_code, json.loads(result.stdout)


def test_duet_verify_refuses_another_owner_set_and_keeps_the_pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    TrustStore(tmp_path / "user").put(URL, PINNED)
    shown = pin_of(identity(owners=(OWNER_A, OWNER_C)))
    code, out = _verify_cli(tmp_path, monkeypatch, shown)
    assert code == 3 and not out["ok"] and (out["failed_step"], out["code"]) == ("pin", "owners_changed")
    assert OWNER_C[:16] in out["message"] and OWNER_B[:16] in out["message"] and out["pinned"] is None
    assert TrustStore(tmp_path / "user").get(URL) == PINNED

    code, out = _verify_cli(tmp_path, monkeypatch, shown, "--replace")
    assert code == 0 and out["ok"] and TrustStore(tmp_path / "user").get(URL) == shown


def test_duet_verify_still_refuses_another_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    TrustStore(tmp_path / "user").put(URL, PINNED)
    code, out = _verify_cli(tmp_path, monkeypatch, pin_of(identity(OTHER_KEY)))
    assert code == 3 and (out["failed_step"], out["code"]) == ("pin", "controller_changed")
    assert TrustStore(tmp_path / "user").get(URL) == PINNED
