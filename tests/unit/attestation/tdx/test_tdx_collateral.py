"""TDX collateral: Intel's TD_QE identity, TDX TCB info (with the TDX module) and the PCK CRLs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from tdx_helpers import (
    COLLATERAL_2023,
    PCK_CRL_2023,
    QE_IDENTITY_2023,
    REPORT_DATA,
    ROOT_CRL_2023,
    SPR,
    TCB_INFO_2023,
    TCB_INFO_V5,
    V5,
    failure,
    steps,
    verify_real,
    verify_sim,
)

from duet.attestation import sgx
from duet.attestation.tdx import simulated
from duet.attestation.tdx.simulated import SimulatedTdxPlatform
from duet.errors import ConfigError


def _tdx_collateral(**files: Path) -> sgx.Collateral:
    return sgx.load_collateral(tee="TDX", **files)


# --- real collateral ------------------------------------------------------------------------------


def test_real_tdx_tcb_info_gives_the_v5_quote_its_tcb_status() -> None:
    v = verify_real(V5.read_bytes(), collateral=_tdx_collateral(tcb_info=TCB_INFO_V5))
    assert v.ok, v.failure
    step = steps(v)["tcb_level"]
    assert step.ok is True
    assert "platform: UpToDate (FMSPC 90c06f000000" in step.message and "TDX module UpToDate" in step.message
    assert "signature not verified" in step.message
    assert "quoting enclave: not evaluated (no QE identity given)" in step.message
    assert v.claims is not None
    assert (v.claims.fields["tcb_status"], v.claims.fields["qe_tcb_status"]) == ("UpToDate", None)
    assert v.claims.fields["fmspc"] == "90c06f000000"


def test_real_qe_identity_and_crls_of_2023() -> None:
    collateral = _tdx_collateral(qe_identity=QE_IDENTITY_2023, pck_crl=PCK_CRL_2023, root_crl=ROOT_CRL_2023)
    v = verify_real(SPR.read_bytes(), now=COLLATERAL_2023, collateral=collateral)
    assert v.ok, v.failure
    s = steps(v)
    assert s["pck_revocation"].ok is True
    assert (
        s["pck_revocation"].message == "PCK CRL: the PCK certificate is not revoked; root CA CRL: no CA of the chain is revoked"
    )
    assert s["qe_identity"].ok is True and "sample_qeIdentity_response" in s["qe_identity"].message
    assert s["tcb_level"].ok is True and "quoting enclave: UpToDate (ISVSVN 4)" in s["tcb_level"].message
    assert "platform: not evaluated (no TCB info given)" in s["tcb_level"].message
    assert v.claims is not None and v.claims.fields["qe_tcb_status"] == "UpToDate"


def test_tcb_info_no_level_of_which_the_platform_reaches() -> None:
    v = verify_real(SPR.read_bytes(), now=COLLATERAL_2023, collateral=_tdx_collateral(tcb_info=TCB_INFO_2023))
    assert failure(v) == ("tcb_level", "tcb_level_not_found")
    assert "SGX TCB (components [3, 3, 2, 2, 2, 1, 0, 2" in v.failure.message  # type: ignore[union-attr]


def test_expired_collateral_is_refused() -> None:
    v = verify_real(SPR.read_bytes(), collateral=_tdx_collateral(qe_identity=QE_IDENTITY_2023))
    assert failure(v) == ("qe_identity", "collateral_expired")
    v = verify_real(SPR.read_bytes(), collateral=_tdx_collateral(pck_crl=PCK_CRL_2023))
    assert failure(v) == ("pck_revocation", "collateral_expired")
    v = verify_real(V5.read_bytes(), now=datetime(2026, 3, 4, tzinfo=UTC), collateral=_tdx_collateral(tcb_info=TCB_INFO_V5))
    assert failure(v) == ("tcb_level", "collateral_expired")


def test_tcb_info_for_another_platform() -> None:
    v = verify_real(
        V5.read_bytes(), collateral=sgx.Collateral(tcb_info=_tcb_info(TCB_INFO_2023, nextUpdate="2026-12-01T00:00:00Z"))
    )
    assert failure(v) == ("tcb_level", "tcb_info_mismatch") and "FMSPC 50806f000000" in v.failure.message  # type: ignore[union-attr]


# --- the wrong kind of collateral ----------------------------------------------------------------


def _doc(path: Path) -> dict[str, Any]:
    return json.loads(path.read_bytes())


def _tcb_info(path: Path, *, levels: list[dict[str, Any]] | None = None, **over: Any) -> sgx.TcbInfo:
    doc = _doc(path)
    doc["tcbInfo"].update(over)
    if levels is not None:
        doc["tcbInfo"]["tcbLevels"] = levels
    return sgx.TcbInfo.from_json(json.dumps(doc).encode(), "tcb.json", expected_id="TDX")


def test_sgx_collateral_is_refused_for_a_tdx_quote(tmp_path: Path) -> None:
    qe = _doc(QE_IDENTITY_2023)
    qe["enclaveIdentity"]["id"] = "QE"
    (tmp_path / "qe.json").write_text(json.dumps(qe))
    with pytest.raises(ConfigError) as err:
        _tdx_collateral(qe_identity=tmp_path / "qe.json")
    assert err.value.code == "bad_collateral" and "'TD_QE'" in err.value.message
    # Given programmatically, it fails the step instead.
    sgx_qe = sgx.QeIdentity.from_json(json.dumps(qe).encode(), "sgx-qe.json")
    v = verify_real(SPR.read_bytes(), now=COLLATERAL_2023, collateral=sgx.Collateral(qe_identity=sgx_qe))
    assert failure(v) == ("qe_identity", "qe_identity_mismatch") and "TD_QE" in v.failure.message  # type: ignore[union-attr]

    tcb = _doc(TCB_INFO_V5)
    tcb["tcbInfo"]["id"] = "SGX"
    (tmp_path / "tcb.json").write_text(json.dumps(tcb))
    with pytest.raises(ConfigError) as err:
        _tdx_collateral(tcb_info=tmp_path / "tcb.json")
    assert "this quote needs TDX TCB info" in err.value.message
    sgx_tcb = sgx.TcbInfo.from_json(json.dumps(tcb).encode(), "sgx-tcb.json")
    v = verify_real(V5.read_bytes(), collateral=sgx.Collateral(tcb_info=sgx_tcb))
    assert failure(v) == ("tcb_level", "tcb_info_mismatch") and "not TDX" in v.failure.message  # type: ignore[union-attr]


def test_tdx_collateral_is_refused_for_an_sgx_quote() -> None:
    with pytest.raises(ConfigError):
        sgx.QeIdentity.from_json(QE_IDENTITY_2023.read_bytes())
    with pytest.raises(ConfigError):
        sgx.TcbInfo.from_json(TCB_INFO_V5.read_bytes())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.pop("tdxModule"),
        lambda t: t["tdxModule"].update(mrsigner="00" * 32),
        lambda t: t.update(tdxModuleIdentities={}),
        lambda t: t["tdxModuleIdentities"][0]["tcbLevels"].clear(),
        lambda t: t["tcbLevels"][0]["tcb"].pop("tdxtcbcomponents"),
        lambda t: t.update(version=2),
    ],
    ids=["no-module", "short-mrsigner", "identities-not-a-list", "no-module-levels", "no-tdx-components", "version-2"],
)
def test_malformed_tdx_tcb_info_is_refused(mutate: Any) -> None:
    doc = _doc(TCB_INFO_V5)
    mutate(doc["tcbInfo"])
    with pytest.raises(ConfigError) as err:
        sgx.TcbInfo.from_json(json.dumps(doc).encode(), "x.json", expected_id="TDX")
    assert err.value.code == "bad_collateral"


# --- the TDX module --------------------------------------------------------------------------------


def test_a_tdx_module_signed_by_another_key_is_refused() -> None:
    doc = _doc(TCB_INFO_V5)["tcbInfo"]
    identities = [dict(m, mrsigner="11" * 48) if m["id"] == "TDX_01" else m for m in doc["tdxModuleIdentities"]]
    v = verify_real(V5.read_bytes(), collateral=sgx.Collateral(tcb_info=_tcb_info(TCB_INFO_V5, tdxModuleIdentities=identities)))
    assert failure(v) == ("tcb_level", "tdx_module_mismatch")
    assert "MRSIGNERSEAM is 0000" in v.failure.message and "1111" in v.failure.message  # type: ignore[union-attr]


def test_a_tdx_module_version_the_tcb_info_does_not_know_is_refused() -> None:
    doc = _doc(TCB_INFO_V5)["tcbInfo"]
    identities = [m for m in doc["tdxModuleIdentities"] if m["id"] != "TDX_01"]
    v = verify_real(V5.read_bytes(), collateral=sgx.Collateral(tcb_info=_tcb_info(TCB_INFO_V5, tdxModuleIdentities=identities)))
    assert failure(v) == ("tcb_level", "tdx_module_mismatch") and "TDX_01" in v.failure.message  # type: ignore[union-attr]


def _sim_tcb_info(module_status: str, *, tdx_svns: list[int], module_isvsvn: int = 5, **over: Any) -> sgx.TcbInfo:
    level = {
        "tcb": {
            "sgxtcbcomponents": [{"svn": v} for v in simulated.SIM_SGX_TCB_COMPONENTS],
            "pcesvn": simulated.SIM_PCE_SVN,
            "tdxtcbcomponents": [{"svn": v} for v in tdx_svns],
        },
        "tcbDate": "2025-01-01T00:00:00Z",
        "tcbStatus": "UpToDate",
    }
    module = {"mrsigner": "00" * 48, "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF"}
    info = {
        "id": "TDX",
        "version": 3,
        "issueDate": "2025-01-01T00:00:00Z",
        "nextUpdate": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
        "fmspc": simulated.SIM_FMSPC.hex(),
        "pceId": "0000",
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
        "tdxModule": module,
        "tdxModuleIdentities": [
            {
                "id": "TDX_01",
                **module,
                "tcbLevels": [
                    {"tcb": {"isvsvn": module_isvsvn}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": module_status},
                ],
            }
        ],
        "tcbLevels": [level],
    }
    info.update(over)
    return sgx.TcbInfo.from_json(
        json.dumps({"tcbInfo": info, "signature": "00" * 64}).encode(), "sim-tcb.json", expected_id="TDX"
    )


def test_an_out_of_date_tdx_module_lowers_an_up_to_date_level(sim: SimulatedTdxPlatform) -> None:
    """Module 1.x (TEE_TCB_SVN[1] = 1): bytes 0–1 are judged by the TDX_01 identity's levels."""
    quote = sim.quote(REPORT_DATA, td_report={"tee_tcb_svn": bytes([6, 1, 4]) + bytes(13)})
    up = verify_sim(quote, sim, collateral=sgx.Collateral(tcb_info=_sim_tcb_info("UpToDate", tdx_svns=[99, 99, 4] + [0] * 13)))
    assert up.ok and up.claims is not None and up.claims.fields["tcb_status"] == "UpToDate"
    out = verify_sim(quote, sim, collateral=sgx.Collateral(tcb_info=_sim_tcb_info("OutOfDate", tdx_svns=[0, 0, 4] + [0] * 13)))
    assert out.ok and out.claims is not None and out.claims.fields["tcb_status"] == "OutOfDate"
    assert "TDX module OutOfDate (ISVSVN 6, version 1)" in steps(out)["tcb_level"].message
    too_old = verify_sim(
        quote, sim, collateral=sgx.Collateral(tcb_info=_sim_tcb_info("UpToDate", tdx_svns=[0] * 16, module_isvsvn=7))
    )
    assert failure(too_old) == ("tcb_level", "tcb_level_not_found") and "TDX module's SVN 6" in too_old.failure.message  # type: ignore[union-attr]


