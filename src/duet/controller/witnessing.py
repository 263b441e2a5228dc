"""The ledger's checkpoints (C2SP tlog-checkpoint) and their witnessing (C2SP tlog-witness).

``Checkpoints`` makes the controller's checkpoint of the ledger as it is now: the note
``<origin>\\n<size>\\n<base64 root>\\n`` signed with the controller's Ed25519 key under its origin
``duet.controller/<controller id>`` (``duet.ledger.checkpoint``). A checkpoint has no timestamp,
and Ed25519 is deterministic, so one tree size has exactly one note: the one every witness is
sent and every reader is served. It also keeps, for the last ``KEEP_CHECKPOINTS`` checkpoints,
the cosignatures witnesses returned, each verified with that witness's key before it is kept.

``WitnessSubmitter`` is the controller as a tlog-witness client. After each commit it sends
``POST <witness>/add-checkpoint`` (old size, consistency proof, checkpoint) to each witness:

* **coalescing**: a witness is always sent the newest checkpoint; at most one request per
  witness is in flight, and nothing queues behind it (only the latest checkpoint matters);
* **rounds**: witnesses that answered their last request start a round together, on one
  checkpoint, and the next round starts once all of them answered: so their cosignatures land
  on the same checkpoint and a quorum of them can be met even while the log grows. A witness
  in a failure streak is retried on its own (exponential backoff) and never holds a round; one
  that stops answering holds the others' next round for at most one timeout;
* **old size**: the size the controller believes the witness has: 0 at start, then the size
  of the witness's last cosignature, or the size a 409 answer states (then the request is
  sent again at once, with a proof from that size). Nothing about witnesses is stored: this
  is a cache that may be wrong, and the witness corrects it;
* **bounded**: every exchange has a timeout (``witness_timeout_s``), answers are read up to
  ``MAX_ANSWER_BYTES``; a witness that is down, slow or answers garbage is retried after
  ``witness_retry_s``, doubling up to ``witness_retry_max_s``, and logged once per failure
  streak. Appends only set an event: no request of the controller's clients ever waits on a
  witness.

A witness that holds a different checkpoint of a size the controller has (409 at equal sizes),
refuses the consistency proof (422) or has cosigned a larger tree than the controller's
(a 409 naming a size beyond it) has seen another history of this log: a fork or a rollback of
the controller's state. That is logged as an error; the witness's cosignature is simply
missing from every later checkpoint, which auditors with a quorum policy see.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from duet import __version__, keys
from duet.errors import ConfigError, DuetError, NotFound
from duet.ledger.checkpoint import (
    Checkpoint,
    CheckpointError,
    CosignatureVerifier,
    log_signer,
    sign_checkpoint,
    verify_cosignature,
)
from duet.ledger.log import Ledger
from duet.ledger.note import (
    BadVerifierKey,
    MalformedNote,
    Note,
    NoteError,
    NoteSignature,
    NoteSignatureInvalid,
    NoteVerifier,
    b64encode,
    parse_signature_lines,
)

log = logging.getLogger("duet.witnessing")

__all__ = [
    "KEEP_CHECKPOINTS",
    "MAX_ANSWER_BYTES",
    "Checkpoints",
    "ServedCheckpoint",
    "SignedCheckpoint",
    "Witness",
    "WitnessSubmitter",
    "add_checkpoint_body",
    "configure_witnesses",
    "parse_witness_option",
]

KEEP_CHECKPOINTS = 64
"""Checkpoints whose cosignatures are kept (the newest ones); older cosignatures are dropped."""
MAX_ANSWER_BYTES = 64 * 1024
"""Most bytes read of a witness's answer: a few signature lines; more is garbage."""
MAX_PROOF_LINES = 63
"""tlog-witness: a client MUST NOT send more consistency proof lines than this."""


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Witness:
    """A witness: its submission prefix (``add-checkpoint`` is below it) and its cosignature/v1 key."""

    url: str
    verifier: CosignatureVerifier

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def endpoint(self) -> str:
        return self.url + "/add-checkpoint"

    @property
    def vkey(self) -> str:
        return self.verifier.vkey


