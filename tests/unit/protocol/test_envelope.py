"""Signed requests and answers: what is signed, and that every change breaks the signature."""

from __future__ import annotations

import json

import pytest
import rfc8785

from duet import keys
from duet.errors import VerificationError
from duet.protocol.canonical import canonical, sha256_hex
from duet.protocol.envelope import request_digest, request_signature_valid, sign_answer, sign_request, verify_answer

CONTROLLER = "c" * 64


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_request_signature_covers_the_whole_request(key_type: str) -> None:
    key = keys.generate(key_type)  # type: ignore[arg-type]
    envelope = sign_request("cvm.run", CONTROLLER, {"cvm_id": "a" * 64, "commands": ["ls"]}, key)
    assert envelope["signer"] == keys.key_id(key.public_key())
    assert request_signature_valid(envelope["request"], envelope["signature"], key.public_key())
    for field, value in [
        ("op", "cvm.stop"),
        ("controller", "d" * 64),
        ("nonce", "0" * 32),
        ("issued_at", "2020-01-01T00:00:00Z"),
        ("params", {"cvm_id": "a" * 64, "commands": ["rm -rf /"]}),
    ]:
        altered = {**envelope["request"], field: value}
        assert not request_signature_valid(altered, envelope["signature"], key.public_key()), field


def test_answer_body_is_canonical_json_and_verifies() -> None:
    key = keys.generate()
    result = {"b": [1, 2, {"z": "é", "a": None}], "a": "x"}
    body = sign_answer(canonical(result), controller=CONTROLLER, signing_key=key, request_digest="e" * 64, nonce="ab" * 16)
    answer = json.loads(body)
    assert body == rfc8785.dumps(answer)
    assert answer["result_sha256"] == sha256_hex(canonical(result))
    assert (
        verify_answer(answer, controller=CONTROLLER, public_key=key.public_key(), request_digest="e" * 64, nonce="ab" * 16)
        == result
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("result", {"a": "y"}),
        ("result_sha256", "0" * 64),
        ("signed_at", "2020-01-01T00:00:00.000Z"),
        ("request_digest", "f" * 64),
        ("nonce", "cd" * 16),
        ("controller", "d" * 64),
        ("request_target", "8" * 64),
    ],
)
def test_any_change_to_an_answer_is_detected(field: str, value: object) -> None:
    key = keys.generate()
    answer = json.loads(
        sign_answer(
            canonical({"a": "x"}),
            controller=CONTROLLER,
            signing_key=key,
            request_digest="e" * 64,
            nonce="ab" * 16,
            request_target="9" * 64,
        )
    )
    answer[field] = value
    with pytest.raises(VerificationError):
        verify_answer(answer, controller=answer["controller"], public_key=key.public_key())


def test_answer_from_another_key_or_for_another_request_is_refused() -> None:
    key, other = keys.generate(), keys.generate()
    request = {"op": "cvm.start"}
    answer = json.loads(
        sign_answer(canonical({}), controller=CONTROLLER, signing_key=key, request_digest=request_digest(request))
    )
    with pytest.raises(VerificationError, match="does not verify"):
        verify_answer(answer, controller=CONTROLLER, public_key=other.public_key())
    with pytest.raises(VerificationError) as unbound:
        verify_answer(
            answer, controller=CONTROLLER, public_key=key.public_key(), request_digest=request_digest({"op": "cvm.stop"})
        )
    assert unbound.value.code == "answer_not_bound"
    with pytest.raises(VerificationError) as unsigned:
        verify_answer({"result": {}}, controller=CONTROLLER, public_key=key.public_key())
    assert unsigned.value.code == "unsigned_answer"


# --- answers name what they answer (request_target) -------------------------------------------


