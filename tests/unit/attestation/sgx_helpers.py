"""Helpers for the SGX tests: asset paths, tampering, verification shortcuts."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from pathlib import Path

from duet.attestation import sgx_dcap as dcap
from duet.tee.simulated import SimulatedSgxTee

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "sgx"
RELEASE = ASSETS / "azure-samples_intelsdk_enclave.info.release_sgx_quote_v3.bin"
DEBUG = ASSETS / "azure-samples_intelsdk_enclave.info.debug_sgx_quote_v3.bin"
OCCLUM = ASSETS / "trustee_occlum_sgx_quote_v3.bin"
REAL_QUOTES = (RELEASE, DEBUG, OCCLUM)
# Inside every real PCK chain's validity (leaves: 2023-02-27/2023-04-26 .. 2030).
REAL_NOW = datetime(2026, 1, 1, tzinfo=UTC)
REPORT_DATA = bytes(range(64))


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    """The same bytes with one bit changed at ``offset``."""
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def tamper_leaf_certificate_signature(quote: bytes) -> bytes:
    """Flip the last byte of the PCK leaf certificate's DER (inside its signature), keeping the PEM
    text the same length and line layout, so that every length field of the quote stays valid."""
    blocks = list(re.finditer(rb"-----BEGIN CERTIFICATE-----\n(.+?)-----END CERTIFICATE-----", quote, re.S))
    leaf = next(m for m in blocks if b"SGX PCK Certificate" in base64.b64decode(b"".join(m.group(1).split())))
    body = leaf.group(1)
    der = bytearray(base64.b64decode(b"".join(body.split())))
    der[-1] ^= 0x01
    new_b64 = iter(base64.b64encode(bytes(der)).decode())
    rebuilt = "".join(ch if ch in "\r\n" else next(new_b64) for ch in body.decode()).encode()
    assert len(rebuilt) == len(body)
    return quote[: leaf.start(1)] + rebuilt + quote[leaf.end(1) :]


def verify_sim(quote: bytes, sim_tee: SimulatedSgxTee) -> dcap.Verdict:
    return dcap.verify_quote(quote, trusted_root_keys=[sim_tee.root_key()], now=datetime.now(UTC))


def verify_real(quote: bytes) -> dcap.Verdict:
    return dcap.verify_quote(quote, trusted_root_keys=[dcap.intel_sgx_root_key()], now=REAL_NOW)
