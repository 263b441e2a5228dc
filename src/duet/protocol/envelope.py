"""The signed envelopes of protocol v1 (design.md §3).

Owner requests: ``{"request": {op, controller, nonce, issued_at, params}, "signer", "signature"}``
with the signature over JCS(request).

Controller answers: ``{"controller", "request_digest", "request_target", "result",
"result_sha256", "signed_at", ["nonce"], "signature"}``. The signature covers JCS of every field
but ``result`` and ``signature``; ``result_sha256`` (SHA-256 hex of JCS(result)) ties the result
in. An answer is bound to what it answers twice over:

- ``request_digest``: SHA-256 hex of JCS(request) of the signed owner request it answers, set as
  soon as the body parsed into an envelope with a ``request`` object, so refusals (invalid
  params, wrong op, expired, replayed, unknown signer...) are bound too; ``null`` for reads and
  for a body too malformed to have a digest. A client that sent a signed request accepts a
  ``null`` digest only on an *error* answer (its result is ``{"error": ...}``), never on a success.
  A bound refusal says the controller refused *that copy* of the request. Refusals that follow
  from the request itself (invalid params, wrong op or controller, a mode refusal) prove it
  never took effect; those that depend on what surrounds it (signer, signature, time, a nonce
  already seen) do not: a man in the middle may forward the genuine request and also a delayed
  copy or one with a spoiled signature. The ledger says what ran.
- ``request_target``: SHA-256 hex of the request's target in canonical form (:func:`canonical_target`):
  ``METHOD SP path ["?" query]``, the path percent-decoded then re-encoded with
  ``urllib.parse.quote(path, safe="/")``, the query's (name, value) pairs percent-decoded, sorted,
  each encoded with ``quote(part, safe="")`` and joined as ``name=value`` with ``&`` (no ``?`` when
  there is no pair). E.g. ``GET /v1/cvms/<id>?nonce=<hex>``. It names what a read asked for (a
  proxy that sends ``/v1/cvms/A`` to ``/v1/cvms/B`` makes B's answer name B) and, with the echoed
  ``?nonce=``, when. Every answer of the v1 HTTP routes carries it (each event of
  ``/v1/events`` names the stream's request); the seed protocol's answers do not.

Signing a digest instead of the result itself is what lets a large answer (a state with 1,000
ledger entries is ~0.5 MB) be canonicalized and hashed once per ledger size and then signed per
request in microseconds (design.md §3: the per-request work is the small envelope).
Answers are assembled from the result's canonical bytes; the body is itself canonical JSON.

This module stays free of pydantic so that the CLI starts fast; the server-side models of
the envelopes are in ``protocol.models``.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from duet import keys
from duet.errors import UntrustedAnswer
from duet.protocol.canonical import canonical, sha256_hex, timestamp

ANSWER_FIELDS = frozenset({"controller", "request_digest", "result", "result_sha256", "signed_at", "signature"})
"""The fields every signed answer has; ``nonce`` and ``request_target`` are there when set."""


def new_nonce() -> str:
    return secrets.token_hex(16)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("not valid base64") from None


def sign_request(
    op: str,
    controller: str,
    params: dict[str, Any],
    key: keys.PrivateKey,
    *,
    nonce: str | None = None,
    issued_at: str | None = None,
) -> dict[str, Any]:
    """Build the signed envelope an owner sends for a state-changing call."""
    request = {
        "op": op,
        "controller": controller,
        "nonce": nonce or new_nonce(),
        "issued_at": issued_at or timestamp(),
        "params": params,
    }
    signature = keys.sign(key, canonical(request))
    return {"request": request, "signer": keys.key_id(key.public_key()), "signature": b64encode(signature)}


def request_digest(request: dict[str, Any]) -> str:
    """SHA-256 hex of JCS(request): what an answer and the ledger bind to."""
    return sha256_hex(canonical(request))


def request_signature_valid(request: dict[str, Any], signature_b64: str, public_key: keys.PublicKey) -> bool:
    try:
        signature = b64decode(signature_b64)
    except ValueError:
        return False
    return keys.verify(public_key, signature, canonical(request))


def _encoded(text: str, safe: str) -> str:
    return quote(text, safe=safe, errors="backslashreplace")


def canonical_target(method: str, path: str, query: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> str:
    """The canonical form of a request's target: ``METHOD SP path ["?" name=value *("&" name=value)]``.

    ``path`` and the query's names and values are given percent-decoded (as a server sees them
    after parsing, as a client means them before encoding); the pairs are sorted, so the order
    they were sent in does not matter, and each part is percent-encoded again (``/`` kept in
    the path), so the form is unambiguous."""
    pairs = sorted(query.items() if isinstance(query, Mapping) else query)
    target = f"{method.upper()} {_encoded(path, '/')}"
    if pairs:
        target += "?" + "&".join(f"{_encoded(name, '')}={_encoded(value, '')}" for name, value in pairs)
    return target


def request_target(method: str, path: str, query: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> str:
    """SHA-256 hex of :func:`canonical_target`: the ``request_target`` an answer signs."""
    return sha256_hex(canonical_target(method, path, query).encode("ascii"))


_PLAIN = re.compile(r"[0-9A-Za-z:.+/=_-]*")


def _canonical_field(value: str | None) -> bytes:
    """JCS of an envelope field. Ids, digests, times and base64 have no character JSON
    escapes, so their JCS is the text in quotes; anything else goes through rfc8785."""
    if value is not None and _PLAIN.fullmatch(value):
        return b'"' + value.encode("ascii") + b'"'
    return canonical(value)


def _assemble(fields: dict[str, bytes]) -> bytes:
    """Join already-canonical member values into one canonical object (keys are ASCII)."""
    members = [canonical(name) + b":" + value for name, value in sorted(fields.items())]
    return b"{" + b",".join(members) + b"}"


def sign_answer(
    result_bytes: bytes,
    *,
    controller: str,
    signing_key: keys.PrivateKey,
    request_digest: str | None = None,
    nonce: str | None = None,
    request_target: str | None = None,
    signed_at: str | None = None,
    result_sha256: str | None = None,
) -> bytes:
    """Return the whole answer body; ``result_bytes`` must be JCS(result).

    ``request_target`` is :func:`request_target` of the request answered (omitted when None).
    ``result_sha256`` may be passed when the caller cached it with the bytes."""
    fields = {
        "controller": _canonical_field(controller),
        "request_digest": _canonical_field(request_digest),
        "result_sha256": _canonical_field(result_sha256 or sha256_hex(result_bytes)),
        "signed_at": _canonical_field(signed_at or timestamp()),
    }
    if nonce is not None:
        fields["nonce"] = _canonical_field(nonce)
    if request_target is not None:
        fields["request_target"] = _canonical_field(request_target)
    signature = keys.sign(signing_key, _assemble(fields))
    fields["result"] = result_bytes
    fields["signature"] = _canonical_field(b64encode(signature))
    return _assemble(fields)


def verify_answer(
    answer: Any,
    *,
    controller: str,
    public_key: keys.PublicKey,
    request_digest: str | None = None,
    nonce: str | None = None,
    request_target: str | None = None,
) -> Any:
    """Check an answer's signature and bindings; return its ``result``.

    Each binding given is required: ``request_digest`` (the digest of the signed request sent;
    an *error* answer whose ``request_digest`` is null is accepted as the refusal of a request
    too malformed to have a digest, a success never is), ``nonce`` (echoed), ``request_target``
    (:func:`request_target` of the method, path and query sent).

    Raises UntrustedAnswer (a VerificationError) naming exactly what did not hold.
    """
    if not isinstance(answer, dict) or not ANSWER_FIELDS <= answer.keys():
        raise UntrustedAnswer("the answer is not a signed duet answer (fields missing)", code="unsigned_answer")
    if answer["controller"] != controller:
        raise UntrustedAnswer(
            f"the answer was signed for controller {str(answer['controller'])[:16]}…, not the expected {controller[:16]}…",
            code="wrong_controller",
        )
    signed = {name: value for name, value in answer.items() if name not in ("result", "signature")}
    try:
        signature = b64decode(answer["signature"])
    except (ValueError, AttributeError, TypeError):
        raise UntrustedAnswer("the answer's signature is not base64", code="bad_answer_signature") from None
    try:
        signed_bytes, result_bytes = canonical(signed), canonical(answer["result"])
    except Exception:
        raise UntrustedAnswer("the answer cannot be put in canonical form", code="bad_answer_signature") from None
    if not keys.verify(public_key, signature, signed_bytes):
        raise UntrustedAnswer("the answer's signature does not verify with the controller's key", code="bad_answer_signature")
    if sha256_hex(result_bytes) != answer["result_sha256"]:
        raise UntrustedAnswer(
            "the answer's result is not the one the controller signed (digest differs)", code="bad_answer_signature"
        )
    if request_digest is not None and answer["request_digest"] != request_digest:
        if answer["request_digest"] is not None or not _is_error(answer["result"]):
            raise UntrustedAnswer("the answer is bound to a different request than the one sent", code="answer_not_bound")
    if nonce is not None and answer.get("nonce") != nonce:
        raise UntrustedAnswer("the answer does not echo the nonce that was sent (possibly replayed)", code="stale_answer")
    if request_target is not None and answer.get("request_target") != request_target:
        raise UntrustedAnswer(
            "the answer is for another method, path or query than the one sent (the request was redirected or rewritten)",
            code="answer_not_bound",
        )
    return answer["result"]


def _is_error(result: Any) -> bool:
    """Whether a (signed) result is a refusal, ``{"error": {"code", "message"}}``."""
    return isinstance(result, dict) and set(result) == {"error"} and isinstance(result["error"], dict)
