"""Azure confidential VMs: the vTPM's HCL report, and Azure Attestation's tokens about a CVM.

Two kinds of evidence, each ending in the same :class:`~duet.attestation.cvm.CvmVerdict`:

* ``azure-snp`` / ``azure-tdx`` (:func:`~duet.attestation.azure.verify.verify_azure_hcl`): the
  report the paravisor keeps in vTPM NV index 0x01400001. Its hardware report is checked by the
  SNP or TDX verifier; what Azure adds (the runtime data, with the VM's id and the 64 bytes of
  ``user-data`` that carry duet's binding) is trusted only through the hash of it that the
  hardware report signs;
* ``maa-cvm`` (:func:`~duet.attestation.azure.maa_cvm.verify_maa_cvm_token`): an Azure
  Attestation token, checked with the same token steps as the SGX one
  (:func:`duet.attestation.maa.validate_token`).

``hcl`` is layout only (bytes ↔ named fields, the runtime-data JSON); ``simulated`` lays out
simulated reports with the same tables, for the local provider and the tests.
"""

from duet.attestation.azure.hcl import (
    HCL_SIGNATURE,
    HEADER_FIELDS,
    REPORT_FIELDS,
    REPORTMACSTRUCT_FIELDS,
    RUNTIME_DATA_FIELDS,
    TDINFO_FIELDS,
    TDREPORT_FIELDS,
    TEE_TCB_INFO_FIELDS,
    HclFormatError,
    HclReport,
    RuntimeData,
    RuntimeDataError,
    TdReportStruct,
    decode_user_data,
    pack_hcl_report,
    parse_hcl_report,
    parse_runtime_data,
)
from duet.attestation.azure.maa_cvm import CVM_TOKEN_STEPS, verify_maa_cvm_token
from duet.attestation.azure.simulated import SIMULATED_NOTE, SimulatedHcl, simulated_snp_hcl, simulated_tdx_hcl
from duet.attestation.azure.verify import STEPS, VcekChain, parse_vcek_chain, verify_azure_hcl

__all__ = [
    # hcl (layout)
    "HCL_SIGNATURE",
    "HEADER_FIELDS",
    "REPORTMACSTRUCT_FIELDS",
    "REPORT_FIELDS",
    "RUNTIME_DATA_FIELDS",
    "TDINFO_FIELDS",
    "TDREPORT_FIELDS",
    "TEE_TCB_INFO_FIELDS",
    "HclFormatError",
    "HclReport",
    "RuntimeData",
    "RuntimeDataError",
    "TdReportStruct",
    "decode_user_data",
    "pack_hcl_report",
    "parse_hcl_report",
    "parse_runtime_data",
    # verify
    "STEPS",
    "VcekChain",
    "parse_vcek_chain",
    "verify_azure_hcl",
    # maa_cvm
    "CVM_TOKEN_STEPS",
    "verify_maa_cvm_token",
    # simulated
    "SIMULATED_NOTE",
    "SimulatedHcl",
    "simulated_snp_hcl",
    "simulated_tdx_hcl",
]