def _submission_prefix(url: str) -> str | None:
    """``url`` without its trailing slash if it can be a witness's submission prefix."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        return None
    return url.rstrip("/")


def parse_witness_option(text: str) -> tuple[str, str]:
    """``URL=VKEY`` (``--witness``) as (submission prefix, vkey); raises ConfigError ``bad_witness``.

    The vkey is a cosignature/v1 (type 0x04) key ``<name>+<key id>+<base64 key>``; since its
    base64 may end in ``=``, the option is split at the first ``=`` after which a vkey follows."""
    problem = "it is not URL=VKEY"
    for at in (i for i, ch in enumerate(text) if ch == "="):
        url, vkey = text[:at], text[at + 1 :]
        prefix = _submission_prefix(url)
        if prefix is None:
            problem = f"{url[:80]!r} is not an http(s) URL without query or fragment"
            continue
        try:
            CosignatureVerifier.from_vkey(vkey)
        except NoteError as exc:
            problem = exc.message
            continue
        return prefix, vkey
    raise ConfigError(
        f"--witness {text[:120]!r}: {problem}; expected URL=VKEY, the witness's submission URL and its "
        "cosignature/v1 verifier key, e.g. https://witness.example/w1=witness.example/w1+0123abcd+BA…",
        code="bad_witness",
    )


def configure_witnesses(pairs: Sequence[tuple[str, str]], quorum: int | None) -> tuple[tuple[Witness, ...], int]:
    """The witnesses of (URL, vkey) pairs and the quorum (None: all of them).

    Refused (ConfigError ``bad_witness``): an unusable URL or vkey, two witnesses under one name
    or one key (a cosignature/v1 does not name its witness), a quorum beyond the witnesses."""
    witnesses: list[Witness] = []
    for url, vkey in pairs:
        prefix = _submission_prefix(url)
        if prefix is None:
            raise ConfigError(f"witness URL {url[:80]!r} is not an http(s) URL without query or fragment", code="bad_witness")
        try:
            verifier = CosignatureVerifier.from_vkey(vkey)
        except NoteError as exc:
            raise ConfigError(f"witness {url}: {exc.message}", code="bad_witness") from None
        for other in witnesses:
            if other.name == verifier.name or other.verifier.public_key == verifier.public_key:
                raise ConfigError(
                    f"witnesses {other.url} and {prefix} share a name or a key ({verifier.name}): each witness "
                    "needs its own name and key",
                    code="bad_witness",
                )
        witnesses.append(Witness(prefix, verifier))
    if quorum is None:
        quorum = len(witnesses)
    if isinstance(quorum, bool) or not 0 <= quorum <= len(witnesses):
        raise ConfigError(
            f"a witness quorum of {quorum} cannot be met by {len(witnesses)} configured witness(es)", code="bad_witness"
        )
    return tuple(witnesses), quorum


# --- checkpoints and their cosignatures ----------------------------------------------------------


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint and the controller's signature line over it."""

    checkpoint: Checkpoint
    signature: NoteSignature

    def note(self, cosignatures: Sequence[NoteSignature] = ()) -> bytes:
        """The signed note: the controller's signature first, then ``cosignatures``."""
        return Note(self.checkpoint.body(), (self.signature, *cosignatures)).to_bytes()


@dataclass(frozen=True)
class ServedCheckpoint:
    """What ``GET /v1/ledger/checkpoint`` serves: the note with the cosignatures kept for it."""

    signed: SignedCheckpoint
    cosignatures: tuple[tuple[str, NoteSignature], ...]
    """(witness name, cosignature line) in the order the witnesses are configured."""
    witnesses: tuple[str, ...]
    quorum: int
    log_vkey: str
    """The controller's checkpoint key as a vkey (what witnesses are configured with)."""

    @property
    def checkpoint(self) -> Checkpoint:
        return self.signed.checkpoint

    @property
    def note(self) -> bytes:
        return self.signed.note([signature for _, signature in self.cosignatures])

    @property
    def cosigned_by(self) -> list[str]:
        return [name for name, _ in self.cosignatures]

    def to_json(self) -> dict[str, Any]:
        checkpoint = self.checkpoint
        return {
            "checkpoint": self.note.decode("utf-8"),
            "origin": checkpoint.origin,
            "tree_size": checkpoint.size,
            "root_hash": checkpoint.root_hash,
            "cosigned_by": self.cosigned_by,
            "witnesses": list(self.witnesses),
            "quorum": self.quorum,
            "log_vkey": self.log_vkey,
        }


