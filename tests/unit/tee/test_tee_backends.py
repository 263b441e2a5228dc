"""TEE backends: none and simulated SGX (persisted platform, verifiable quotes, sealed dir)."""

from __future__ import annotations

import base64
import hashlib
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from duet import __version__
from duet.attestation import sgx as dcap
from duet.attestation.sgx import DEFAULT_POLICY
from duet.tee.base import TeeBackend, TeeError
from duet.tee.none import NoneTee
from duet.tee.simulated import ROOT_CN, SimulatedSgxTee, simulated_root_pem

RD = hashlib.sha512(b"identity document").digest()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_none_backend(tmp_path: Path) -> None:
    tee = NoneTee(tmp_path)
    assert isinstance(tee, TeeBackend) and tee.name == "none"
    assert tee.quote(RD) == {"type": "none"}
    sealed = tee.sealed_dir()
    assert sealed == tmp_path / "sealed" and sealed.is_dir() and _mode(sealed) == 0o700


@pytest.mark.parametrize("backend", [NoneTee, SimulatedSgxTee])
def test_report_data_must_be_64_bytes(tmp_path: Path, backend) -> None:
    with pytest.raises(TeeError) as err:
        backend(tmp_path).quote(b"x" * 32)
    assert err.value.code == "bad_report_data" and "exactly 64 bytes" in err.value.message


def test_simulated_quote_verifies_with_its_root_only(tmp_path: Path) -> None:
    tee = SimulatedSgxTee(tmp_path)
    assert isinstance(tee, TeeBackend) and tee.name == "simulated-sgx"
    evidence = tee.quote(RD)
    assert evidence["type"] == "simulated-sgx" and "not by Intel" in evidence["warning"]
    assert evidence["simulated_root_key_sha256"] == dcap.spki_sha256(tee.root_key())
    quote = base64.b64decode(evidence["quote"])
    now = datetime.now(UTC)
    v = dcap.verify_quote(quote, trusted_root_keys=[tee.root_key()], now=now)
    assert v.ok, v.message
    assert v.quote is not None
    dcap.check_report_data(v.quote, RD)
    DEFAULT_POLICY.enforce(v.quote)  # debug bit off
    body = v.quote.report_body
    assert body.mr_enclave == hashlib.sha256(f"duet simulated enclave {__version__}".encode()).digest()
    assert body.flags & 0x02 == 0 and (body.isv_prod_id, body.isv_svn) == (1, 1)
    assert dcap.verify_quote(quote, trusted_root_keys=[dcap.intel_sgx_root_key()], now=now).code == "untrusted_root"


def test_simulated_platform_is_persisted_and_reused(tmp_path: Path) -> None:
    first = SimulatedSgxTee(tmp_path)
    second = SimulatedSgxTee(tmp_path)
    assert first.root_pem() == second.root_pem() == simulated_root_pem(tmp_path)
    assert first.mr_signer == second.mr_signer and first.mr_enclave == second.mr_enclave
    # A quote from the restarted backend verifies with the root handed out before the restart.
    key = x509.load_pem_x509_certificate(first.root_pem()).public_key()
    assert dcap.verify_quote(base64.b64decode(second.quote(RD)["quote"]), trusted_root_keys=[key], now=datetime.now(UTC)).ok
    sim = tmp_path / "simulated-tee"
    assert _mode(sim) == 0o700
    for name in ("root", "intermediate", "pck", "attestation"):
        assert _mode(sim / f"{name}.key") == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".simulated-tee.")]  # no temp dirs left


def test_installations_differ(tmp_path: Path) -> None:
    a, b = SimulatedSgxTee(tmp_path / "a"), SimulatedSgxTee(tmp_path / "b")
    assert a.root_pem() != b.root_pem() and a.mr_signer != b.mr_signer
    assert a.mr_enclave == b.mr_enclave  # same duet version, same measurement


def test_simulated_root_says_it_is_not_intel(tmp_path: Path) -> None:
    cert = x509.load_pem_x509_certificate(simulated_root_pem(tmp_path))
    cn = dcap.common_name(cert.subject)
    assert cn == ROOT_CN and "SIMULATED" in cn and "not Intel" in cn
    assert cert.issuer == cert.subject


def test_simulated_sealed_dir(tmp_path: Path) -> None:
    sealed = SimulatedSgxTee(tmp_path).sealed_dir()
    assert sealed == tmp_path / "sealed" and _mode(sealed) == 0o700


def test_damaged_platform_is_a_clear_error(tmp_path: Path) -> None:
    SimulatedSgxTee(tmp_path)
    (tmp_path / "simulated-tee" / "platform.json").write_text("{")
    with pytest.raises(TeeError) as err:
        SimulatedSgxTee(tmp_path)
    assert err.value.code == "simulated_tee_damaged" and "move the directory away" in err.value.message