def test_a_td_below_every_tdx_level_is_refused(sim: SimulatedTdxPlatform) -> None:
    quote = sim.quote(REPORT_DATA)  # TEE_TCB_SVN 03 00 04: module major version 0, all 16 bytes compared
    ok = verify_sim(quote, sim, collateral=sgx.Collateral(tcb_info=_sim_tcb_info("UpToDate", tdx_svns=[3, 0, 4] + [0] * 13)))
    assert ok.ok and "judged by the TCB level (major version 0)" in steps(ok)["tcb_level"].message
    v = verify_sim(quote, sim, collateral=sgx.Collateral(tcb_info=_sim_tcb_info("UpToDate", tdx_svns=[3, 0, 5] + [0] * 13)))
    assert failure(v) == ("tcb_level", "tcb_level_not_found") and "TEE_TCB_SVN 030004" in v.failure.message  # type: ignore[union-attr]


def test_tcb_info_against_a_pck_without_the_sgx_extension(sim: SimulatedTdxPlatform) -> None:
    bare = (
        x509.CertificateBuilder()
        .subject_name(sim.certs["pck"].subject)
        .issuer_name(sim.certs["intermediate"].subject)
        .public_key(sim.keys["pck"].public_key())
        .serial_number(1)
        .not_valid_before(datetime.now(UTC) - timedelta(days=1))
        .not_valid_after(datetime.now(UTC) + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(sim.keys["intermediate"], hashes.SHA256())
    )
    quote = sim.quote(REPORT_DATA, chain=[bare, sim.certs["intermediate"], sim.certs["root"]])
    assert verify_sim(quote, sim).ok
    v = verify_sim(quote, sim, collateral=sgx.Collateral(tcb_info=_sim_tcb_info("UpToDate", tdx_svns=[0] * 16)))
    assert failure(v) == ("tcb_level", "bad_pck_extension")


# --- revocation ----------------------------------------------------------------------------------------


def _crl(
    issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, revoked: list[x509.Certificate]
) -> x509.CertificateRevocationList:
    now = datetime.now(UTC)
    builder = x509.CertificateRevocationListBuilder().issuer_name(issuer.subject).last_update(now - timedelta(days=1))
    builder = builder.next_update(now + timedelta(days=30))
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(now - timedelta(hours=1)).build()
        )
    return builder.sign(key, hashes.SHA256())


