"""Hypothesis on every parser of hostile input: only typed errors may come out.

Envelopes (requests as the controller admits them, answers as a client verifies them), request
bodies (``parse_json_object``, the authenticator's parse and admit), SGX quotes (arbitrary bytes
and mutations of real quotes from tests/assets/sgx, parsed and verified), DCAP collateral (QE
identity, TCB info, CRLs, the PCK SGX extension), signed tree heads, and ledger ranges on a small
real ledger. Each may raise its module's documented error types (``DuetError`` and its
subclasses, and ``DerError`` for the DER extension); any other exception is a bug.

``DUET_FUZZ_EXAMPLES`` (default 12 here, for ``make test``) scales the examples of every test:
each runs ``DUET_FUZZ_EXAMPLES * 25`` examples (300 by default).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duet import keys
from duet.attestation import sgx
from duet.attestation.sgx.collateral import DerError, load_crl, parse_pck_sgx_extension
from duet.controller.auth import RequestAuthenticator, parse_json_object
from duet.controller.settings import Settings
from duet.errors import DuetError
from duet.ledger.heads import parse_head, sign_head, verify_head
from duet.ledger.log import Ledger
from duet.protocol.canonical import canonical, timestamp
from duet.protocol.envelope import request_target, sign_answer, sign_request, verify_answer
from support import open_ledger

KNOWN_QUOTE_ERRORS: tuple[type[Exception], ...] = ()
"""Nothing is tolerated any more: what the fuzzers found is fixed (tests/fuzz/test_found.py)."""
KNOWN_PARSE_ERRORS: tuple[type[Exception], ...] = ()
SCALE = int(os.environ.get("DUET_FUZZ_EXAMPLES", "12"))
EXAMPLES = SCALE * 25
SGX_ASSETS = Path(__file__).parent.parent / "assets" / "sgx"
REAL_QUOTES = [path.read_bytes() for path in sorted(SGX_ASSETS.glob("*_sgx_quote_v3.bin"))]
REAL_NOW = datetime(2024, 6, 1, tzinfo=UTC)
CONTROLLER_KEY = keys.generate("ed25519")
CONTROLLER = keys.key_id(CONTROLLER_KEY.public_key())
OWNER_KEY = keys.generate("ed25519")

COUNTS: Counter[str] = Counter()
"""Cases run per test, printed at the end of the module."""

fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


def only_typed(what: str, call: Callable[[], object], *allowed: type[BaseException]) -> None:
    """Run ``call``; a typed error is a fine answer to hostile input, anything else fails the test."""
    COUNTS[what] += 1
    try:
        call()
    except (DuetError, *allowed):
        pass


@pytest.fixture(scope="module", autouse=True)
def summary(fuzz_summary: Callable[[str], None]) -> Iterator[None]:
    yield
    total = sum(COUNTS.values())
    fuzz_summary(f"hypothesis parsers: {total} cases over {len(COUNTS)} targets: {dict(sorted(COUNTS.items()))}")


# --- envelopes --------------------------------------------------------------------------


def mutate_json(value: Any, path: list[str], replacement: Any) -> Any:
    if not path or not isinstance(value, dict):
        return replacement
    return {**value, path[0]: mutate_json(value.get(path[0]), path[1:], replacement)}


signed_answer = json.loads(
    sign_answer(canonical({"ok": 1}), controller=CONTROLLER, signing_key=CONTROLLER_KEY, nonce="ab" * 16, request_target="0" * 64)
)
ANSWER_PATHS = [[], ["result"], ["signature"], ["controller"], ["result_sha256"], ["nonce"], ["request_digest"], ["signed_at"]]


@fuzz
@given(value=json_values, path=st.sampled_from(ANSWER_PATHS), bindings=st.booleans())
def test_verify_answer_on_arbitrary_json(value: Any, path: list[str], bindings: bool) -> None:
    answer = mutate_json(signed_answer, path, value)
    extra: dict[str, Any] = {"nonce": "ab" * 16, "request_target": "0" * 64, "request_digest": "1" * 64} if bindings else {}
    only_typed(
        "envelope.verify_answer",
        lambda: verify_answer(answer, controller=CONTROLLER, public_key=CONTROLLER_KEY.public_key(), **extra),
    )


http_methods = st.sampled_from(["GET", "POST", "get", "DELETE"]) | st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ-!#$%&'*+.^_`|~", min_size=1
)
"""A request's method is an HTTP token (the server parses it; the SDK names its own), never other text."""


@fuzz
@given(method=http_methods, path=st.text(max_size=60), query=st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10))))
def test_request_target_takes_any_text(method: str, path: str, query: list[tuple[str, str]]) -> None:
    COUNTS["envelope.request_target"] += 1
    assert len(request_target(method, path, query)) == 64


