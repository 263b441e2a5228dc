"""Admission of signed owner requests (design.md §3).

A request is accepted only if its signer is a registered owner, its signature verifies, it
names this controller and the operation of the route, it was issued within the allowed skew,
and its nonce was never accepted before. The checks run in that order, so a stranger learns
nothing about nonces, and a nonce is only consumed by a request an owner really signed.
Nonces are persisted, so a restart does not reopen a replay window.

Admission is two steps, so that refusals are bound to the request they refuse: :meth:`parse`
reads the body and computes the request's digest (SHA-256 of JCS(request)) as soon as there is
a ``request`` object, which the route then puts in every answer, and :meth:`admit` runs the
checks above.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from duet import keys
from duet.controller.settings import Settings
from duet.controller.store import Store
from duet.errors import BadRequest, Conflict, InvalidParams, Unauthorized
from duet.protocol.canonical import canonical, parse_timestamp, sha256_hex
from duet.protocol.envelope import b64decode
from duet.protocol.models import PARAMS_BY_OP, SignedRequest
from duet.storage import Transaction

ParamsT = TypeVar("ParamsT", bound=BaseModel)


@dataclass(frozen=True)
class AuthorizedRequest(Generic[ParamsT]):
    op: str
    params: ParamsT
    """The validated params model of the op (e.g. RunParams); the service's methods name theirs."""
    signer: str
    digest: str
    """SHA-256 hex of JCS(request): what the answer and the ledger entries bind to."""
    protocol: str = "v1"
    """``"seed"`` for the seed's compatibility protocol (no replay protection, see
    controller/seed_api.py): its digest is then SHA-256 of the seed's signed params bytes."""
    body: dict[str, Any] | None = field(default=None, repr=False)
    """The signed request body as sent (op, controller, nonce, issued_at, params), and the
    owner's ``signature`` over its JCS: what a proposal records so every vote can be recounted."""
    signature: str | None = field(default=None, repr=False)
    before_first_entry: Callable[[Transaction, str | None], None] | None = field(default=None, repr=False)
    """For the execution of an approved proposal: called in the transaction of the operation's
    first entry, with that entry's CVM, to record ``proposal.executed`` there (or refuse)."""

    def entry_fields(self) -> dict[str, str]:
        """Extra fields for the ledger entries of this request; none for v1, so v1 entries
        stay exactly as they were, and auditors can tell replayable seed requests apart."""
        return {} if self.protocol == "v1" else {"protocol": self.protocol}


