"""The simulated TDX platform: what it writes, that it is reused, and that it is plainly not Intel."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tdx_helpers import REPORT_DATA, verify_sim

from duet.attestation import sgx, tdx
from duet.attestation.tdx import simulated
from duet.attestation.tdx.simulated import SimulatedTdxPlatform, load_or_create_platform
from duet.errors import ConfigError


def test_the_platform_is_written_as_pem_files_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "sim-tdx"
    first = load_or_create_platform(directory)
    assert sorted(p.name for p in directory.iterdir()) == [
        "attestation.key",
        "intermediate.key",
        "intermediate.pem",
        "pck.key",
        "pck.pem",
        "platform.json",
        "root.key",
        "root.pem",
    ]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in directory.glob("*.key"))
    again = load_or_create_platform(directory)
    assert again.root_pem() == first.root_pem() and again.qe_report == first.qe_report
    assert sgx.spki_sha256(again.root_key()) == sgx.spki_sha256(first.root_key())
    assert verify_sim(first.quote(REPORT_DATA), again).ok  # a quote made before a restart verifies after it


def test_an_empty_directory_is_filled_and_a_foreign_one_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert load_or_create_platform(tmp_path / "empty").directory == tmp_path / "empty"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as err:
        load_or_create_platform(tmp_path / "busy")
    assert err.value.code == "simulated_tdx_unwritable"
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no half-written platform left


def test_a_damaged_platform_is_reported(tmp_path: Path) -> None:
    load_or_create_platform(tmp_path / "p")
    (tmp_path / "p" / "pck.key").write_text("not a key")
    with pytest.raises(ConfigError) as err:
        load_or_create_platform(tmp_path / "p")
    assert err.value.code == "simulated_tdx_damaged"


def test_every_subject_says_simulated_and_the_pck_carries_the_sgx_extension(sim: SimulatedTdxPlatform) -> None:
    for cert in sim.certs.values():
        assert "SIMULATED" in sgx.common_name(cert.subject) and "not Intel" in cert.subject.rfc4514_string()
    ext = sgx.pck_sgx_extension(sim.certs["pck"])
    assert (ext.fmspc, ext.pce_id) == (b"SIMTDX", b"\0\0")
    assert ext.tcb.comp_svns == simulated.SIM_SGX_TCB_COMPONENTS and ext.tcb.pce_svn == simulated.SIM_PCE_SVN
    assert sgx.spki_sha256(sim.root_key()) != sgx.INTEL_SGX_ROOT_KEY_SHA256


def test_the_simulated_quote_has_the_real_layout(sim: SimulatedTdxPlatform) -> None:
    q = tdx.parse_tdx_quote(sim.quote(REPORT_DATA, version=5, body_type=3))
    assert (q.header.tee_type, q.header.att_key_type, q.header.qe_vendor_id) == (0x81, 2, sgx.INTEL_QE_VENDOR_ID)
    assert q.td_report.td_attribute_names == ("SEPT_VE_DISABLE",) and q.td_report.tee_tcb_svn2 == simulated.SIM_TEE_TCB_SVN
    qe = q.signature_data.qe_report_certification_data
    assert qe.qe_report.mr_signer == tdx.SIMULATED_TD_QE_IDENTITY.mr_signer and qe.qe_report.isv_prod_id == 2
    assert [sgx.common_name(c.subject) for c in qe.certification_data.certificates()] == [
        simulated.PCK_CN,
        simulated.INTERMEDIATE_CN,
        simulated.ROOT_CN,
    ]


def test_report_data_must_be_64_bytes(sim: SimulatedTdxPlatform) -> None:
    with pytest.raises(ValueError):
        sim.quote(b"short")


def test_a_simulated_quote_is_never_intels(sim: SimulatedTdxPlatform) -> None:
    v = tdx.verify_tdx_quote(sim.quote(REPORT_DATA), now=datetime.now(UTC))
    assert v.failure is not None and v.failure.code == "untrusted_root"
    assert "duet SIMULATED SGX Root CA (TDX)" in v.failure.message
