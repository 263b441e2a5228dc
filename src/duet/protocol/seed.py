"""The seed's byte rules (specs/seed-api.md), for the compatibility protocol only.

The seed signs the UTF-8 bytes of Python's ``json.dumps(obj, sort_keys=True)`` — default
separators ``", "``/``": "``, ``ensure_ascii=True`` — with RSA-PSS (MGF1-SHA-256, maximum
salt length, SHA-256), and moves signatures as standard base64. None of this is RFC 8785 and
none of it binds a request to a time, a nonce or a controller: that is why duet's own
protocol (``duet.protocol.envelope``) exists. These functions reproduce the seed's bytes
exactly so its clients keep working; they are not to be used for anything else.

Kept free of pydantic and of the server, so that ``duet seed-client`` starts fast.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from duet.protocol.envelope import b64decode, b64encode

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
"""Signing padding: the maximum salt length."""


def _verify_padding(key: rsa.RSAPublicKey) -> padding.PSS:
    """The maximum salt length as a number: with ``PSS.MAX_LENGTH`` verification would accept
    any salt length (it acts as "auto"); the spec says maximum, so exactly that is accepted.
    RFC 8017 §9.1.1: emLen = ceil((modBits - 1) / 8), maximum salt = emLen - hLen - 2."""
    em_len = (key.key_size - 1 + 7) // 8
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=em_len - hashes.SHA256.digest_size - 2)


_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")


def seed_bytes(obj: Any) -> bytes:
    """What the seed signs: ``json.dumps(obj, sort_keys=True)`` as UTF-8 (ASCII, in fact)."""
    return json.dumps(obj, sort_keys=True).encode("utf-8")


def digest(obj: Any) -> str:
    """SHA-256 hex of the seed bytes of ``obj``: how duet's ledger names a seed request."""
    return hashlib.sha256(seed_bytes(obj)).hexdigest()


def sign(key: rsa.RSAPrivateKey, obj: Any) -> str:
    """Base64 RSA-PSS signature over the seed bytes of ``obj``."""
    return b64encode(key.sign(seed_bytes(obj), PSS, hashes.SHA256()))


def verify(key: rsa.RSAPublicKey, signature_b64: Any, obj: Any) -> bool:
    """True only if ``signature_b64`` is a base64 RSA-PSS (max salt) signature of ``obj``'s seed bytes."""
    if not isinstance(signature_b64, str):
        return False
    try:
        signature = b64decode(signature_b64)
        data = seed_bytes(obj)
    except (ValueError, TypeError):
        return False
    try:
        key.verify(signature, data, _verify_padding(key), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def signed_answer(key: rsa.RSAPrivateKey, result: dict[str, Any]) -> dict[str, Any]:
    """Every seed answer but ``/quote``: ``{"result": result, "signature": <over result>}``."""
    return {"result": result, "signature": sign(key, result)}


def error_result(op: str, reason: str) -> dict[str, Any]:
    """The seed's failure shape, e.g. ``run-commands: No such CVM.``."""
    return {"success": False, "error": f"{op}: {reason}"}


def output_lines(*streams: str) -> list[str]:
    """Split each stream into lines that keep their ``\\n``, streams one after the other.

    Lines end at ``\\n`` only, as the seed's ``readline`` cut them (a lone ``\\r`` of a
    progress bar does not end a line); a last line without ``\\n`` is kept as it is.
    """
    lines: list[str] = []
    for text in streams:
        lines.extend(_LINE.findall(text))
    return lines


def output_hash(lines: list[str]) -> str:
    """SHA-256 hex of Python's ``str()`` of the line list, as the seed hashed outputs."""
    return hashlib.sha256(str(lines).encode("utf-8")).hexdigest()