@dataclass(frozen=True)
class ParsedRequest:
    """A request body read as far as it goes: the JSON object, and the digest of its ``request``
    (None when there is no ``request`` object, or it has no canonical form)."""

    raw: dict[str, Any]
    request_bytes: bytes | None
    """JCS(request): what the owner signed."""
    digest: str | None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("the request body nests JSON too deeply", code="malformed_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}", code="malformed_json") from None
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object", code="malformed_json")
    return value


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, naming the field path, e.g. ``params.commands: Input should be a valid list``."""
    problems = []
    for error in exc.errors()[:5]:
        where = prefix + ".".join(str(part) for part in error["loc"]) or "body"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


class RequestAuthenticator:
    """Owners come from the sealed pin, given once (never from the database's owners table);
    seen nonces are kept in memory and persisted, so deleting rows while the controller runs
    reopens nothing."""

    def __init__(
        self,
        store: Store,
        controller_id: str,
        settings: Settings,
        owners: dict[str, str],
        *,
        clock: Callable[[], float] = time.time,
        not_before: float = 0.0,
        recent_requests: dict[str, float] | None = None,
    ) -> None:
        """``not_before``: the time of the last ledger entry; ``recent_requests``: digests of the
        owner requests the ledger recorded within the replay window, with their times. Both come
        from the verified ledger, so neither a deleted nonce row nor a clock set back reopens a
        replay after a restart."""
        self.store = store
        self._clock = clock
        """Seconds since the epoch (the host's clock; injected for tests). Never believed backwards:
        see ``now``."""
        self._floor = not_before
        self._requests: dict[str, float] = dict(recent_requests or {})
        self.controller_id = controller_id
        self.settings = settings
        self.owner_keys: dict[str, keys.PublicKey] = {
            key_id: keys.load_public_key_bytes(pem.encode(), f"owner key {key_id[:16]}") for key_id, pem in owners.items()
        }
        """The pinned owner set (key id → public key); the seed gateway uses it too."""
        now = self.now()
        self._nonces: dict[str, float] = dict.fromkeys(store.recent_nonces(now - settings.nonce_retention_s), now)

    def set_owners(self, owners: dict[str, str]) -> None:
        """The owner set in force after a governed change (key id → public PEM); in place, so
        the seed gateway, which holds the same mapping, sees it too."""
        loaded = {key_id: keys.load_public_key_bytes(pem.encode(), f"owner key {key_id[:16]}") for key_id, pem in owners.items()}
        self.owner_keys.clear()
        self.owner_keys.update(loaded)

    def now(self) -> float:
        """The host's clock, but never earlier than the last ledger entry or any time seen before:
        a clock set back would otherwise make an old signed request look fresh."""
        self._floor = max(self._floor, self._clock())
        return self._floor

    def _consume_nonce(self, nonce: str, signer: str, digest: str) -> bool:
        now = self.now()
        keep = self.settings.nonce_retention_s
        if nonce in self._nonces or digest in self._requests:
            return False
        if len(self._nonces) > 4096:
            self._nonces = {n: seen for n, seen in self._nonces.items() if seen >= now - keep}
        if len(self._requests) > 4096:
            self._requests = {d: seen for d, seen in self._requests.items() if seen >= now - keep}
        self._nonces[nonce] = now
        self._requests[digest] = now
        return self.store.consume_nonce(nonce, signer, now=now, keep_seconds=keep)

    def authenticate(self, body: bytes, op: str) -> AuthorizedRequest[Any]:
        """:meth:`parse` then :meth:`admit`."""
        return self.admit(self.parse(body), op)

    @staticmethod
    def parse(body: bytes) -> ParsedRequest:
        """The body as a JSON object with the digest of its ``request``; raises ``malformed_json``
        (answered with a null ``request_digest``) when it is not a JSON object."""
        raw = parse_json_object(body)
        request = raw.get("request")
        request_bytes: bytes | None = None
        if isinstance(request, dict):
            try:
                request_bytes = canonical(request)
            except Exception:  # no canonical form (e.g. huge numbers, lone surrogates): no digest
                request_bytes = None
        return ParsedRequest(raw, request_bytes, sha256_hex(request_bytes) if request_bytes is not None else None)

    def admit(self, parsed: ParsedRequest, op: str) -> AuthorizedRequest[Any]:
        """Run the admission checks on a parsed request for the route of ``op``."""
        try:
            envelope = SignedRequest.model_validate(parsed.raw)
        except ValidationError as exc:
            raise BadRequest(f"not a signed duet request: {describe_validation_error(exc)}", code="bad_envelope") from None
        public_key = self.owner_keys.get(envelope.signer)
        if public_key is None:
            raise Unauthorized(f"signer {envelope.signer[:16]}… is not an owner key of this controller", code="unknown_signer")
        try:
            signature = b64decode(envelope.signature)
            signature_ok = parsed.request_bytes is not None and keys.verify(public_key, signature, parsed.request_bytes)
        except Exception:  # not base64, or a key refusing hostile input
            signature_ok = False
        if not signature_ok:
            raise Unauthorized("the request's signature does not verify with the signer's key", code="bad_signature")
        if envelope.request.controller != self.controller_id:
            raise Unauthorized(
                f"the request is addressed to controller {envelope.request.controller[:16]}…, not to this one "
                f"({self.controller_id[:16]}…)",
                code="wrong_controller",
            )
        if envelope.request.op != op:
            raise BadRequest(
                f"the request is for operation {envelope.request.op!r}, but was sent to the route of {op!r}", code="wrong_op"
            )
        self._check_time(envelope.request.issued_at)
        params = self._params(op, envelope.request.params)
        digest = parsed.digest
        if digest is None:  # cannot happen: the signature verified over the request's canonical bytes
            raise Unauthorized("the request has no canonical form", code="bad_signature")
        if not self._consume_nonce(envelope.request.nonce, envelope.signer, digest):
            raise Conflict(
                "this request was already received once; a signed request is accepted only once", code="replayed_request"
            )
        return AuthorizedRequest(
            op=op,
            params=params,
            signer=envelope.signer,
            digest=digest,
            body=dict(parsed.raw["request"]),
            signature=envelope.signature,
        )

    def _check_time(self, issued_at: str) -> None:
        try:
            issued = parse_timestamp(issued_at)
        except ValueError:
            raise BadRequest(f"issued_at {issued_at!r} is not an RFC 3339 time with a zone", code="bad_envelope") from None
        skew = (datetime.fromtimestamp(self.now(), UTC) - issued).total_seconds()
        limit = self.settings.request_skew_s
        if skew > limit:
            raise Unauthorized(
                f"the request was issued {skew:.0f} s ago; requests are accepted for {limit:.0f} s", code="request_expired"
            )
        if skew < -limit:
            raise Unauthorized(
                f"the request is dated {-skew:.0f} s in the future; check the client's clock", code="request_from_future"
            )

    @staticmethod
    def _params(op: str, params: dict[str, Any]) -> BaseModel:
        model = PARAMS_BY_OP[op]
        try:
            return model.model_validate(params)
        except ValidationError as exc:
            raise InvalidParams(
                f"invalid params for {op}: {describe_validation_error(exc, 'params.')}", code="invalid_params"
            ) from None
