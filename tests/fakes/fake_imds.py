"""A fake Azure instance metadata service (IMDS) on loopback, for the fake CVMs of ``fake_arm.py``.

It answers the two requests the collection program (``duet/guest/collect_evidence.py``) makes on
an Azure CVM, as the real service does at ``http://169.254.169.254`` (specs/attestation.md §5.1),
with the SIMULATED hardware the fake vTPM's reports come from (``tests/fakes/fake_vtpm.py``):

- ``GET /metadata/THIM/amd/certification`` (header ``Metadata: true``): the VCEK chain of the
  SNP report, as JSON ``vcekCert`` (PEM) and ``certificateChain`` (PEM, ASK then ARK);
- ``POST /acc/tdquote`` with ``{"report": base64url(TDREPORT)}``: ``{"quote": base64url(quote)}``,
  the v4 quote the simulated Intel platform makes of that TD report, as the host's quoting
  enclave would, after checking the report's (simulated) MAC.

A request without ``Metadata: true`` is refused (400), as IMDS refuses it. The fake guest reaches
it through ``DUET_IMDS_URL``, the collection program's test seam. Every request is recorded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FakeImds:
    def __init__(self, hardware_dir: Callable[[], Path]) -> None:
        """``hardware_dir``: where the SIMULATED AMD (``amd/``) and Intel (``intel/``) live, asked
        at each request (a test may point the fake cloud at another one before a VM boots)."""
        self.hardware_dir = hardware_dir
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> FakeImds:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def paths(self) -> list[str]:
        with self.lock:
            return [r["path"] for r in self.requests]

    # ---- answers ----
    def vcek_certification(self) -> dict[str, Any]:
        from cryptography.hazmat.primitives import serialization

        from duet.attestation.azure.simulated import DEFAULT_CHIP_ID
        from duet.attestation.snp.simulated import DEFAULT_TCB, SimulatedAmd

        amd = SimulatedAmd(self.hardware_dir() / "amd")
        vcek = amd.vcek_certificate(DEFAULT_CHIP_ID, DEFAULT_TCB)
        return {
            "vcekCert": vcek.public_bytes(serialization.Encoding.PEM).decode(),
            "tcbm": f"{DEFAULT_TCB.encode(amd.product):016X}",
            "certificateChain": amd.chain_pem().decode(),
            "cacheControl": "86400",
        }

    def td_quote(self, body: Any) -> tuple[int, dict[str, Any]]:
        from duet.attestation.azure.hcl import HclFormatError, parse_td_report_struct
        from duet.attestation.layout import read_fields
        from duet.attestation.tdx.abi import TD_REPORT10_FIELDS
        from duet.attestation.tdx.simulated import load_or_create_platform

        if not isinstance(body, dict) or not isinstance(body.get("report"), str):
            return 400, {"error": "invalid_request", "error_description": 'the body must be {"report": base64url}'}
        try:
            td = parse_td_report_struct(_b64url_decode(body["report"]))
        except (binascii.Error, ValueError, HclFormatError) as exc:
            return 400, {"error": "invalid_report", "error_description": str(exc)}
        quote_body = td.quote_body()
        if td.report_mac["mac"] != hashlib.sha256(b"SIMULATED MAC" + quote_body).digest():
            return 400, {"error": "invalid_report", "error_description": "the TD report's MAC does not verify on this platform"}
        values = read_fields(TD_REPORT10_FIELDS, quote_body)
        report_data = values.pop("report_data")
        quote = load_or_create_platform(self.hardware_dir() / "intel").quote(report_data, td_report=values)
        return 200, {"quote": base64.urlsafe_b64encode(quote).rstrip(b"=").decode()}


def _handler(fake: FakeImds) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(size) if size else b""
            path = self.path.split("?", 1)[0]
            with fake.lock:
                fake.requests.append({"method": self.command, "path": path, "metadata": self.headers.get("Metadata")})
            if self.headers.get("Metadata", "").lower() != "true":
                return self._send(400, {"error": "Bad request. Required metadata header not specified"})
            if self.command == "GET" and path == "/metadata/THIM/amd/certification":
                return self._send(200, fake.vcek_certification())
            if self.command == "POST" and path == "/acc/tdquote":
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = None
                return self._send(*fake.td_quote(body))
            return self._send(404, {"error": "Not found"})

        do_GET = do_POST = _handle

    return Handler
