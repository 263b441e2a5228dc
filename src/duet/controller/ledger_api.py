"""HTTP routes of the ledger (design.md §6): signed heads, entries, proofs, outputs, events.

Routes stay thin: parse, ask the ledger, sign. Proofs come from the in-memory tree in
O(log n) without reading any entry, so they stay cheap at millions of entries.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from duet.controller.api import _check_nonce, _controller, signed, target_of
from duet.controller.events import resume_point, stream
from duet.errors import BadRequest
from duet.ledger.heads import sign_head
from duet.ledger.log import MAX_PAGE
from duet.protocol.canonical import is_hex64
from duet.protocol.envelope import sign_answer

router = APIRouter(prefix="/v1")

Size = Annotated[int, Query(ge=0, le=2**62)]


@router.get("/ledger/head", summary="The signed tree head {tree_size, root_hash, timestamp, controller, signature}")
async def ledger_head(request: Request, nonce: str | None = None) -> Response:
    _check_nonce(nonce)
    controller = _controller(request)
    return signed(request, sign_head(controller.ledger.head(), controller.identity.signing_key))


@router.get(
    "/ledger/entries",
    summary=f"Ledger entries start <= seq < end (at most {MAX_PAGE}; page on from `end`), optionally of one CVM",
)
async def ledger_entries(
    request: Request,
    start: Size = 0,
    end: Size | None = None,
    cvm: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    nonce: str | None = None,
) -> Response:
    _check_nonce(nonce)
    return signed(request, _controller(request).ledger.page(start, end, cvm, limit))


@router.get("/ledger/proof/inclusion", summary="RFC 9162 inclusion proof of entry `index` in the tree of size `tree_size`")
async def inclusion_proof(request: Request, index: Size, tree_size: Size, nonce: str | None = None) -> Response:
    _check_nonce(nonce)
    return signed(request, _controller(request).ledger.inclusion(index, tree_size))


@router.get("/ledger/proof/consistency", summary="RFC 9162 consistency proof between tree sizes `first` <= `second`")
async def consistency_proof(request: Request, first: Size, second: Size, nonce: str | None = None) -> Response:
    _check_nonce(nonce)
    return signed(request, _controller(request).ledger.consistency(first, second))


@router.get("/blobs/{sha256}", summary="A command's stored stdout or stderr, addressed by its SHA-256")
async def blob(request: Request, sha256: str) -> Response:
    if not is_hex64(sha256):
        raise BadRequest("a blob is named by 64 lowercase hex characters (its SHA-256)", code="bad_blob_id")
    data = _controller(request).store.get_blob(sha256)
    return Response(content=data, media_type="application/octet-stream", headers={"X-Content-SHA256": sha256})


@router.get("/events", summary="Server-Sent Events: one signed event per new ledger entry; resume with Last-Event-ID or ?from=")
async def events(
    request: Request,
    from_seq: Annotated[int | None, Query(alias="from", ge=0, le=2**62)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
    nonce: str | None = None,
) -> StreamingResponse:
    _check_nonce(nonce)
    controller = _controller(request)
    target = target_of(request)

    def sign(result: bytes) -> bytes:
        return sign_answer(
            result,
            controller=controller.identity.controller_id,
            signing_key=controller.identity.signing_key,
            nonce=nonce,
            request_target=target,
        )

    return StreamingResponse(
        stream(controller.ledger, resume_point(from_seq, last_event_id), sign, controller.streams),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
