"""Python SDK for duet controllers, used by the CLI and by other programs.

A client talks only to a controller the user verified with ``duet verify`` (pinned in the
trust store), unless ``insecure=True``. Every answer's signature is checked against the
pinned key before anything in it is believed; every answer must name the method, path and
query it answers (its signed ``request_target``), so a proxy cannot answer one question with
the answer to another; answers to owner requests must be bound to the request's digest (a
refusal of a request too malformed to have one comes with a null digest and is reported as the
refusal it is), and reads carry a fresh nonce that the signed answer must echo, so an old
answer cannot be replayed. Over HTTPS the TLS certificate must be the pinned one (see
:mod:`duet.client.trust` for how that is enforced with httpx).

``insecure=True`` uses an unverified controller: its identity is fetched on every run and
believed as presented (``warnings`` says so, and the CLI prints it on every run). A pinned
controller is still held to its pin.

Failures are typed (:mod:`duet.errors`): :class:`~duet.errors.NotVerified`,
:class:`~duet.errors.ControllerChanged` and :class:`~duet.errors.UntrustedAnswer` (all
:class:`~duet.errors.TrustError`) mean that nothing the controller said was used;
:class:`ApiError` is a refusal the controller signed; :class:`ConnectionFailed`, no answer at all.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from duet import keys
from duet.client.trust import (
    ControllerPin,
    TrustStore,
    check_same_identity,
    peer_certificate,
    pinned_ssl_context,
    presented_certificate,
    unverified_ssl_context,
)
from duet.errors import ControllerChanged, DuetError, NotVerified, UntrustedAnswer
from duet.ledger.checkpoint import controller_origin, verify_checkpoint
from duet.ledger.note import NoteError, NoteVerifier
from duet.protocol.canonical import sha256_hex
from duet.protocol.envelope import new_nonce, request_digest, request_target, sign_request, verify_answer

__all__ = ["ApiError", "ConnectionFailed", "DuetClient", "NotVerified", "load_owner_key"]


class ApiError(DuetError):
    """The controller refused or failed a request; its signed answer says why."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message, code=code)
        self.status = status
        """The HTTP status the controller answered with."""


class ConnectionFailed(DuetError):
    """The controller (or another party asked) could not be reached, or the connection broke."""

    code = "connection_failed"


