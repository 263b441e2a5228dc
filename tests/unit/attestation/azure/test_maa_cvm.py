"""Azure Attestation tokens about a CVM: the two recorded tokens' real claims, re-signed with a
test key (their signing keys are Azure's), then every token step failing on its own."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from azure_helpers import AZUREVM_TOKEN, SEVSNPVM_TOKEN, TestMaa, claims_of, unsigned
from hypothesis import given, settings
from hypothesis import strategies as st

from duet.attestation.azure.maa_cvm import CVM_TOKEN_STEPS, verify_maa_cvm_token
from duet.attestation.cvm import CvmVerdict, binding
from duet.attestation.cvm_evidence import Expected, judge

SNP_CLAIMS = claims_of(SEVSNPVM_TOKEN)
AZUREVM_CLAIMS = claims_of(AZUREVM_TOKEN)
SNP_INSTANCE = SNP_CLAIMS["iss"]  # https://sharedweu.weu.test.attest.azure.net
AZUREVM_INSTANCE = AZUREVM_CLAIMS["iss"]  # https://sharedweu.weu.attest.azure.net
SNP_AT = datetime.fromtimestamp(SNP_CLAIMS["iat"] + 60, UTC)
AZUREVM_AT = datetime.fromtimestamp(AZUREVM_CLAIMS["iat"] + 60, UTC)
HOST_KEY = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
NONCE = bytes(range(32))


@pytest.fixture(scope="module")
def snp_maa() -> TestMaa:
    return TestMaa.make(SNP_INSTANCE)


@pytest.fixture(scope="module")
def guest_maa() -> TestMaa:
    return TestMaa.make(AZUREVM_INSTANCE)


def steps(verdict: CvmVerdict) -> list[tuple[str, bool | None, str | None]]:
    return [(s.step, s.ok, s.code) for s in verdict.steps]


def compliant(claims: dict[str, Any]) -> dict[str, Any]:
    return {**claims, "x-ms-compliance-status": "azure-compliant-cvm"}


def with_user_data(claims: dict[str, Any], user_data: str) -> dict[str, Any]:
    out = copy.deepcopy(claims)
    out["x-ms-isolation-tee"]["x-ms-runtime"]["user-data"] = user_data
    return out


# --- the recorded tokens' claims ---------------------------------------------------------------


def test_sevsnpvm_claims_map_from_the_top_level(snp_maa: TestMaa) -> None:
    verdict = verify_maa_cvm_token(snp_maa.sign(SNP_CLAIMS), instance=SNP_INSTANCE, jwks=snp_maa.jwks(), now=SNP_AT)
    c = verdict.claims
    assert c is not None and (c.kind, c.platform, c.signer, c.simulated) == ("maa-cvm", "snp", "MAA", False)
    assert c.measurements == {
        "measurement": "02c3b0d5bf1d256fa4e3b5deefc07b55ff2f7029085ed350f60959140a1a51f1310753ba5ab2c03a0536b1c0c193af47"
    }
    assert (c.debug, c.migration_allowed, c.vmpl, c.vm_id) == (False, False, 0, None)
    assert c.tcb == {"bl_spl": 3, "tee_spl": 0, "snp_spl": 8, "ucode_spl": 115}
    assert c.fields["x-ms-sevsnpvm-idkeydigest"].startswith("812cef5567e78efc")
    assert c.fields["x-ms-sevsnpvm-hostdata"].startswith("73973b78") and c.fields["iss"] == SNP_INSTANCE
    # The recorded direct token carries no x-ms-compliance-status (sharedweu *test* instance):
    # duet requires it, so as recorded the token fails that step, its claims still shown.
    assert verdict.failure is not None and (verdict.failure.step, verdict.failure.code) == ("compliance", "maa_not_compliant")

    verdict = verify_maa_cvm_token(snp_maa.sign(compliant(SNP_CLAIMS)), instance=SNP_INSTANCE, jwks=snp_maa.jwks(), now=SNP_AT)
    assert verdict.ok and [s.step for s in verdict.steps] == list(CVM_TOKEN_STEPS)
    assert verdict.claims is not None and verdict.claims.report_data == bytes.fromhex(SNP_CLAIMS["x-ms-sevsnpvm-reportdata"])


def test_azurevm_claims_map_from_under_the_isolation_tee(guest_maa: TestMaa) -> None:
    token = guest_maa.sign(AZUREVM_CLAIMS)
    verdict = verify_maa_cvm_token(token, instance=AZUREVM_INSTANCE, jwks=guest_maa.jwks(), now=AZUREVM_AT)
    c = verdict.claims
    assert c is not None and (c.kind, c.platform, c.signer) == ("maa-cvm", "snp", "MAA")
    assert c.measurements["measurement"].startswith("8962535933f5c4b429ec41d6550c187c")
    assert (c.debug, c.migration_allowed, c.vmpl) == (False, False, 0)
    assert c.tcb == {"bl_spl": 3, "tee_spl": 0, "snp_spl": 8, "ucode_spl": 115}
    assert c.vm_id == "70F5CE9A-2BDC-4B6B-8401-E9B964D3AEB7"
    assert c.fields["nonce"] == "QURFMDEwMQ==" and c.fields["keys"] == ["HCLAkPub"]
    assert (c.fields["secure-boot"], c.fields["tpm-enabled"], c.fields["console-enabled"]) == (True, True, True)
    assert c.fields["x-ms-azurevm-is-windows"] is True and c.fields["tee"] == "sevsnpvm"
    # compliance holds (nested); the recorded token has no user-data, so no report data to bind
    assert steps(verdict)[-3:] == [("claims", True, None), ("compliance", True, None), ("report_data", False, "maa_no_user_data")]

    user_data = binding(HOST_KEY, NONCE)
    token = guest_maa.sign(with_user_data(AZUREVM_CLAIMS, user_data.hex()))
    verdict = verify_maa_cvm_token(token, instance=AZUREVM_INSTANCE, jwks=guest_maa.jwks(), now=AZUREVM_AT)
    assert verdict.ok and verdict.claims is not None and verdict.claims.report_data == user_data
    judged = judge(verdict, Expected(HOST_KEY, NONCE, vm_id="70f5ce9a-2bdc-4b6b-8401-e9b964d3aeb7"))
    assert judged.ok, judged.failure
    judged = judge(verdict, Expected(HOST_KEY, NONCE, vm_id="00000000-0000-0000-0000-000000000000"))
    assert judged.failure is not None and judged.failure.code == "vm_id_mismatch"


def test_a_tdxvm_token_maps_mrtd_rtmrs_and_attributes(snp_maa: TestMaa) -> None:
    """No recorded tdxvm token is available: its claim names and encodings are MS-CLAIMS'."""
    claims = {key: SNP_CLAIMS[key] for key in ("iss", "iat", "nbf", "exp", "jti")} | {
        "x-ms-attestation-type": "tdxvm",
        "x-ms-compliance-status": "azure-compliant-cvm",
        "tdx_mrtd": "11" * 48,
        **{f"tdx_rtmr{i}": f"{i}{i}" * 48 for i in range(4)},
        "tdx_report_data": "ab" * 64,
        "tdx_td_attributes": "0000002000000000",  # bit 29 (MIGRATABLE) set, DEBUG clear
        "tdx_td_attributes_debug": False,
        "tdx_tee_tcb_svn": "0201060000000000" + "00" * 8,
    }
    verdict = verify_maa_cvm_token(snp_maa.sign(claims), instance=SNP_INSTANCE, jwks=snp_maa.jwks(), now=SNP_AT)
    c = verdict.claims
    assert verdict.ok and c is not None and c.platform == "tdx" and c.report_data == bytes.fromhex("ab" * 64)
    assert c.measurements == {"mrtd": "11" * 48, **{f"rtmr{i}": f"{i}{i}" * 48 for i in range(4)}}
    assert (c.debug, c.migration_allowed, c.vmpl) == (False, True, None)
    assert c.tcb["tee_tcb_svn_00"] == 2 and c.tcb["tee_tcb_svn_01"] == 1


