"""The simulated AMD: its reports verify only when its root is trusted, and say SIMULATED."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import Encoding
from snp_helpers import CHIP_ID, MILAN_REPORT, SERIAL_ZERO_WARNING, failed, verify_milan

from duet.attestation import snp
from duet.attestation.snp.simulated import DEFAULT_TCB, issue_certificate, simulated_name
from duet.attestation.snp.vcek import make_extensions

NOW = datetime.now(UTC)
MEASUREMENT = bytes(range(48))
REPORT_DATA = b"\x42" * 64
PEM = Encoding.PEM
OTHER_TCB = snp.TcbVersion(bl_spl=3, tee_spl=0, snp_spl=9, ucode_spl=115)


def sign(sim: snp.SimulatedAmd, **fields: object) -> bytes:
    args: dict[str, object] = {"chip_id": CHIP_ID, "report_data": REPORT_DATA, "measurement": MEASUREMENT, **fields}
    return sim.sign_report(**args)  # type: ignore[arg-type]


def verify(sim: snp.SimulatedAmd, report: bytes, **kwargs: object) -> snp.verify.CvmVerdict:
    args: dict[str, object] = {"vcek": sim.vcek_certificate(CHIP_ID), "trusted_roots": [sim.root()], "now": NOW, **kwargs}
    return snp.verify_snp_report(report, **args)  # type: ignore[arg-type]


def test_a_simulated_report_verifies_when_its_root_is_trusted(sim: snp.SimulatedAmd) -> None:
    v = verify(sim, sign(sim))
    assert v.ok, v.steps
    c = v.claims
    assert c is not None and c.simulated is True
    assert c.measurements == {"measurement": MEASUREMENT.hex()} and c.report_data == REPORT_DATA
    assert (c.signer, c.vmpl, c.debug, c.migration_allowed) == ("VCEK", 0, False, False)
    assert c.tcb == DEFAULT_TCB.to_dict() and c.fields["product"] == "Milan" and c.fields["version"] == 3
    assert "SIMULATED, not AMD" in v.steps[2].message


def test_every_subject_says_simulated(sim: snp.SimulatedAmd) -> None:
    for cert in (sim.ark, sim.ask, sim.vcek_certificate(CHIP_ID)):
        assert snp.roots.common_name(cert).endswith(" SIMULATED")
        assert "SIMULATED" in cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value
    assert snp.roots.common_name(sim.ark) == "ARK-Milan SIMULATED"
    assert not sim.root().is_amd


def test_a_simulated_report_is_refused_by_the_default_roots(sim: snp.SimulatedAmd) -> None:
    report = sign(sim)
    v = verify(sim, report, trusted_roots=None, chain=sim.chain_pem())
    assert "is not a trusted Milan root" in failed(v, "cert_chain", "untrusted_root")
    v = verify(sim, report, trusted_roots=None, vcek=None, auxblob=sim.cert_table(CHIP_ID))
    failed(v, "cert_chain", "untrusted_root")
    v = verify(sim, report, trusted_roots=None)
    assert "SIMULATED" in failed(v, "cert_chain", "ask_missing")
    assert v.claims is not None and v.claims.simulated is False  # no root reached: nothing to mark


def test_another_simulated_amd_is_not_trusted(sim: snp.SimulatedAmd, tmp_path: Path) -> None:
    other = snp.SimulatedAmd(tmp_path / "other")
    v = verify(sim, sign(sim), trusted_roots=[other.root()])
    failed(v, "cert_chain", "ask_missing")  # the names carry the ARK key's id, so they differ too
    v = verify(sim, sign(sim), trusted_roots=[other.root()], chain=sim.chain_pem())
    failed(v, "cert_chain", "untrusted_root")


@pytest.mark.filterwarnings(SERIAL_ZERO_WARNING)
def test_real_roots_never_mark_simulated(sim: snp.SimulatedAmd) -> None:
    v = verify_milan(trusted_roots=[sim.root(), *snp.amd_roots()])
    assert v.ok and v.claims is not None and v.claims.simulated is False
    milan = next(r for r in snp.amd_roots() if r.product == "Milan")
    users_copy = snp.load_amd_root(b"".join(c.public_bytes(PEM) for c in (*milan.intermediates, milan.ark)))
    assert users_copy.is_amd
    v = verify_milan(trusted_roots=[users_copy])
    assert v.ok and v.claims is not None and v.claims.simulated is False
    assert not verify_milan(MILAN_REPORT, trusted_roots=[sim.root()]).ok


def test_the_ghcb_table_and_the_chain_bundle(sim: snp.SimulatedAmd) -> None:
    report = sign(sim)
    assert verify(sim, report, vcek=None, auxblob=sim.cert_table(CHIP_ID)).ok
    assert verify(sim, report, chain=sim.chain_pem()).ok


def test_keys_and_chain_persist_and_are_shared(sim: snp.SimulatedAmd) -> None:
    again = snp.SimulatedAmd(sim.directory)
    assert (again.ark, again.ask, again.product) == (sim.ark, sim.ask, "Milan")
    assert verify(again, sign(sim)).ok
    for name in ("ark.key", "ask.key", "vcek.key"):
        assert stat.S_IMODE((sim.directory / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in sim.directory.iterdir()) == ["ark.key", "ark.pem", "ask.key", "ask.pem", "vcek.key"]
    with pytest.raises(ValueError, match="for Milan, not Genoa"):
        snp.SimulatedAmd(sim.directory, product="Genoa")


def test_the_vcek_for_another_tcb(sim: snp.SimulatedAmd) -> None:
    v = verify(sim, sign(sim), vcek=sim.vcek_certificate(CHIP_ID, OTHER_TCB))
    message = failed(v, "tcb_binding", "tcb_mismatch")
    assert "snp_spl report 8, VCEK 9" in message


def test_the_vcek_of_another_chip(sim: snp.SimulatedAmd) -> None:
    v = verify(sim, sign(sim), vcek=sim.vcek_certificate(bytes(reversed(CHIP_ID))))
    assert "CHIP_ID is 0001020304050607" in failed(v, "tcb_binding", "chip_id_mismatch")


def test_a_masked_chip_id_is_not_compared(sim: snp.SimulatedAmd) -> None:
    report = sign(sim, chip_id=bytes(64), signer_info=snp.SignerInfo(False, True, 0).to_int())
    v = verify(sim, report)
    assert v.ok and "CHIP_ID is masked" in v.steps[-1].message


def test_pkcs1_v15_instead_of_pss(sim: snp.SimulatedAmd) -> None:
    v = verify(sim, sign(sim), vcek=sim.vcek_certificate(CHIP_ID, rsa_padding=padding.PKCS1v15()))
    assert "VCEK certificate" in failed(v, "cert_chain", "not_rsa_pss")
    ask = issue_certificate(
        sim.ask.subject,
        sim.ask_key.public_key(),
        sim.ark.subject,
        sim.ark_key,
        ca=True,
        path_length=0,
        rsa_padding=padding.PKCS1v15(),
    )
    v = verify(sim, sign(sim), chain=[ask, sim.ark])
    assert "ASK certificate" in failed(v, "cert_chain", "not_rsa_pss")


def test_an_expired_simulated_vcek(sim: snp.SimulatedAmd) -> None:
    vcek = sim.vcek_certificate(CHIP_ID, not_valid_after=datetime(2024, 1, 1, tzinfo=UTC))
    failed(verify(sim, sign(sim), vcek=vcek), "cert_chain", "certificate_expired")


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP256R1()).public_key(), None])
def test_a_vcek_whose_key_is_not_p384(sim: snp.SimulatedAmd, key: ec.EllipticCurvePublicKey | None) -> None:
    public = key or sim.ask_key.public_key()
    vcek = issue_certificate(
        simulated_name("SEV-VCEK", sim.tag),
        public,
        sim.ask.subject,
        sim.ask_key,
        ca=False,
        extensions=make_extensions("Milan-B0", DEFAULT_TCB, hwid=CHIP_ID),
    )
    failed(verify(sim, sign(sim), vcek=vcek), "cert_chain", "bad_vcek_key")


def test_a_vcek_without_hwid(sim: snp.SimulatedAmd) -> None:
    vcek = issue_certificate(
        simulated_name("SEV-VCEK", sim.tag),
        sim.vcek_key.public_key(),
        sim.ask.subject,
        sim.ask_key,
        ca=False,
        extensions=make_extensions("Milan-B0", DEFAULT_TCB),
    )
    assert "no hwID" in failed(verify(sim, sign(sim), vcek=vcek), "tcb_binding", "bad_vcek_extension")


def test_a_vcek_with_a_malformed_spl(sim: snp.SimulatedAmd) -> None:
    exts = make_extensions("Milan-B0", DEFAULT_TCB, hwid=CHIP_ID)
    exts = [x509.UnrecognizedExtension(e.oid, b"\x04\x01\x07") if e.oid == snp.vcek.SPL_OIDS["snp_spl"] else e for e in exts]
    vcek = issue_certificate(
        simulated_name("SEV-VCEK", sim.tag), sim.vcek_key.public_key(), sim.ask.subject, sim.ask_key, ca=False, extensions=exts
    )
    assert "snp_spl" in failed(verify(sim, sign(sim), vcek=vcek), "cert_chain", "bad_vcek_extension")


def test_an_intermediate_with_another_products_name(sim: snp.SimulatedAmd) -> None:
    name = simulated_name("SEV-Genoa", sim.tag)
    ask = issue_certificate(name, sim.ask_key.public_key(), sim.ark.subject, sim.ark_key, ca=True, path_length=0)
    vcek = issue_certificate(
        simulated_name("SEV-VCEK", sim.tag),
        sim.vcek_key.public_key(),
        name,
        sim.ask_key,
        ca=False,
        extensions=make_extensions("Milan-B0", DEFAULT_TCB, hwid=CHIP_ID),
    )
    assert "expected 'SEV-Milan'" in failed(
        verify(sim, sign(sim), vcek=vcek, chain=[ask, sim.ark]), "cert_chain", "chain_mismatch"
    )


def test_an_intermediate_that_is_not_a_ca(sim: snp.SimulatedAmd) -> None:
    ask = issue_certificate(sim.ask.subject, sim.ask_key.public_key(), sim.ark.subject, sim.ark_key, ca=False)
    failed(verify(sim, sign(sim), chain=[ask, sim.ark]), "cert_chain", "not_a_ca")


def test_a_version_2_and_a_version_5_report(sim: snp.SimulatedAmd) -> None:
    v2 = sign(sim, version=2)
    assert snp.parse_report(v2).product is None and verify(sim, v2).ok
    v5 = sign(sim, version=5, launch_mit_vector=3, current_mit_vector=7)
    v = verify(sim, v5)
    assert v.ok and v.claims is not None and v.claims.fields["current_mit_vector"] == 7


def test_fields_override_and_resign(sim: snp.SimulatedAmd) -> None:
    report = sign(sim, policy=0x30000 | snp.POLICY_DEBUG | snp.POLICY_MIGRATE_MA, vmpl=2, host_data=b"h" * 32)
    v = verify(sim, report)
    assert v.ok and v.claims is not None
    assert (v.claims.debug, v.claims.migration_allowed, v.claims.vmpl) == (True, True, 2)
    assert v.claims.fields["host_data"] == (b"h" * 32).hex()
    tampered = bytearray(report)
    tampered[0x90] ^= 1
    failed(verify(sim, bytes(tampered)), "report_signature", "bad_report_signature")
    assert verify(sim, sim.resign(bytes(tampered))).ok


def test_turin(sim_turin: snp.SimulatedAmd) -> None:
    tcb = snp.TcbVersion(bl_spl=1, tee_spl=2, snp_spl=3, ucode_spl=4, fmc_spl=5)
    report = sign(sim_turin, tcb=tcb)
    r = snp.parse_report(report)
    assert r.product == "Turin" and r.reported_tcb == 0x0400000003020105 and r.tcb() == tcb
    v = verify(sim_turin, report, vcek=sim_turin.vcek_certificate(CHIP_ID, tcb))
    assert v.ok and v.claims is not None and v.claims.tcb == tcb.to_dict() and v.claims.fields["product"] == "Turin"
    other = snp.TcbVersion(bl_spl=1, tee_spl=2, snp_spl=3, ucode_spl=4, fmc_spl=6)
    v = verify(sim_turin, report, vcek=sim_turin.vcek_certificate(CHIP_ID, other))
    assert "fmc_spl report 5, VCEK 6" in failed(v, "tcb_binding", "tcb_mismatch")
    with pytest.raises(ValueError, match="VERSION 3"):
        sign(sim_turin, version=2)
