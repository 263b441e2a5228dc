"""Python SDK for duet controllers, used by the CLI and by other programs.

Every answer's signature is checked against the controller's pinned key before anything in
it is believed; answers to owner requests must be bound to the request's digest, and reads
carry a fresh nonce that the signed answer must echo, so an old answer cannot be replayed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from duet import keys
from duet.client.trust import ControllerPin, TrustStore
from duet.errors import DuetError, VerificationError
from duet.protocol.envelope import new_nonce, request_digest, sign_request, verify_answer


class ApiError(DuetError):
    """The controller refused or failed a request; its signed answer says why."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message, code=code, status=status)


class ConnectionFailed(DuetError):
    code, status = "connection_failed", 503


class DuetClient:
    def __init__(
        self,
        url: str,
        *,
        owner_key: keys.PrivateKey | None = None,
        trust: TrustStore | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.owner_key = owner_key
        self.trust = trust or TrustStore.default()
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)
        self._pin: ControllerPin | None = None
        self.first_contact = False
        """True when this client pinned the controller on first use (trust on first use)."""

    def __enter__(self) -> "DuetClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- trust -------------------------------------------------------------------------

    def pin(self) -> ControllerPin:
        """The controller's pinned identity; fetched and pinned at first contact."""
        if self._pin is None:
            self._pin = self.trust.get(self.url)
        if self._pin is None:
            self._pin = self._fetch_identity()
            self.trust.put(self.url, self._pin)
            self.first_contact = True
        return self._pin

    def _fetch_identity(self) -> ControllerPin:
        nonce = new_nonce()
        _, answer = self._send("GET", "/v1/attestation", params={"nonce": nonce})
        try:
            document = answer["result"]["identity"]
            public_key = keys.load_public_key_bytes(document["signing_key"].encode(), "controller signing key")
        except (KeyError, TypeError, DuetError):
            raise VerificationError("the controller's identity document is malformed", code="bad_identity") from None
        if keys.key_id(public_key) != document.get("controller"):
            raise VerificationError("the controller id is not the id of its signing key", code="bad_identity")
        verify_answer(answer, controller=document["controller"], public_key=public_key, nonce=nonce)
        return ControllerPin(
            controller=document["controller"],
            signing_key=document["signing_key"],
            tee=str(answer["result"].get("evidence", {}).get("type", "none")),
        )

    # --- transport ---------------------------------------------------------------------

    def _send(self, method: str, path: str, *, params: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, Any]:
        try:
            response = self._http.request(
                method, path, params=params, content=body,
                headers={"content-type": "application/json"} if body is not None else None,
            )
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"cannot reach the controller at {self.url}: {exc}") from None
        try:
            return response.status_code, response.json()
        except ValueError:
            raise VerificationError(
                f"the controller answered HTTP {response.status_code} with something that is not a signed answer",
                code="unsigned_answer",
            ) from None

    def _verified(self, status: int, answer: Any, *, digest: str | None = None, nonce: str | None = None) -> Any:
        pin = self.pin()
        result = verify_answer(answer, controller=pin.controller, public_key=pin.public_key(), request_digest=digest, nonce=nonce)
        if status >= 400 and isinstance(result, dict) and isinstance(result.get("error"), dict):
            error = result["error"]
            raise ApiError(str(error.get("code", "error")), str(error.get("message", "")), status)
        return result

    def get(self, path: str, **query: Any) -> Any:
        nonce = new_nonce()
        params = {name: str(value) for name, value in query.items() if value is not None}
        status, answer = self._send("GET", path, params={**params, "nonce": nonce})
        return self._verified(status, answer, nonce=nonce)

    def call(self, path: str, op: str, params: dict[str, Any]) -> Any:
        if self.owner_key is None:
            raise DuetError("this operation needs the owner's private key (--key or DUET_KEY)", code="no_owner_key", status=400)
        envelope = sign_request(op, self.pin().controller, params, self.owner_key)
        status, answer = self._send("POST", path, body=json.dumps(envelope).encode())
        return self._verified(status, answer, digest=request_digest(envelope["request"]))

    # --- operations --------------------------------------------------------------------

    def start(self, cvm_type: str) -> dict[str, Any]:
        return self.call("/v1/cvms", "cvm.start", {"cvm_type": cvm_type})  # type: ignore[no-any-return]

    def run(self, cvm_id: str, commands: list[str], *, timeout_s: float | None = None, output_limit: int | None = None) -> dict[str, Any]:
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
                raise DuetError(f"job {job_id} did not end within {timeout:.0f} s", code="job_timeout", status=504)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def head(self) -> dict[str, Any]:
        return self.get("/v1/ledger/head")  # type: ignore[no-any-return]

    def entries(self, start: int = 0, end: int | None = None, cvm: str | None = None) -> list[dict[str, Any]]:
        return self.get("/v1/ledger/entries", start=start, end=end, cvm=cvm)["entries"]  # type: ignore[no-any-return]

    def blob(self, sha256: str) -> bytes:
        """A stored output; refused unless its bytes hash to the name asked for."""
        try:
            response = self._http.get(f"/v1/blobs/{sha256}")
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"cannot reach the controller at {self.url}: {exc}") from None
        if response.status_code != 200:
            self._verified(response.status_code, response.json())
        if hashlib.sha256(response.content).hexdigest() != sha256:
            raise VerificationError(f"the output served for {sha256[:16]}… does not match its hash", code="blob_mismatch")
        return response.content


def load_owner_key(path: str | Path | None) -> keys.PrivateKey | None:
    return keys.load_private_key(path) if path else None
