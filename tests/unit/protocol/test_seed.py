"""The seed's byte rules (specs/seed-api.md): exact bytes, exact signature scheme, exact hashes.

Expected values are written out by hand or computed with ``cryptography`` directly, never
with duet.protocol.seed itself, so that a wrong rule cannot agree with itself.
"""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from duet.protocol import seed
from duet.protocol.canonical import canonical

PSS_MAX = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


PARAMS = {"cvm_id": "ab" * 32, "commands": ["echo café", "ls -l"], "z": None, "a": {"y": True, "x": 1.5}}


def test_seed_bytes_are_json_dumps_with_sorted_keys_default_separators_and_ascii() -> None:
    expected = (
        b'{"a": {"x": 1.5, "y": true}, "commands": ["echo caf\\u00e9", "ls -l"], "cvm_id": "' + b"ab" * 32 + b'", "z": null}'
    )
    assert seed.seed_bytes(PARAMS) == expected
    assert seed.seed_bytes(PARAMS) != canonical(PARAMS)  # not RFC 8785: spaces, \u escapes


def test_digest_is_sha256_of_the_seed_bytes() -> None:
    assert seed.digest(PARAMS) == hashlib.sha256(json.dumps(PARAMS, sort_keys=True).encode()).hexdigest()


def test_signature_verifies_with_pss_max_salt_over_exact_bytes(key: rsa.RSAPrivateKey) -> None:
    signature = base64.b64decode(seed.sign(key, PARAMS), validate=True)
    key.public_key().verify(signature, json.dumps(PARAMS, sort_keys=True).encode(), PSS_MAX, hashes.SHA256())
    assert len(signature) == 256


def test_a_signature_made_independently_verifies(key: rsa.RSAPrivateKey) -> None:
    signature = key.sign(json.dumps(PARAMS, sort_keys=True).encode(), PSS_MAX, hashes.SHA256())
    assert seed.verify(key.public_key(), base64.b64encode(signature).decode(), PARAMS)


def test_signature_over_other_bytes_of_the_same_object_is_refused(key: rsa.RSAPrivateKey) -> None:
    for wrong in (
        json.dumps(PARAMS, sort_keys=True, separators=(",", ":")).encode(),
        json.dumps(PARAMS, sort_keys=True, ensure_ascii=False).encode(),
        json.dumps(PARAMS).encode(),
        canonical(PARAMS),
    ):
        signature = base64.b64encode(key.sign(wrong, PSS_MAX, hashes.SHA256())).decode()
        assert not seed.verify(key.public_key(), signature, PARAMS)


def test_other_salt_lengths_and_schemes_are_refused(key: rsa.RSAPrivateKey) -> None:
    data = seed.seed_bytes(PARAMS)
    salt32 = key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
    pkcs1 = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    salt_max_less_one = key.sign(
        data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=256 - 32 - 2 - 1), hashes.SHA256()
    )
    for signature in (salt32, salt_max_less_one, pkcs1):
        assert not seed.verify(key.public_key(), base64.b64encode(signature).decode(), PARAMS)


@pytest.mark.parametrize("signature", [None, 7, "", "not base64!", "QUJD", ["x"]])
def test_malformed_signatures_are_refused_not_raised(key: rsa.RSAPrivateKey, signature: object) -> None:
    assert not seed.verify(key.public_key(), signature, PARAMS)


def test_wrong_key_and_tampered_params_are_refused(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    signature = seed.sign(key, PARAMS)
    assert seed.verify(key.public_key(), signature, PARAMS)
    assert not seed.verify(other_key.public_key(), signature, PARAMS)
    assert not seed.verify(key.public_key(), signature, {**PARAMS, "commands": ["rm -rf /"]})


def test_unserializable_params_are_refused_not_raised(key: rsa.RSAPrivateKey) -> None:
    assert not seed.verify(key.public_key(), seed.sign(key, PARAMS), {"x": object()})


def test_signed_answer_and_error_shapes(key: rsa.RSAPrivateKey) -> None:
    result = seed.error_result("run-commands", "No such CVM.")
    assert result == {"success": False, "error": "run-commands: No such CVM."}
    answer = seed.signed_answer(key, result)
    assert set(answer) == {"result", "signature"}
    key.public_key().verify(
        base64.b64decode(answer["signature"]), json.dumps(result, sort_keys=True).encode(), PSS_MAX, hashes.SHA256()
    )


@pytest.mark.parametrize(
    ("streams", "lines"),
    [
        (("Python 3.10.12\n",), ["Python 3.10.12\n"]),
        (("a\nb\n", "warn\n"), ["a\n", "b\n", "warn\n"]),
        (("no newline", "err"), ["no newline", "err"]),
        (("crlf\r\n",), ["crlf\r\n"]),
        (("10%\r50%\r100%\n",), ["10%\r50%\r100%\n"]),
        (("\n\n",), ["\n", "\n"]),
        (("", ""), []),
    ],
)
def test_output_lines_keep_their_newlines(streams: tuple[str, ...], lines: list[str]) -> None:
    assert seed.output_lines(*streams) == lines


def test_output_hash_is_sha256_of_python_str_of_the_list() -> None:
    # The spec's example: str(['Python 3.10.12\r\n']) is the text ['Python 3.10.12\r\n'] with a
    # backslash-r and backslash-n written out.
    text = "['Python 3.10.12\\r\\n']"
    assert seed.output_hash(["Python 3.10.12\r\n"]) == hashlib.sha256(text.encode()).hexdigest()
    assert seed.output_hash([]) == hashlib.sha256(b"[]").hexdigest()
    assert seed.output_hash(["it's\n"]) == hashlib.sha256(b'["it\'s\\n"]').hexdigest()
