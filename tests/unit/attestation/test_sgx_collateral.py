"""DCAP completeness: the quoting enclave's identity, TCB status and PCK revocation (issue 12, item 6)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sgx_helpers import REAL_NOW, REAL_QUOTES, RELEASE, REPORT_DATA, sim_quote_with

from duet.attestation import sgx
from duet.errors import ConfigError
from duet.tee.simulated import SIM_QE_MRSIGNER, SimulatedSgxTee, build_report_body, qe_report_data

INTEL_QE_MRSIGNER = "8C4F5775D796503E96137F77C68A829A0056AC8DED70140B081B094490C57BFF"


def _steps(verdict: sgx.EvidenceVerdict) -> dict[str, sgx.StepVerdict]:
    return {s.step: s for s in verdict.steps}


def _real(path: Path) -> bytes:
    return sgx.decode_quote_text(path.read_bytes())


def _judge_sim(sim_tee: SimulatedSgxTee, quote: bytes, **kwargs: Any) -> sgx.EvidenceVerdict:
    return sgx.verify_evidence(quote, trusted_root_keys=[sim_tee.root_key()], now=datetime.now(UTC), **kwargs)


def _judge_real(path: Path, **kwargs: Any) -> sgx.EvidenceVerdict:
    kwargs.setdefault("policy", sgx.Policy(allow_debug=True))
    return sgx.verify_evidence(_real(path), trusted_root_keys=[sgx.intel_sgx_root_key()], now=REAL_NOW, **kwargs)


def _forged_qe_report(sim_tee: SimulatedSgxTee, **fields: Any) -> bytes:
    p = sim_tee.platform
    values: dict[str, Any] = {
        "cpu_svn": bytes(range(16)),
        "flags": 0x15,
        "xfrm": 0x03,
        "mr_enclave": hashlib.sha256(b"another quoting enclave").digest(),
        "mr_signer": SIM_QE_MRSIGNER,
        "isv_prod_id": 1,
        "isv_svn": 1,
        "report_data": qe_report_data(p.keys["attestation"], p.qe_auth_data),
    }
    values.update(fields)
    return build_report_body(**values)


# ------------------------------------------------------------------------------------------
# QE identity
# ------------------------------------------------------------------------------------------


def test_a_foreign_quoting_enclave_signed_by_the_pck_key_is_refused(sim_tee: SimulatedSgxTee) -> None:
    forged = _forged_qe_report(sim_tee, mr_signer=hashlib.sha256(b"evil").digest(), isv_prod_id=7, flags=0x17)
    verdict = _judge_sim(sim_tee, sim_quote_with(sim_tee, qe_report=forged), report_data=REPORT_DATA)
    assert not verdict.ok and verdict.failure is not None
    assert (verdict.failure.step, verdict.failure.code) == ("qe_identity", "qe_identity_mismatch")
    for name in ("MRSIGNER", "ISVPRODID", "ATTRIBUTES"):
        assert name in verdict.failure.message
    assert _steps(verdict)["policy"].ok is None


@pytest.mark.parametrize(
    "fields",
    [
        {"mr_signer": hashlib.sha256(b"evil").digest()},
        {"isv_prod_id": 2},
        {"flags": 0x17},  # DEBUG
        {"misc_select": 1},
        {"isv_svn": 0},
    ],
    ids=["mrsigner", "isvprodid", "debug", "miscselect", "isvsvn"],
)
def test_each_qe_identity_field_is_checked(sim_tee: SimulatedSgxTee, fields: dict[str, Any]) -> None:
    quote = sim_quote_with(sim_tee, qe_report=_forged_qe_report(sim_tee, **fields))
    verdict = _judge_sim(sim_tee, quote)
    assert verdict.failure is not None and verdict.failure.step == "qe_identity"


def test_the_genuine_simulated_quoting_enclave_is_accepted_under_the_simulated_root(
    sim_tee: SimulatedSgxTee, sim_quote: bytes
) -> None:
    verdict = _judge_sim(sim_tee, sim_quote, report_data=REPORT_DATA)
    assert verdict.ok
    step = _steps(verdict)["qe_identity"]
    assert step.ok is True and "simulated" in step.message.lower()


def test_the_simulated_quoting_enclave_is_not_intels() -> None:
    assert sgx.SIMULATED_QE_IDENTITY.mr_signer == SIM_QE_MRSIGNER
    assert sgx.INTEL_QE_IDENTITY.mr_signer.hex().upper() == INTEL_QE_MRSIGNER
    assert sgx.INTEL_QE_IDENTITY.isv_prod_id == 1
    # Which identity a chain is judged by depends only on the root it verified to.
    assert sgx.qe_identity_for_root(sgx.INTEL_SGX_ROOT_KEY_SHA256) is sgx.INTEL_QE_IDENTITY
    other = sgx.spki_sha256(ec.generate_private_key(ec.SECP256R1()).public_key())
    assert sgx.qe_identity_for_root(other) is sgx.SIMULATED_QE_IDENTITY


@pytest.mark.parametrize("path", REAL_QUOTES, ids=lambda p: p.name)
def test_real_quotes_match_the_built_in_intel_qe_identity(path: Path) -> None:
    verdict = _judge_real(path)
    assert verdict.ok, verdict.failure
    steps = _steps(verdict)
    assert steps["qe_identity"].ok is True and "built-in" in steps["qe_identity"].message
    assert steps["tcb_level"].ok is None
    assert "not evaluated (no TCB info given)" in steps["tcb_level"].message
    assert steps["pck_revocation"].ok is None
    assert "not evaluated (no PCK CRL given)" in steps["pck_revocation"].message


def _qe_identity_json(**over: Any) -> dict[str, Any]:
    identity: dict[str, Any] = {
        "id": "QE",
        "version": 2,
        "issueDate": "2025-12-01T00:00:00Z",
        "nextUpdate": "2026-02-01T00:00:00Z",
        "tcbEvaluationDataNumber": 17,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000",
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": INTEL_QE_MRSIGNER,
        "isvprodid": 1,
        "tcbLevels": [
            {"tcb": {"isvsvn": 9}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": "UpToDate"},
            {"tcb": {"isvsvn": 8}, "tcbDate": "2023-02-15T00:00:00Z", "tcbStatus": "OutOfDate"},
            {"tcb": {"isvsvn": 1}, "tcbDate": "2018-08-15T00:00:00Z", "tcbStatus": "OutOfDate"},
        ],
    }
    identity.update(over)
    return {"enclaveIdentity": identity, "signature": "00" * 64}


def _qe_identity(**over: Any) -> sgx.QeIdentity:
    return sgx.QeIdentity.from_json(json.dumps(_qe_identity_json(**over)).encode(), "qe-identity.json")


def test_a_qe_identity_file_gives_the_qe_tcb_status() -> None:
    coll = sgx.Collateral(qe_identity=_qe_identity())
    verdict = _judge_real(RELEASE, collateral=coll, policy=sgx.DEFAULT_POLICY)  # QE ISVSVN 9
    assert verdict.ok, verdict.failure
    steps = _steps(verdict)
    assert "qe-identity.json" in steps["qe_identity"].message
    assert "signature not verified" in steps["qe_identity"].message
    assert steps["tcb_level"].ok is True
    assert verdict.signatures.tcb is not None and verdict.signatures.tcb.qe_status == "UpToDate"
    assert verdict.signatures.tcb.platform_status is None
    assert "platform: not evaluated (no TCB info given)" in steps["tcb_level"].message
    assert any(c.check == "qe_tcb_status" and c.ok for c in verdict.policy)


def test_an_out_of_date_quoting_enclave_is_refused_by_the_default_policy() -> None:
    occlum = REAL_QUOTES[2]  # QE ISVSVN 8: OutOfDate in this identity
    verdict = _judge_real(occlum, collateral=sgx.Collateral(qe_identity=_qe_identity()))
    assert verdict.failure is not None
    assert (verdict.failure.step, verdict.failure.code) == ("policy", "qe_tcb_status_not_allowed")
    lenient = sgx.Policy(allow_debug=True, tcb_statuses=("UpToDate", "SWHardeningNeeded", "OutOfDate"))
    assert _judge_real(occlum, collateral=sgx.Collateral(qe_identity=_qe_identity()), policy=lenient).ok


def test_a_qe_identity_file_replaces_the_built_in_one() -> None:
    identity = _qe_identity(mrsigner="11" * 32)
    verdict = _judge_real(RELEASE, collateral=sgx.Collateral(qe_identity=identity))
    assert verdict.failure is not None and verdict.failure.step == "qe_identity"


def test_a_qe_isvsvn_below_every_tcb_level_is_refused() -> None:
    identity = _qe_identity(tcbLevels=[{"tcb": {"isvsvn": 10}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": "UpToDate"}])
    verdict = _judge_real(RELEASE, collateral=sgx.Collateral(qe_identity=identity))
    assert verdict.failure is not None
    assert (verdict.failure.step, verdict.failure.code) == ("qe_identity", "qe_identity_mismatch")
    assert "ISVSVN" in verdict.failure.message


def test_an_expired_qe_identity_is_refused() -> None:
    identity = _qe_identity(nextUpdate="2025-12-31T00:00:00Z")
    verdict = _judge_real(RELEASE, collateral=sgx.Collateral(qe_identity=identity))
    assert verdict.failure is not None
    assert (verdict.failure.step, verdict.failure.code) == ("qe_identity", "collateral_expired")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("enclaveIdentity"),
        lambda d: d["enclaveIdentity"].update(mrsigner="zz"),
        lambda d: d["enclaveIdentity"].update(isvprodid="1"),
        lambda d: d["enclaveIdentity"].update(id="TD_QE"),
        lambda d: d["enclaveIdentity"]["tcbLevels"][0].update(tcbStatus="Fine"),
    ],
    ids=["no-identity", "bad-hex", "bad-int", "td-qe", "bad-status"],
)
def test_malformed_qe_identity_files_are_refused(mutate: Any) -> None:
    data = _qe_identity_json()
    mutate(data)
    with pytest.raises(ConfigError) as exc:
        sgx.QeIdentity.from_json(json.dumps(data).encode(), "x.json")
    assert exc.value.code == "bad_collateral"


# ------------------------------------------------------------------------------------------
# TCB info (platform TCB level)
# ------------------------------------------------------------------------------------------


def _pck_leaf(path: Path) -> x509.Certificate:
    chain = sgx.parse_quote(_real(path)).signature_data.certification_data.certificates()
    return next(c for c in chain if "PCK Certificate" in sgx.common_name(c.subject))


def test_the_pck_sgx_extension_of_a_real_certificate() -> None:
    ext = sgx.pck_sgx_extension(_pck_leaf(RELEASE))
    assert len(ext.fmspc) == 6 and len(ext.pce_id) == 2 and len(ext.ppid) == 16
    assert len(ext.tcb.comp_svns) == 16 and len(ext.tcb.cpu_svn) == 16
    # The CPUSVN in the PCK certificate is the TCB component SVNs, byte for byte.
    assert bytes(ext.tcb.comp_svns) == ext.tcb.cpu_svn
    assert ext.tcb.pce_svn >= 1


def test_the_pck_sgx_extension_packs_and_parses_by_one_table() -> None:
    values = sgx.PckSgxExtension(
        ppid=bytes(range(16)),
        tcb=sgx.PckTcb(comp_svns=tuple(range(16)), pce_svn=13, cpu_svn=bytes(range(16))),
        pce_id=b"\0\0",
        fmspc=bytes.fromhex("00906ED50000"),
        sgx_type=0,
    )
    assert sgx.parse_pck_sgx_extension(sgx.pack_pck_sgx_extension(values)) == values


def _tcb_level(comps: list[int], pcesvn: int, status: str, version: int) -> dict[str, Any]:
    if version == 3:
        tcb: dict[str, Any] = {"sgxtcbcomponents": [{"svn": v} for v in comps], "pcesvn": pcesvn}
    else:
        tcb = {f"sgxtcbcomp{i + 1:02d}svn": v for i, v in enumerate(comps)} | {"pcesvn": pcesvn}
    return {"tcb": tcb, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": status}


def _tcb_info_json(path: Path, statuses: tuple[str, str], *, version: int = 3, **over: Any) -> bytes:
    """A TCB info for the PCK of ``path``: a level above it (``UpToDate``), its own level
    (``statuses[0]``), then all zeros (``statuses[1]``)."""
    ext = sgx.pck_sgx_extension(_pck_leaf(path))
    comps, pce = list(ext.tcb.comp_svns), ext.tcb.pce_svn
    info: dict[str, Any] = {
        "version": version,
        "issueDate": "2025-12-01T00:00:00Z",
        "nextUpdate": "2026-02-01T00:00:00Z",
        "fmspc": ext.fmspc.hex().upper(),
        "pceId": ext.pce_id.hex().upper(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
        "tcbLevels": [
            _tcb_level([v + 1 for v in comps], pce, "UpToDate", version),
            _tcb_level(comps, pce, statuses[0], version),
            _tcb_level([0] * 16, 0, statuses[1], version),
        ],
    }
    if version == 3:
        info["id"] = "SGX"
    info.update(over)
    return json.dumps({"tcbInfo": info, "signature": "00" * 64}).encode()


@pytest.mark.parametrize("version", [2, 3])
def test_tcb_info_gives_the_platform_tcb_status(version: int) -> None:
    tcb_info = sgx.TcbInfo.from_json(_tcb_info_json(RELEASE, ("SWHardeningNeeded", "OutOfDate"), version=version))
    verdict = _judge_real(RELEASE, collateral=sgx.Collateral(tcb_info=tcb_info), policy=sgx.DEFAULT_POLICY)
    assert verdict.ok, verdict.failure
    step = _steps(verdict)["tcb_level"]
    assert step.ok is True and "SWHardeningNeeded" in step.message
    assert "quoting enclave: not evaluated (no QE identity given)" in step.message
    assert verdict.signatures.tcb is not None and verdict.signatures.tcb.platform_status == "SWHardeningNeeded"
    assert any(c.check == "tcb_status" and c.ok for c in verdict.policy)


def test_an_out_of_date_platform_is_refused_by_the_default_policy_only() -> None:
    tcb_info = sgx.TcbInfo.from_json(_tcb_info_json(RELEASE, ("OutOfDate", "OutOfDate")))
    verdict = _judge_real(RELEASE, collateral=sgx.Collateral(tcb_info=tcb_info), policy=sgx.DEFAULT_POLICY)
    assert verdict.failure is not None
    assert (verdict.failure.step, verdict.failure.code) == ("policy", "tcb_status_not_allowed")
    lenient = sgx.Policy(tcb_statuses=("UpToDate", "OutOfDate"))
    assert _judge_real(RELEASE, collateral=sgx.Collateral(tcb_info=tcb_info), policy=lenient).ok


def test_a_platform_below_every_tcb_level_is_refused() -> None:
    ext = sgx.pck_sgx_extension(_pck_leaf(RELEASE))
    raw = json.loads(_tcb_info_json(RELEASE, ("UpToDate", "OutOfDate")))
    raw["tcbInfo"]["tcbLevels"] = [_tcb_level([v + 1 for v in ext.tcb.comp_svns], ext.tcb.pce_svn, "UpToDate", 3)]
    tcb_info = sgx.TcbInfo.from_json(json.dumps(raw).encode())
    verdict = _judge_real(RELEASE, collateral=sgx.Collateral(tcb_info=tcb_info))
    assert verdict.failure is not None
    assert (verdict.failure.step, verdict.failure.code) == ("tcb_level", "tcb_level_not_found")


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"fmspc": "000000000000"}, "tcb_info_mismatch"),
        ({"pceId": "FFFF"}, "tcb_info_mismatch"),
        ({"nextUpdate": "2025-12-31T00:00:00Z"}, "collateral_expired"),
    ],
    ids=["fmspc", "pceid", "expired"],
)
def test_tcb_info_for_another_platform_or_expired_is_refused(over: dict[str, Any], code: str) -> None:
    tcb_info = sgx.TcbInfo.from_json(_tcb_info_json(RELEASE, ("UpToDate", "OutOfDate"), **over))
    verdict = _judge_real(RELEASE, collateral=sgx.Collateral(tcb_info=tcb_info))
    assert verdict.failure is not None and (verdict.failure.step, verdict.failure.code) == ("tcb_level", code)


def test_tcb_info_with_a_pck_without_sgx_extension_is_refused(sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    tcb_info = sgx.TcbInfo.from_json(_tcb_info_json(RELEASE, ("UpToDate", "OutOfDate")))
    verdict = _judge_sim(sim_tee, sim_quote, collateral=sgx.Collateral(tcb_info=tcb_info))
    assert verdict.failure is not None
    assert (verdict.failure.step, verdict.failure.code) == ("tcb_level", "bad_pck_extension")


def test_both_tcb_levels_evaluated_together() -> None:
    coll = sgx.Collateral(
        qe_identity=_qe_identity(),
        tcb_info=sgx.TcbInfo.from_json(_tcb_info_json(RELEASE, ("UpToDate", "OutOfDate"))),
    )
    verdict = _judge_real(RELEASE, collateral=coll, policy=sgx.DEFAULT_POLICY)
    assert verdict.ok, verdict.failure
    assert verdict.signatures.tcb is not None
    assert (verdict.signatures.tcb.platform_status, verdict.signatures.tcb.qe_status) == ("UpToDate", "UpToDate")
    assert "not evaluated" not in _steps(verdict)["tcb_level"].message


# ------------------------------------------------------------------------------------------
# PCK and root CRLs
# ------------------------------------------------------------------------------------------


def _crl(
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    revoked: list[x509.Certificate],
    *,
    next_update: datetime | None = None,
) -> x509.CertificateRevocationList:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now - timedelta(days=1))
        .next_update(next_update or now + timedelta(days=30))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(now - timedelta(hours=1)).build()
        )
    return builder.sign(key, hashes.SHA256())


def test_a_revoked_pck_is_refused(sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    p = sim_tee.platform
    crl = _crl(p.certs["intermediate"], p.keys["intermediate"], [p.certs["pck"]])
    verdict = _judge_sim(sim_tee, sim_quote, collateral=sgx.Collateral(pck_crl=crl))
    assert verdict.failure is not None
    assert (verdict.failure.step, verdict.failure.code) == ("pck_revocation", "certificate_revoked")
    assert _steps(verdict)["qe_identity"].ok is None


def test_a_pck_crl_without_it_passes(sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    p = sim_tee.platform
    crl = _crl(p.certs["intermediate"], p.keys["intermediate"], [])
    verdict = _judge_sim(sim_tee, sim_quote, collateral=sgx.Collateral(pck_crl=crl))
    assert verdict.ok
    step = _steps(verdict)["pck_revocation"]
    assert step.ok is True and "root CA CRL: not evaluated" in step.message


def test_a_revoked_intermediate_in_the_root_crl_is_refused(sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    p = sim_tee.platform
    crl = _crl(p.certs["root"], p.keys["root"], [p.certs["intermediate"]])
    verdict = _judge_sim(sim_tee, sim_quote, collateral=sgx.Collateral(root_crl=crl))
    assert verdict.failure is not None
    assert (verdict.failure.step, verdict.failure.code) == ("pck_revocation", "certificate_revoked")


def test_crls_not_signed_by_the_chain_or_expired_are_refused(sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    p = sim_tee.platform
    forged = _crl(p.certs["intermediate"], ec.generate_private_key(ec.SECP256R1()), [])
    verdict = _judge_sim(sim_tee, sim_quote, collateral=sgx.Collateral(pck_crl=forged))
    assert verdict.failure is not None and (verdict.failure.step, verdict.failure.code) == ("pck_revocation", "bad_crl")
    stale = _crl(p.certs["intermediate"], p.keys["intermediate"], [], next_update=datetime.now(UTC) - timedelta(minutes=1))
    verdict = _judge_sim(sim_tee, sim_quote, collateral=sgx.Collateral(pck_crl=stale))
    assert verdict.failure is not None
    assert (verdict.failure.step, verdict.failure.code) == ("pck_revocation", "collateral_expired")


# ------------------------------------------------------------------------------------------
# Files and policy
# ------------------------------------------------------------------------------------------


def test_collateral_loads_from_files(tmp_path: Path, sim_tee: SimulatedSgxTee) -> None:
    from cryptography.hazmat.primitives import serialization

    p = sim_tee.platform
    (tmp_path / "qe.json").write_text(json.dumps(_qe_identity_json()))
    (tmp_path / "tcb.json").write_bytes(_tcb_info_json(RELEASE, ("UpToDate", "OutOfDate")))
    crl = _crl(p.certs["intermediate"], p.keys["intermediate"], [])
    (tmp_path / "pck.crl").write_bytes(crl.public_bytes(serialization.Encoding.DER))
    (tmp_path / "root.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    coll = sgx.load_collateral(
        qe_identity=tmp_path / "qe.json",
        tcb_info=tmp_path / "tcb.json",
        pck_crl=tmp_path / "pck.crl",
        root_crl=tmp_path / "root.crl",
    )
    assert coll.qe_identity is not None and coll.tcb_info is not None
    assert coll.pck_crl is not None and coll.root_crl is not None
    (tmp_path / "bad.crl").write_bytes(b"not a crl")
    with pytest.raises(ConfigError) as exc:
        sgx.load_collateral(pck_crl=tmp_path / "bad.crl")
    assert exc.value.code == "bad_collateral"
    with pytest.raises(ConfigError) as exc:
        sgx.load_collateral(tcb_info=tmp_path / "missing.json")
    assert exc.value.code == "collateral_unreadable"


def test_policy_tcb_statuses() -> None:
    assert sgx.DEFAULT_POLICY.tcb_statuses == ("UpToDate", "SWHardeningNeeded")
    pol = sgx.Policy.from_toml('tcb_statuses = ["UpToDate", "ConfigurationNeeded"]')
    assert pol.tcb_statuses == ("UpToDate", "ConfigurationNeeded")
    for bad in ('tcb_statuses = ["Fine"]', 'tcb_statuses = "UpToDate"', 'tcb_statuses = ["Revoked"]'):
        with pytest.raises(ConfigError) as exc:
            sgx.Policy.from_toml(bad)
        assert exc.value.code == "bad_policy"
