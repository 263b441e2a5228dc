"""Helpers for the TDX tests: asset paths, the time they verify at, offsets into a quote, tampering."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from duet.attestation import tdx
from duet.attestation.cvm import CvmVerdict
from duet.attestation.steps import StepVerdict
from duet.attestation.tdx.simulated import SimulatedTdxPlatform

ASSETS = Path(__file__).resolve().parents[3] / "assets" / "tdx"
SPR = ASSETS / "go-tdx-guest_tdx_prod_quote_SPR_E4_v4.bin"
COS = ASSETS / "go-tdx-guest_cos-113-tdx-quote_v4.bin"
COS_REPORT_DATA = ASSETS / "go-tdx-guest_cos-113-tdx-quote.report_data.bin"
AZURE = ASSETS / "trustee_azure_tdx_td_quote_v4.bin"
V5 = ASSETS / "go-tdx-guest_quote_v5_sample.bin"
REAL_V4 = (SPR, COS, AZURE)
REAL = (*REAL_V4, V5)
TCB_INFO_V5 = ASSETS / "go-tdx-guest_sample_tcbinfo_response_v5.json"
TCB_INFO_2023 = ASSETS / "go-tdx-guest_sample_tcbInfo_response.json"
QE_IDENTITY_2023 = ASSETS / "go-tdx-guest_sample_qeIdentity_response.json"
PCK_CRL_2023 = ASSETS / "go-tdx-guest_pckcrl.der"
ROOT_CRL_2023 = ASSETS / "go-tdx-guest_rootcrl.der"

REAL_NOW = datetime(2026, 2, 15, tzinfo=UTC)
"""Inside every real PCK chain's validity (the latest leaf is from 2026-01-27) and the v5 TCB info's."""
COLLATERAL_2023 = datetime(2023, 7, 1, tzinfo=UTC)
"""When go-tdx-guest's 2023 QE identity, PCK CRL and root CRL were all current (and the SPR_E4 PCK valid)."""
REPORT_DATA = bytes(range(64))


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def put(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``data`` with one little-endian integer field overwritten."""
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


class Offsets:
    """Absolute offsets of a quote's fields, from its parse (v4 and v5 differ by the body descriptor)."""

    def __init__(self, quote: bytes) -> None:
        q = tdx.parse_tdx_quote(quote)
        self.body = q.body_offset
        self.signature_data_len = self.body + len(q.td_report.raw)
        sig = self.signature_data_len + 4
        self.quote_signature = sig
        self.attestation_key = sig + 64
        self.certification_data_type = sig + 128
        self.certification_data_size = sig + 130
        self.qe_report = sig + 134
        self.qe_report_signature = self.qe_report + 384
        self.qe_auth_data_size = self.qe_report + 448
        self.qe_auth_data = self.qe_report + 450
        inner = self.qe_auth_data + q.signature_data.qe_report_certification_data.qe_auth_data_size
        self.inner_type = inner
        self.inner_size = inner + 2
        self.pck_chain = inner + 6


def verify_real(quote: bytes, **kwargs: Any) -> CvmVerdict:
    kwargs.setdefault("now", REAL_NOW)
    return tdx.verify_tdx_quote(quote, **kwargs)


def verify_sim(quote: bytes, platform: SimulatedTdxPlatform, **kwargs: Any) -> CvmVerdict:
    kwargs.setdefault("now", datetime.now(UTC))
    return tdx.verify_tdx_quote(quote, trusted_root_keys=[platform.root_key()], **kwargs)


def steps(verdict: CvmVerdict) -> dict[str, StepVerdict]:
    return {s.step: s for s in verdict.steps}


def failure(verdict: CvmVerdict) -> tuple[str, str | None]:
    """(step, code) of the failed step."""
    assert verdict.failure is not None, "expected a failed verdict"
    return verdict.failure.step, verdict.failure.code
