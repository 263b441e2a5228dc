"""HTTP routes of the ledger (design.md §6): signed heads, entries, proofs, outputs, events.

Routes stay thin: parse, ask the ledger, sign. Proofs come from the in-memory tree in
O(log n) without reading any entry, so they stay cheap at millions of entries.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from duet.controller.api import _check_nonce, _controller, signed, target_of
from duet.controller.events import resume_point, stream
from duet.controller.store import BlobLocation, Store, StoredBlobAltered
from duet.controller.witnessing import Checkpoints
from duet.errors import BadRequest, NotFound
from duet.ledger.heads import sign_head
from duet.ledger.log import MAX_PAGE
from duet.protocol.canonical import is_hex64
from duet.protocol.envelope import sign_answer

log = logging.getLogger("duet.ledger_api")

router = APIRouter(prefix="/v1")

Size = Annotated[int, Query(ge=0, le=2**62)]


@router.get("/ledger/head", summary="The signed tree head {tree_size, root_hash, timestamp, controller, signature}")
async def ledger_head(request: Request, nonce: str | None = None) -> Response:
    _check_nonce(nonce)
    controller = _controller(request)
    return signed(request, sign_head(controller.ledger.head(), controller.identity.signing_key))


CHECKPOINT_MEDIA_TYPE = "text/plain; charset=utf-8"


def _checkpoints(request: Request) -> Checkpoints:
    checkpoints = _controller(request).checkpoints
    if checkpoints is None:
        raise NotFound("this controller publishes no checkpoints", code="no_checkpoints")
    return checkpoints


@router.get(
    "/ledger/checkpoint",
    summary="The latest C2SP checkpoint (signed note, text/plain) with the witness cosignatures collected for it",
    description=(
        "The ledger's tree head as a C2SP tlog-checkpoint signed note (`text/plain; charset=utf-8`): origin "
        "`duet.controller/<controller id>`, size, base64 root hash, the controller's Ed25519 note signature, then "
        "the cosignature/v1 lines of the witnesses that cosigned exactly this checkpoint. `format=json`: the same "
        "note inside the usual signed answer, with `tree_size`, `root_hash`, `cosigned_by`, `witnesses`, `quorum`. "
        "`witnessed=true`: the newest checkpoint carrying the controller's witness quorum (404 if none yet), "
        "which may be older than the ledger's head. See docs/transparency.md."
    ),
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "The signed note."}},
)
async def ledger_checkpoint(
    request: Request,
    answer_format: Annotated[Literal["text", "json"], Query(alias="format")] = "text",
    witnessed: bool = False,
    nonce: str | None = None,
) -> Response:
    _check_nonce(nonce)
    served = _checkpoints(request).served(witnessed=witnessed)
    if answer_format == "json":
        return signed(request, served.to_json())
    return Response(content=served.note, media_type=CHECKPOINT_MEDIA_TYPE, headers={"Cache-Control": "no-store"})


@router.get(
    "/ledger/entries",
    summary=f"Ledger entries start <= seq < end (at most {MAX_PAGE}; page on from `end`), optionally of one CVM "
    "(`cvm=controller`: the entries about no CVM)",
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
    """Streamed from disk in chunks, each read and hashed off the event loop.

    An output of one chunk is checked whole before anything is sent (an altered one is refused
    with a signed error). A larger one is hashed while it streams, with ``Content-Length`` set
    and its last chunk held back until the whole hash matched: if it does not, the connection
    is reset before the last chunk, so no client ever receives the complete body of an altered
    output; it sees a body shorter than announced (a protocol error), and a client that
    checks the hash itself (the SDK, ``duet audit``) would refuse it anyway."""
    if not is_hex64(sha256):
        raise BadRequest("a blob is named by 64 lowercase hex characters (its SHA-256)", code="bad_blob_id")
    store = _controller(request).store
    where, first = await asyncio.to_thread(_first_chunk, store, sha256)
    headers = {"X-Content-SHA256": sha256}
    if where.size <= len(first):
        if hashlib.sha256(first).hexdigest() != sha256:
            raise StoredBlobAltered(f"the stored output {sha256[:16]}… was altered on disk; the controller will not serve it")
        return Response(content=first, media_type="application/octet-stream", headers=headers)
    headers["Content-Length"] = str(where.size)
    return StreamingResponse(_verified_stream(store, where, first), media_type="application/octet-stream", headers=headers)


def _first_chunk(store: Store, sha256: str) -> tuple[BlobLocation, bytes]:
    where = store.locate_blob(sha256)
    return where, store.read_blob(where, 0) if where.size else b""


def _read_hashed(store: Store, where: BlobLocation, offset: int, digest: hashlib._Hash) -> bytes:
    chunk = store.read_blob(where, offset)
    digest.update(chunk)  # in the worker thread too: hashlib releases the GIL on large buffers
    return chunk


async def _verified_stream(store: Store, where: BlobLocation, first: bytes) -> AsyncIterator[bytes]:
    digest = hashlib.sha256(first)
    held, offset = first, len(first)
    while offset < where.size:
        chunk = await asyncio.to_thread(_read_hashed, store, where, offset, digest)
        if not chunk:
            break
        yield held  # one chunk behind: the last one goes out only once the whole hash matched
        held, offset = chunk, offset + len(chunk)
    if offset != where.size or digest.hexdigest() != where.sha256:
        log.error("the stored output %s was altered on disk: its stream was cut before its end", where.sha256)
        raise StoredBlobAltered(f"the stored output {where.sha256[:16]}… was altered on disk; its stream was cut")
    yield held


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