def _certificate_refused(exc: BaseException) -> bool:
    """Whether a connection failed because the TLS certificate did not verify (against the pin)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def target(method: str, path: str, params: dict[str, str] | None = None) -> str:
    """The ``request_target`` an answer to this request must carry. ``path`` is as this client
    passes it to httpx, which percent-encodes what must be and leaves escapes as they are; the
    controller sees it percent-decoded, hence ``unquote``."""
    return request_target(method, unquote(path), params or {})


def _verify_hint(url: str) -> str:
    return f"run `duet --url {url} verify` first (or pass --insecure to use it without verification)"


class DuetClient:
    def __init__(
        self,
        url: str,
        *,
        owner_key: keys.PrivateKey | None = None,
        trust: TrustStore | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        insecure: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self.owner_key = owner_key
        self.insecure = insecure
        self.trust = trust or TrustStore.default()
        self.https = self.url.startswith("https://")
        stored = self.trust.get(self.url)
        self._stored: ControllerPin | None = stored if stored is not None and stored.verified_at else None
        self._legacy_pin = stored is not None and self._stored is None
        self._pin: ControllerPin | None = None
        self.first_contact = False
        """True when this client fetched the controller's identity without verification (insecure)."""
        verify: ssl.SSLContext | bool = False
        if self.https:
            pem = self._stored.tls_cert_pem if self._stored else None
            verify = pinned_ssl_context(pem) if pem else unverified_ssl_context()
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport, verify=verify)

    @property
    def warnings(self) -> list[str]:
        """Why answers from this controller deserve less trust than a verified pin gives; the CLI
        prints these on every run."""
        out: list[str] = []
        if self._stored is None:
            if self.insecure:
                out.append(
                    f"--insecure: the controller at {self.url} is NOT verified; its identity is taken as it "
                    "presents itself, so a man in the middle or a fake controller would not be noticed. "
                    f"Run `duet --url {self.url} verify` to verify and pin it."
                )
        else:
            if not self._stored.attested:
                out.append(
                    f"the controller at {self.url} is pinned but NOT attested (TEE: {self._stored.tee}); "
                    "nothing proves which code it runs."
                )
            elif self._stored.tee == "simulated-sgx":
                out.append(
                    f"the controller at {self.url} runs in a SIMULATED SGX TEE: its evidence is signed by a "
                    "root you chose to trust, not by Intel; it gives no protection."
                )
        if not self.https:
            out.append(
                f"plain HTTP to {self.url}: the connection is not encrypted (the controller was started "
                "with --no-tls); answers are still checked against the controller's key."
            )
        return out

    def __enter__(self) -> DuetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- trust -------------------------------------------------------------------------

    def pin(self) -> ControllerPin:
        """The controller's pinned identity (from ``duet verify``); with ``insecure`` and no pin,
        its identity as presented now. Raises :class:`NotVerified` otherwise."""
        if self._pin is not None:
            return self._pin
        if self._stored is not None:
            if not self.https and not self.insecure:
                raise NotVerified(
                    f"{self.url} is plain HTTP (a controller started with --no-tls, for development); pass --insecure to use it",
                    code="plain_http",
                )
            self._pin = self._stored
        elif self.insecure:
            self._pin = self._fetch_identity()
            self.first_contact = True
        elif self._legacy_pin:
            raise NotVerified(
                f"the controller at {self.url} was pinned on first use by an older duet, without "
                f"verification; {_verify_hint(self.url)}"
            )
        else:
            raise NotVerified(f"the controller at {self.url} is not verified: {_verify_hint(self.url)}")
        return self._pin

    def check_identity(self) -> ControllerPin:
        """Fetch the identity the controller serves now and hold it to the pin; return it.

        Answers are checked against the pinned key, but a controller does not restate its owner
        set in them: this is how a long-lived client (``duet audit``, a service polling its CVMs)
        notices that the host restarted the controller with other owners, or swapped it. One
        ``GET /v1/attestation``, one signature check, no evidence verification (the answer is
        signed by the pinned, attested key, so the enclave itself vouches for the document) —
        cheap enough to call before each audit. Ordinary calls do not make it: it would add a
        round trip to each of them.

        Raises :class:`~duet.errors.ControllerChanged` ``controller_changed`` (another controller
        id, signing key or TLS certificate) or ``owners_changed`` (another owner set; see
        :func:`duet.client.trust.check_same_identity`), and :class:`NotVerified` as :meth:`pin`
        does. Over HTTPS a changed TLS certificate is usually refused earlier, at the handshake
        (``tls_pin_mismatch``). The pin is never changed here; ``duet verify --replace`` does that.
        With ``insecure`` and no pin, the identity fetched at first contact is the one held to.
        """
        fetched_now = self._pin is None and self._stored is None
        pinned = self.pin()
        if fetched_now and self.first_contact:
            return pinned  # pin() just fetched it: nothing older to compare with, no second request
        shown = self._fetch_identity()
        check_same_identity(pinned, shown, url=self.url, remedy=f"verify it again: `duet --url {self.url} verify --replace`.")
        return shown

    def _fetch_identity(self) -> ControllerPin:
        """The identity as presented now, checked for self-consistency: its id is its key's, the
        answer is signed by that key and fresh, and the connection's certificate is the named one."""
        nonce = new_nonce()
        params = {"nonce": nonce}
        _, answer, cert = self._send_raw("GET", "/v1/attestation", params=params)
        try:
            document = answer["result"]["identity"]
            public_key = keys.load_public_key_bytes(document["signing_key"].encode(), "controller signing key")
        except (KeyError, TypeError, DuetError):
            raise UntrustedAnswer("the controller's identity document is malformed", code="bad_identity") from None
        if keys.key_id(public_key) != document.get("controller"):
            raise UntrustedAnswer("the controller id is not the id of its signing key", code="bad_identity")
        verify_answer(
            answer,
            controller=document["controller"],
            public_key=public_key,
            nonce=nonce,
            request_target=target("GET", "/v1/attestation", params),
        )
        if cert is not None and sha256_hex(cert) != document.get("tls_cert_sha256"):
            raise ControllerChanged("the controller's TLS certificate is not the one its identity names", code="tls_pin_mismatch")
        return ControllerPin(
            controller=document["controller"],
            signing_key=document["signing_key"],
            tee=str(answer["result"].get("evidence", {}).get("type", "none")),
            tls_cert_sha256=document.get("tls_cert_sha256"),
            owners=tuple(document.get("owners") or ()),
            owners_seq=document.get("owners_seq"),
            approval_policy=document.get("approval_policy"),
            policy_seq=document.get("policy_seq"),
        )

    # --- transport ---------------------------------------------------------------------

    def _tls_refusal(self, presented: bytes | None) -> ControllerChanged:
        pin = self._stored
        assert pin is not None
        seen = f"TLS certificate sha256 {sha256_hex(presented)[:16]}…" if presented else "another TLS certificate"
        return ControllerChanged(
            f"refused: the controller at {self.url} presented {seen}, but the controller you verified "
            f"({pin.controller[:16]}…) uses {str(pin.tls_cert_sha256)[:16]}…. Someone may be intercepting the "
            "connection, or the controller's TLS key was replaced; if that is expected, verify it again with "
            f"`duet --url {self.url} verify --replace`.",
            code="tls_pin_mismatch",
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            if self._stored is not None and self.https and _certificate_refused(exc):
                raise self._tls_refusal(presented_certificate(self.url)) from None
            raise ConnectionFailed(f"cannot reach the controller at {self.url}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"cannot reach the controller at {self.url}: {exc}") from None
        if self._stored is not None and self.https:
            cert = peer_certificate(response)
            if cert is not None and sha256_hex(cert) != self._stored.tls_cert_sha256:
                raise self._tls_refusal(cert)
        return response

    def _send_raw(
        self, method: str, path: str, *, params: dict[str, str] | None = None, body: bytes | None = None
    ) -> tuple[int, Any, bytes | None]:
        response = self._request(
            method,
            path,
            params=params,
            content=body,
            headers={"content-type": "application/json"} if body is not None else None,
        )
        try:
            return response.status_code, response.json(), peer_certificate(response)
        except ValueError:
            raise UntrustedAnswer(
                f"the controller answered HTTP {response.status_code} with something that is not a signed answer",
                code="unsigned_answer",
            ) from None

    def _send(
        self, method: str, path: str, *, params: dict[str, str] | None = None, body: bytes | None = None
    ) -> tuple[int, Any]:
        status, answer, _ = self._send_raw(method, path, params=params, body=body)
        return status, answer

    def _verified(self, status: int, answer: Any, *, sent: str, digest: str | None = None, nonce: str | None = None) -> Any:
        """The result of an answer verified against the pin and bound to what was ``sent`` (its
        request target), the request's ``digest`` and ``nonce`` when given; a signed refusal
        raises :class:`ApiError`."""
        pin = self.pin()
        public_key = pin.public_key()
        try:
            result = verify_answer(
                answer, controller=pin.controller, public_key=public_key, request_digest=digest, nonce=nonce, request_target=sent
            )
        except UntrustedAnswer as exc:
            if exc.code == "wrong_controller" and isinstance(answer, dict):
                raise ControllerChanged(
                    f"refused: the controller at {self.url} now answers as controller "
                    f"{str(answer.get('controller'))[:16]}…, not as {pin.controller[:16]}…, which you "
                    + ("verified and pinned" if self._stored else "saw at first contact")
                    + "; its signing key was replaced, or this is another controller. Nothing in the answer "
                    f"was used. If the change is expected, verify it again: `duet --url {self.url} verify --replace`.",
                    code="controller_key_changed",
                ) from None
            raise
        if status >= 400 and isinstance(result, dict) and isinstance(result.get("error"), dict):
            error = result["error"]
            raise ApiError(str(error.get("code", "error")), str(error.get("message", "")), status)
        return result

    def get(self, path: str, **query: Any) -> Any:
        self.pin()  # refuse an unverified controller before sending anything
        nonce = new_nonce()
        params = {**{name: str(value) for name, value in query.items() if value is not None}, "nonce": nonce}
        status, answer = self._send("GET", path, params=params)
        return self._verified(status, answer, sent=target("GET", path, params), nonce=nonce)

    def call(self, path: str, op: str, params: dict[str, Any]) -> Any:
        if self.owner_key is None:
            raise DuetError("this operation needs the owner's private key (--key or DUET_KEY)", code="no_owner_key")
        envelope = sign_request(op, self.pin().controller, params, self.owner_key)
        status, answer = self._send("POST", path, body=json.dumps(envelope).encode())
        return self._verified(status, answer, sent=target("POST", path), digest=request_digest(envelope["request"]))

    # --- operations --------------------------------------------------------------------

    def start(self, cvm_type: str, *, provider: str | None = None) -> dict[str, Any]:
        params = {"cvm_type": cvm_type} if provider is None else {"cvm_type": cvm_type, "provider": provider}
        return self.call("/v1/cvms", "cvm.start", params)  # type: ignore[no-any-return]

    def run(
        self, cvm_id: str, commands: list[str], *, timeout_s: float | None = None, output_limit: int | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"cvm_id": cvm_id, "commands": commands}
        if timeout_s is not None:
            params["timeout_s"] = timeout_s
        if output_limit is not None:
            params["output_limit"] = output_limit
        return self.call(f"/v1/cvms/{cvm_id}/run", "cvm.run", params)  # type: ignore[no-any-return]

    def mark(self, cvm_id: str, mode: str, *, final: bool = False) -> dict[str, Any]:
        return self.call(f"/v1/cvms/{cvm_id}/mark", "cvm.mark", {"cvm_id": cvm_id, "mode": mode, "final": final})  # type: ignore[no-any-return]

    def stop(self, cvm_id: str) -> dict[str, Any]:
        return self.call(f"/v1/cvms/{cvm_id}/stop", "cvm.stop", {"cvm_id": cvm_id})  # type: ignore[no-any-return]

    def attest(self, cvm_id: str) -> dict[str, Any]:
        """Have the controller attest the CVM now; the answer holds the verdict step by step."""
        return self.call(f"/v1/cvms/{cvm_id}/attest", "cvm.attest", {"cvm_id": cvm_id})  # type: ignore[no-any-return]

    # --- approvals (docs/approvals.md): each operation above answers ``{"proposal": ...}``
    # (HTTP 202) instead of its result when the approval policy needs more owners ---------

    def change_owners(self, *, add: list[str] | None = None, remove: list[str] | None = None) -> dict[str, Any]:
        """Add owner keys (public PEMs) and remove key ids (``owners.change``)."""
        return self.call("/v1/owners", "owners.change", {"add": add or [], "remove": remove or []})  # type: ignore[no-any-return]

    def change_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        """Put another approval policy in force (``policy.change``; the shape of the policy file)."""
        return self.call("/v1/policy", "policy.change", {"policy": policy})  # type: ignore[no-any-return]

    def proposals(self, *, status: str | None = None) -> list[dict[str, Any]]:
        return self.get("/v1/proposals", status=status)["proposals"]  # type: ignore[no-any-return]

    def proposal(self, proposal_id: str) -> dict[str, Any]:
        return self.get(f"/v1/proposals/{proposal_id}")  # type: ignore[no-any-return]

    def approve(self, proposal_id: str) -> dict[str, Any]:
        """Approve; when this approval meets the threshold the answer's ``result`` is the operation's."""
        return self.call(f"/v1/proposals/{proposal_id}/approve", "proposal.approve", {"proposal_id": proposal_id})  # type: ignore[no-any-return]

    def reject(self, proposal_id: str, *, reason: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"proposal_id": proposal_id}
        if reason is not None:
            params["reason"] = reason
        return self.call(f"/v1/proposals/{proposal_id}/reject", "proposal.reject", params)  # type: ignore[no-any-return]

    def withdraw(self, proposal_id: str) -> dict[str, Any]:
        return self.call(f"/v1/proposals/{proposal_id}/withdraw", "proposal.withdraw", {"proposal_id": proposal_id})  # type: ignore[no-any-return]

    def state(self, cvm_id: str) -> dict[str, Any]:
        return self.get(f"/v1/cvms/{cvm_id}")  # type: ignore[no-any-return]

    def list_cvms(self) -> list[dict[str, Any]]:
        return self.get("/v1/cvms")["cvms"]  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/v1/jobs/{job_id}")  # type: ignore[no-any-return]

    def wait_job(self, job_id: str, *, on_step: Callable[[str], None] | None = None, timeout: float = 900.0) -> dict[str, Any]:
        """Poll a job until it ends; ``on_step`` hears each new progress step."""
        deadline = time.monotonic() + timeout
        delay, last_step = 0.02, None
        while True:
            job = self.job(job_id)
            if job["step"] != last_step and on_step is not None:
                on_step(job["step"])
            last_step = job["step"]
            if job["status"] != "running":
                return job
            if time.monotonic() > deadline:
                raise DuetError(f"job {job_id} did not end within {timeout:.0f} s", code="job_timeout")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def head(self) -> dict[str, Any]:
        return self.get("/v1/ledger/head")  # type: ignore[no-any-return]

    def checkpoint(self, *, witnessed: bool = False) -> bytes:
        """The controller's latest C2SP checkpoint (``GET /v1/ledger/checkpoint``): the signed note
        as served, cosignature lines included; with ``witnessed``, the newest one carrying the
        controller's witness quorum.

        Refused (:class:`UntrustedAnswer` ``bad_checkpoint``) unless the pinned controller's key
        signed it under the controller's origin. The note is not bound to this request (it has no
        nonce, as C2SP checkpoints have none): an old one can be replayed, so hold it to a head
        (``duet.client.checkpoints.check_checkpoint_matches_head``) and check its cosignatures
        against your own witness policy (``verify_checkpoint_quorum``)."""
        pin = self.pin()
        path = "/v1/ledger/checkpoint"
        params = {"witnessed": "true"} if witnessed else None
        response = self._request("GET", path, params=params)
        if response.status_code != 200:
            try:
                answer = response.json()
            except ValueError:
                raise UntrustedAnswer(
                    f"the controller answered HTTP {response.status_code} with something that is not a signed answer",
                    code="unsigned_answer",
                ) from None
            self._verified(response.status_code, answer, sent=target("GET", path, params))
            raise UntrustedAnswer(f"the controller answered HTTP {response.status_code} without an error", code="unsigned_answer")
        note = response.content
        try:
            verify_checkpoint(note, NoteVerifier(controller_origin(pin.controller), pin.public_key()))
        except (NoteError, ValueError) as exc:
            message = exc.message if isinstance(exc, NoteError) else str(exc)
            raise UntrustedAnswer(
                f"the checkpoint served by {self.url} is not signed by the pinned controller {pin.controller[:16]}… "
                f"under its origin: {message}",
                code="bad_checkpoint",
            ) from None
        return note

    def entries(self, start: int = 0, end: int | None = None, cvm: str | None = None) -> list[dict[str, Any]]:
        """Ledger entries start <= seq < end (all of them, optionally one CVM's), page by page."""
        entries: list[dict[str, Any]] = []
        while True:
            page = self.get("/v1/ledger/entries", start=start, end=end, cvm=cvm)
            entries += page["entries"]
            if end is None:
                end = page["tree_size"]
            if page["end"] >= end:
                return entries
            start = page["end"]

    def blob(self, sha256: str) -> bytes:
        """A stored output; refused unless its bytes hash to the name asked for."""
        self.pin()
        response = self._request("GET", f"/v1/blobs/{sha256}")
        if response.status_code != 200:
            try:
                answer = response.json()
            except ValueError:
                raise UntrustedAnswer(
                    f"the controller answered HTTP {response.status_code} with something that is not a signed answer",
                    code="unsigned_answer",
                ) from None
            self._verified(response.status_code, answer, sent=target("GET", f"/v1/blobs/{sha256}"))
        if hashlib.sha256(response.content).hexdigest() != sha256:
            raise UntrustedAnswer(f"the output served for {sha256[:16]}… does not match its hash", code="blob_mismatch")
        return response.content

    def event_lines(
        self, *, start: int | None = None, last_event_id: str | None = None, read_timeout: float = 60.0
    ) -> Generator[str, None, None]:
        """The lines of the controller's live event stream (``GET /v1/events``, server-sent
        events): from ledger entry ``start`` on, or, to resume, after the event ``last_event_id``
        (then ``start`` is not sent).

        Events are not signed and prove nothing: they only say "look again", so that a follower
        fetches and verifies a new signed head sooner. The stream uses this client's connection
        settings (TLS pinning included). Raises :class:`ConnectionFailed` when the stream cannot
        be opened or breaks; ``close()`` the generator to end it."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        params = {"from": str(start)} if start is not None and not last_event_id else {}
        try:
            with self._http.stream(
                "GET", "/v1/events", params=params, headers=headers, timeout=httpx.Timeout(10.0, read=read_timeout)
            ) as response:
                yield from response.iter_lines()
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"the event stream of {self.url} failed: {exc}") from None


def load_owner_key(path: str | Path | None) -> keys.PrivateKey | None:
    """The owner's private key (PEM) at ``path``; None without a path."""
    return keys.load_private_key(path) if path else None
