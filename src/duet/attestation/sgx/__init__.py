"""SGX evidence: Intel SGX ECDSA (DCAP) v3 quotes, from bytes to a verdict.

Import the names from here; the modules say where each one lives, and keep apart what changes
for different reasons:

* :mod:`~duet.attestation.sgx.abi` — the quote layout as tables of named offsets and sizes
  (names as in Intel's ``sgx_quote_3.h``), parsing and packing; trusts nothing;
* :mod:`~duet.attestation.sgx.verify` — the PCK chain to a pinned root key, the QE report
  signature, the attestation-key binding and the enclave signature; says nothing about which
  enclave is acceptable;
* :mod:`~duet.attestation.sgx.roots` — the pinned Intel SGX root and user-given roots;
* :mod:`~duet.attestation.sgx.policy` — which enclaves are acceptable (:class:`EnclaveClaims`);
* :mod:`~duet.attestation.sgx.evidence` — the one pipeline (signatures, report data, policy)
  every front end calls, so that they report the same steps in the same order.
"""

from duet.attestation.sgx.abi import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_DATA_HEADER_FIELDS,
    CERT_DATA_HEADER_SIZE,
    CERT_TYPE_PCK_CHAIN,
    FLAG_DEBUG,
    HEADER_FIELDS,
    HEADER_SIZE,
    INTEL_QE_VENDOR_ID,
    MIN_SIGNATURE_DATA_LEN,
    QE_AUTH_DATA_OFFSET,
    QUOTE_VERSION,
    REPORT_BODY_FIELDS,
    REPORT_BODY_SIZE,
    SIGNATURE_DATA_FIELDS,
    SIGNATURE_DATA_LEN_OFFSET,
    SIGNATURE_DATA_OFFSET,
    SIGNED_REGION_END,
    TEE_TYPE_SGX,
    CertificationData,
    Field,
    ParsedQuote,
    QuoteFormatError,
    QuoteHeader,
    ReportBody,
    SignatureData,
    decode_quote_text,
    pack_fields,
    parse_quote,
    parse_report_body,
    read_fields,
)
from duet.attestation.sgx.evidence import (
    EVIDENCE_STEPS,
    STEP_POLICY,
    STEP_REPORT_DATA,
    EvidenceVerdict,
    StepVerdict,
    check_report_data,
    verify_evidence,
)
from duet.attestation.sgx.policy import DEFAULT_POLICY, EnclaveClaims, Policy, PolicyCheck, PolicyError
from duet.attestation.sgx.roots import (
    INTEL_SGX_ROOT_CA_FILE,
    INTEL_SGX_ROOT_KEY_SHA256,
    intel_sgx_root_key,
    load_trust_root,
    spki_sha256,
)
from duet.attestation.sgx.verify import (
    PCK_LEAF_CN_PHRASE,
    SIGNATURE_STEPS,
    STEP_ATTESTATION_KEY_BINDING,
    STEP_ENCLAVE_SIGNATURE,
    STEP_PARSE,
    STEP_PCK_CHAIN,
    STEP_QE_REPORT_SIGNATURE,
    QuoteVerificationError,
    Verdict,
    attestation_public_key,
    common_name,
    verify_pck_chain,
    verify_quote,
    verify_quoting_enclave,
)

__all__ = [
    # abi
    "ATT_KEY_TYPE_ECDSA_P256",
    "CERT_DATA_HEADER_FIELDS",
    "CERT_DATA_HEADER_SIZE",
    "CERT_TYPE_PCK_CHAIN",
    "FLAG_DEBUG",
    "HEADER_FIELDS",
    "HEADER_SIZE",
    "INTEL_QE_VENDOR_ID",
    "MIN_SIGNATURE_DATA_LEN",
    "QE_AUTH_DATA_OFFSET",
    "QUOTE_VERSION",
    "REPORT_BODY_FIELDS",
    "REPORT_BODY_SIZE",
    "SIGNATURE_DATA_FIELDS",
    "SIGNATURE_DATA_LEN_OFFSET",
    "SIGNATURE_DATA_OFFSET",
    "SIGNED_REGION_END",
    "TEE_TYPE_SGX",
    "CertificationData",
    "Field",
    "ParsedQuote",
    "QuoteFormatError",
    "QuoteHeader",
    "ReportBody",
    "SignatureData",
    "decode_quote_text",
    "pack_fields",
    "parse_quote",
    "parse_report_body",
    "read_fields",
    # verify
    "PCK_LEAF_CN_PHRASE",
    "SIGNATURE_STEPS",
    "STEP_ATTESTATION_KEY_BINDING",
    "STEP_ENCLAVE_SIGNATURE",
    "STEP_PARSE",
    "STEP_PCK_CHAIN",
    "STEP_QE_REPORT_SIGNATURE",
    "QuoteVerificationError",
    "Verdict",
    "attestation_public_key",
    "common_name",
    "verify_pck_chain",
    "verify_quote",
    "verify_quoting_enclave",
    # roots
    "INTEL_SGX_ROOT_CA_FILE",
    "INTEL_SGX_ROOT_KEY_SHA256",
    "intel_sgx_root_key",
    "load_trust_root",
    "spki_sha256",
    # policy
    "DEFAULT_POLICY",
    "EnclaveClaims",
    "Policy",
    "PolicyCheck",
    "PolicyError",
    # evidence
    "EVIDENCE_STEPS",
    "STEP_POLICY",
    "STEP_REPORT_DATA",
    "EvidenceVerdict",
    "StepVerdict",
    "check_report_data",
    "verify_evidence",
]
