"""HTTP routes of protocol v1: parse, call one service method, return the signed answer.

Every answer, errors included, is signed by the controller and bound to the request it
answers: every answer names its method, path and query (``request_target``, see
protocol/envelope.py), state-changing calls carry the digest of the signed request (set as soon
as the body parsed, so refusals are bound too), and reads echo the client's optional ``?nonce=``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from duet.controller.auth import AuthorizedRequest
from duet.controller.proposals import Answered
from duet.controller.runtime import Controller
from duet.controller.store import OutputPruned
from duet.errors import (
    BadRequest,
    Conflict,
    DuetError,
    Forbidden,
    InvalidParams,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UpstreamError,
    VerificationError,
)
from duet.ledger.merkle import MerkleError
from duet.protocol.canonical import canonical
from duet.protocol.envelope import request_target, sign_answer

log = logging.getLogger("duet.api")

NONCE_RE = re.compile(r"^[0-9a-f]{16,64}$")

router = APIRouter(prefix="/v1")


def _controller(request: Request) -> Controller:
    return request.app.state.controller  # type: ignore[no-any-return]


def target_of(request: Request) -> str:
    """``request_target`` of this request: its method, (percent-decoded) path and query pairs,
    parsed as Starlette parses them, in the canonical form of protocol/envelope.py."""
    query = parse_qsl(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return request_target(request.method, request.scope["path"], query)


def signed(request: Request, result: Any, *, status: int = 200, raw: tuple[bytes, str] | None = None) -> Response:
    """Sign ``result`` as this request's answer; ``raw`` is a cached (JCS bytes, SHA-256) of it."""
    controller = _controller(request)
    nonce = request.query_params.get("nonce")
    if nonce is not None and not NONCE_RE.match(nonce):
        nonce = None
    result_bytes, result_sha256 = raw if raw is not None else (canonical(result), None)
    body = sign_answer(
        result_bytes,
        result_sha256=result_sha256,
        controller=controller.identity.controller_id,
        signing_key=controller.identity.signing_key,
        request_digest=getattr(request.state, "request_digest", None),
        nonce=nonce,
        request_target=target_of(request),
    )
    return Response(content=body, status_code=status, media_type="application/json")