class Checkpoints:
    """The ledger's checkpoints, signed by the controller, and the cosignatures kept for them.

    Used from the event loop only (the routes and the submitter)."""

    def __init__(
        self,
        ledger: Ledger,
        signing_key: keys.PrivateKey,
        controller_id: str,
        *,
        witnesses: Sequence[Witness] = (),
        quorum: int = 0,
        keep: int = KEEP_CHECKPOINTS,
    ) -> None:
        self.ledger = ledger
        self.signer = log_signer(signing_key, controller_id)
        self.origin = self.signer.name
        self.witnesses = tuple(witnesses)
        self.quorum = quorum
        self._keep = keep
        self._latest: SignedCheckpoint | None = None
        self._cosigned: dict[Checkpoint, tuple[SignedCheckpoint, dict[str, NoteSignature]]] = {}
        self.on_cosignature: list[Callable[[], None]] = []
        """Called after a cosignature is kept (the tile publisher then writes the checkpoint again)."""

    @property
    def verifier(self) -> NoteVerifier:
        """The controller's log key, as readers verify checkpoints with it."""
        return self.signer.verifier()

    def latest(self) -> SignedCheckpoint:
        """The checkpoint of the ledger as it is now (signed once per tree size)."""
        size = self.ledger.tree.size
        if self._latest is None or self._latest.checkpoint.size != size:
            # root(size), not root(): one consistent head even if an append lands in between.
            checkpoint = Checkpoint(self.origin, size, self.ledger.tree.root(size))
            body = checkpoint.body().encode("utf-8")
            signature = NoteSignature(self.signer.name, self.signer.key_id, self.signer.sign(body))
            self._latest = SignedCheckpoint(checkpoint, signature)
        return self._latest

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return self.ledger.tree.consistency_proof(first, second)

    def add_cosignature(self, signed: SignedCheckpoint, witness: Witness, signature: NoteSignature) -> None:
        """Keep ``witness``'s cosignature of ``signed``; it must verify with the witness's key."""
        verify_cosignature(signed.checkpoint, signature, witness.verifier)  # never keep what does not verify
        _, kept = self._cosigned.setdefault(signed.checkpoint, (signed, {}))
        kept[witness.name] = signature
        while len(self._cosigned) > self._keep:
            del self._cosigned[min(self._cosigned, key=lambda c: c.size)]
        for listener in self.on_cosignature:
            listener()

    def sign_with_cosignatures(self, checkpoint: Checkpoint) -> bytes:
        """The note of ``checkpoint``: the controller's signature and the cosignatures kept for it."""
        return sign_checkpoint(checkpoint, self.signer, keep=[signature for _, signature in self.cosignatures(checkpoint)])

    def cosignatures(self, checkpoint: Checkpoint) -> tuple[tuple[str, NoteSignature], ...]:
        """The cosignatures kept for exactly ``checkpoint``, in the witnesses' configured order."""
        found = self._cosigned.get(checkpoint)
        if found is None:
            return ()
        kept = found[1]
        return tuple((w.name, kept[w.name]) for w in self.witnesses if w.name in kept)

    def served(self, *, witnessed: bool = False) -> ServedCheckpoint:
        """The latest checkpoint with its cosignatures; with ``witnessed``, the newest one that
        carries at least ``quorum`` of them (NotFound ``no_witnessed_checkpoint`` if none does)."""
        latest = self.latest()
        signed: SignedCheckpoint | None = latest
        if witnessed and len(self.cosignatures(latest.checkpoint)) < self.quorum:
            candidates = [
                kept_signed
                for checkpoint, (kept_signed, kept) in self._cosigned.items()
                if len(kept) >= self.quorum and checkpoint.size <= latest.checkpoint.size
            ]
            signed = max(candidates, key=lambda s: s.checkpoint.size, default=None)
            if signed is None:
                raise NotFound(
                    f"no checkpoint kept here carries cosignatures of {self.quorum} of the "
                    f"{len(self.witnesses)} witnesses yet; the latest one is served without ?witnessed",
                    code="no_witnessed_checkpoint",
                )
        assert signed is not None
        names = tuple(w.name for w in self.witnesses)
        return ServedCheckpoint(signed, self.cosignatures(signed.checkpoint), names, self.quorum, self.signer.vkey)


