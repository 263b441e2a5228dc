"""The SDK's public surface: what ``duet.client`` exports, that it loads lazily, that trust
failures are told apart by type, and that the CLI uses nothing private.

Controllers are stubs on an httpx ``MockTransport``; answers are signed as a controller signs them.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

import duet.client
from duet import keys
from duet.cli import output
from duet.cli.context import CliContext
from duet.client import (
    ApiError,
    ConnectionFailed,
    ControllerChanged,
    ControllerPin,
    DamagedPin,
    DuetClient,
    NotVerified,
    TrustError,
    TrustStore,
    UntrustedAnswer,
    VerificationError,
)
from duet.protocol.canonical import canonical
from duet.protocol.envelope import request_target, sign_answer

URL = "https://controller.test:6037"
KEY = keys.generate()
OTHER_KEY = keys.generate()
TLS = hashlib.sha256(b"the controller's certificate").hexdigest()
CLI = Path(duet.client.__file__).resolve().parents[1] / "cli"


def pin_of(key: keys.PrivateKey = KEY, *, owners: tuple[str, ...] = ("aa" * 32,)) -> ControllerPin:
    return ControllerPin(
        controller=keys.key_id(key.public_key()),
        signing_key=keys.public_pem(key.public_key()).decode(),
        tee="simulated-sgx",
        tls_cert_sha256=TLS,
        owners=owners,
        attested=True,
        verified_at="2026-11-27T10:00:00Z",
    )


# --- the exports ------------------------------------------------------------------------------


def test_every_exported_name_is_the_one_its_module_defines() -> None:
    assert len(set(duet.client.__all__)) == len(duet.client.__all__)
    for name in duet.client.__all__:
        value = getattr(duet.client, name)
        home = getattr(value, "__module__", None)
        if home is not None and home.startswith("duet."):
            assert getattr(importlib.import_module(home), name) is value, name
    assert set(duet.client.__all__) <= set(dir(duet.client))
    with pytest.raises(AttributeError):
        duet.client.no_such_name  # noqa: B018


def test_the_exports_follow_their_module_so_a_stand_in_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not cached in the package: tests (and programs) that replace ``duet.client.verify.verify_controller``
    are heard by code that imports it from ``duet.client``."""
    stand_in = object()
    monkeypatch.setattr("duet.client.verify.verify_controller", stand_in)
    assert duet.client.verify_controller is stand_in