async def signed_off_loop(request: Request, result: Any, *, status: int = 200) -> Response:
    """:func:`signed` in a worker thread, for answers that may be tens of megabytes (a run's
    outputs, JSON-escaped): canonicalizing and hashing them takes a second or more, which on the
    event loop would stall every other client, ``/v1/ledger/head`` included."""
    return await asyncio.to_thread(signed, request, result, status=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` (before parsing)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is {declared} bytes; the limit is {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
    except ClientDisconnect:  # the client left, or the server closed a stalled body (408)
        raise BadRequest("the connection closed before the request body arrived in full", code="body_incomplete") from None
    return bytes(body)


async def _authorized(request: Request, op: str, cvm_id: str | None = None) -> AuthorizedRequest[Any]:
    controller = _controller(request)
    body = await read_body(request, controller.settings.max_body_bytes)
    parsed = controller.authenticator.parse(body)
    request.state.request_digest = parsed.digest  # from here on, refusals are bound to the request
    authorized = controller.authenticator.admit(parsed, op)
    if cvm_id is not None and authorized.params.cvm_id != cvm_id:
        raise BadRequest("the CVM id in the path differs from the one in the signed params", code="cvm_id_mismatch")
    return authorized


def _check_nonce(nonce: str | None) -> None:
    if nonce is not None and not NONCE_RE.match(nonce):
        raise BadRequest("nonce must be 16 to 64 lowercase hex characters", code="bad_nonce")


# --- owner operations (signed requests) ------------------------------------------------


async def _perform(
    request: Request, op: str, action: Any, *, cvm_id: str | None = None, status: int = 200, off_loop: bool = False
) -> Response:
    """Admit the signed request for ``op`` and run ``action`` on it, unless the approval policy
    makes it a proposal (answered 202 with the proposal; it runs once enough owners approve)."""
    authorized = await _authorized(request, op, cvm_id)
    controller = _controller(request)
    assert controller.proposals is not None
    admitted = controller.proposals.admit(authorized)
    if isinstance(admitted, Answered):
        return signed(request, admitted.answer, status=admitted.status)
    result = await action(admitted)
    return await signed_off_loop(request, result, status=status) if off_loop else signed(request, result, status=status)


@router.post("/cvms", status_code=202, summary="Start a CVM (signed op cvm.start); answers at once with a job id")
async def start_cvm(request: Request) -> Response:
    return await _perform(request, "cvm.start", _controller(request).service.start, status=202)


@router.post("/cvms/{cvm_id}/run", summary="Run commands on an in-update CVM (signed op cvm.run)")
async def run_commands(request: Request, cvm_id: str) -> Response:
    return await _perform(request, "cvm.run", _controller(request).service.run, cvm_id=cvm_id, off_loop=True)


@router.post("/cvms/{cvm_id}/mark", summary="Mark a CVM in-service or in-update (signed op cvm.mark)")
async def mark_cvm(request: Request, cvm_id: str) -> Response:
    return await _perform(request, "cvm.mark", _controller(request).service.mark, cvm_id=cvm_id)


@router.post("/cvms/{cvm_id}/stop", status_code=202, summary="Stop a CVM and delete its resources (signed op cvm.stop)")
async def stop_cvm(request: Request, cvm_id: str) -> Response:
    return await _perform(request, "cvm.stop", _controller(request).service.stop, cvm_id=cvm_id, status=202)


@router.post("/cvms/{cvm_id}/attest", summary="Attest a running CVM now (signed op cvm.attest); answers the verdict")
async def attest_cvm(request: Request, cvm_id: str) -> Response:
    return await _perform(request, "cvm.attest", _controller(request).service.attest, cvm_id=cvm_id)


@router.post("/owners", summary="Add or remove owner keys (signed op owners.change; governed by the approval policy)")
async def change_owners(request: Request) -> Response:
    controller = _controller(request)
    assert controller.proposals is not None
    return await _perform(request, "owners.change", controller.proposals.change_owners)


@router.post("/policy", summary="Change the approval policy (signed op policy.change; governed by the approval policy)")
async def change_policy(request: Request) -> Response:
    controller = _controller(request)
    assert controller.proposals is not None
    return await _perform(request, "policy.change", controller.proposals.change_policy)


# --- proposals (design §11) -------------------------------------------------------------


async def _vote(request: Request, op: str, proposal_id: str) -> Response:
    controller = _controller(request)
    assert controller.proposals is not None
    try:
        authorized = await _authorized(request, op)
    except DuetError as exc:  # a counted vote sent again is refused as the replayed approval it is
        raise controller.proposals.replay_refusal(getattr(request.state, "request_digest", None), exc) from None
    if authorized.params.proposal_id != proposal_id:
        raise BadRequest("the proposal id in the path differs from the one in the signed params", code="proposal_id_mismatch")
    return await signed_off_loop(request, await controller.proposals.vote(authorized))


@router.post(
    "/proposals/{proposal_id}/approve",
    summary="Approve a proposal (signed op proposal.approve); the approval that meets the threshold executes it",
)
async def approve_proposal(request: Request, proposal_id: str) -> Response:
    return await _vote(request, "proposal.approve", proposal_id)


@router.post("/proposals/{proposal_id}/reject", summary="Reject a proposal (signed op proposal.reject)")
async def reject_proposal(request: Request, proposal_id: str) -> Response:
    return await _vote(request, "proposal.reject", proposal_id)


@router.post("/proposals/{proposal_id}/withdraw", summary="Withdraw one's own proposal (signed op proposal.withdraw)")
async def withdraw_proposal(request: Request, proposal_id: str) -> Response:
    return await _vote(request, "proposal.withdraw", proposal_id)


@router.get("/proposals", summary="Proposals, newest first (?limit=, 100 by default); ?status=pending for those waiting")
async def list_proposals(request: Request, status: str | None = None, limit: int = 100, nonce: str | None = None) -> Response:
    _check_nonce(nonce)
    controller = _controller(request)
    assert controller.proposals is not None
    return signed(request, controller.proposals.list(status=status, limit=limit))


@router.get("/proposals/{proposal_id}", summary="A proposal: its request, approvals (and whether each counts), expiry, outcome")
async def show_proposal(request: Request, proposal_id: str, nonce: str | None = None) -> Response:
    _check_nonce(nonce)
    controller = _controller(request)
    assert controller.proposals is not None
    return signed(request, controller.proposals.show(proposal_id))


# --- public reads ----------------------------------------------------------------------


@router.get("/cvms", summary="List CVMs")
async def list_cvms(request: Request, nonce: str | None = None) -> Response:
    _check_nonce(nonce)
    return signed(request, _controller(request).service.list_cvms())


@router.get("/cvms/{cvm_id}", summary="A CVM's state and a summary of its history, tied to ledger entries by seq")
async def cvm_state(request: Request, cvm_id: str, nonce: str | None = None) -> Response:
    return _state_answer(request, cvm_id)


def _state_answer(request: Request, cvm_id: str) -> Response:
    _check_nonce(request.query_params.get("nonce"))
    return signed(request, None, raw=_controller(request).service.state_bytes(cvm_id))


async def _state_fast(request: Request) -> Response:
    return _state_answer(request, request.path_params["cvm_id"])


FAST_ROUTES = [Route("/v1/cvms/{cvm_id}", _state_fast, methods=["GET"])]
"""The state read, the one users poll, served as a plain Starlette route in front of its
FastAPI twin (which stays, for OpenAPI): FastAPI's per-request parameter machinery cost a
third of its throughput (bench/state_throughput.py over HTTPS: 1,180 → 1,780 reads/s)."""


@router.get("/jobs/{job_id}", summary="A start or stop job's status")
async def job_status(request: Request, job_id: str, nonce: str | None = None) -> Response:
    _check_nonce(nonce)
    return signed(request, _controller(request).service.job(job_id))


@router.get("/attestation", summary="The controller's identity document and TEE evidence")
async def attestation(request: Request, nonce: str | None = None) -> Response:
    _check_nonce(nonce)
    return signed(request, _controller(request).attestation())


# --- errors: always signed JSON, never an HTML 500 -------------------------------------

HTTP_STATUS: dict[type[DuetError], int] = {
    BadRequest: 400,
    VerificationError: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    OutputPruned: 410,
    PayloadTooLarge: 413,
    InvalidParams: 422,
    MerkleError: 422,
    UpstreamError: 502,
}
"""The one place an error type becomes an HTTP status; anything else is the controller's own
failure (500)."""


def http_status(exc: DuetError) -> int:
    """The status of the nearest error type in ``HTTP_STATUS`` (subclasses answer as their base)."""
    for kind in type(exc).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]
    return 500


def install_error_handlers(app: FastAPI) -> None:
    async def duet_error(request: Request, exc: DuetError) -> Response:
        return signed(request, exc.to_json(), status=http_status(exc))

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()[:5])
        return signed(request, {"error": {"code": "invalid_params", "message": problems}}, status=422)

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "no_such_route", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return signed(
            request,
            {"error": {"code": code, "message": f"{request.method} {request.url.path}: {exc.detail}"}},
            status=exc.status_code,
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return signed(
            request,
            {
                "error": {
                    "code": "internal_error",
                    "message": "the controller hit an unexpected error; it is in the controller's log",
                }
            },
            status=500,
        )

    app.add_exception_handler(DuetError, duet_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected)
