"""A fake Azure Attestation (MAA) instance: a real HTTP server on 127.0.0.1.

It answers like MAA where duet depends on it (specs/attestation.md §5.3–5.4):
- ``POST /attest/SgxEnclave?api-version=2020-10-01`` with ``{"quote": base64url}`` returns
  ``{"token": JWT}``: RS256, header ``jku`` = ``<instance>/certs`` and ``kid``, claims ``iss``
  (the instance URL), ``iat``/``nbf``/``exp`` (8 hours) and the ``x-ms-sgx-*`` claims read from
  the quote's report body; a quote that does not parse, or (when ``trusted_roots`` is set) does
  not verify, is refused with HTTP 400 and an MAA-style error body;
- ``GET /certs`` returns a JWKS whose keys carry only ``kid``, ``kty`` and ``x5c`` (no ``n``/``e``),
  as MAA's do; ``GET /.well-known/openid-configuration`` names them.

``misbehave`` makes it issue a bad token, one way per test: ``wrong_kid``, ``expired``,
``alg_none``, ``tampered``, ``wrong_issuer``, ``other_key`` (signed by a key not in /certs),
``debug`` (claims a debug enclave), ``other_report_data``, ``not_sgx``.
"""

from __future__ import annotations

import base64
import functools
import json
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from duet.attestation import sgx as dcap


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _self_signed(key: rsa.RSAPrivateKey, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


@functools.lru_cache(maxsize=2)
def _rsa_key(which: str) -> rsa.RSAPrivateKey:
    """RSA keys are slow to make: one per role per test run (the certificate is per instance)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakeMaa:
    def __init__(self, *, trusted_roots: Sequence[Any] = ()) -> None:
        self.trusted_roots = list(trusted_roots)
        self.misbehave: str | None = None
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.key = _rsa_key("signing")
        self.cert = _self_signed(self.key, self.url)
        self.kid = "fake-maa-key-1"
        self._other_key = _rsa_key("other")
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> FakeMaa:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeMaa:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def jwks(self) -> dict[str, Any]:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        return {"keys": [{"kid": self.kid, "kty": "RSA", "x5c": [base64.b64encode(der).decode()]}]}

    def claims_for(self, quote: bytes) -> dict[str, Any]:
        body = dcap.parse_quote(quote).report_body
        now = int(time.time())
        return {
            "iss": self.url,
            "iat": now,
            "nbf": now,
            "exp": now + 8 * 3600,
            "jti": "fake",
            "x-ms-ver": "1.0",
            "x-ms-attestation-type": "sgx",
            "x-ms-sgx-mrenclave": body.mr_enclave.hex(),
            "x-ms-sgx-mrsigner": body.mr_signer.hex(),
            "x-ms-sgx-product-id": body.isv_prod_id,
            "x-ms-sgx-svn": body.isv_svn,
            "x-ms-sgx-is-debuggable": body.debug,
            "x-ms-sgx-report-data": body.report_data.hex(),
        }

    def issue(self, quote: bytes) -> str:
        claims = self.claims_for(quote)
        headers = {"kid": self.kid, "jku": self.url + "/certs"}
        key: Any = self.key
        algorithm = "RS256"
        how = self.misbehave
        if how == "wrong_kid":
            headers["kid"] = "not-a-key"
        elif how == "expired":
            claims.update(iat=claims["iat"] - 10 * 3600, nbf=claims["nbf"] - 10 * 3600, exp=claims["exp"] - 10 * 3600)
        elif how == "wrong_issuer":
            claims["iss"] = "https://evil.attest.azure.net"
        elif how == "other_key":
            key = self._other_key
        elif how == "debug":
            claims["x-ms-sgx-is-debuggable"] = True
        elif how == "other_report_data":
            claims["x-ms-sgx-report-data"] = "00" * 64
        elif how == "not_sgx":
            claims["x-ms-attestation-type"] = "sevsnpvm"
        elif how == "wrong_jku":
            headers["jku"] = "https://evil.example/certs"
        if how == "alg_none":
            return jwt.encode(claims, None, algorithm="none", headers=headers)  # type: ignore[arg-type]
        token = jwt.encode(claims, key, algorithm=algorithm, headers=headers)
        if how == "tampered":
            head, payload, signature = token.split(".")
            changed = json.loads(_b64url_decode(payload))
            changed["x-ms-sgx-svn"] = 99
            payload = base64.urlsafe_b64encode(json.dumps(changed).encode()).rstrip(b"=").decode()
            token = ".".join((head, payload, signature))
        return token

    def attest(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            quote = _b64url_decode(json.loads(body)["quote"])
            dcap.parse_quote(quote)
        except (ValueError, KeyError, TypeError, dcap.QuoteFormatError):
            return 400, {"error": {"code": "InvalidParameter", "message": "The quote could not be parsed"}}
        if self.trusted_roots:
            verdict = dcap.verify_quote(quote, trusted_root_keys=self.trusted_roots, now=datetime.now(UTC))
            if not verdict.ok:
                return 400, {"error": {"code": "InvalidParameter", "message": f"Quote verification failed: {verdict.code}"}}
        return 200, {"token": self.issue(quote)}


def _handler(fake: FakeMaa) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            fake.requests.append(("GET", self.path))
            if self.path == "/certs":
                self._send(200, fake.jwks())
            elif self.path == "/.well-known/openid-configuration":
                self._send(
                    200, {"issuer": fake.url, "jwks_uri": fake.url + "/certs", "id_token_signing_alg_values_supported": ["RS256"]}
                )
            else:
                self._send(404, {"error": {"code": "NotFound", "message": self.path}})

        def do_POST(self) -> None:
            fake.requests.append(("POST", self.path))
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path != "/attest/SgxEnclave?api-version=2020-10-01":
                self._send(404, {"error": {"code": "NotFound", "message": self.path}})
                return
            self._send(*fake.attest(body))

    return Handler