def test_importing_the_sdk_package_loads_nothing_heavy() -> None:
    code = (
        "import sys, duet.client; "
        "print(sorted(m for m in sys.modules if m in ('httpx', 'cryptography') or m.startswith(('duet.client.', "
        "'duet.attestation', 'duet.ledger'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert loaded == "[]"


# --- typed trust failures ---------------------------------------------------------------------


def test_trust_failures_are_verification_errors_of_their_own_type() -> None:
    for kind in (NotVerified, ControllerChanged, UntrustedAnswer, DamagedPin):
        assert issubclass(kind, TrustError) and issubclass(kind, VerificationError)
    assert not issubclass(ApiError, VerificationError) and not issubclass(ConnectionFailed, VerificationError)


Handler = Callable[[httpx.Request], httpx.Response]


def answering(result: Any, *, key: keys.PrivateKey = KEY, nonce: str | None = None, tamper: bool = False) -> Handler:
    """A controller that answers every read with ``result``, signed with ``key``, echoing the
    request's nonce (or ``nonce``); ``tamper`` changes the result after signing."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(
            sign_answer(
                canonical(result),
                controller=keys.key_id(key.public_key()),
                signing_key=key,
                request_digest=None,
                nonce=nonce or request.url.params.get("nonce"),
                request_target=request_target(request.method, request.url.path, request.url.params.multi_items()),
            )
        )
        if tamper:
            body["result"] = {"cvms": ["forged"]}
        return httpx.Response(200, json=body)

    return handle


def client(tmp_path: Path, handler: Handler, *, pinned: ControllerPin | None = None) -> DuetClient:
    trust = TrustStore(tmp_path / "user")
    trust.put(URL, pinned or pin_of())
    return DuetClient(URL, trust=trust, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("handler", "kind", "code"),
    [
        (answering({"cvms": []}, tamper=True), UntrustedAnswer, "bad_answer_signature"),
        (answering({"cvms": []}, nonce="00" * 16), UntrustedAnswer, "stale_answer"),
        (lambda request: httpx.Response(200, text="not json"), UntrustedAnswer, "unsigned_answer"),
        (lambda request: httpx.Response(200, json={"result": {}}), UntrustedAnswer, "unsigned_answer"),
        (answering({"cvms": []}, key=OTHER_KEY), ControllerChanged, "controller_key_changed"),
    ],
    ids=["tampered", "replayed", "not json", "unsigned", "another key"],
)
def test_an_answer_that_does_not_verify_raises_a_typed_error(
    tmp_path: Path, handler: Handler, kind: type[TrustError], code: str
) -> None:
    with client(tmp_path, handler) as sdk, pytest.raises(kind) as refused:
        sdk.list_cvms()
    assert refused.value.code == code


def test_a_signed_refusal_is_an_api_error_not_a_trust_failure(tmp_path: Path) -> None:
    refusal = {"error": {"code": "not_found", "message": "no such CVM"}}

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, content=answering(refusal)(request).content)

    with client(tmp_path, handle) as sdk, pytest.raises(ApiError) as refused:
        sdk.state("ab" * 32)
    assert (refused.value.code, refused.value.status) == ("not_found", 404)


def test_an_output_that_does_not_match_its_hash_is_untrusted(tmp_path: Path) -> None:
    with client(tmp_path, lambda request: httpx.Response(200, content=b"forged")) as sdk, pytest.raises(UntrustedAnswer) as bad:
        sdk.blob(hashlib.sha256(b"genuine").hexdigest())
    assert bad.value.code == "blob_mismatch"


def test_an_unverified_controller_and_a_damaged_store_are_typed(tmp_path: Path) -> None:
    with DuetClient(URL, trust=TrustStore(tmp_path / "empty")) as sdk, pytest.raises(NotVerified) as unverified:
        sdk.list_cvms()
    assert unverified.value.code == "controller_not_verified"
    plain_url = "http://controller.test:6037"
    TrustStore(tmp_path / "plain").put(plain_url, pin_of())
    with DuetClient(plain_url, trust=TrustStore(tmp_path / "plain")) as sdk, pytest.raises(NotVerified) as plain:
        sdk.pin()
    assert plain.value.code == "plain_http"
    damaged = TrustStore(tmp_path / "damaged")
    damaged.path.parent.mkdir(parents=True)
    damaged.path.write_text("{not json")
    with pytest.raises(DamagedPin):
        damaged.get(URL)
    with pytest.raises(DamagedPin):
        replace(pin_of(), controller="cd" * 32).public_key()


# --- the re-pin rule in the trust store ---------------------------------------------------------


def test_pin_verified_keeps_the_re_pin_rule(tmp_path: Path) -> None:
    trust = TrustStore(tmp_path / "user")
    trust.pin_verified(URL, pin_of())
    trust.pin_verified(URL, replace(pin_of(), verified_at="2026-11-28T10:00:00Z"))  # the same controller again
    for changed, code in ((pin_of(OTHER_KEY), "controller_changed"), (pin_of(owners=("bb" * 32,)), "owners_changed")):
        with pytest.raises(ControllerChanged) as refused:
            trust.pin_verified(URL, changed)
        assert refused.value.code == code
        assert trust.get(URL) == replace(pin_of(), verified_at="2026-11-28T10:00:00Z")  # nothing stored
    trust.pin_verified(URL, pin_of(OTHER_KEY), replace=True)
    assert trust.get(URL) == pin_of(OTHER_KEY)


# --- live events through the SDK --------------------------------------------------------------


def test_event_lines_resume_after_the_last_event_and_report_a_broken_stream(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="id: 7\nevent: entry\ndata: {}\n\n", headers={"content-type": "text/event-stream"})

    with client(tmp_path, handle) as sdk:
        assert list(sdk.event_lines(start=5)) == ["id: 7", "event: entry", "data: {}", ""]
        assert list(sdk.event_lines(start=5, last_event_id="7"))[0] == "id: 7"
    assert [(r.url.path, dict(r.url.params), r.headers.get("last-event-id")) for r in seen] == [
        ("/v1/events", {"from": "5"}, None),
        ("/v1/events", {}, "7"),
    ]

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with client(tmp_path, broken) as sdk, pytest.raises(ConnectionFailed):
        list(sdk.event_lines(start=0))


# --- the CLI: exit status and words by type, public names only -----------------------------------


@pytest.mark.parametrize(
    ("error", "status", "said"),
    [
        (NotVerified("not verified"), 3, "refused (controller_not_verified)"),
        (ControllerChanged("another key", code="controller_key_changed"), 3, "REFUSED CONTROLLER (controller_key_changed)"),
        (UntrustedAnswer("bad signature", code="bad_answer_signature"), 3, "UNTRUSTED ANSWER: bad signature"),
        (DamagedPin("damaged"), 3, "UNTRUSTED ANSWER: damaged"),
        (ApiError("wrong_controller", "addressed to another controller", 401), 1, "error (wrong_controller)"),
        (VerificationError("bad trust root", code="bad_trust_root"), 1, "error (bad_trust_root)"),
    ],
)
def test_the_cli_maps_errors_by_type(error: Exception, status: int, said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exited, output.errors(CliContext(url=URL, key_path=None, json=False)):
        raise error
    assert exited.value.exit_code == status
    assert said in " ".join(capsys.readouterr().err.split())


NAMED_TUPLE_METHODS = {"_asdict", "_replace", "_fields", "_make"}


def test_the_cli_uses_only_public_names() -> None:
    """No private name imported, no private attribute of another object read, and from the SDK
    only what ``duet.client`` exports."""
    found: list[str] = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    if alias.name.startswith("_"):
                        found.append(f"{where} imports {node.module}.{alias.name}")
                    elif node.module.startswith("duet.client") and alias.name not in duet.client.__all__:
                        found.append(f"{where} imports {node.module}.{alias.name}, which duet.client does not export")
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value.id if isinstance(node.value, ast.Name) else None
                if owner not in ("self", "cls") and node.attr not in NAMED_TUPLE_METHODS:
                    found.append(f"{where} reads {ast.unparse(node)}")
    assert found == []
