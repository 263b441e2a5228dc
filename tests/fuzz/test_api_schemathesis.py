"""Schemathesis against a real controller: every v1 route of ``/openapi.json``, owner routes signed.

A real controller process (local provider, plain HTTP, TEE none, as tests/conftest.py's
``controller`` fixture) with one local CVM in-update. Schemathesis loads the controller's own
``/openapi.json`` and generates, per operation, positive and negative cases (path parameters,
query, headers). The owner routes take a signed envelope the schema does not describe (the body
is read raw), so a ``flatmap_case`` hook gives each POST case a body: a share properly signed by
the owner key (valid params, or invalid params that are still signed), the rest hostile (signed
by a stranger, stale, replayed, bit-flipped signatures, wrong op or controller, arbitrary JSON,
arbitrary bytes).

Checked on every answer: no 5xx; no hang (each request has a timeout); every answer is a signed
envelope that verifies with the controller's key and names the method, path and query sent
(``request_target``), echoes a well-formed nonce, and is bound to the signed request it answers.
Two routes answer other than with an envelope on success, and are checked as what they are: a
blob (its bytes hash to its name) and the event stream (its first bytes arrive at once).

Properly signed ``run`` requests only carry commands from a fixed harmless list: the local CVM
is a real sshd on this machine. Signed ``start`` requests with valid params are capped (each
starts a real sshd). Signed ``attest`` requests mostly name the real CVM (each such one, when
its path names it too, runs a real SIMULATED attestation); after the fuzzing, properly signed
attests of the real CVM must still pass.

Bounded for ``make test`` (a few examples per operation); ``DUET_FUZZ_EXAMPLES=N`` sets the
examples per operation for a long run (see docs/fuzzing.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest

from duet import keys
from duet.client.sdk import DuetClient
from duet.client.trust import TrustStore
from duet.errors import DuetError
from duet.ledger.checkpoint import controller_origin, verify_checkpoint
from duet.ledger.note import NoteVerifier
from duet.protocol.canonical import timestamp
from duet.protocol.envelope import request_digest, request_target, sign_request, verify_answer
from duet.testing.process import ControllerProcess
from support import Owner, make_owner, serving, start_cvm

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

EXAMPLES = int(os.environ.get("DUET_FUZZ_EXAMPLES", "12"))
"""Examples per operation and generation mode (positive, negative)."""
TIMEOUT = httpx.Timeout(15.0, connect=5.0)
"""A request that gets no answer within this is a hang."""
MAX_VALID_STARTS = 2
OPS = {
    ("POST", "/v1/cvms"): "cvm.start",
    ("POST", "/v1/cvms/{cvm_id}/run"): "cvm.run",
    ("POST", "/v1/cvms/{cvm_id}/mark"): "cvm.mark",
    ("POST", "/v1/cvms/{cvm_id}/stop"): "cvm.stop",
    ("POST", "/v1/cvms/{cvm_id}/attest"): "cvm.attest",
    ("POST", "/v1/owners"): "owners.change",
    ("POST", "/v1/policy"): "policy.change",
    ("POST", "/v1/proposals/{proposal_id}/approve"): "proposal.approve",
    ("POST", "/v1/proposals/{proposal_id}/reject"): "proposal.reject",
    ("POST", "/v1/proposals/{proposal_id}/withdraw"): "proposal.withdraw",
}
V1_OPERATIONS = {
    *(f"{method} {path}" for method, path in OPS),
    *(f"GET /v1/{path}" for path in ("cvms", "cvms/{cvm_id}", "jobs/{job_id}", "attestation", "blobs/{sha256}", "events")),
    *(f"GET /v1/ledger/{path}" for path in ("head", "entries", "proof/inclusion", "proof/consistency")),
    "GET /v1/proposals",
    "GET /v1/proposals/{proposal_id}",
}
"""The v1 operations this suite was written for: each must be in the schema (and is fuzzed, as
every other operation the schema has). An owner route added later must go into ``OPS`` too."""
ATTEST = "POST /v1/cvms/{cvm_id}/attest"
REAL_ATTESTS = 2
"""Properly signed attests of the real CVM sent after the fuzzing, each must pass (the local
CVM's SIMULATED attestation, trusted with --trust-simulated-cvm as ControllerProcess passes it)."""
SAFE_COMMANDS = ["true", "echo fuzz", "exit 3", "printf 'a\\033[8mb'", "echo err >&2", "sleep 0.1", "head -c 2000 /dev/zero"]
"""The only commands a properly signed fuzzed ``run`` may carry (the CVM is this machine's sshd)."""


@dataclass
class Target:
    url: str
    controller_id: str
    public_key: keys.PublicKey
    owner: Owner
    stranger: keys.PrivateKey
    cvm_id: str
    blob: str
    valid_starts: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Signed envelopes already sent once (replayed later)."""


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    directory = tmp_path_factory.mktemp("fuzz-api")
    owner = make_owner(directory)
    with serving(ControllerProcess(directory / "state", [owner.pub_path])) as process:
        with DuetClient(process.url, owner_key=owner.key, trust=TrustStore(directory / "user"), insecure=True) as client:
            cvm_id = start_cvm(client)
            result = client.run(cvm_id, ["echo blob"])["results"][0]
            pin = client.pin()
            yield Target(
                url=process.url,
                controller_id=pin.controller,
                public_key=pin.public_key(),
                owner=owner,
                stranger=keys.generate("ed25519"),
                cvm_id=cvm_id,
                blob=result["stdout_sha256"],
            )


# --- bodies of the owner routes ---------------------------------------------------------

hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def params_for(op: str, target: Target, path_cvm: str | None) -> st.SearchStrategy[dict[str, Any]]:
    """Params of ``op``: mostly valid (harmless) ones, some invalid (still signed)."""
    cvm = st.sampled_from([c for c in (path_cvm, target.cvm_id) if c]) | hex64
    if op == "cvm.start":
        valid: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
            {"cvm_type": st.sampled_from(["snp", "tdx"])}, optional={"provider": st.sampled_from(["local", "azure", "aws"])}
        )
    elif op == "cvm.run":
        valid = st.fixed_dictionaries(
            {"cvm_id": cvm, "commands": st.lists(st.sampled_from(SAFE_COMMANDS), min_size=1, max_size=4)},
            optional={
                "timeout_s": st.floats(min_value=0.001, max_value=30) | st.integers(min_value=-5, max_value=30),
                "output_limit": st.integers(min_value=-10, max_value=1 << 40),
            },
        )
    elif op == "cvm.mark":
        valid = st.fixed_dictionaries(
            {"cvm_id": cvm, "mode": st.sampled_from(["in-update", "in-service", "stopped", "bogus"])},
            optional={"final": st.just(False) | json_scalars.filter(lambda v: v is not True)},
        )
    elif op == "cvm.attest":  # mostly the real CVM: each such request runs a real attestation
        valid = st.fixed_dictionaries({"cvm_id": st.just(target.cvm_id) | cvm})
    elif op == "owners.change":  # the one owner stays: removals name strangers or it (no_owners), additions are not keys
        valid = st.fixed_dictionaries(
            {},
            optional={
                "add": st.lists(
                    st.text(max_size=60).map(lambda t: f"-----BEGIN PUBLIC KEY-----\n{t}\n-----END PUBLIC KEY-----\n"), max_size=2
                ),
                "remove": st.lists(hex64 | st.just(target.owner.key_id), max_size=2),
            },
        )
    elif op == "policy.change":  # thresholds of 1 (in force: harmless) or above the one owner (refused)
        thresholds = st.dictionaries(
            st.sampled_from(["cvm.run", "cvm.mark.in-update", "cvm.stop", "bogus"]), st.integers(0, 3), max_size=3
        )
        valid = st.fixed_dictionaries(
            {"policy": st.fixed_dictionaries({"thresholds": thresholds}, optional={"proposal_ttl_s": st.integers(-1, 10**6)})}
        )
    elif op.startswith("proposal."):
        valid = st.fixed_dictionaries(
            {"proposal_id": st.just(path_cvm) | hex64 if path_cvm else hex64}, optional={"reason": st.text(max_size=600)}
        )
    else:
        valid = st.fixed_dictionaries({"cvm_id": hex64 | st.text(max_size=70)})
    # Invalid but signed: extra fields, wrong types, commands that are not lists of strings.
    invalid = st.dictionaries(st.sampled_from(["cvm_id", "commands", "mode", "cvm_type", "final", "x"]), json_values, max_size=4)
    if op == "cvm.run":
        invalid = invalid.filter(lambda p: not (isinstance(p.get("commands"), list) and p["commands"]))
    return st.one_of(valid, valid, invalid)


def flip(text: str, index: int) -> str:
    index %= max(len(text), 1)
    return text[:index] + ("A" if text[index : index + 1] != "A" else "B") + text[index + 1 :]


@st.composite
def owner_body(draw: st.DrawFn, op: str, target: Target, path_cvm: str | None) -> tuple[str, bytes, str | None]:
    """(kind, body, digest the answer must carry or None)."""
    kind = draw(
        st.sampled_from(
            [
                "signed",
                "signed",
                "signed",
                "stranger",
                "bad_signature",
                "stale",
                "future",
                "wrong_op",
                "wrong_controller",
                "replay",
                "envelope_json",
                "json",
                "bytes",
            ]
        )
    )
    if kind == "bytes":
        return kind, draw(st.binary(max_size=300)), None
    if kind == "json":
        return kind, json.dumps(draw(json_values)).encode(), None
    params = draw(params_for(op, target, path_cvm))
    if op == "cvm.start" and params.get("cvm_type") in ("snp", "tdx") and set(params) <= {"cvm_type", "provider"}:
        if params.get("provider", "local") == "local" and target.valid_starts >= MAX_VALID_STARTS:
            params = {**params, "provider": "azure"}  # not enabled here: refused, no sshd started
    key, controller, request_op, issued = target.owner.key, target.controller_id, op, None
    if kind == "stranger":
        key = target.stranger
    elif kind == "stale":
        issued = "2020-01-01T00:00:00Z"
    elif kind == "future":
        issued = timestamp(datetime.now(UTC) + timedelta(days=draw(st.integers(1, 10**5))))
    elif kind == "wrong_op":
        request_op = draw(st.sampled_from(sorted({*OPS.values(), "cvm.delete", ""} - {op})))
    elif kind == "wrong_controller":
        controller = draw(hex64)
    elif kind == "replay" and target.sent:
        envelope = draw(st.sampled_from(target.sent))
        return kind, json.dumps(envelope).encode(), request_digest(envelope["request"])
    try:
        envelope = sign_request(request_op, controller, params, key, issued_at=issued)
    except (TypeError, ValueError):  # params without a canonical form (inf, 2**53...): sent unsigned
        body = {"request": {"op": op, "controller": controller, "nonce": "0" * 32, "issued_at": timestamp(), "params": params}}
        return "unsignable", json.dumps({**body, "signer": "0" * 64, "signature": "AA=="}).encode(), None
    if kind == "bad_signature":
        envelope["signature"] = flip(envelope["signature"], draw(st.integers(0, 200)))
    if kind == "envelope_json":  # a signed envelope with one member replaced by anything
        member = draw(st.sampled_from(["request", "signer", "signature", "extra"]))
        envelope[member] = draw(json_values)
        if member == "request" and isinstance(envelope["request"], dict):
            try:
                return kind, json.dumps(envelope).encode(), request_digest(envelope["request"])
            except Exception:
                return kind, json.dumps(envelope).encode(), None
        return kind, json.dumps(envelope).encode(), None
    return kind, json.dumps(envelope).encode(), request_digest(envelope["request"])


# --- checks -----------------------------------------------------------------------------


@dataclass
class Tally:
    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    by_operation: Counter[tuple[str, int]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def sent_target(request: httpx.Request) -> str:
    """The ``request_target`` of what went on the wire, parsed as the controller parses it."""
    raw = request.url.raw_path.decode("ascii")
    path, _, query = raw.partition("?")
    return request_target(request.method, unquote(path), parse_qsl(query, keep_blank_values=True))


def is_text(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/plain")


def check(target: Target, label: str, request: httpx.Request, response: httpx.Response, digest: str | None) -> str | None:
    """What is wrong with this answer, or None."""
    if response.status_code >= 500:
        return f"{response.status_code} answer: {response.content[:300]!r}"
    path = urlsplit(str(request.url)).path
    if label == "GET /v1/blobs/{sha256}" and response.status_code == 200:
        name = unquote(path.rsplit("/", 1)[-1])
        return None if hashlib.sha256(response.content).hexdigest() == name else "a blob whose bytes do not hash to its name"
    if label == "GET /v1/ledger/checkpoint" and response.status_code == 200 and is_text(response):
        try:  # a C2SP signed note, not an envelope: it must be the controller's, under its origin
            verify_checkpoint(response.content, NoteVerifier(controller_origin(target.controller_id), target.public_key))
        except DuetError as exc:
            return f"a checkpoint that does not verify: {exc}"
        return None
    if label == "GET /v1/events" and response.status_code == 200:
        opened = response.content.startswith(b": duet ledger events from seq ")
        return None if opened else f"an event stream that does not open at once: {response.content[:200]!r}"
    try:
        answer = json.loads(response.content)
    except ValueError:
        return f"an answer that is not JSON ({response.status_code}): {response.content[:200]!r}"
    query = dict(parse_qsl(urlsplit(str(request.url)).query, keep_blank_values=True))
    nonce = query.get("nonce")
    echoed = nonce if nonce is not None and len(nonce) in range(16, 65) and set(nonce) <= set("0123456789abcdef") else None
    try:
        result = verify_answer(
            answer,
            controller=target.controller_id,
            public_key=target.public_key,
            request_digest=digest,
            nonce=echoed,
            request_target=sent_target(request),
        )
    except Exception as exc:
        return f"an answer that does not verify ({response.status_code}): {exc}"
    if response.status_code >= 400 and not (isinstance(result, dict) and "error" in result):
        return f"a {response.status_code} whose result is not an error"
    return None


def send(client: httpx.Client, kwargs: dict[str, Any], label: str) -> tuple[httpx.Request, httpx.Response]:
    request = client.build_request(
        kwargs["method"], kwargs["url"], params=kwargs.get("params"), headers=kwargs.get("headers"), content=kwargs.get("data")
    )
    if label == "GET /v1/events":
        response = client.send(request, stream=True)
        try:
            if response.status_code == 200:
                first = next(response.iter_raw(), b"")  # the stream's opening comment comes at once
                response._content = first
            else:
                response.read()
        finally:
            response.close()
        return request, response
    return request, client.send(request)


def fuzz_operation(target: Target, client: httpx.Client, tally: Tally, label: str, strategy: st.SearchStrategy[Any]) -> None:
    """Run one operation's cases: send each, check each answer."""

    @settings(
        max_examples=EXAMPLES * (3 if label.startswith("POST") else 1),  # owner routes: more bodies
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=os.environ.get("DUET_FUZZ_EXAMPLES") is None,
    )
    @given(case=strategy, pick_real=st.integers(0, 3))
    def run(case: Any, pick_real: int) -> None:
        if pick_real == 0 and isinstance(case.path_parameters, dict):  # reach real objects too
            if "cvm_id" in case.path_parameters:
                case.path_parameters["cvm_id"] = target.cvm_id
            if "sha256" in case.path_parameters:
                case.path_parameters["sha256"] = target.blob
        headers = dict(case.headers or {})
        kind = headers.pop("x-fuzz-kind", "-")
        digest = headers.pop("x-fuzz-digest", "") or None
        case.headers = headers
        kwargs = case.as_transport_kwargs(base_url=target.url)
        try:
            request, response = send(client, kwargs, label)
        except httpx.TimeoutException:
            tally.problems.append(f"{label}: no answer within the timeout (hang): {kwargs}")
            return
        except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError):
            return  # a request httpx refuses to send is no test of the controller
        tally.cases[label] += 1
        tally.statuses[response.status_code] += 1
        tally.by_operation[label, response.status_code] += 1
        tally.kinds[kind] += 1
        if kind in ("signed", "envelope_json") and response.status_code in (200, 202) and digest:
            target.sent.append(json.loads(request.content))
            if label == "POST /v1/cvms":
                target.valid_starts += 1
        problem = check(target, label, request, response, digest if kind != "envelope_json" else None)
        if problem:
            tally.problems.append(f"{label} [{kind}] {request.method} {request.url}: {problem}")

    try:
        run()
    except Unsatisfiable:  # negative mode on an operation with nothing to make invalid
        pass


