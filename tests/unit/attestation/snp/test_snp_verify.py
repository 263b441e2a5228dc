"""Verifying SEV-SNP reports: the real Milan VCEK and VLEK reports, and one tampered input per step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning
from snp_helpers import (
    MILAN_MEASUREMENT,
    MILAN_REPORT,
    MILAN_VCEK,
    REAL_NOW,
    SERIAL_ZERO_WARNING,
    VLEK,
    VLEK_MEASUREMENT,
    VLEK_REPORT,
    der,
    failed,
    flip,
    intermediate,
    load_der,
    root,
    verify_milan,
)

from duet.attestation import snp

pytestmark = pytest.mark.filterwarnings(SERIAL_ZERO_WARNING)

MILAN_ASK, MILAN_ASVK, MILAN_ARK = intermediate("Milan", "ASK"), intermediate("Milan", "ASVK"), root("Milan").ark
GENOA_ARK = root("Genoa").ark
PEM = serialization.Encoding.PEM


def test_step_names_are_stable() -> None:
    assert snp.SNP_STEPS == ("parse", "signer", "cert_chain", "report_signature", "tcb_binding")


def test_real_milan_vcek_report_verifies_through_the_shipped_milan_chain() -> None:
    v = verify_milan()
    assert v.ok and v.kind == "snp" and all(s.ok is True for s in v.steps), v.steps
    c = v.claims
    assert c is not None
    assert (c.kind, c.platform, c.signer, c.vmpl, c.simulated) == ("snp", "snp", "VCEK", 0, False)
    assert c.measurements == {"measurement": MILAN_MEASUREMENT}
    assert c.report_data == bytes([1, 2, 3, 4, 5]) + bytes(59)
    assert c.debug is True  # go-sev-guest's test report is a debug guest: refusing it is the policy's job
    assert c.migration_allowed is False
    assert c.tcb == {"bl_spl": 2, "tee_spl": 0, "snp_spl": 5, "ucode_spl": 68}
    assert c.fields["product"] == "Milan"  # from the VCEK's product name: a VERSION 2 report has no CPUID
    assert c.fields["version"] == 2 and c.fields["policy"]["raw"] == "0xb0000"
    assert [cert["role"] for cert in c.fields["certificates"]] == ["VCEK", "ASK", "ARK"]
    assert "measurement" not in c.fields and "report_data" not in c.fields
    assert "hwID equals CHIP_ID" in v.steps[-1].message
    assert "AMD's pinned Milan ARK" in v.steps[2].message
    c.summary()  # JSON-ready


def test_real_milan_vlek_report_verifies_through_the_shipped_asvk() -> None:
    v = snp.verify_snp_report(VLEK_REPORT, vcek=VLEK, now=REAL_NOW)
    assert v.ok, v.steps
    c = v.claims
    assert c is not None
    assert (c.signer, c.vmpl, c.debug, c.migration_allowed, c.simulated) == ("VLEK", 1, False, False, False)
    assert c.measurements == {"measurement": VLEK_MEASUREMENT}
    assert c.tcb == {"bl_spl": 4, "tee_spl": 0, "snp_spl": 24, "ucode_spl": 217}
    assert c.fields["product"] == "Milan" and c.fields["cpuid_fam_id"] == 0x19
    assert "ASVK 'SEV-VLEK-Milan'" in v.steps[2].message and "a VLEK names no chip" in v.steps[-1].message


def test_the_kds_chain_may_be_given_as_pem_der_or_certificates() -> None:
    pem = MILAN_ASK.public_bytes(PEM) + MILAN_ARK.public_bytes(PEM)
    for chain in (pem, [der(MILAN_ASK), der(MILAN_ARK)], [MILAN_ASK, MILAN_ARK], [der(MILAN_ASK)]):
        assert verify_milan(chain=chain).ok
    assert verify_milan(vcek=load_der(MILAN_VCEK)).ok
    assert verify_milan(vcek=load_der(MILAN_VCEK).public_bytes(PEM) + pem).ok  # a bundle: leaf and chain


def test_serial_number_zero_warns_but_loads() -> None:
    # AMD issues VCEKs with serial number 0; cryptography warns about it and must not be made to fail.
    with pytest.warns(CryptographyDeprecationWarning, match="serial number"):
        v = verify_milan()
    assert v.ok


def test_certificates_from_the_ghcb_table_are_used() -> None:
    table = snp.pack_cert_table({"vcek": MILAN_VCEK, "ask": der(MILAN_ASK), "ark": der(MILAN_ARK)})
    v = verify_milan(vcek=None, auxblob=table)
    assert v.ok and "from the GHCB certificate table" in v.steps[1].message
    assert verify_milan(vcek=None, auxblob=snp.pack_cert_table({"vcek": MILAN_VCEK})).ok  # shipped ASK
    vlek_table = snp.pack_cert_table({"vlek": VLEK, "ask": der(MILAN_ASVK)})
    assert snp.verify_snp_report(VLEK_REPORT, vcek=None, auxblob=vlek_table, now=REAL_NOW).ok


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_milan(now=datetime(2025, 1, 1))


# --- one failure per step, each with its own code and a message a person can act on -----------


def test_parse_failure_has_no_claims() -> None:
    v = verify_milan(MILAN_REPORT[:-1])
    assert "1183 bytes" in failed(v, "parse", "bad_snp_report")
    assert v.claims is None


def test_vcek_missing_says_where_to_get_it() -> None:
    v = verify_milan(vcek=None)
    message = failed(v, "signer", "vcek_missing")
    assert "https://kdsintf.amd.com/vcek/v1/" in message and "blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68" in message
    assert snp.parse_report(MILAN_REPORT).chip_id.hex() in message
    assert v.claims is not None and v.claims.measurements == {"measurement": MILAN_MEASUREMENT}
    assert v.claims.simulated is False
    v = snp.verify_snp_report(VLEK_REPORT, vcek=None, auxblob=b"", now=REAL_NOW)
    assert "cloud provider" in failed(v, "signer", "vlek_missing")


def test_a_vlek_report_with_a_vcek_certificate() -> None:
    v = snp.verify_snp_report(VLEK_REPORT, vcek=MILAN_VCEK, now=REAL_NOW)
    message = failed(v, "signer", "signer_mismatch")
    assert "says a VLEK signed it" in message and "is a VCEK certificate" in message


def test_a_vcek_report_with_some_other_certificate() -> None:
    assert "not an AMD signing-key certificate" in failed(verify_milan(vcek=der(MILAN_ASK)), "signer", "signer_mismatch")


@pytest.mark.parametrize("blob", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_an_unparsable_vcek(blob: bytes) -> None:
    assert "VCEK" in failed(verify_milan(vcek=blob), "signer", "bad_certificate")


def test_a_malformed_ghcb_table() -> None:
    failed(verify_milan(vcek=None, auxblob=b"\x01" * 30), "signer", "bad_snp_cert_table")


def test_flipped_bit_in_the_signed_part() -> None:
    v = verify_milan(flip(MILAN_REPORT, 0x90))  # MEASUREMENT
    message = failed(v, "report_signature", "bad_report_signature")
    assert "altered after signing" in message
    assert v.claims is not None and v.claims.measurements["measurement"] != MILAN_MEASUREMENT


@pytest.mark.parametrize("offset", [0x2A0, 0x2A0 + 47, 0x2A0 + 71, 0x2E8, 0x2E8 + 71])
def test_flipped_bit_in_the_signature(offset: int) -> None:
    failed(verify_milan(flip(MILAN_REPORT, offset)), "report_signature", "bad_report_signature")


def test_flipped_bit_in_the_ark() -> None:
    message = failed(verify_milan(chain=[der(MILAN_ASK), flip(der(MILAN_ARK), -1)]), "cert_chain", "bad_ark_signature")
    assert "'ARK-Milan'" in message and "its own key" in message


def test_flipped_bit_in_the_ask() -> None:
    message = failed(verify_milan(chain=[flip(der(MILAN_ASK), -1), der(MILAN_ARK)]), "cert_chain", "bad_ask_signature")
    assert "'SEV-Milan'" in message and "'ARK-Milan'" in message


def test_flipped_bit_in_the_vcek_signature() -> None:
    message = failed(verify_milan(vcek=flip(MILAN_VCEK, -1)), "cert_chain", "bad_vcek_signature")
    assert "VCEK certificate 'SEV-VCEK'" in message and "ASK 'SEV-Milan'" in message


def test_flipped_bit_in_the_vcek_hwid() -> None:
    hwid = snp.parse_report(MILAN_REPORT).chip_id
    failed(verify_milan(vcek=flip(MILAN_VCEK, MILAN_VCEK.index(hwid) + 5)), "cert_chain", "bad_vcek_signature")


def test_a_changed_signature_algorithm_outside_the_signed_part() -> None:
    # Found by fuzzing: the outer signatureAlgorithm is not signed; it must repeat the signed one.
    end_of_tbs = 4 + len(load_der(MILAN_VCEK).tbs_certificate_bytes)
    mgf1 = MILAN_VCEK.index(bytes.fromhex("2a864886f70d010108"), end_of_tbs)
    message = failed(verify_milan(vcek=flip(MILAN_VCEK, mgf1)), "cert_chain", "bad_certificate")
    assert "RFC 5280" in message


def test_flipped_bit_in_the_vlek() -> None:
    v = snp.verify_snp_report(VLEK_REPORT, vcek=flip(VLEK, -1), now=REAL_NOW)
    failed(v, "cert_chain", "bad_vlek_signature")


def test_a_chain_to_the_wrong_root() -> None:
    message = failed(verify_milan(chain=[der(MILAN_ASK), der(GENOA_ARK)]), "cert_chain", "untrusted_root")
    assert "'ARK-Genoa'" in message and "did not issue" in message


def test_only_a_genoa_root_trusted_for_a_milan_vcek() -> None:
    message = failed(verify_milan(trusted_roots=[root("Genoa")]), "cert_chain", "untrusted_root")
    assert "no Milan root is trusted" in message and "Genoa" in message


def test_a_genoa_chain_for_a_milan_vcek() -> None:
    chain = [der(intermediate("Genoa", "ASK")), der(GENOA_ARK)]
    message = failed(verify_milan(chain=chain), "cert_chain", "ask_missing")
    assert "SEV-Milan" in message


def test_a_vcek_chain_for_a_vlek() -> None:
    v = snp.verify_snp_report(VLEK_REPORT, vcek=VLEK, chain=[der(MILAN_ASK), der(MILAN_ARK)], now=REAL_NOW)
    assert "SEV-VLEK-Milan" in failed(v, "cert_chain", "asvk_missing")


def test_an_ark_with_the_right_name_but_another_key() -> None:
    # A root made to look like AMD's: the pin is on the key, so the name does not help.
    chain = [der(MILAN_ASK), der(MILAN_ARK)]
    v = verify_milan(chain=chain, trusted_roots=[snp.load_amd_root([root("Genoa").ark], product="Milan")])
    message = failed(v, "cert_chain", "untrusted_root")
    assert snp.AMD_ARK_KEY_SHA256["Milan"] in message


def test_expired_and_not_yet_valid_certificates() -> None:
    message = failed(verify_milan(now=datetime(2030, 1, 1, tzinfo=UTC)), "cert_chain", "certificate_expired")
    assert "VCEK certificate 'SEV-VCEK' expired at 2029-09-24" in message
    message = failed(verify_milan(now=datetime(2021, 1, 1, tzinfo=UTC)), "cert_chain", "certificate_not_yet_valid")
    assert "valid only from 2022-09-24" in message
    v = snp.verify_snp_report(VLEK_REPORT, vcek=VLEK, now=datetime(2025, 12, 10, 22, 14, 22, tzinfo=UTC))
    assert "VLEK" in failed(v, "cert_chain", "certificate_expired")
    just_before_in_another_zone = datetime(2025, 12, 11, 0, 14, 20, tzinfo=timezone(timedelta(hours=2)))
    assert snp.verify_snp_report(VLEK_REPORT, vcek=VLEK, now=just_before_in_another_zone).ok


def test_a_report_whose_cpuid_names_another_product_than_the_vcek() -> None:
    # The VLEK report says Milan (family 19h model 01h); make it say Genoa: the CPUID bytes are
    # checked before the signature, so the mismatch is found at the chain.
    data = bytearray(VLEK_REPORT)
    data[0x189] = 0x11
    message = failed(snp.verify_snp_report(bytes(data), vcek=VLEK, now=REAL_NOW), "cert_chain", "product_mismatch")
    assert "Genoa" in message and "'Milan'" in message


def test_a_certificate_that_is_not_a_certificate_in_the_chain() -> None:
    failed(verify_milan(chain=b"not a certificate"), "cert_chain", "bad_certificate")


def test_claims_survive_a_failed_chain() -> None:
    v = verify_milan(trusted_roots=[])
    failed(v, "cert_chain", "untrusted_root")
    assert v.claims is not None and v.claims.debug and v.claims.simulated is False
    assert v.claims.fields["certificates"] == []


def test_bytes_like_inputs_and_wrong_types() -> None:
    assert verify_milan(bytearray(MILAN_REPORT), vcek=bytearray(MILAN_VCEK), chain=[memoryview(der(MILAN_ASK))]).ok
    assert "expected certificates or bytes" in failed(verify_milan(chain=["SEV-Milan"]), "cert_chain", "bad_certificate")
    assert "expected bytes" in failed(verify_milan(12345), "parse", "bad_snp_report")  # type: ignore[arg-type]
    failed(verify_milan(vcek=None, auxblob="table"), "signer", "bad_snp_cert_table")
