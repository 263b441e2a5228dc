"""verify_azure_hcl end to end on the real SNP and TDX HCL reports (through the SNP and TDX
verifiers), then one failing case per step.

Steps after the hardware report (runtime data, user data) are reached only by a report whose
hardware signature holds; to fail them one at a time, the altered reports here are checked with
the hardware verifier replaced by a stand-in that accepts any report (the SNP and TDX verifiers
are tested on their own in snp/ and tdx/)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from azure_helpers import (
    SNP_HCL,
    SNP_VALID_AT,
    SNP_VCEK_CHAIN,
    SNP_VM_ID,
    TD_QUOTE_BODY_OFFSET,
    TD_QUOTE_REPORT_DATA,
    TDX_HCL,
    TDX_QUOTE,
    TDX_VM_ID,
    quote_for,
    rebuild,
    runtime_json,
    with_runtime,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import duet.attestation.azure.verify as azure_verify
from duet.attestation.azure.hcl import parse_hcl_report
from duet.attestation.azure.verify import STEPS, verify_azure_hcl
from duet.attestation.cvm import CvmClaims, CvmVerdict
from duet.attestation.cvm_evidence import Expected, judge
from duet.attestation.snp.verify import SNP_STEPS
from duet.attestation.steps import StepVerdict
from duet.attestation.tdx.verify import TDX_STEPS

TDX_VALID_AT = datetime(2024, 6, 1, tzinfo=UTC)

# The sample VCEK has serial number 0, which cryptography loads with a deprecation warning.
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning")


def steps(verdict: CvmVerdict) -> list[tuple[str, bool | None, str | None]]:
    return [(s.step, s.ok, s.code) for s in verdict.steps]


def snp(report: bytes = SNP_HCL, **kw: Any) -> CvmVerdict:
    return verify_azure_hcl(report, **{"vcek_chain": SNP_VCEK_CHAIN, "now": SNP_VALID_AT, **kw})


def tdx(report: bytes = TDX_HCL, quote: bytes | None = TDX_QUOTE, **kw: Any) -> CvmVerdict:
    return verify_azure_hcl(report, **{"td_quote": quote, "now": TDX_VALID_AT, **kw})


# --- the real reports, end to end ----------------------------------------------------------------


def test_the_real_snp_report_verifies_with_its_vcek_chain() -> None:
    verdict = snp()
    assert verdict.ok, verdict.failure
    assert verdict.kind == "azure-snp"
    assert [s.step for s in verdict.steps] == [
        "parse",
        "runtime_data_hash",
        "vcek_chain",
        *(f"snp.{s}" for s in SNP_STEPS),
        "runtime_data",
        "user_data",
    ]
    c = verdict.claims
    assert c is not None and (c.kind, c.platform, c.signer, c.simulated, c.vmpl) == ("azure-snp", "snp", "VCEK", False, 0)
    assert c.vm_id == SNP_VM_ID
    assert c.report_data == bytes(64)  # user-data, not the hardware report data (the runtime data's hash)
    assert c.fields["hardware_report_data"] == parse_hcl_report(SNP_HCL).report_data.hex()
    assert c.measurements["measurement"].startswith("9ac48fcac8a2d88a")
    assert (c.debug, c.migration_allowed) == (False, False)
    assert c.tcb == {"bl_spl": 3, "tee_spl": 0, "snp_spl": 8, "ucode_spl": 115}
    assert (c.fields["secure-boot"], c.fields["tpm-enabled"], c.fields["console-enabled"]) == (True, True, True)
    assert c.fields["keys"] == ["HCLAkPub", "HCLEkPub"]
    assert c.fields["vm-configuration"]["vmUniqueId"] == SNP_VM_ID


def test_the_vcek_chain_as_imds_serves_it() -> None:
    certs = x509.load_pem_x509_certificates(SNP_VCEK_CHAIN)
    pem = [c.public_bytes(serialization.Encoding.PEM).decode() for c in certs]
    imds = json.dumps({"vcekCert": pem[0], "certificateChain": pem[1] + pem[2], "tcbm": "7308000000000003"})
    verdict = verify_azure_hcl(SNP_HCL, vcek_chain=imds.encode(), now=SNP_VALID_AT)
    assert verdict.ok, verdict.failure
    # the order of a PEM bundle does not matter: the VCEK is the EC key
    verdict = verify_azure_hcl(SNP_HCL, vcek_chain=(pem[2] + pem[0] + pem[1]).encode(), now=SNP_VALID_AT)
    assert verdict.ok, verdict.failure


def test_the_vm_identity_and_the_binding_are_judged_on_user_data() -> None:
    verdict = snp()
    judged = judge(verdict, Expected(None, None, vm_id=SNP_VM_ID.lower()))
    assert judged.ok and ("vm_identity", True, None) in steps(judged)
    judged = judge(verdict, Expected(b"host key", bytes(32), vm_id=SNP_VM_ID))
    assert judged.failure is not None and judged.failure.code == "binding_mismatch"  # the sample's user-data is zeros


def test_the_real_tdx_report_binds_and_verifies_with_its_quote() -> None:
    verdict = tdx()
    assert verdict.ok, verdict.failure
    assert [s.step for s in verdict.steps] == [
        "parse",
        "runtime_data_hash",
        "td_quote",
        *(f"tdx.{s}" for s in TDX_STEPS),
        "runtime_data",
        "user_data",
    ]
    c = verdict.claims
    assert c is not None and (c.kind, c.platform, c.signer, c.simulated) == ("azure-tdx", "tdx", "PCK", False)
    assert c.vm_id == TDX_VM_ID and c.report_data == bytes(64)
    assert c.measurements["mrtd"].startswith("024a32b070383331") and set(c.measurements) == {
        "mrtd",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
    }
    assert c.fields["vm-configuration"]["tpm-persisted"] is False


def test_the_snp_chain_is_checked_at_the_time_given() -> None:
    verdict = verify_azure_hcl(SNP_HCL, vcek_chain=SNP_VCEK_CHAIN, now=datetime(2031, 1, 1, tzinfo=UTC))
    assert verdict.failure is not None and verdict.failure.step == "snp.cert_chain"
    assert verdict.claims is not None and verdict.claims.vm_id is None  # the runtime data was not reached


# --- one failure per step -----------------------------------------------------------------------


def _accepting(platform: str) -> Callable[..., CvmVerdict]:
    """A hardware verifier that accepts anything (the steps after it are what is tested)."""

    def verify(evidence: Any, **_: Any) -> CvmVerdict:
        claims = CvmClaims(
            kind="snp" if platform == "snp" else "tdx",
            platform="snp" if platform == "snp" else "tdx",
            measurements={"measurement": "00" * 48},
            report_data=b"hardware",
            debug=False,
            migration_allowed=False,
            tcb={},
            signer="VCEK" if platform == "snp" else "PCK",
            simulated=True,
        )
        return CvmVerdict(claims.kind, (StepVerdict("stand_in", True, message="accepted without a check"),), claims)

    return verify


@pytest.fixture
def accepting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(azure_verify, "_verify_snp_hardware", _accepting("snp"))
    monkeypatch.setattr(azure_verify, "_verify_tdx_hardware", _accepting("tdx"))


def _flip(data: bytes, at: int, value: int | None = None) -> bytes:
    return data[:at] + bytes([data[at] ^ 1 if value is None else value]) + data[at + 1 :]


def _set_u32(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + value.to_bytes(4, "little") + data[at + 4 :]


VM_ID_AT = SNP_HCL.index(SNP_VM_ID.encode())


@pytest.mark.parametrize(
    "case, step, code",
    [
        ("runtime_data_altered", "runtime_data_hash", "hcl_runtime_data_hash_mismatch"),
        ("report_data_upper_half", "runtime_data_hash", "hcl_report_data_not_zero"),
        ("hash_type_unknown", "runtime_data_hash", "hcl_unknown_hash_type"),
        ("hash_type_sha384_of_sha256", "runtime_data_hash", "hcl_runtime_data_hash_mismatch"),
        ("report_type_unknown", "parse", "hcl_unknown_report_type"),
        ("report_type_unexpected", "parse", "hcl_unexpected_report_type"),
        ("signature_not_hcla", "parse", "hcl_malformed"),
        ("vcek_chain_missing", "vcek_chain", "hcl_vcek_chain_missing"),
        ("vcek_chain_garbage", "vcek_chain", "hcl_vcek_chain_malformed"),
        ("vcek_chain_without_vcek", "vcek_chain", "hcl_vcek_chain_malformed"),
        ("snp_report_tampered", "snp.report_signature", None),
        ("malformed_json", "runtime_data", "hcl_runtime_data_not_json"),
        ("vm_id_missing", "runtime_data", "hcl_runtime_data_bad_field"),
        ("user_data_missing", "user_data", "hcl_user_data_missing"),
        ("user_data_short", "user_data", "hcl_user_data_malformed"),
        ("user_data_not_hex", "user_data", "hcl_user_data_malformed"),
        ("hardware_verifier_crashes", "snp", "hcl_snp_verifier_error"),
    ],
)
def test_snp_each_step_fails_on_its_own(
    monkeypatch: pytest.MonkeyPatch, case: str, step: str, code: str | None, request: pytest.FixtureRequest
) -> None:
    report, kw = SNP_HCL, {}
    doc = runtime_json(SNP_HCL)
    if case in ("malformed_json", "vm_id_missing", "user_data_missing", "user_data_short", "user_data_not_hex"):
        request.getfixturevalue("accepting")
    match case:
        case "runtime_data_altered":
            report = _flip(SNP_HCL, VM_ID_AT)  # the VM id changes, the report data does not
        case "report_data_upper_half":
            report = rebuild(SNP_HCL, report_data_tail=b"\x01" * 32)
        case "hash_type_unknown":
            report = rebuild(SNP_HCL, hash_type=9, hashed_with=1)
        case "hash_type_sha384_of_sha256":
            report = rebuild(SNP_HCL, hash_type=2, hashed_with=1)
        case "report_type_unknown":
            report = _set_u32(SNP_HCL, 1224, 3)
        case "report_type_unexpected":
            kw = {"platform": "tdx"}
        case "signature_not_hcla":
            report = b"HCLB" + SNP_HCL[4:]
        case "vcek_chain_missing":
            kw = {"vcek_chain": None}
        case "vcek_chain_garbage":
            kw = {"vcek_chain": b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"}
        case "vcek_chain_without_vcek":
            kw = {"vcek_chain": b"".join(SNP_VCEK_CHAIN.split(b"-----END CERTIFICATE-----\n")[1:])}
        case "snp_report_tampered":
            report = _flip(SNP_HCL, 32 + 0x90)  # MEASUREMENT: signed, not hashed into the runtime data
        case "malformed_json":
            report = with_runtime(SNP_HCL, b'{"keys": [' + b"x" * 10 + b"}")
        case "vm_id_missing":
            del doc["vm-configuration"]["vmUniqueId"]
            report = with_runtime(SNP_HCL, doc)
        case "user_data_missing":
            del doc["user-data"]
            report = with_runtime(SNP_HCL, doc)
        case "user_data_short":
            report = with_runtime(SNP_HCL, {**doc, "user-data": "ab" * 32})
        case "user_data_not_hex":
            report = with_runtime(SNP_HCL, {**doc, "user-data": "xy" * 64})
        case "hardware_verifier_crashes":

            def crash(*_: Any, **__: Any) -> CvmVerdict:
                raise IndexError("a bug in the SNP verifier")

            monkeypatch.setattr(azure_verify, "_verify_snp_hardware", crash)
    verdict = snp(report, **kw)
    failure = verdict.failure
    assert failure is not None and failure.step == step and (code is None or failure.code == code), failure
    assert failure.message
    names = [s.step for s in verdict.steps]
    after = names[names.index(step) + 1 :]
    assert all(s.ok is None and s.message == "not reached" for s in verdict.steps if s.step in after)
    # every planned step is listed, the hardware verifier's own (prefixed) when it was not reached;
    # a report of the other platform than the caller's is judged as the caller's kind
    platform = kw.get("platform", "snp")
    assert verdict.kind == f"azure-{platform}"
    hardware = {"snp": [f"snp.{s}" for s in SNP_STEPS], "tdx": [f"tdx.{s}" for s in TDX_STEPS]}[platform]
    assert all(n in names for n in STEPS[platform] if n != platform)
    if step in ("parse", "runtime_data_hash", "vcek_chain"):
        assert [n for n in names if n.startswith(f"{platform}.")] == hardware


def test_snp_user_data_passes_when_the_hardware_holds(accepting: None) -> None:
    user_data = bytes(range(64))
    doc = {**runtime_json(SNP_HCL), "user-data": user_data.hex()}
    verdict = snp(with_runtime(SNP_HCL, doc))
    assert verdict.ok and verdict.claims is not None and verdict.claims.report_data == user_data
    # SHA-512 fills all 64 bytes of the report data: a hash type the layout allows
    verdict = snp(rebuild(with_runtime(SNP_HCL, doc), hash_type=3))
    assert verdict.ok and verdict.steps[1].message.startswith("the hardware report data is the SHA-512")


@pytest.mark.parametrize(
    "case, step, code",
    [
        ("quote_missing", "td_quote", "hcl_td_quote_missing"),
        ("quote_of_another_report_data", "td_quote", "hcl_td_quote_report_data_mismatch"),
        ("quote_of_another_td", "td_quote", "hcl_td_quote_mismatch"),
        ("quote_garbage", "td_quote", "hcl_td_quote_malformed"),
        ("quote_signature_broken", "tdx.quote_signature", None),
        ("runtime_data_altered", "runtime_data_hash", "hcl_runtime_data_hash_mismatch"),
        ("td_report_not_a_tds", "parse", "hcl_malformed"),
        ("report_type_unexpected", "parse", "hcl_unexpected_report_type"),
    ],
)
def test_tdx_each_step_fails_on_its_own(case: str, step: str, code: str | None) -> None:
    report, quote, kw = TDX_HCL, TDX_QUOTE, {}
    match case:
        case "quote_missing":
            quote = None  # type: ignore[assignment]
        case "quote_of_another_report_data":
            quote = _flip(TDX_QUOTE, TD_QUOTE_REPORT_DATA + 40)
        case "quote_of_another_td":
            quote = _flip(TDX_QUOTE, TD_QUOTE_BODY_OFFSET + 136)  # MRTD
        case "quote_garbage":
            quote = b"\x04\x00" + bytes(700)
        case "quote_signature_broken":
            quote = _flip(TDX_QUOTE, 640)  # in the quote signature, outside the body
        case "runtime_data_altered":
            report = _flip(TDX_HCL, TDX_HCL.index(TDX_VM_ID.encode()))
        case "td_report_not_a_tds":
            report = _flip(TDX_HCL, 32, 0x00)  # REPORTTYPE.TYPE 0: an SGX report
        case "report_type_unexpected":
            kw = {"platform": "snp"}
    verdict = tdx(report, quote, **kw)
    failure = verdict.failure
    assert failure is not None and failure.step == step and (code is None or failure.code == code), failure
    if case == "quote_of_another_td":
        assert "MRTD (TDREPORT TDINFO_STRUCT.MRTD)" in failure.message


def test_tdx_json_steps_fail_on_their_own(accepting: None) -> None:
    doc = runtime_json(TDX_HCL)
    for change, step, code in [
        (b"not json", "runtime_data", "hcl_runtime_data_not_json"),
        ({**doc, "user-data": None}, "user_data", "hcl_user_data_missing"),
        ({**doc, "user-data": "00" * 64}, None, None),
    ]:
        report = with_runtime(TDX_HCL, change)
        verdict = tdx(report, quote_for(report))
        if step is None:
            assert verdict.ok and verdict.claims is not None and verdict.claims.vm_id == TDX_VM_ID
        else:
            assert verdict.failure is not None and (verdict.failure.step, verdict.failure.code) == (step, code)


def test_claims_survive_a_later_failure(accepting: None) -> None:
    doc = {**runtime_json(SNP_HCL), "user-data": "ab"}
    verdict = snp(with_runtime(SNP_HCL, doc))
    c = verdict.claims
    assert verdict.failure is not None and verdict.failure.step == "user_data"
    assert c is not None and c.vm_id == SNP_VM_ID and c.report_data == b"" and c.kind == "azure-snp"
    assert dataclasses.asdict(c)["fields"]["keys"] == ["HCLAkPub", "HCLEkPub"]


def test_naive_times_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        verify_azure_hcl(SNP_HCL, vcek_chain=SNP_VCEK_CHAIN, now=datetime(2024, 1, 1))