# --- every step failing on its own --------------------------------------------------------------


def _tamper(token: str, **changes: Any) -> str:
    head, payload, signature = token.split(".")
    claims = {**claims_of(token), **changes}
    return ".".join((head, base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode(), signature))


@pytest.mark.parametrize(
    "case, step, code",
    [
        ("wrong_kid", "keys", "maa_unknown_key"),
        ("wrong_jku", "header", "maa_wrong_jku"),
        ("wrong_iss", "issuer", "maa_wrong_issuer"),
        ("expired", "expiry", "maa_expired"),
        ("not_yet_valid", "expiry", "maa_not_yet_valid"),
        ("alg_none", "header", "maa_bad_algorithm"),
        ("tampered", "signature", "maa_bad_signature"),
        ("other_key", "signature", "maa_bad_signature"),
        ("no_exp", "expiry", "maa_missing_claim"),
        ("nan_exp", "expiry", "maa_bad_claim"),
        ("not_a_jwt", "header", "maa_malformed_token"),
        ("non_compliant", "compliance", "maa_not_compliant"),
        ("sgx_token", "claims", "maa_not_cvm"),
        ("nested_unknown_tee", "claims", "maa_not_cvm"),
        ("debug_not_bool", "claims", "maa_bad_claim"),
        ("measurement_short", "claims", "maa_bad_claim"),
        ("tcb_negative", "claims", "maa_bad_claim"),
        ("vm_ids_disagree", "claims", "maa_bad_claim"),
        ("no_vm_id", "claims", "maa_missing_claim"),
        ("user_data_not_hex", "report_data", "maa_bad_claim"),
        ("report_data_missing", "report_data", "maa_missing_claim"),
    ],
)
def test_each_failure_has_its_step_and_code(snp_maa: TestMaa, guest_maa: TestMaa, case: str, step: str, code: str) -> None:
    direct = compliant(SNP_CLAIMS)
    guest = with_user_data(AZUREVM_CLAIMS, "00" * 64)
    maa, instance, now, token = snp_maa, SNP_INSTANCE, SNP_AT, ""
    other = TestMaa.make(SNP_INSTANCE) if case == "other_key" else None
    if case.startswith(("nested", "vm_ids", "no_vm_id", "user_data")):
        maa, instance, now = guest_maa, AZUREVM_INSTANCE, AZUREVM_AT
    match case:
        case "wrong_kid":
            token = maa.sign(direct, kid="another-kid")
        case "wrong_jku":
            token = maa.sign(direct, jku="https://attacker.example/certs")
        case "wrong_iss":
            token = maa.sign({**direct, "iss": "https://sharedeus.eus.attest.azure.net"})
        case "expired":
            token, now = maa.sign(direct), datetime.fromtimestamp(direct["exp"] + 3600, UTC)
        case "not_yet_valid":
            token, now = maa.sign(direct), datetime.fromtimestamp(direct["nbf"] - 3600, UTC)
        case "alg_none":
            token = unsigned(direct, kid=maa.kid, jku=instance + "/certs")
        case "tampered":
            token = _tamper(maa.sign(direct), **{"x-ms-sevsnpvm-is-debuggable": True})
        case "other_key":
            assert other is not None
            token = other.sign(direct)  # same kid, another key: only the signature tells
        case "no_exp":
            token = maa.sign({k: v for k, v in direct.items() if k != "exp"})
        case "nan_exp":
            token = maa.sign({**direct, "exp": "nan"})
        case "not_a_jwt":
            token = "not.a.jwt"
        case "non_compliant":
            token = maa.sign({**direct, "x-ms-compliance-status": "azure-noncompliant-cvm"})
        case "sgx_token":
            token = maa.sign({**direct, "x-ms-attestation-type": "sgx"})
        case "nested_unknown_tee":
            claims = copy.deepcopy(guest)
            claims["x-ms-isolation-tee"]["x-ms-attestation-type"] = "vbs"
            token = maa.sign(claims)
        case "debug_not_bool":
            token = maa.sign({**direct, "x-ms-sevsnpvm-is-debuggable": "false"})
        case "measurement_short":
            token = maa.sign({**direct, "x-ms-sevsnpvm-launchmeasurement": "02c3"})
        case "tcb_negative":
            token = maa.sign({**direct, "x-ms-sevsnpvm-snpfw-svn": -1})
        case "vm_ids_disagree":
            token = maa.sign({**guest, "x-ms-azurevm-vmid": "00000000-0000-0000-0000-000000000000"})
        case "no_vm_id":
            token = maa.sign({k: v for k, v in guest.items() if k != "x-ms-azurevm-vmid"})
        case "user_data_not_hex":
            token = maa.sign(with_user_data(guest, "zz" * 64))
        case "report_data_missing":
            token = maa.sign({k: v for k, v in direct.items() if k != "x-ms-sevsnpvm-reportdata"})
    verdict = verify_maa_cvm_token(token, instance=instance, jwks=maa.jwks(), now=now)
    assert verdict.failure is not None and (verdict.failure.step, verdict.failure.code) == (step, code), verdict.failure
    order = [s.step for s in verdict.steps]
    assert order == list(CVM_TOKEN_STEPS)
    after = order[order.index(step) + 1 :]
    assert all(s.ok is None and s.message == "not reached" for s in verdict.steps if s.step in after)
    assert all(s.ok is True for s in verdict.steps[: order.index(step)])