# --- the witness client --------------------------------------------------------------------------


def add_checkpoint_body(old_size: int, proof: Sequence[bytes], note: bytes) -> bytes:
    """An add-checkpoint request body: ``old N``, one base64 proof hash a line, a blank line, the note."""
    if len(proof) > MAX_PROOF_LINES:
        raise ValueError(f"a consistency proof of {len(proof)} hashes is longer than tlog-witness allows")
    head = f"old {old_size}\n" + "".join(b64encode(h) + "\n" for h in proof) + "\n"
    return head.encode("ascii") + note


class _Refused(DuetError):
    """One add-checkpoint exchange failed; ``fork`` marks answers that show another history."""

    code = "witness_failed"

    def __init__(self, message: str, *, fork: bool = False) -> None:
        super().__init__(message)
        self.fork = fork


class _Ahead(_Refused):
    """The witness has cosigned a larger tree of this log than the controller has."""

    def __init__(self, size: int, ours: int) -> None:
        super().__init__(
            f"has cosigned a tree of {size} entries of this log, more than the {ours} this controller has: the "
            "controller's state was rolled back, or another copy of it grew this log (a fork)",
            fork=True,
        )
        self.size = size


@dataclass
class _WitnessState:
    """What the controller believes of one witness: a cache the witness corrects, never stored."""

    witness: Witness
    client: httpx.AsyncClient
    size: int | None = None
    """The witness's tree size as last seen (its cosignature, or its 409); None: unknown."""
    cosigned: Checkpoint | None = None
    """The last checkpoint it cosigned."""
    task: asyncio.Task[None] | None = None
    failures: int = 0
    delay: float = 0.0
    retry_at: float = 0.0
    last_error: str | None = None
    submissions: int = 0

    def needs(self, target: Checkpoint) -> bool:
        """Whether ``target`` should go to this witness: not cosigned yet, and not smaller than
        the tree the witness already has (it could not cosign it)."""
        return self.cosigned != target and (self.size is None or target.size >= self.size)


@dataclass
class WitnessStatus:
    """A witness as the submitter sees it (for logs and tests; nothing here is a claim)."""

    name: str
    url: str
    size: int | None
    cosigned_size: int | None
    failures: int
    last_error: str | None
    in_flight: bool
    submissions: int


