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
    ],
)
def test_any_change_to_an_answer_is_detected(field: str, value: object) -> None:
    key = keys.generate()
    answer = json.loads(
        sign_answer(canonical({"a": "x"}), controller=CONTROLLER, signing_key=key, request_digest="e" * 64, nonce="ab" * 16)
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