@pytest.fixture(scope="module")
def authenticator(tmp_path_factory: pytest.TempPathFactory) -> RequestAuthenticator:
    from duet.controller.store import Store
    from duet.storage import Database

    directory = tmp_path_factory.mktemp("auth")
    store = Store(Database(directory / "db.sqlite3"))
    settings = Settings(state_dir=directory / "state", owner_keys=(), providers=("fake",), tee="none")
    owners = {keys.key_id(OWNER_KEY.public_key()): keys.public_pem(OWNER_KEY.public_key()).decode()}
    return RequestAuthenticator(store, CONTROLLER, settings, owners)


@fuzz
@given(body=st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode()))
def test_parse_json_object_on_arbitrary_bytes(body: bytes) -> None:
    only_typed("auth.parse_json_object", lambda: parse_json_object(body))


ENVELOPE_PATHS = [[], ["request"], ["signer"], ["signature"], ["request", "params"], ["request", "op"], ["request", "nonce"],
                  ["request", "issued_at"], ["request", "controller"], ["request", "params", "cvm_id"], ["request", "params", "commands"]]  # fmt: skip


@fuzz
@given(
    op=st.sampled_from(["cvm.start", "cvm.run", "cvm.mark", "cvm.stop"]),
    value=json_values,
    path=st.sampled_from(ENVELOPE_PATHS),
    raw=st.booleans(),
)
def test_authenticator_parse_and_admit(
    authenticator: RequestAuthenticator, op: str, value: Any, path: list[str], raw: bool
) -> None:
    """Owner-signed envelopes with one member replaced by arbitrary JSON, then parsed and admitted."""
    envelope = sign_request(op, CONTROLLER, {"cvm_id": "a" * 64, "commands": ["true"]}, OWNER_KEY, issued_at=timestamp())
    mutated = mutate_json(envelope, path, value)
    try:
        body = json.dumps(mutated).encode()
    except (TypeError, ValueError):
        return
    only_typed("auth.parse+admit", lambda: authenticator.admit(authenticator.parse(body), op))
    if raw:
        only_typed("auth.parse+admit", lambda: authenticator.authenticate(body[: len(body) // 2], op))


# --- SGX quotes -------------------------------------------------------------------------


@st.composite
def mutated_quote(draw: st.DrawFn) -> bytes:
    quote = bytearray(draw(st.sampled_from(REAL_QUOTES)))
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "set32", "truncate", "extend", "splice"]))
        at = draw(st.integers(0, max(len(quote) - 1, 0)))
        if action == "flip" and quote:
            quote[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set32" and len(quote) >= at + 4:
            quote[at : at + 4] = draw(st.sampled_from([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, len(quote), 436, 1000])).to_bytes(
                4, "little"
            )
        elif action == "truncate":
            del quote[at:]
        elif action == "extend":
            quote += draw(st.binary(max_size=64))
        else:
            quote[at:at] = draw(st.binary(max_size=32))
    return bytes(quote)


# Offsets of the length fields and the certification data header in a v3 quote (436: signature_data_len).
quotes = st.binary(max_size=2000) | mutated_quote()


@fuzz
@given(quote=quotes)
def test_parse_quote(quote: bytes) -> None:
    only_typed("sgx.parse_quote", lambda: sgx.parse_quote(quote), *KNOWN_PARSE_ERRORS)


@settings(fuzz, max_examples=max(EXAMPLES // 3, 20))
@given(quote=mutated_quote())
def test_verify_quote_never_raises_for_bad_evidence(quote: bytes) -> None:
    COUNTS["sgx.verify_quote"] += 1
    try:
        verdict = sgx.verify_quote(quote, trusted_root_keys=[sgx.intel_sgx_root_key()], now=REAL_NOW)
    except KNOWN_QUOTE_ERRORS:
        COUNTS["sgx.verify_quote (known finding)"] += 1
        return
    assert verdict.ok in (True, False)


quote_texts = (
    st.binary(max_size=600)
    | quotes.map(lambda q: q.hex().encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.dictionaries(st.sampled_from(["quote", "QuoteHex"]), st.text(max_size=40) | json_scalars, min_size=1).map(
        lambda v: json.dumps(v).encode()
    )
)


@fuzz
@given(data=quote_texts)
def test_decode_quote_text(data: bytes) -> None:
    """``decode_quote_text`` may raise ValueError too (bad hex or base64 in the JSON): its caller,
    ``duet evidence``, reports ValueError as a user error."""
    only_typed("sgx.decode_quote_text", lambda: sgx.decode_quote_text(data), ValueError)
    only_typed("sgx.decode_quote_text", lambda: sgx.parse_quote(sgx.decode_quote_text(data)), ValueError, *KNOWN_PARSE_ERRORS)


# --- collateral -------------------------------------------------------------------------


def qe_identity_json() -> dict[str, Any]:
    return {
        "enclaveIdentity": {
            "id": "QE",
            "version": 2,
            "issueDate": "2024-01-01T00:00:00Z",
            "nextUpdate": "2030-01-01T00:00:00Z",
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": "8C4F5775D796503E96137F77C68A829A0056AC8DED70140B081B094490C57BFF",
            "isvprodid": 1,
            "tcbLevels": [{"tcb": {"isvsvn": 8}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "UpToDate"}],
        },
        "signature": "00",
    }


def tcb_info_json() -> dict[str, Any]:
    return {
        "tcbInfo": {
            "id": "SGX",
            "version": 3,
            "issueDate": "2024-01-01T00:00:00Z",
            "nextUpdate": "2030-01-01T00:00:00Z",
            "fmspc": "00906ED50000",
            "pceId": "0000",
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tcbLevels": [
                {
                    "tcb": {"sgxtcbcomponents": [{"svn": 1}] * 16, "pcesvn": 13},
                    "tcbDate": "2024-01-01T00:00:00Z",
                    "tcbStatus": "UpToDate",
                }
            ],
        },
        "signature": "00",
    }


COLLATERAL_PATHS = {
    "qe": [[], ["enclaveIdentity"], ["enclaveIdentity", "version"], ["enclaveIdentity", "mrsigner"], ["enclaveIdentity", "tcbLevels"],
           ["enclaveIdentity", "issueDate"], ["enclaveIdentity", "attributes"], ["enclaveIdentity", "isvprodid"]],
    "tcb": [[], ["tcbInfo"], ["tcbInfo", "version"], ["tcbInfo", "tcbLevels"], ["tcbInfo", "fmspc"], ["tcbInfo", "nextUpdate"],
            ["tcbInfo", "tcbType"]],
}  # fmt: skip


@fuzz
@given(which=st.sampled_from(["qe", "tcb"]), data=st.data(), value=json_values, raw=st.binary(max_size=200))
def test_collateral_json_parsers(which: str, data: st.DataObject, value: Any, raw: bytes) -> None:
    base = qe_identity_json() if which == "qe" else tcb_info_json()
    path = data.draw(st.sampled_from(COLLATERAL_PATHS[which]))
    body = json.dumps(mutate_json(base, path, value)).encode()
    parser: Callable[[bytes], Any] = sgx.QeIdentity.from_json if which == "qe" else sgx.TcbInfo.from_json
    only_typed(f"collateral.{which}", lambda: parser(body))
    only_typed(f"collateral.{which}", lambda: parser(raw))
    only_typed(f"collateral.{which}", lambda: parser(body[: len(body) // 2]))


@fuzz
@given(data=st.binary(max_size=400))
def test_collateral_crl_and_der(data: bytes) -> None:
    only_typed("collateral.load_crl", lambda: load_crl(data))
    only_typed("collateral.pck_sgx_extension", lambda: parse_pck_sgx_extension(data), DerError)


# --- ledger heads and ranges ------------------------------------------------------------

signed_head = sign_head(
    {"tree_size": 3, "root_hash": "ab" * 32, "timestamp": timestamp(), "controller": CONTROLLER}, CONTROLLER_KEY
)


safe_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@fuzz
@given(value=json_values, member=st.sampled_from([None, *signed_head]))
def test_parse_head(value: Any, member: str | None) -> None:
    head = value if member is None else {**signed_head, member: value}
    only_typed("heads.parse_head", lambda: parse_head(head))


@fuzz
@given(value=safe_json_values, member=st.sampled_from([None, *signed_head]))
def test_verify_head(value: Any, member: str | None) -> None:
    """Values within JCS's domain: a head outside it (tree_size >= 2**53, a lone surrogate) makes
    verify_head raise rfc8785's ValueError, reproduced in tests/fuzz/test_found.py."""
    head = value if member is None else {**signed_head, member: value}
    only_typed("heads.verify_head", lambda: verify_head(head, controller=CONTROLLER, public_key=CONTROLLER_KEY.public_key()))


@pytest.fixture(scope="module")
def small_ledger(tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    ledger = open_ledger(tmp_path_factory.mktemp("ledger"))
    for index in range(12):
        with ledger.db.transaction() as tx:
            ledger.append(tx, cvm=["a" * 64, "b" * 64, None][index % 3], event="x", actor="test", n=index)
    return ledger


bounds = st.integers() | st.integers(-3, 20) | st.sampled_from([2**62, 2**63, -(2**63), 2**64])


@fuzz
@given(
    start=bounds,
    end=st.none() | bounds,
    cvm=st.none() | st.sampled_from(["a" * 64, "b" * 64]) | st.text(max_size=70),
    limit=bounds,
)
def test_ledger_ranges(small_ledger: Ledger, start: int, end: int | None, cvm: str | None, limit: int) -> None:
    only_typed("ledger.page", lambda: small_ledger.page(start, end, cvm, limit))
    only_typed("ledger.entries", lambda: small_ledger.entries(start, end, cvm))
    only_typed("ledger.inclusion", lambda: small_ledger.inclusion(start, limit))
    only_typed("ledger.consistency", lambda: small_ledger.consistency(start, limit))