def test_a_revoked_pck_is_refused(sim: SimulatedTdxPlatform) -> None:
    quote = sim.quote(REPORT_DATA)
    crl = _crl(sim.certs["intermediate"], sim.keys["intermediate"], [sim.certs["pck"]])
    v = verify_sim(quote, sim, collateral=sgx.Collateral(pck_crl=crl))
    assert failure(v) == ("pck_revocation", "certificate_revoked")
    assert steps(v)["qe_identity"].ok is None and steps(v)["attestation_key_binding"].ok is True
    root_crl = _crl(sim.certs["root"], sim.keys["root"], [sim.certs["intermediate"]])
    assert failure(verify_sim(quote, sim, collateral=sgx.Collateral(root_crl=root_crl))) == (
        "pck_revocation",
        "certificate_revoked",
    )
    clean = _crl(sim.certs["intermediate"], sim.keys["intermediate"], [])
    assert verify_sim(quote, sim, collateral=sgx.Collateral(pck_crl=clean)).ok


def test_the_real_pck_crl_is_not_signed_by_a_simulated_chain(sim: SimulatedTdxPlatform) -> None:
    v = verify_sim(sim.quote(REPORT_DATA), sim, collateral=_tdx_collateral(pck_crl=PCK_CRL_2023))
    assert failure(v) == ("pck_revocation", "bad_crl")
