"""TDX evidence: Intel TDX quotes, versions 4 and 5, from bytes to a :class:`~duet.attestation.cvm.CvmVerdict`.

Split as ``sgx/`` is, and built on it (a TDX quote is vouched for by the same PCK chain, quoting
enclave and attestation key as an SGX quote):

* :mod:`~duet.attestation.tdx.abi` — the quote layout (header, v5 body descriptor, TD report 1.0
  and 1.5, the type-6 certification data) as tables of named fields; parsing and packing;
* :mod:`~duet.attestation.tdx.verify` — the steps (:data:`TDX_STEPS`), the TD quoting enclave's
  built-in identity, the TDX TCB level, and the claims of a TD report;
* :mod:`~duet.attestation.tdx.simulated` — quotes with the real layout under a locally made,
  clearly fake Intel-style chain, for tests and machines without TDX.

Collateral (TD_QE identity, TDX TCB info, CRLs) is read by ``sgx.load_collateral(..., tee="TDX")``.
"""

from duet.attestation.tdx.abi import (
    BODY_DESCRIPTOR_FIELDS,
    BODY_TYPE_TD_REPORT10,
    BODY_TYPE_TD_REPORT15,
    CERT_TYPE_QE_REPORT,
    HEADER_FIELDS,
    QE_REPORT_CERTIFICATION_DATA_FIELDS,
    QUOTE_VERSION_4,
    QUOTE_VERSION_5,
    SIGNATURE_DATA_FIELDS,
    TD_ATTRIBUTE_DEBUG,
    TD_ATTRIBUTE_MIGRATABLE,
    TD_ATTRIBUTES_BITS,
    TD_REPORT10_FIELDS,
    TD_REPORT15_FIELDS,
    TD_REPORT_FIELDS,
    TEE_TYPE_TDX,
    ParsedTdxQuote,
    QeReportCertificationData,
    TdReport,
    TdxQuoteFormatError,
    TdxQuoteHeader,
    TdxSignatureData,
    pack_header,
    pack_qe_report_certification_data,
    pack_quote,
    pack_signature_data,
    pack_signed_region,
    pack_td_report,
    parse_td_report,
    parse_tdx_quote,
    td_attribute_names,
)
from duet.attestation.tdx.verify import (
    INTEL_TD_QE_IDENTITY,
    SIMULATED_TD_QE_IDENTITY,
    STEP_QUOTE_SIGNATURE,
    TCB_COMPONENT_NAMES,
    TDX_STEPS,
    tdx_claims,
    verify_tdx_quote,
)

__all__ = [
    # abi
    "BODY_DESCRIPTOR_FIELDS",
    "BODY_TYPE_TD_REPORT10",
    "BODY_TYPE_TD_REPORT15",
    "CERT_TYPE_QE_REPORT",
    "HEADER_FIELDS",
    "QE_REPORT_CERTIFICATION_DATA_FIELDS",
    "QUOTE_VERSION_4",
    "QUOTE_VERSION_5",
    "SIGNATURE_DATA_FIELDS",
    "TD_ATTRIBUTE_DEBUG",
    "TD_ATTRIBUTE_MIGRATABLE",
    "TD_ATTRIBUTES_BITS",
    "TD_REPORT10_FIELDS",
    "TD_REPORT15_FIELDS",
    "TD_REPORT_FIELDS",
    "TEE_TYPE_TDX",
    "ParsedTdxQuote",
    "QeReportCertificationData",
    "TdReport",
    "TdxQuoteFormatError",
    "TdxQuoteHeader",
    "TdxSignatureData",
    "pack_header",
    "pack_qe_report_certification_data",
    "pack_quote",
    "pack_signature_data",
    "pack_signed_region",
    "pack_td_report",
    "parse_td_report",
    "parse_tdx_quote",
    "td_attribute_names",
    # verify
    "INTEL_TD_QE_IDENTITY",
    "SIMULATED_TD_QE_IDENTITY",
    "STEP_QUOTE_SIGNATURE",
    "TCB_COMPONENT_NAMES",
    "TDX_STEPS",
    "tdx_claims",
    "verify_tdx_quote",
]
