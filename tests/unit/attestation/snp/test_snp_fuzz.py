"""Hypothesis on the SNP verifier: whatever the bytes, a verdict comes back, never an exception.

Random bytes, random 1184-byte blocks, bit flips and field overwrites of the two real reports, and
hostile certificates and certificate tables beside a real report. Every byte of a report is in
the signed region, the signature or a must-be-zero area, so any change must fail a step.
``DUET_FUZZ_EXAMPLES`` scales the examples as in tests/fuzz (default 12: 300 per test).
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from snp_helpers import MILAN_REPORT, MILAN_VCEK, REAL_NOW, SERIAL_ZERO_WARNING, VLEK, VLEK_REPORT

from duet.attestation import snp
from duet.attestation.cvm import CvmVerdict

pytestmark = [
    pytest.mark.filterwarnings(SERIAL_ZERO_WARNING),
    pytest.mark.filterwarnings("ignore:Attribute's length must be"),  # cryptography, on a mutated name
]
EXAMPLES = int(os.environ.get("DUET_FUZZ_EXAMPLES", "12")) * 25
fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
REAL = {"milan": (MILAN_REPORT, MILAN_VCEK), "vlek": (VLEK_REPORT, VLEK)}


def check(report: bytes, vcek: bytes | None, **kwargs: object) -> CvmVerdict:
    v = snp.verify_snp_report(report, vcek=vcek, now=REAL_NOW, **kwargs)  # type: ignore[arg-type]
    assert [s.step for s in v.steps] == list(snp.SNP_STEPS)
    if not v.ok:
        assert v.failure is not None and v.failure.code and v.failure.message
        assert (v.claims is None) == (v.failure.step == "parse")
    return v


@fuzz
@given(st.binary(max_size=3000) | st.binary(min_size=1184, max_size=1184))
def test_random_bytes(data: bytes) -> None:
    assert not check(data, MILAN_VCEK).ok


@fuzz
@given(st.sampled_from(sorted(REAL)), st.lists(st.tuples(st.integers(0, 1183), st.integers(1, 255)), min_size=1, max_size=8))
def test_mutated_real_reports(which: str, flips: list[tuple[int, int]]) -> None:
    report, cert = REAL[which]
    data = bytearray(report)
    for offset, mask in flips:
        data[offset] ^= mask
    v = check(bytes(data), cert)
    assert v.ok == (bytes(data) == report)


@fuzz
@given(st.sampled_from(sorted(REAL)), st.sampled_from(snp.REPORT_FIELDS), st.integers(0, 2**64 - 1))
def test_overwritten_fields(which: str, field: snp.abi.Field, value: int) -> None:
    report, cert = REAL[which]
    raw = value.to_bytes(8, "little") * (field.size // 8 + 1)
    data = report[: field.offset] + raw[: field.size] + report[field.offset + field.size :]
    assert check(data, cert).ok == (data == report)


@fuzz
@given(st.binary(max_size=2000), st.binary(max_size=600))
def test_hostile_certificates_and_tables(cert: bytes, table: bytes) -> None:
    assert not check(MILAN_REPORT, cert).ok
    assert not check(MILAN_REPORT, None, auxblob=table).ok
    assert not check(MILAN_REPORT, None, auxblob=snp.pack_cert_table({"vcek": cert or b"x"})).ok
    assert not check(MILAN_REPORT, MILAN_VCEK, chain=cert or b"x").ok


@fuzz
@given(st.integers(0, len(MILAN_VCEK) - 1), st.integers(1, 255))
def test_mutated_vcek(offset: int, mask: int) -> None:
    data = bytearray(MILAN_VCEK)
    data[offset] ^= mask
    assert not check(MILAN_REPORT, bytes(data)).ok


def test_table_entries_pointing_anywhere() -> None:
    for offset, length in ((0, 1), (2**32 - 1, 1), (48, 2**32 - 1), (0, 48)):
        entry = snp.CERT_TABLE_GUIDS["vcek"].bytes + struct.pack("<II", offset, length)
        assert not check(MILAN_REPORT, None, auxblob=entry + bytes(24)).ok