def attest_the_real_cvm(target: Target, client: httpx.Client, tally: Tally) -> int:
    """Properly signed ``cvm.attest`` requests for the real CVM, after the fuzzing: each answer is
    checked as every other, and must be a passing verdict (the fuzzing broke nothing). Returns
    how many passed."""
    passed = 0
    for _ in range(REAL_ATTESTS):
        envelope = sign_request("cvm.attest", target.controller_id, {"cvm_id": target.cvm_id}, target.owner.key)
        request = client.build_request("POST", f"{target.url}/v1/cvms/{target.cvm_id}/attest", content=json.dumps(envelope))
        response = client.send(request)
        tally.cases[ATTEST] += 1
        tally.statuses[response.status_code] += 1
        problem = check(target, ATTEST, request, response, request_digest(envelope["request"]))
        if problem:
            tally.problems.append(f"{ATTEST} [real CVM]: {problem}")
            continue
        result = json.loads(response.content)["result"]
        if response.status_code != 200 or result.get("ok") is not True:
            tally.problems.append(f"{ATTEST} [real CVM]: {response.status_code}, not a passing verdict: {result}")
            continue
        passed += 1
    return passed


# --- the test ---------------------------------------------------------------------------


def test_every_v1_route_answers_signed_and_never_5xx(target: Target, fuzz_summary: Callable[[str], None]) -> None:
    schema = schemathesis.openapi.from_url(f"{target.url}/openapi.json", timeout=10)
    schema.config.generation.update(max_examples=EXAMPLES)

    @schema.hook
    def flatmap_case(ctx: Any, case: Any) -> st.SearchStrategy[Any]:
        """Owner routes: give the case a body, signed by the owner or hostile; the digest to expect rides along."""
        op = OPS.get((case.method.upper(), case.operation.path))
        if op is None:
            return st.just(case)
        path_parameters = case.path_parameters or {}
        path_cvm = path_parameters.get("cvm_id", path_parameters.get("proposal_id"))  # the id the path names
        path_cvm = path_cvm if isinstance(path_cvm, str) else None

        def attach(drawn: tuple[str, bytes, str | None]) -> Any:
            kind, body, digest = drawn
            case.body, case.media_type = body, "application/octet-stream"
            case.headers = {
                **(case.headers or {}),
                "content-type": "application/json",
                "x-fuzz-kind": kind,
                "x-fuzz-digest": digest or "",
            }
            return case

        return owner_body(op, target, path_cvm).map(attach)

    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {f"{method} {path}" for method, path in OPS} <= labels
    v1 = {label for label in labels if label.split(" ", 1)[1].startswith("/v1/")}
    assert V1_OPERATIONS <= v1, f"v1 operations missing from the schema: {sorted(V1_OPERATIONS - v1)}"
    unsigned_posts = {label for label in v1 - V1_OPERATIONS if label.startswith("POST ")}
    assert not unsigned_posts, f"owner routes not in OPS, so fuzzed without signed bodies: {sorted(unsigned_posts)}"
    assert "GET /v1/events" in labels and "GET /v1/blobs/{sha256}" in labels

    tally = Tally()
    started = time.monotonic()
    with httpx.Client(timeout=TIMEOUT) as client:
        for operation in operations:
            label = f"{operation.method.upper()} {operation.path}"
            modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
            for mode in modes:
                try:
                    strategy = operation.as_strategy(generation_mode=mode)
                except Exception:  # an operation without anything to make negative
                    continue

                fuzz_operation(target, client, tally, label, strategy)
        passed = attest_the_real_cvm(target, client, tally)
    elapsed = time.monotonic() - started
    total = sum(tally.cases.values())
    attest = {status: n for (label, status), n in sorted(tally.by_operation.items()) if label == ATTEST}
    fuzz_summary(
        f"schemathesis: {total} requests on {len(tally.cases)} operations (all {len(v1)} v1) in {elapsed:.1f} s "
        f"(DUET_FUZZ_EXAMPLES={EXAMPLES}); statuses {dict(sorted(tally.statuses.items()))}; "
        f"owner bodies {dict(sorted(tally.kinds.items()))}; {ATTEST} fuzzed: statuses {attest}, then "
        f"{passed}/{REAL_ATTESTS} signed attests of the real CVM passed; problems {len(tally.problems)}"
    )
    assert not tally.problems, "\n".join(tally.problems[:20])
    assert len(tally.cases) == len(labels), f"operations never exercised: {labels - set(tally.cases)}"
