"""Hostile HCL reports: cut short, huge, garbage, every length field wrong, and random mutations.
Each is a format error naming the field (parse) or a failed step (verify), never another exception."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from azure_helpers import SNP_HCL, SNP_VALID_AT, SNP_VCEK_CHAIN, TDX_HCL, TDX_QUOTE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duet.attestation.azure.hcl import MAX_REPORT_SIZE, HclFormatError, RuntimeDataError, parse_hcl_report, parse_runtime_data
from duet.attestation.azure.verify import verify_azure_hcl
from duet.attestation.cvm import CvmVerdict

# The sample VCEK has serial number 0, which cryptography loads with a deprecation warning.
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning")

SAMPLES = {"snp": SNP_HCL, "tdx": TDX_HCL}
NOW = datetime(2024, 6, 1, tzinfo=UTC)


def verify(report: bytes, td_quote: bytes = TDX_QUOTE) -> CvmVerdict:
    verdict = verify_azure_hcl(report, vcek_chain=SNP_VCEK_CHAIN, td_quote=td_quote, now=NOW)
    assert isinstance(verdict, CvmVerdict)
    # a hardware verifier crashing on these bytes would be contained, but is a bug to fix there
    assert not any((s.code or "").endswith("_verifier_error") for s in verdict.steps), verdict.failure
    return verdict


def parse_error(report: bytes) -> HclFormatError:
    with pytest.raises(HclFormatError) as err:
        parse_hcl_report(report)
    assert err.value.field and err.value.field in err.value.message
    return err.value


@pytest.mark.parametrize("platform", ["snp", "tdx"])
def test_every_truncation_names_the_field_cut(platform: str) -> None:
    sample = SAMPLES[platform]
    report_size = parse_hcl_report(sample).header.report_size
    fields = set()
    for n in range(report_size):
        fields.add(parse_error(sample[:n]).field)
        if n % 97 == 0:
            assert verify(sample[:n]).failure.step == "parse"  # type: ignore[union-attr]
    assert {"header.signature", "header.report_size", "report.hw_report", "runtime_data.variable_data_size"} <= fields
    assert parse_hcl_report(sample[:report_size]).trailing_bytes == 0  # the padding is not needed


def test_ten_megabytes_is_refused_before_anything_is_read() -> None:
    for big in (
        bytes(10 * 1024 * 1024),
        SNP_HCL.ljust(10 * 1024 * 1024, b"\0"),
        SNP_HCL + b"x" * (MAX_REPORT_SIZE - len(SNP_HCL) + 1),
    ):
        assert parse_error(big).field == "input"
        verdict = verify(big)
        assert verdict.failure is not None and verdict.failure.step == "parse" and "input" in verdict.failure.message


def test_garbage_is_a_format_error() -> None:
    rng = random.Random(1)
    for size in (1, 31, 32, 1236, 2600, 5000):
        garbage = rng.randbytes(size)
        assert parse_error(garbage).field.startswith("header")
        assert parse_error(b"HCLA" + garbage).field  # past the signature, some other field
        assert verify(garbage).failure is not None


LENGTH_FIELDS = {"header.report_size": 8, "runtime_data.data_size": 1216, "runtime_data.variable_data_size": 1232}


@pytest.mark.parametrize("platform", ["snp", "tdx"])
@pytest.mark.parametrize("name", list(LENGTH_FIELDS))
def test_every_length_field_wrong_is_named(platform: str, name: str) -> None:
    sample = SAMPLES[platform]
    at = LENGTH_FIELDS[name]
    value = int.from_bytes(sample[at : at + 4], "little")
    for wrong in {0, 1, value - 1, value + 1, value + 20, len(sample), 2**31, 2**32 - 1} - {value}:
        report = sample[:at] + wrong.to_bytes(4, "little") + sample[at + 4 :]
        err = parse_error(report)
        # two length fields that disagree: the error names the one checked and the other in its message
        assert name.split(".")[1] in err.message, (wrong, err.message)
        assert err.offset is not None
        verdict = verify(report)
        assert verdict.failure is not None and verdict.failure.step == "parse" and verdict.failure.code == "hcl_malformed"


def test_other_header_fields_are_checked_by_name() -> None:
    assert parse_error(SNP_HCL[:4] + (7).to_bytes(4, "little") + SNP_HCL[8:]).field == "header.version"
    assert parse_error(SNP_HCL[:1220] + (2).to_bytes(4, "little") + SNP_HCL[1224:]).field == "runtime_data.version"
    err = parse_error(SNP_HCL[:1224] + (9).to_bytes(4, "little") + SNP_HCL[1228:])
    assert (err.field, err.code) == ("runtime_data.report_type", "hcl_unknown_report_type")


_mutations = st.lists(st.tuples(st.integers(0, 2599), st.integers(0, 255)), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    platform=st.sampled_from(["snp", "tdx"]),
    mutations=_mutations,
    cut=st.one_of(st.none(), st.integers(0, 2600)),
    tail=st.binary(max_size=64),
    quote_mutations=st.lists(st.tuples(st.integers(0, 5005), st.integers(0, 255)), max_size=4),
)
def test_mutated_reports_never_raise(
    platform: str, mutations: list[tuple[int, int]], cut: int | None, tail: bytes, quote_mutations: list[tuple[int, int]]
) -> None:
    report = bytearray(SAMPLES[platform])
    for at, value in mutations:
        report[at] = value
    quote = bytearray(TDX_QUOTE)
    for at, value in quote_mutations:
        quote[at] = value
    data = bytes(report[:cut] if cut is not None else report) + tail
    verdict = verify(data, bytes(quote))
    assert verdict.kind in ("azure-snp", "azure-tdx")
    assert verdict.ok is (verdict.failure is None)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
        max_leaves=20,
    ),
    st.dictionaries(st.sampled_from(["keys", "vm-configuration", "user-data", "vmUniqueId"]), st.integers() | st.text()),
)
def test_any_json_is_parsed_or_refused_by_name(doc: object, overrides: dict[str, object]) -> None:
    import json

    if isinstance(doc, dict):
        doc = {**doc, **overrides}
    try:
        parse_runtime_data(json.dumps(doc).encode())
    except RuntimeDataError as exc:
        assert exc.field and exc.code.startswith("hcl_runtime_data")


def test_the_real_reports_still_verify_after_all_that() -> None:
    assert verify(SNP_HCL).ok and verify_azure_hcl(SNP_HCL, vcek_chain=SNP_VCEK_CHAIN, now=SNP_VALID_AT).ok
    assert verify(TDX_HCL).ok
