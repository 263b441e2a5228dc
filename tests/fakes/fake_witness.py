"""A minimal C2SP tlog-witness (c2sp.org/tlog-witness) on loopback, for the controller's tests.

It follows the spec's ``add-checkpoint``: the body is ``old N``, the consistency proof (one
base64 hash a line), a blank line and the checkpoint note. The note must be signed by the log
key trusted for its origin (404 unknown origin, 403 no trusted signature); ``old`` above the
checkpoint's size is a 400; an old size other than the one the witness holds is a 409 whose body
is its size (``text/x.tlog.size``); at equal sizes the roots must match (409); a proof that does
not verify is a 422. Otherwise the new checkpoint is recorded (the check and the update under
one lock, as the spec requires) and answered with one cosignature/v1 line. State lives in
memory only.

Faults for the tests (``mode``): ``ok``; ``block`` (hold every request until the mode changes or
the witness stops: a witness that hangs); ``garbage`` (200 with bytes that are not signature
lines); ``error`` (500); ``other_key`` (200 with a cosignature under the witness's name by another
key); ``reject`` (refuse with 503 without looking, e.g. to keep it from seeing a checkpoint).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives.asymmetric import ed25519

from duet.ledger.checkpoint import Checkpoint, CosignatureSigner, cosign, parse_checkpoint
from duet.ledger.merkle import verify_consistency
from duet.ledger.note import NoteError, NoteVerifier, b64decode, open_note, parse_note

MODES = ("ok", "block", "garbage", "error", "other_key", "reject")
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Seen:
    """One add-checkpoint request as the witness received it (before any check)."""

    old: int | None
    size: int | None
    status: int


class FakeWitness:
    def __init__(self, name: str = "witness.example/w1", *, key: ed25519.Ed25519PrivateKey | None = None) -> None:
        self.name = name
        self.key = key or ed25519.Ed25519PrivateKey.generate()
        self.signer = CosignatureSigner(name, self.key)
        self.logs: dict[str, NoteVerifier] = {}
        self.latest: dict[str, Checkpoint] = {}
        """Per origin, the latest checkpoint cosigned."""
        self.cosigned: list[Checkpoint] = []
        self.seen: list[Seen] = []
        """Every request answered, in order."""
        self.received = 0
        """Requests received (counted before a ``block`` holds them)."""
        self._lock = threading.Lock()
        self._mode = "ok"
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- configuration -----------------------------------------------------------------

    @property
    def vkey(self) -> str:
        return self.signer.vkey

    def trust(self, log: NoteVerifier) -> FakeWitness:
        """Accept checkpoints of the log named by ``log`` (its origin), signed by its key."""
        self.logs[log.name] = log
        return self

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        assert value in MODES, value
        with self._changed:
            self._mode = value
            self._changed.notify_all()

    # --- serving -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the witness first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def option(self) -> str:
        """``URL=VKEY``, as ``--witness`` takes it."""
        return f"{self.url}={self.vkey}"

    def start(self) -> FakeWitness:
        witness = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/add-checkpoint":
                    self._answer(Answer(404, b"not found\n"))
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._answer(Answer(413, b"too large\n"))
                    return
                body = self.rfile.read(length)
                self._answer(witness.handle(body))

            def _answer(self, answer: Answer) -> None:
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", answer.content_type)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:  # the client gave up (its timeout): nothing to tell it
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"fake witness {self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeWitness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the protocol ------------------------------------------------------------------

    def handle(self, body: bytes) -> Answer:
        """One add-checkpoint request, the faults of ``mode`` first."""
        with self._changed:
            self.received += 1
            while self._mode == "block" and not self._stopping:
                self._changed.wait()
            mode = self._mode
        if mode == "reject":
            return self._record(body, Answer(503, b"unavailable\n"))
        if mode == "error":
            return self._record(body, Answer(500, b"internal error\n"))
        if mode == "garbage":
            return self._record(body, Answer(200, b"\x00\xffthis is not a cosignature\n"))
        answer = self.add_checkpoint(body)
        if mode == "other_key" and answer.status == 200:
            checkpoint = self.cosigned[-1]
            other = cosign(checkpoint, ed25519.Ed25519PrivateKey.generate(), self.name, int(time.time()))
            answer = Answer(200, other.encode())
        return self._record(body, answer)

    def _record(self, body: bytes, answer: Answer) -> Answer:
        old, size = None, None
        try:
            head, _, rest = body.partition(b"\n\n")
            old = int(head.split(b"\n", 1)[0].removeprefix(b"old "))
            size = parse_checkpoint(parse_note(rest).text).size
        except (ValueError, NoteError):
            pass
        self.seen.append(Seen(old, size, answer.status))
        return answer

    def add_checkpoint(self, body: bytes) -> Answer:
        """The spec's checks, in its order; the state check and update are atomic."""
        try:
            old, proof, note_bytes = _parse_request(body)
            note = parse_note(note_bytes)
            checkpoint = parse_checkpoint(note.text)
        except (ValueError, NoteError):
            return Answer(400, b"malformed add-checkpoint request\n")
        log = self.logs.get(checkpoint.origin)
        if log is None:
            return Answer(404, b"unknown log origin\n")
        try:
            open_note(note, [log])  # unknown keys are ignored; none of the log's verifying is a 403
        except NoteError:
            return Answer(403, b"no trusted signature on the checkpoint\n")
        if old > checkpoint.size:
            return Answer(400, b"old size is larger than the checkpoint's\n")
        with self._lock:
            latest = self.latest.get(checkpoint.origin)
            held = latest.size if latest is not None else 0
            if old != held:
                return Answer(409, f"{held}\n".encode(), "text/x.tlog.size")
            if old == 0:
                if proof:
                    return Answer(422, b"a consistency proof from size 0 must be empty\n")
            elif old == checkpoint.size:
                assert latest is not None
                if latest.root != checkpoint.root:
                    return Answer(409, f"{held}\n".encode(), "text/x.tlog.size")
            else:
                assert latest is not None
                if not verify_consistency(old, checkpoint.size, latest.root, checkpoint.root, proof):
                    return Answer(422, b"the consistency proof does not verify\n")
            self.latest[checkpoint.origin] = checkpoint
            self.cosigned.append(checkpoint)
            return Answer(200, cosign(checkpoint, self.key, self.name, int(time.time())).encode())


def _parse_request(body: bytes) -> tuple[int, list[bytes], bytes]:
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise ValueError("no blank line")
    lines = head.decode("ascii").split("\n")
    first = lines[0]
    if not first.startswith("old ") or not first[4:].isdigit() or (first[4:] != "0" and first[4] == "0"):
        raise ValueError("bad old size line")
    if len(lines) - 1 > 63:
        raise ValueError("too many proof lines")
    proof = [b64decode(line) for line in lines[1:]]
    if any(len(h) != 32 for h in proof):
        raise ValueError("a proof line is not a SHA-256 hash")
    return int(first[4:]), proof, note


__all__ = ["MODES", "Answer", "FakeWitness", "Seen"]