@dataclass
class WitnessSubmitter:
    """Sends each new checkpoint to the witnesses, in the background; see the module docstring."""

    checkpoints: Checkpoints
    witnesses: Sequence[Witness]
    timeout_s: float = 5.0
    retry_s: float = 1.0
    retry_max_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    transport: httpx.AsyncBaseTransport | None = None
    """For tests: how requests reach the witnesses (default: the network)."""
    _states: list[_WitnessState] = field(default_factory=list, init=False)
    _driver: asyncio.Task[None] | None = field(default=None, init=False)
    _wake: asyncio.Event | None = field(default=None, init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _thread: int | None = field(default=None, init=False)
    _unsubscribe: Callable[[], None] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start submitting (from the running event loop); ``close`` stops."""
        if self._driver is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._wake = asyncio.Event()
        timeout = httpx.Timeout(self.timeout_s)
        self._states = [
            _WitnessState(
                witness,
                httpx.AsyncClient(
                    timeout=timeout,
                    transport=self.transport,
                    follow_redirects=False,
                    headers={"User-Agent": f"duet/{__version__} (tlog-witness client)"},
                ),
            )
            for witness in self.witnesses
        ]
        self._unsubscribe = self.checkpoints.ledger.subscribe(self._on_entry)
        self._driver = asyncio.create_task(self._run(), name="witness-submitter")
        log.info(
            "submitting checkpoints of %s to %d witness(es): %s (quorum %d)",
            self.checkpoints.origin,
            len(self._states),
            ", ".join(f"{w.name} at {w.url}" for w in self.witnesses),
            self.checkpoints.quorum,
        )

    async def close(self) -> None:
        if self._unsubscribe is not None:
            try:
                self._unsubscribe()
            except ValueError:
                pass
            self._unsubscribe = None
        tasks = [t for t in (self._driver, *(s.task for s in self._states)) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._driver = None
        states, self._states = self._states, []
        for state in states:
            await state.client.aclose()

    def status(self) -> list[WitnessStatus]:
        return [
            WitnessStatus(
                s.witness.name,
                s.witness.url,
                s.size,
                None if s.cosigned is None else s.cosigned.size,
                s.failures,
                s.last_error,
                s.task is not None,
                s.submissions,
            )
            for s in self._states
        ]

    # --- waking up -------------------------------------------------------------------

    def _on_entry(self, entry: dict[str, Any]) -> None:
        """A ledger listener: called in the committing thread, must never block."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        if threading.get_ident() == self._thread:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def poke(self) -> None:
        """Look again now (as after a commit)."""
        if self._wake is not None:
            self._wake.set()

    # --- the driver ------------------------------------------------------------------

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            wake.clear()
            try:
                next_retry = self._dispatch()
            except Exception:  # never let the submitter die: appends would go unwitnessed silently
                log.exception("the witness submitter failed; trying again")
                next_retry = self.clock() + self.retry_s
            timeout = None if next_retry is None else max(0.0, next_retry - self.clock())
            try:
                await asyncio.wait_for(wake.wait(), timeout)
            except TimeoutError:
                pass

    def _dispatch(self) -> float | None:
        """Start what is due; the time the next backed-off witness is due, if any waits."""
        now = self.clock()
        round_open = any(s.task is not None and s.failures == 0 for s in self._states)
        next_retry = math.inf
        ready: list[_WitnessState] = []
        for state in self._states:
            if state.task is not None:
                continue
            if state.failures == 0:
                if not round_open:  # else the others are still on the round's checkpoint: join the next round
                    ready.append(state)
            elif state.retry_at > now:
                next_retry = min(next_retry, state.retry_at)
            else:
                ready.append(state)
        if not ready:  # the checkpoint is made only when a witness can take it: appends come in bursts
            return None if next_retry == math.inf else next_retry
        target = self.checkpoints.latest()
        for state in ready:
            if not state.needs(target.checkpoint):
                continue
            state.submissions += 1
            state.task = asyncio.create_task(self._attempt(state, target), name=f"witness {state.witness.name}")
            state.task.add_done_callback(functools.partial(self._finished, state))
        return None if next_retry == math.inf else next_retry

    def _finished(self, state: _WitnessState, _task: asyncio.Task[None]) -> None:
        state.task = None
        if self._wake is not None:
            self._wake.set()

    # --- one witness, one checkpoint ------------------------------------------------

    async def _attempt(self, state: _WitnessState, target: SignedCheckpoint) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                signature = await self._add_checkpoint(state, target)
        except (TimeoutError, httpx.TimeoutException):
            self._failed(state, f"did not answer within {self.timeout_s:g} s")
        except _Refused as exc:
            self._failed(state, exc.message, fork=exc.fork)
        except httpx.HTTPError as exc:
            self._failed(state, f"cannot be reached: {type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug here must not stop the witness's retries
            log.debug("witness %s: unexpected failure", state.witness.name, exc_info=True)
            self._failed(state, f"failed: {type(exc).__name__}: {exc}")
        else:
            self._succeeded(state, target, signature)

    async def _add_checkpoint(self, state: _WitnessState, target: SignedCheckpoint) -> NoteSignature:
        """One add-checkpoint, sent a second time with the size a 409 answer named."""
        size = target.checkpoint.size
        old = state.size if state.size is not None and state.size <= size else 0
        for _ in range(2):
            body = add_checkpoint_body(old, self.checkpoints.consistency_proof(old, size) if old else [], target.note())
            status, content = await self._post(state, body)
            if status == 200:
                return self._cosignature(state, target, content)
            if status != 409:
                raise _Refused(self._refusal(status, content))
            theirs = _parse_size(content)
            if theirs is None:
                raise _Refused(f"answered 409 without its tree size ({_excerpt(content)})")
            state.size = theirs
            if theirs > size:
                raise _Ahead(theirs, size)
            if theirs == old:  # 409 at the size it has: its checkpoint of that size is another one
                raise _Refused(
                    f"holds another checkpoint of size {theirs} than this controller's: another history of this log "
                    "was shown to it (a fork)",
                    fork=True,
                )
            old = theirs
        raise _Refused(f"answered 409 twice (its size moved to {old} meanwhile: is another copy of this log submitting?)")

    async def _post(self, state: _WitnessState, body: bytes) -> tuple[int, bytes]:
        async with state.client.stream("POST", state.witness.endpoint, content=body) as response:
            content = bytearray()
            async for chunk in response.aiter_bytes():
                content += chunk
                if len(content) > MAX_ANSWER_BYTES:
                    raise _Refused(f"answered HTTP {response.status_code} with more than {MAX_ANSWER_BYTES} bytes")
            return response.status_code, bytes(content)

    @staticmethod
    def _refusal(status: int, content: bytes) -> str:
        meaning = {
            400: "refused the request as malformed (400)",
            403: "does not trust this controller's log key (403): configure it with the controller's vkey",
            404: "does not know this log's origin (404): configure it with the controller's origin and vkey",
            422: "refused the consistency proof (422): it holds a checkpoint of another history of this log (a fork)",
        }.get(status, f"answered HTTP {status}")
        return f"{meaning}: {_excerpt(content)}"

    def _cosignature(self, state: _WitnessState, target: SignedCheckpoint, content: bytes) -> NoteSignature:
        """The witness's own valid cosignature among the lines it answered (others are ignored,
        as the spec asks); refused if there is none, or if one of its key does not verify."""
        witness = state.witness
        try:
            lines = parse_signature_lines(content)
        except MalformedNote as exc:
            raise _Refused(
                f"answered 200 with something that is not signature lines ({exc.message}): {_excerpt(content)}"
            ) from None
        own = [line for line in lines if (line.name, line.key_id) == (witness.verifier.name, witness.verifier.key_id)]
        if not own:
            names = ", ".join(sorted({f"{line.name}+{line.key_id:08x}" for line in lines}))
            raise _Refused(f"answered no cosignature by its key {witness.vkey} (only by {names}): nothing kept")
        for line in own:
            try:
                verify_cosignature(target.checkpoint, line, witness.verifier)
            except (CheckpointError, NoteSignatureInvalid, BadVerifierKey):
                raise _Refused(
                    f"answered a cosignature under its key name that does not verify for checkpoint {target.checkpoint.size}: "
                    "nothing kept"
                ) from None
        return own[0]

    def _succeeded(self, state: _WitnessState, target: SignedCheckpoint, signature: NoteSignature) -> None:
        self.checkpoints.add_cosignature(target, state.witness, signature)
        state.size, state.cosigned = target.checkpoint.size, target.checkpoint
        if state.failures:
            log.info(
                "witness %s cosigns again (checkpoint %d) after %d failed attempt(s)",
                state.witness.name,
                target.checkpoint.size,
                state.failures,
            )
        state.failures, state.delay, state.retry_at, state.last_error = 0, 0.0, 0.0, None

    def _failed(self, state: _WitnessState, reason: str, *, fork: bool = False) -> None:
        state.failures += 1
        state.delay = self.retry_s if state.failures == 1 else min(state.delay * 2, self.retry_max_s)
        state.retry_at = self.clock() + state.delay
        state.last_error = reason
        if state.failures == 1:  # once per failure streak, not once per append
            log.log(
                logging.ERROR if fork else logging.WARNING,
                "witness %s (%s) %s; checkpoints are served without its cosignature until it cosigns again "
                "(retried after %g s, doubling up to %g s; further failures are not logged)",
                state.witness.name,
                state.witness.url,
                reason,
                self.retry_s,
                self.retry_max_s,
            )
        else:
            log.debug("witness %s failed again (%d in a row): %s", state.witness.name, state.failures, reason)


def _parse_size(content: bytes) -> int | None:
    """The body of a 409 answer: a decimal size and a newline (a missing newline is forgiven)."""
    text = content.decode("ascii", "replace").removesuffix("\n")
    if not text.isdigit() or not text.isascii() or len(text) > 20 or (len(text) > 1 and text[0] == "0"):
        return None
    return int(text)


def _excerpt(content: bytes) -> str:
    return repr(content[:120]) if content else "an empty body"