def test_a_bad_jwks_and_garbage_never_raise(snp_maa: TestMaa) -> None:
    token = snp_maa.sign(compliant(SNP_CLAIMS))
    for jwks in (None, [], {"keys": "x"}, {"keys": [{"kid": snp_maa.kid, "x5c": ["not base64!"]}]}):
        verdict = verify_maa_cvm_token(token, instance=SNP_INSTANCE, jwks=jwks, now=SNP_AT)
        assert verdict.failure is not None and verdict.failure.step == "keys"
    for garbage in ("", ".", "..", "a.b.c.d", "\x00" * 100, "e30.e30.", "W10.W10.", "x" * 100_000):
        verdict = verify_maa_cvm_token(garbage, instance=SNP_INSTANCE, jwks=snp_maa.jwks(), now=SNP_AT)
        assert verdict.failure is not None and verdict.failure.step == "header" and verdict.claims is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
_names = st.sampled_from(
    [
        "x-ms-attestation-type",
        "x-ms-isolation-tee",
        "x-ms-azurevm-vmid",
        "x-ms-runtime",
        "x-ms-compliance-status",
        "x-ms-sevsnpvm-launchmeasurement",
        "x-ms-sevsnpvm-is-debuggable",
        "x-ms-sevsnpvm-reportdata",
        "x-ms-sevsnpvm-vmpl",
        "tdx_td_attributes",
        "exp",
        "nbf",
        "iss",
    ]
)


@settings(max_examples=150, deadline=None)
@given(base=st.sampled_from(["direct", "guest"]), changes=st.dictionaries(_names, _json, max_size=4), nested=st.booleans())
def test_any_signed_claims_give_a_verdict(snp_maa: TestMaa, base: str, changes: dict[str, Any], nested: bool) -> None:
    claims = copy.deepcopy(compliant(SNP_CLAIMS) if base == "direct" else with_user_data(AZUREVM_CLAIMS, "00" * 64))
    claims["iss"] = SNP_INSTANCE
    target = claims["x-ms-isolation-tee"] if nested and base == "guest" else claims
    target.update(changes)
    verdict = verify_maa_cvm_token(snp_maa.sign(claims), instance=SNP_INSTANCE, jwks=snp_maa.jwks(), now=SNP_AT)
    assert [s.step for s in verdict.steps] == list(CVM_TOKEN_STEPS)
    assert verdict.ok is (verdict.failure is None)
