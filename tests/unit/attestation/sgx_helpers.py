"""Helpers for the SGX tests: asset paths, tampering, verification shortcuts."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from duet import keys
from duet.attestation import sgx
from duet.protocol.canonical import canonical
from duet.protocol.envelope import new_nonce, sign_answer
from duet.tee.simulated import SimulatedSgxTee, assemble_quote, build_header, build_report_body, raw_signature

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


def verify_sim(quote: bytes, sim_tee: SimulatedSgxTee) -> sgx.Verdict:
    return sgx.verify_quote(quote, trusted_root_keys=[sim_tee.root_key()], now=datetime.now(UTC))


def verify_real(quote: bytes) -> sgx.Verdict:
    return sgx.verify_quote(quote, trusted_root_keys=[sgx.intel_sgx_root_key()], now=REAL_NOW)


def signed_attestation(evidence: Callable[[bytes], dict[str, Any]]) -> tuple[Any, str, bytes]:
    """A controller's signed ``GET /v1/attestation`` answer for a fresh identity, with the evidence
    ``evidence(report data of that identity)`` returns; also the nonce and the TLS certificate it names."""
    key = keys.generate()
    cert = b"tls certificate"
    document = {
        "controller": keys.key_id(key.public_key()),
        "signing_key": keys.public_pem(key.public_key()).decode(),
        "tls_cert_sha256": hashlib.sha256(cert).hexdigest(),
        "owners": [],
        "version": "0",
    }
    nonce = new_nonce()
    result = {"identity": document, "evidence": evidence(hashlib.sha512(canonical(document)).digest())}
    answer = sign_answer(canonical(result), controller=document["controller"], signing_key=key, request_digest=None, nonce=nonce)
    return json.loads(answer), nonce, cert


def sim_quote_with(
    sim_tee: SimulatedSgxTee, *, chain: Sequence[x509.Certificate] | None = None, qe_report: bytes | None = None
) -> bytes:
    """A simulated quote over :data:`REPORT_DATA` with another PCK chain or another (re-signed) QE report."""
    p = sim_tee.platform
    qe = p.qe_report if qe_report is None else qe_report
    return assemble_quote(
        header=build_header(),
        report_body=build_report_body(report_data=REPORT_DATA),
        attestation_key=p.keys["attestation"],
        qe_report=qe,
        qe_report_signature=p.qe_report_signature if qe_report is None else raw_signature(p.keys["pck"], qe),
        qe_auth_data=p.qe_auth_data,
        pck_chain_pem=p.chain_pem() if chain is None else b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
    )
