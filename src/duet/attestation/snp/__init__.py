"""SEV-SNP evidence: AMD attestation reports, from bytes to a :class:`~duet.attestation.cvm.CvmVerdict`.

Import the names from here; the modules keep apart what changes for different reasons:

* :mod:`~duet.attestation.snp.abi` — the ATTESTATION_REPORT and the GHCB certificate table as
  tables of named offsets (names as in AMD's ABI specification 56860), parsing, packing, and the
  decoding of POLICY, PLATFORM_INFO, SIGNER_INFO and TCB_VERSION; trusts nothing;
* :mod:`~duet.attestation.snp.vcek` — the AMD extensions of VCEK/VLEK certificates (SPLs, hwID);
* :mod:`~duet.attestation.snp.roots` — AMD's ARKs, pinned by key per product, and user-given roots;
* :mod:`~duet.attestation.snp.verify` — the chain to a pinned ARK, the report signature and the
  certificate's binding to the report's TCB and chip; says nothing about which guest is acceptable
  (that is the policy's, judging the claims);
* :mod:`~duet.attestation.snp.simulated` — a locally made, SIMULATED AMD for development and tests.
"""

from duet.attestation.snp.abi import (
    CERT_TABLE_ENTRY_FIELDS,
    CERT_TABLE_GUIDS,
    MBZ_FIELDS,
    PLATFORM_INFO_BITS,
    POLICY_BITS,
    POLICY_DEBUG,
    POLICY_MIGRATE_MA,
    PRODUCTS,
    REPORT_FIELDS,
    REPORT_SIZE,
    SIGNED_REGION_END,
    TCB_FIELDS_MILAN_GENOA,
    TCB_FIELDS_TURIN,
    CertTable,
    CertTableFormatError,
    Product,
    SignerInfo,
    SignerKind,
    SnpReport,
    SnpReportFormatError,
    TcbVersion,
    decode_platform_info,
    decode_policy,
    pack_cert_table,
    pack_report,
    parse_cert_table,
    parse_report,
    product_from_cpuid,
)
from duet.attestation.snp.roots import (
    AMD_ARK_KEY_SHA256,
    AMD_ROOT_FILES,
    AmdRoot,
    amd_roots,
    load_amd_root,
    load_certificates,
)
from duet.attestation.snp.simulated import SimulatedAmd
from duet.attestation.snp.vcek import VcekExtensionError, VcekExtensions, make_extensions, read_extensions
from duet.attestation.snp.verify import (
    SNP_STEPS,
    STEP_CERT_CHAIN,
    STEP_PARSE,
    STEP_REPORT_SIGNATURE,
    STEP_SIGNER,
    STEP_TCB_BINDING,
    verify_snp_report,
)

__all__ = [
    # abi
    "CERT_TABLE_ENTRY_FIELDS",
    "CERT_TABLE_GUIDS",
    "MBZ_FIELDS",
    "PLATFORM_INFO_BITS",
    "POLICY_BITS",
    "POLICY_DEBUG",
    "POLICY_MIGRATE_MA",
    "PRODUCTS",
    "REPORT_FIELDS",
    "REPORT_SIZE",
    "SIGNED_REGION_END",
    "TCB_FIELDS_MILAN_GENOA",
    "TCB_FIELDS_TURIN",
    "CertTable",
    "CertTableFormatError",
    "Product",
    "SignerInfo",
    "SignerKind",
    "SnpReport",
    "SnpReportFormatError",
    "TcbVersion",
    "decode_platform_info",
    "decode_policy",
    "pack_cert_table",
    "pack_report",
    "parse_cert_table",
    "parse_report",
    "product_from_cpuid",
    # vcek
    "VcekExtensionError",
    "VcekExtensions",
    "make_extensions",
    "read_extensions",
    # roots
    "AMD_ARK_KEY_SHA256",
    "AMD_ROOT_FILES",
    "AmdRoot",
    "amd_roots",
    "load_amd_root",
    "load_certificates",
    # verify
    "SNP_STEPS",
    "STEP_CERT_CHAIN",
    "STEP_PARSE",
    "STEP_REPORT_SIGNATURE",
    "STEP_SIGNER",
    "STEP_TCB_BINDING",
    "verify_snp_report",
    # simulated
    "SimulatedAmd",
]
