"""Azure test evidence: the real HCL reports and MAA tokens, a test MAA signing key, and
HCL reports rebuilt around altered runtime data."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from duet.attestation.azure.hcl import (
    HASH_TYPES,
    SNP_REPORT_DATA_OFFSET,
    TDREPORT_REPORT_DATA_OFFSET,
    pack_hcl_report,
    parse_hcl_report,
)

ASSETS = Path(__file__).resolve().parents[3] / "assets" / "azure"
SNP_HCL = (ASSETS / "trustee_azure_snp_hcl_report.bin").read_bytes()
SNP_VCEK_CHAIN = (ASSETS / "trustee_azure_snp_vcek_chain.pem").read_bytes()
TDX_HCL = (ASSETS / "trustee_azure_tdx_hcl_report.bin").read_bytes()
TDX_QUOTE = (ASSETS / "trustee_azure_tdx_td_quote_v4.bin").read_bytes()
SEVSNPVM_TOKEN = (ASSETS / "azure-samples_sevsnpvm_sharedweu-test_2025-04-08.jwt").read_text().strip()
AZUREVM_TOKEN = (ASSETS / "cvm-guest-attestation_azurevm_ClientLibTests_line138.jwt").read_text().strip()

SNP_VM_ID = "911B0EF8-9DBA-48B0-B275-4E4DF2D39252"
TDX_VM_ID = "6332533D-5649-4D02-8AA7-8F64B7C3EE21"
SNP_VALID_AT = datetime(2024, 6, 1, tzinfo=UTC)
"""Inside the sample VCEK's validity (2023-05-02 – 2030-05-02)."""

TD_QUOTE_BODY_OFFSET = 48  # quote v4: the TD report body follows the 48-byte header
TD_QUOTE_REPORT_DATA = TD_QUOTE_BODY_OFFSET + 520


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def rebuild(
    report: bytes,
    *,
    variable_data: bytes | None = None,
    hash_type: int | None = None,
    hashed_with: int | None = None,
    report_data_tail: bytes = bytes(32),
) -> bytes:
    """``report`` with other runtime data, its hardware report data set to match (so that the
    steps after ``runtime_data_hash`` see the change; the hardware signature no longer holds)."""
    hcl = parse_hcl_report(report)
    data = hcl.variable_data if variable_data is None else variable_data
    hash_type = hcl.runtime.report_data_hash_type if hash_type is None else hash_type
    digest = HASH_TYPES[hashed_with or hash_type](data).digest()
    report_data = (digest + report_data_tail)[:64].ljust(64, b"\0")
    at = SNP_REPORT_DATA_OFFSET if hcl.platform == "snp" else TDREPORT_REPORT_DATA_OFFSET
    hw = hcl.hw_report[:at] + report_data + hcl.hw_report[at + 64 :]
    return pack_hcl_report(
        hw,
        data,
        report_type=hcl.runtime.report_type,
        hash_type=hash_type,
        version=hcl.header.version,
        request_type=hcl.header.request_type,
    )


def runtime_json(report: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(parse_hcl_report(report).variable_data)
    return doc


def with_runtime(report: bytes, doc: dict[str, Any] | bytes) -> bytes:
    data = doc if isinstance(doc, bytes) else json.dumps(doc, separators=(",", ":")).encode()
    return rebuild(report, variable_data=data)


def quote_for(report: bytes, quote: bytes = TDX_QUOTE) -> bytes:
    """``quote`` with its REPORTDATA set to the (rebuilt) TDX HCL report's (signature void)."""
    report_data = parse_hcl_report(report).report_data
    return quote[:TD_QUOTE_REPORT_DATA] + report_data + quote[TD_QUOTE_REPORT_DATA + 64 :]


@dataclass
class TestMaa:
    """A stand-in for an MAA instance's signing key: the recorded tokens' claims are real, their
    keys are Azure's and not available, so the tests re-sign the claims with this one."""

    instance: str
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    kid: str = "test-maa-key"

    __test__ = False  # not a test class, whatever its name

    @classmethod
    def make(cls, instance: str) -> TestMaa:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, instance)])
        start = datetime(2020, 1, 1, tzinfo=UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=365 * 20))
            .sign(key, hashes.SHA256())
        )
        return cls(instance, key, cert)

    def jwks(self) -> dict[str, Any]:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        return {"keys": [{"kid": self.kid, "kty": "RSA", "x5c": [base64.b64encode(der).decode()]}]}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        """RS256 over the claims as given (by JWS, not jwt.encode, which refuses odd claims such
        as a non-string ``iss``: the verifier must meet those too)."""
        headers = {"kid": self.kid, "jku": self.instance + "/certs", **header}
        return jwt.api_jws.encode(json.dumps(claims).encode(), self.key, algorithm="RS256", headers=headers)


def unsigned(claims: dict[str, Any], **header: Any) -> str:
    """A token with ``alg: none`` (no signature), as an attacker would send it."""

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT', **header})}.{b64(claims)}."


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
