"""The controller inside a Gramine SGX enclave: DCAP quotes from ``/dev/attestation``.

Gramine exposes attestation as pseudo-files (specs/attestation.md §1.1): write 64 bytes of
report data to ``user_report_data``, then read ``quote``. Sealed state lives on an encrypted
mount keyed to MRENCLAVE (``key_name = "_sgx_mrenclave"`` in the manifest), so only this very
enclave build can read it; the host sees ciphertext.

Checked at start, so that a misbuilt enclave fails loudly instead of serving unattested:
``attestation_type`` must be ``dcap`` (``sgx.remote_attestation = "dcap"``), and the sealed
directory must exist (the encrypted mount is configured). Each quote is parsed and its
REPORTDATA compared with what was written, because Gramine pads or cuts silently and a quote
about other data would otherwise be served as ours.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from duet.attestation import sgx as dcap
from duet.tee.base import TeeError, private_dir, require_report_data

EVIDENCE_TYPE = "sgx-dcap"
DEFAULT_ATTESTATION_DIR = Path("/dev/attestation")


class GramineTee:
    name = EVIDENCE_TYPE

    def __init__(
        self, attestation_dir: Path | str = DEFAULT_ATTESTATION_DIR, sealed_path: Path | str = Path("/duet/sealed")
    ) -> None:
        self.attestation_dir = Path(attestation_dir)
        self.sealed_path = Path(sealed_path)
        try:
            kind = (self.attestation_dir / "attestation_type").read_text().strip()
        except OSError:
            raise TeeError(
                f"{self.attestation_dir}/attestation_type cannot be read: this process is not running "
                "inside a Gramine SGX enclave (use --tee none or simulated outside one)",
                code="not_in_gramine",
            ) from None
        if kind != "dcap":
            raise TeeError(
                f"Gramine reports attestation type {kind!r}, not 'dcap': set sgx.remote_attestation = "
                '"dcap" in the manifest, rebuild and re-sign',
                code="gramine_no_dcap",
            )
        if not self.sealed_path.is_dir():
            raise TeeError(
                f"the sealed directory {self.sealed_path} does not exist: the manifest must mount it as "
                "an encrypted mount keyed to _sgx_mrenclave (deploy/gramine)",
                code="gramine_no_sealed_mount",
            )

    def quote_bytes(self, report_data: bytes) -> bytes:
        report_data = require_report_data(report_data)
        try:
            (self.attestation_dir / "user_report_data").write_bytes(report_data)
            raw = (self.attestation_dir / "quote").read_bytes()
        except OSError as exc:
            raise TeeError(
                f"Gramine did not produce a quote ({exc.strerror}); is the AESM service with the DCAP "
                "quoting enclave running on the host?",
                code="gramine_quote_failed",
            ) from None
        try:
            parsed = dcap.parse_quote(raw)
        except dcap.QuoteFormatError as exc:
            raise TeeError(f"Gramine returned a malformed quote ({exc.message})", code="gramine_quote_failed") from None
        if parsed.report_body.report_data != report_data:
            raise TeeError("Gramine returned a quote over other report data than was written", code="gramine_quote_failed")
        return raw

    def quote(self, report_data: bytes) -> dict[str, Any]:
        return {"type": self.name, "quote": base64.b64encode(self.quote_bytes(report_data)).decode()}

    def sealed_dir(self) -> Path:
        """The encrypted mount (files there are encrypted with the MRENCLAVE sealing key)."""
        return private_dir(self.sealed_path)
