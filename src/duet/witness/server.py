"""The witness's HTTP interface (c2sp.org/tlog-witness) and its server.

``POST /add-checkpoint`` takes ``old <size>``, up to 63 consistency proof lines (base64 hashes),
a blank line and a checkpoint note signed by the log; the checks, in order:

====  ==========================================================================================
400   the body is not of that form (or the note is not a checkpoint); or the old size is larger
      than the checkpoint's
404   the checkpoint's origin is not a log this witness is configured for
403   no key the witness trusts for that origin signed it, or a signature line naming such a key
      does not verify
409   the old size is not the size of the latest checkpoint the witness cosigned for the log (0
      if none): the body is that size and a newline, ``Content-Type: text/x.tlog.size``
422   a checkpoint of size 0 without the empty tree's root; a proof given from old size 0; a
      consistency proof that does not verify from the witness's latest checkpoint (which covers
      the same size with another root: a fork)
200   the witness's cosignature/v1 line, after the checkpoint became its latest one on disk
====  ==========================================================================================

Also: ``413`` for a body over ``max_body_bytes`` (refused on its declared length before any of it
is read, or as soon as a streamed body passes the limit; the connection is then closed), ``408``
for a body that does not arrive within ``body_timeout_s``, ``405`` for another method, ``500``
when the state cannot be written (the witness then cosigns nothing until restarted).

``GET /vkey`` answers the witness's verifier key; ``GET /<sha256 hex of origin>/checkpoint``
the latest checkpoint it cosigned for a log, with the log's signature(s) and its cosignature
(tlog-witness's monitoring API), 404 if none.

Requests for one log are handled one at a time (an ``asyncio.Lock`` per origin), so checking the
old size and recording the new checkpoint are atomic, as the spec requires; ``WitnessState.record``
is a compare-and-swap as well, so the rule holds even if that serialization were lost. The server
is uvicorn with the controller's own connection handling (``duet.controller.limits``): bounded
request heads, header and body deadlines, connection limits overall and per address.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from duet.ledger.checkpoint import MAX_SIZE, Checkpoint, cosign, parse_checkpoint
from duet.ledger.merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from duet.ledger.note import (
    MalformedNote,
    Note,
    NoteError,
    NoteNotSigned,
    NoteSignatureInvalid,
    NoteVerifier,
    b64decode,
    open_note,
    parse_note,
    parse_signature_lines,
)
from duet.witness import DEFAULT_PORT, ServeSettings
from duet.witness.state import Cosigned, RollbackRefused, StaleState, StateWriteFailed, WitnessState

if TYPE_CHECKING:
    import uvicorn

    from duet.controller.limits import Guard

__all__ = [
    "DEFAULT_PORT",
    "MAX_PROOF_LINES",
    "SIZE_CONTENT_TYPE",
    "AddCheckpointRequest",
    "Refusal",
    "ServeSettings",
    "Witness",
    "WitnessApp",
    "origin_hash",
    "parse_add_checkpoint",
    "serve",
]

log = logging.getLogger("duet.witness")

MAX_PROOF_LINES = 63
"""tlog-witness: a client MUST NOT send more (a proof within a tree of 2^64 leaves needs fewer)."""
SIZE_CONTENT_TYPE = "text/x.tlog.size"
TEXT = "text/plain; charset=utf-8"
_OLD_LINE = re.compile(rb"old (0|[1-9][0-9]{0,19})")
_ORIGIN_HASH_PATH = re.compile(r"/([0-9a-f]{64})/checkpoint")
_LOGGED_BODY_BYTES = 8192


class Refusal(Exception):
    """An add-checkpoint (or other request) the witness answers with ``status``."""

    def __init__(self, status: int, message: str, *, body: bytes | None = None, content_type: str = TEXT) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body if body is not None else message.encode("utf-8") + b"\n"
        self.content_type = content_type


# --- the request ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddCheckpointRequest:
    old_size: int
    proof: tuple[bytes, ...]
    note: Note
    checkpoint: Checkpoint
    body: bytes

    @property
    def origin(self) -> str:
        return self.checkpoint.origin


def parse_add_checkpoint(body: bytes) -> AddCheckpointRequest:
    """The add-checkpoint body's parts, or ``Refusal(400)``: nothing is verified here."""
    head, blank, note_bytes = body.partition(b"\n\n")
    if not blank:
        raise Refusal(400, "the body is not: an old size line, proof lines, a blank line, then the checkpoint")
    lines = head.split(b"\n")
    match = _OLD_LINE.fullmatch(lines[0])
    if match is None:
        raise Refusal(400, "the first line is not 'old <size>' (decimal, no leading zeros)")
    old_size = int(match.group(1))
    if old_size > MAX_SIZE:
        raise Refusal(400, "the old size is beyond 2^64 - 1")
    proof_lines = lines[1:]
    if len(proof_lines) > MAX_PROOF_LINES:
        raise Refusal(400, f"{len(proof_lines)} consistency proof lines; at most {MAX_PROOF_LINES} are allowed")
    proof = []
    for number, line in enumerate(proof_lines, start=1):
        try:
            node = b64decode(line.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise Refusal(400, f"consistency proof line {number} is not canonical base64") from None
        if len(node) != HASH_SIZE:
            raise Refusal(400, f"consistency proof line {number} is {len(node)} bytes, not a {HASH_SIZE}-byte hash")
        proof.append(node)
    try:
        note = parse_note(note_bytes)
        checkpoint = parse_checkpoint(note.text)
    except NoteError as exc:
        raise Refusal(400, f"the checkpoint is malformed: {exc.message}") from None
    return AddCheckpointRequest(old_size, tuple(proof), note, checkpoint, body)


def origin_hash(origin: str) -> str:
    """tlog-witness's name of a log in monitoring paths: SHA-256 of its origin, lowercase hex."""
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()


# --- the witness ---------------------------------------------------------------------------------


class Witness:
    """The add-checkpoint rules over a ``WitnessState`` and the logs it is configured for."""

    def __init__(
        self,
        state: WitnessState,
        logs: Mapping[str, Sequence[NoteVerifier]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.logs = {origin: tuple(verifiers) for origin, verifiers in logs.items()}
        self.clock = clock
        self._by_hash = {origin_hash(origin): origin for origin in self.logs}

    def knows(self, origin: str) -> bool:
        return origin in self.logs

    def add_checkpoint(self, request: AddCheckpointRequest) -> str:
        """The cosignature line(s) for ``request``, once its checkpoint is the log's latest on
        disk; else ``Refusal``. Blocking (it fsyncs): the server runs it in a thread, one request
        per log at a time."""
        checkpoint = request.checkpoint
        verifiers = self.logs.get(checkpoint.origin)
        if verifiers is None:
            raise Refusal(404, f"this witness does not witness the log {checkpoint.origin[:200]!r}")
        try:
            opened = open_note(request.note, verifiers)
        except NoteSignatureInvalid as exc:
            raise Refusal(403, f"a signature of the log's key {exc.name!r} does not verify") from None
        except NoteNotSigned:
            raise Refusal(403, "no key this witness trusts for the log signed the checkpoint") from None
        except MalformedNote as exc:
            raise Refusal(400, f"the checkpoint is malformed: {exc.message}") from None
        if request.old_size > checkpoint.size:
            raise Refusal(400, f"the old size {request.old_size} is larger than the checkpoint's size {checkpoint.size}")
        latest = self.state.latest(checkpoint.origin)
        self._check(request, latest)
        # Never earlier than its last cosignature of the log: a clock stepped back must not make the
        # witness say that, at an earlier time, it had seen a larger tree than it said later.
        timestamp = max(self._timestamp(), latest.timestamp if latest is not None else 0)
        line = cosign(checkpoint, self.state.key, self.state.name, timestamp)
        (own,) = parse_signature_lines(line.encode("utf-8"), max_signatures=1)
        kept = tuple(v.signature for v in opened.verified)  # the log's signature(s) the witness verified
        note = Note(opened.note.text, (*kept, own)).to_bytes()
        try:
            self.state.record(latest, Cosigned(checkpoint, note, timestamp))
        except StaleState as exc:  # only if requests for one log were not serialized
            size = exc.current.size if exc.current is not None else 0
            raise Refusal(409, f"{size}", body=b"%d\n" % size, content_type=SIZE_CONTENT_TYPE) from None
        except (StateWriteFailed, RollbackRefused) as exc:
            raise Refusal(500, f"the witness could not record the checkpoint: {exc.message}") from None
        log.info("cosigned %s at size %d", checkpoint.origin, checkpoint.size)
        return line

    def _check(self, request: AddCheckpointRequest, latest: Cosigned | None) -> None:
        checkpoint, old_size = request.checkpoint, request.old_size
        known_size = latest.size if latest is not None else 0
        if old_size != known_size:
            raise Refusal(409, f"{known_size}", body=b"%d\n" % known_size, content_type=SIZE_CONTENT_TYPE)
        if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
            self._misbehaved(request, "a checkpoint of size 0 whose root is not the empty tree's")
            raise Refusal(422, "a checkpoint of size 0 must have the empty tree's root hash")
        if old_size == 0:
            if request.proof:
                raise Refusal(422, "the consistency proof from size 0 must be empty")
            return
        assert latest is not None  # old_size == known_size > 0
        if not verify_consistency(old_size, checkpoint.size, latest.root, checkpoint.root, list(request.proof)):
            if checkpoint.size == old_size and checkpoint.root != latest.root:
                self._misbehaved(request, f"a root at size {old_size} other than the one this witness cosigned")
                raise Refusal(422, f"the witness cosigned another root hash at size {old_size}")
            self._misbehaved(request, f"a consistency proof from size {old_size} that does not verify")
            raise Refusal(422, f"the consistency proof from size {old_size} to {checkpoint.size} does not verify")

    @staticmethod
    def _misbehaved(request: AddCheckpointRequest, what: str) -> None:
        """Log a validly signed checkpoint that is inconsistent with the witness's view: it may be
        proof of the log's misbehaviour (tlog-witness lets a witness keep it)."""
        body = request.body[:_LOGGED_BODY_BYTES].decode("utf-8", "replace")
        log.warning("log %s sent %s (not cosigned); the request:\n%s", request.origin, what, body)

    def _timestamp(self) -> int:
        timestamp = int(self.clock())
        if timestamp <= 0:
            raise Refusal(500, "the witness's clock is before 1970: it cannot timestamp a cosignature")
        return timestamp

    def checkpoint_of(self, hashed_origin: str) -> bytes | None:
        """The latest cosigned checkpoint note of the log whose origin hashes to ``hashed_origin``."""
        origin = self._by_hash.get(hashed_origin)
        latest = self.state.latest(origin) if origin is not None else None
        return latest.note if latest is not None else None


# --- the ASGI application ------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Disconnected(Exception):
    pass


class WitnessApp:
    """The witness over HTTP: a plain ASGI application (no framework: three routes)."""

    def __init__(self, witness: Witness, *, max_body_bytes: int, body_timeout_s: float) -> None:
        self.witness = witness
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self._locks = {origin: asyncio.Lock() for origin in witness.logs}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            status, content_type, body, headers = await self._route(scope, receive)
        except _Disconnected:
            return
        except Refusal as refusal:
            status, content_type, body = refusal.status, refusal.content_type, refusal.body
            headers = [(b"connection", b"close")] if refusal.status in (408, 413) else []
        except Exception:
            log.exception("add-checkpoint failed")
            status, content_type, body, headers = 500, TEXT, b"internal error\n", []
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode("ascii")),
                    (b"content-length", b"%d" % len(body)),
                    (b"cache-control", b"no-store"),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, str, bytes, list[tuple[bytes, bytes]]]:
        path, method = scope["path"], scope["method"]
        if path == "/add-checkpoint":
            if method != "POST":
                return 405, TEXT, b"add-checkpoint takes POST\n", [(b"allow", b"POST")]
            return 200, TEXT, await self._add_checkpoint(scope, receive), []
        match = _ORIGIN_HASH_PATH.fullmatch(path)
        if path == "/vkey" or match is not None:
            if method not in ("GET", "HEAD"):
                return 405, TEXT, b"GET only\n", [(b"allow", b"GET, HEAD")]
            if match is None:
                return 200, TEXT, self.witness.state.vkey.encode("utf-8") + b"\n", []
            note = self.witness.checkpoint_of(match.group(1))
            if note is None:
                raise Refusal(404, "this witness has cosigned no checkpoint of that log")
            return 200, TEXT, note, []
        raise Refusal(404, "not found: this witness serves POST /add-checkpoint, GET /vkey, GET /<origin hash>/checkpoint")

    async def _add_checkpoint(self, scope: Scope, receive: Receive) -> bytes:
        body = await self._read_body(scope, receive)
        request = parse_add_checkpoint(body)
        lock = self._locks.get(request.origin)
        if lock is None:
            raise Refusal(404, f"this witness does not witness the log {request.origin[:200]!r}")
        async with lock:
            line = await asyncio.to_thread(self.witness.add_checkpoint, request)
        return line.encode("utf-8")

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The body, refused with 413 as soon as it is known to pass the limit: on its declared
        length before anything is read (no ``100 Continue`` is sent then), or as it streams."""
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise Refusal(413, f"the body is {int(value)} bytes; this witness takes at most {limit}")
        body = bytearray()
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Disconnected
                    body += message.get("body", b"")
                    if len(body) > limit:
                        raise Refusal(413, f"the body passes {limit} bytes, the most this witness takes")
                    if not message.get("more_body", False):
                        return bytes(body)
        except TimeoutError:
            raise Refusal(408, f"the body did not arrive within {self.body_timeout_s:g} s") from None


# --- serving -------------------------------------------------------------------------------------


def serve(state: WitnessState, logs: Mapping[str, Sequence[NoteVerifier]], settings: ServeSettings) -> None:
    """Serve the witness until SIGTERM or SIGINT (HTTP, or HTTPS with ``tls_cert``/``tls_key``)."""
    import uvicorn

    from duet.controller.limits import Guard, Limits, fit_to_file_limit

    app = WitnessApp(Witness(state, logs), max_body_bytes=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s)
    tls: dict[str, str] = {}
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        interface="asgi3",
        lifespan="off",
        log_level="info",
        access_log=False,
        ws="none",
        http="httptools",
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float is fine for call_later
        **tls,  # type: ignore[arg-type]
    )
    limits = Limits.of(settings)
    log.info("witness %s, vkey %s", state.name, state.vkey)
    for origin in logs:
        latest = state.latest(origin)
        log.info("witnessing %s (latest cosigned size: %s)", origin, latest.size if latest is not None else "none")
    _server(config, Guard(fit_to_file_limit(limits))).run()


def _server(config: uvicorn.Config, guard: Guard) -> uvicorn.Server:
    """uvicorn, accepting its connections under the limits of ``duet.controller.limits`` (as
    the controller's own server does)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from duet.controller.limits import LimitedHttpProtocol, Listener, Slot, bind

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await self.lifespan.startup()
            if self.lifespan.should_exit:
                sys.exit(STARTUP_FAILURE)
            state = self.lifespan.state

            def protocol(slot: Slot) -> LimitedHttpProtocol:
                return LimitedHttpProtocol(config, self.server_state, state, limits=guard.limits, slot=slot)

            try:
                sock = bind(config.host, config.port, config.backlog)
            except OSError as exc:
                log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
                sys.exit(STARTUP_FAILURE)
            self.servers = [Listener(sock, guard, protocol, config.ssl)]  # type: ignore[list-item]  # close(), wait_closed()
            self._log_started_message([sock])
            self.started = True

    return Server(config)