def test_the_request_target_is_method_path_and_sorted_query() -> None:
    from duet.protocol.envelope import canonical_target, request_target

    assert canonical_target("get", "/v1/cvms/" + "a" * 64, {"nonce": "ab" * 16}) == f"GET /v1/cvms/{'a' * 64}?nonce={'ab' * 16}"
    assert canonical_target("GET", "/v1/ledger/head") == "GET /v1/ledger/head"
    # The order the query was sent in does not matter; names and values are percent-encoded.
    sent = canonical_target("GET", "/v1/ledger/entries", [("start", "0"), ("cvm", "a b&c=d"), ("nonce", "ff" * 16)])
    seen = canonical_target("GET", "/v1/ledger/entries", [("nonce", "ff" * 16), ("cvm", "a b&c=d"), ("start", "0")])
    assert sent == seen == f"GET /v1/ledger/entries?cvm=a%20b%26c%3Dd&nonce={'ff' * 16}&start=0"
    assert request_target("GET", "/v1/cvms") == sha256_hex(b"GET /v1/cvms")
    # Every part counts.
    targets = {
        request_target("GET", "/v1/cvms/a", {"nonce": "00" * 16}),
        request_target("GET", "/v1/cvms/b", {"nonce": "00" * 16}),
        request_target("POST", "/v1/cvms/a", {"nonce": "00" * 16}),
        request_target("GET", "/v1/cvms/a", {"nonce": "01" * 16}),
        request_target("GET", "/v1/cvms/a", {"nonce": "00" * 16, "cvm": "a"}),
        request_target("GET", "/v1/cvms/a?nonce=" + "00" * 16),
    }
    assert len(targets) == 6


def test_a_read_answer_for_another_target_is_refused() -> None:
    from duet.protocol.envelope import request_target

    key = keys.generate()
    nonce = "ab" * 16
    asked = request_target("GET", "/v1/cvms/" + "a" * 64, {"nonce": nonce})
    other = request_target("GET", "/v1/cvms/" + "b" * 64, {"nonce": nonce})
    answer = json.loads(
        sign_answer(canonical({"cvm": "b"}), controller=CONTROLLER, signing_key=key, nonce=nonce, request_target=other)
    )
    assert answer["request_target"] == other
    assert verify_answer(answer, controller=CONTROLLER, public_key=key.public_key(), nonce=nonce, request_target=other)
    with pytest.raises(VerificationError) as unbound:
        verify_answer(answer, controller=CONTROLLER, public_key=key.public_key(), nonce=nonce, request_target=asked)
    assert unbound.value.code == "answer_not_bound"
    # The target is signed: rewriting it breaks the signature.
    answer["request_target"] = asked
    with pytest.raises(VerificationError) as forged:
        verify_answer(answer, controller=CONTROLLER, public_key=key.public_key(), nonce=nonce, request_target=asked)
    assert forged.value.code == "bad_answer_signature"
    # An answer naming no target is not an answer to the one asked.
    bare = json.loads(sign_answer(canonical({}), controller=CONTROLLER, signing_key=key, nonce=nonce))
    with pytest.raises(VerificationError) as untargeted:
        verify_answer(bare, controller=CONTROLLER, public_key=key.public_key(), nonce=nonce, request_target=asked)
    assert untargeted.value.code == "answer_not_bound"


def test_an_error_with_no_request_digest_is_the_error_it_is_but_a_success_is_not() -> None:
    key = keys.generate()
    sent = request_digest({"op": "cvm.run"})
    refusal = {"error": {"code": "malformed_json", "message": "the request body is not valid JSON"}}
    error = json.loads(sign_answer(canonical(refusal), controller=CONTROLLER, signing_key=key, request_digest=None))
    assert verify_answer(error, controller=CONTROLLER, public_key=key.public_key(), request_digest=sent) == refusal
    success = json.loads(sign_answer(canonical({"results": []}), controller=CONTROLLER, signing_key=key, request_digest=None))
    with pytest.raises(VerificationError) as unbound:
        verify_answer(success, controller=CONTROLLER, public_key=key.public_key(), request_digest=sent)
    assert unbound.value.code == "answer_not_bound"
    # An error bound to another request is still refused.
    other = json.loads(
        sign_answer(canonical(refusal), controller=CONTROLLER, signing_key=key, request_digest=request_digest({"op": "x"}))
    )
    with pytest.raises(VerificationError) as elsewhere:
        verify_answer(other, controller=CONTROLLER, public_key=key.public_key(), request_digest=sent)
    assert elsewhere.value.code == "answer_not_bound"
