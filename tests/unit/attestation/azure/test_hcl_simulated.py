"""SIMULATED HCL reports (the local provider's): the real layout around the simulated AMD's SNP
report and the simulated TDX platform's TD report, verified end to end and judged."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest
from cryptography import x509

from duet.attestation.azure.hcl import REPORT_TYPE_SNP, pack_hcl_report, parse_hcl_report
from duet.attestation.azure.simulated import SIMULATED_NOTE, SimulatedHcl, runtime_data, simulated_snp_hcl, simulated_tdx_hcl
from duet.attestation.azure.verify import verify_azure_hcl
from duet.attestation.cvm import CvmVerdict, binding
from duet.attestation.cvm_evidence import Expected, judge
from duet.attestation.snp.simulated import SimulatedAmd
from duet.attestation.tdx.simulated import SimulatedTdxPlatform, load_or_create_platform

HOST_KEY = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
NONCE = bytes(range(100, 132))
VM_ID = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def amd(tmp_path_factory: pytest.TempPathFactory) -> SimulatedAmd:
    return SimulatedAmd(tmp_path_factory.mktemp("amd"))


@pytest.fixture(scope="module")
def tdx_platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedTdxPlatform:
    return load_or_create_platform(tmp_path_factory.mktemp("tdx") / "platform")


def verify_snp(sim: SimulatedHcl, amd: SimulatedAmd, trusted: bool = True) -> CvmVerdict:
    roots = [amd.root()] if trusted else None
    return verify_azure_hcl(sim.report, vcek_chain=sim.vcek_chain, snp_trusted_roots=roots, now=NOW)


def verify_tdx(sim: SimulatedHcl, platform: SimulatedTdxPlatform, trusted: bool = True) -> CvmVerdict:
    roots = [platform.root_key()] if trusted else None
    return verify_azure_hcl(sim.report, td_quote=sim.td_quote, tdx_trusted_root_keys=roots, now=NOW)


def test_a_simulated_snp_report_verifies_binds_and_says_simulated(amd: SimulatedAmd) -> None:
    sim = simulated_snp_hcl(amd, user_data=binding(HOST_KEY, NONCE), vm_unique_id=VM_ID)
    assert len(sim.report) == 2600 and parse_hcl_report(sim.report).platform == "snp"
    verdict = verify_snp(sim, amd)
    assert verdict.ok, verdict.failure
    c = verdict.claims
    assert c is not None and c.simulated and c.kind == "azure-snp" and c.vm_id == VM_ID and c.signer == "VCEK"
    assert judge(verdict, Expected(HOST_KEY, NONCE, vm_id=VM_ID.lower())).ok
    wrong_nonce = judge(verdict, Expected(HOST_KEY, bytes(32), vm_id=VM_ID))
    assert wrong_nonce.failure is not None and wrong_nonce.failure.code == "binding_mismatch"
    other_vm = judge(verdict, Expected(HOST_KEY, NONCE, vm_id="00000000-0000-0000-0000-000000000000"))
    assert other_vm.failure is not None and other_vm.failure.code == "vm_id_mismatch"
    # not trusted unless the user said so
    untrusted = verify_snp(sim, amd, trusted=False)
    assert untrusted.failure is not None and untrusted.failure.step == "snp.cert_chain"


def test_a_simulated_tdx_report_verifies_binds_and_says_simulated(tdx_platform: SimulatedTdxPlatform) -> None:
    sim = simulated_tdx_hcl(tdx_platform, user_data=binding(HOST_KEY, NONCE), vm_unique_id=VM_ID)
    hcl = parse_hcl_report(sim.report)
    assert hcl.platform == "tdx" and hcl.td_report is not None and sim.td_quote is not None
    verdict = verify_tdx(sim, tdx_platform)
    assert verdict.ok, verdict.failure
    c = verdict.claims
    assert c is not None and c.simulated and c.kind == "azure-tdx" and c.vm_id == VM_ID and c.signer == "PCK"
    assert judge(verdict, Expected(HOST_KEY, NONCE, vm_id=VM_ID)).ok
    untrusted = verify_tdx(sim, tdx_platform, trusted=False)
    assert untrusted.failure is not None and untrusted.failure.step == "tdx.pck_chain"
    # a quote of another TD (another MRTD), genuinely signed by the same simulated platform
    other = simulated_tdx_hcl(
        tdx_platform, user_data=binding(HOST_KEY, NONCE), vm_unique_id=VM_ID, td_report={"mr_td": b"\x01" * 48}
    )
    mixed = verify_azure_hcl(sim.report, td_quote=other.td_quote, tdx_trusted_root_keys=[tdx_platform.root_key()], now=NOW)
    assert mixed.failure is not None and mixed.failure.code in ("hcl_td_quote_report_data_mismatch", "hcl_td_quote_mismatch")


def test_everything_simulated_says_so(amd: SimulatedAmd) -> None:
    sim = simulated_snp_hcl(amd, user_data=bytes(64), vm_unique_id=VM_ID)
    doc = json.loads(parse_hcl_report(sim.report).variable_data)
    assert doc["duet-simulated"] == SIMULATED_NOTE and "SIMULATED" in SIMULATED_NOTE
    assert sim.vcek_chain is not None
    vcek = x509.load_pem_x509_certificate(json.loads(sim.vcek_chain)["vcekCert"].encode())
    assert "SIMULATED" in vcek.subject.rfc4514_string()
    with pytest.raises(ValueError):
        simulated_snp_hcl(amd, user_data=bytes(32), vm_unique_id=VM_ID)


def test_steps_after_the_hardware_fail_on_genuinely_signed_reports(amd: SimulatedAmd) -> None:
    """The runtime-data steps, on reports whose (simulated) hardware signature holds."""
    good = json.loads(runtime_data(user_data=bytes(64), vm_unique_id=VM_ID))
    for doc, step, code in [
        ({k: v for k, v in good.items() if k != "user-data"}, "user_data", "hcl_user_data_missing"),
        ({**good, "user-data": "00" * 32}, "user_data", "hcl_user_data_malformed"),
        ({**good, "vm-configuration": []}, "runtime_data", "hcl_runtime_data_bad_field"),
        ("{oops", "runtime_data", "hcl_runtime_data_not_json"),
    ]:
        data = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
        report = amd.sign_report(chip_id=bytes(64), report_data=hashlib.sha256(data).digest() + bytes(32))
        imds = simulated_snp_hcl(amd, user_data=bytes(64), vm_unique_id=VM_ID, chip_id=bytes(64)).vcek_chain
        hcl = pack_hcl_report(report, data, report_type=REPORT_TYPE_SNP)
        verdict = verify_azure_hcl(hcl, vcek_chain=imds, snp_trusted_roots=[amd.root()], now=NOW)
        assert verdict.failure is not None and (verdict.failure.step, verdict.failure.code) == (step, code)
        assert all(s.ok for s in verdict.steps if s.step.startswith("snp."))
