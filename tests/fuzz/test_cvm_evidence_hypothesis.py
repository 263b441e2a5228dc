"""Hypothesis on the CVM evidence verifiers: each parser raises only its documented format error,
each verifier always returns a verdict, and a change inside what the hardware signed never passes.

The evidence is real (tests/assets/snp, tdx, azure) and SIMULATED (made here, in the layout
local CVMs produce: ``duet.providers.local_tsm``), then mutated: bit flips, bytes and length
fields overwritten with edge values, truncations, insertions, deletions; JSON members replaced
with arbitrary JSON; tokens re-signed around hostile claims or changed after signing.

Targets (each counted in the summary line "hypothesis cvm evidence: ..."):

* SNP: ``parse_report`` (only ``SnpReportFormatError``), ``verify_snp_report`` on mutated real
  (VCEK, VLEK) and simulated reports and mutated VCEKs, ``parse_cert_table`` (only
  ``CertTableFormatError``) and the verifier given a mutated table;
* TDX: ``parse_tdx_quote`` (only ``TdxQuoteFormatError``), ``verify_tdx_quote`` on mutated real and
  simulated quotes, v4 and v5 (TD report 1.0 and 1.5) counted apart;
* Azure: ``parse_hcl_report`` (only ``HclFormatError``), ``verify_azure_hcl`` (SNP with its VCEK
  chain, TDX with its TD quote, each possibly mutated too), ``parse_runtime_data`` and
  ``decode_user_data`` (only ``RuntimeDataError``), ``verify_maa_cvm_token``;
* bundles: ``parse_bundle`` (only ``BundleFormatError``), ``verify_bundle`` then ``judge``.

"Signed region": SNP report[0:0x2A0]; a TDX quote's header and TD report body; for an HCL
report, its hardware report's signed part (SNP) or the TDREPORT fields the quote repeats (TDX),
and the runtime data (whose hash the hardware report signs); a JWT's header and payload text.
``DUET_FUZZ_EXAMPLES`` scales the examples as in test_parsers_hypothesis.py (default 12: 300 per test).
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duet.attestation import snp, tdx
from duet.attestation.azure import hcl as hcl_layout
from duet.attestation.azure.hcl import HclFormatError, RuntimeDataError, decode_user_data, parse_hcl_report, parse_runtime_data
from duet.attestation.azure.maa_cvm import verify_maa_cvm_token
from duet.attestation.azure.simulated import simulated_snp_hcl, simulated_tdx_hcl
from duet.attestation.azure.verify import verify_azure_hcl
from duet.attestation.bundle import FORMAT, BundleFormatError, CvmRoots, parse_bundle, verify_bundle
from duet.attestation.cvm import CvmVerdict, binding
from duet.attestation.cvm_evidence import Expected, judge
from duet.attestation.sgx.roots import intel_sgx_root_key
from duet.attestation.snp.roots import amd_roots
from duet.attestation.snp.simulated import SimulatedAmd
from duet.attestation.tdx.abi import TD_REPORT10_FIELDS
from duet.attestation.tdx.simulated import load_or_create_platform
from duet.providers.local_tsm import simulated_roots, snp_evidence, tdx_evidence

pytestmark = [
    pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive"),  # AMD's VCEKs have serial 0
    pytest.mark.filterwarnings("ignore:Attribute's length must be"),  # cryptography, on a mutated name
    pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning"),
]

SCALE = int(os.environ.get("DUET_FUZZ_EXAMPLES", "12"))
EXAMPLES = SCALE * 25
ASSETS = Path(__file__).resolve().parent.parent / "assets"
SNP_NOW = datetime(2025, 6, 1, tzinfo=UTC)
"""Inside both real SNP leaves' validity (VCEK 2022-09-24 – 2029-09-24, VLEK 2024-12-10 – 2025-12-10)."""
TDX_NOW = datetime(2026, 2, 15, tzinfo=UTC)
"""Inside every real PCK chain's validity (the v5 sample's leaf is from 2026-01-27)."""
AZURE_NOW = datetime(2024, 6, 1, tzinfo=UTC)
"""Inside the Azure samples' VCEK (2023-05-02 – 2030-05-02) and TD quote PCK (2023-09-13 – 2030-09-13)."""
HOST_KEY = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
NONCE = bytes(range(100, 132))

COUNTS: Counter[str] = Counter()
"""Cases run per target, printed at the end of the module."""

fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@pytest.fixture(scope="module", autouse=True)
def summary(fuzz_summary: Callable[[str], None]) -> Iterator[None]:
    yield
    total = sum(COUNTS.values())
    fuzz_summary(f"hypothesis cvm evidence: {total} cases over {len(COUNTS)} targets: {dict(sorted(COUNTS.items()))}")


def parses(what: str, call: Callable[[], Any], allowed: type[Exception]) -> Any:
    """``call``'s result, or None when it raised ``allowed`` (the documented format error); any
    other exception fails the test."""
    COUNTS[what] += 1
    try:
        return call()
    except allowed:
        return None


def a_verdict(what: str, verdict: object) -> CvmVerdict:
    """A verifier's answer: a verdict whose ``ok`` is a bool, a failure naming its step and code."""
    COUNTS[what] += 1
    assert isinstance(verdict, CvmVerdict), f"{what} returned {verdict!r}"
    assert isinstance(verdict.ok, bool) and verdict.steps
    if not verdict.ok:
        assert verdict.failure is not None and verdict.failure.code, verdict.failure
    return verdict


def failure_of(verdict: CvmVerdict) -> str:
    return f"{verdict.failure.step}/{verdict.failure.code}" if verdict.failure else "ok"


# --- byte mutations ---------------------------------------------------------------------

Region = tuple[int, int]


@dataclass(frozen=True)
class Sample:
    """One piece of valid evidence, with what its verifier needs and what its signature covers."""

    name: str
    data: bytes
    signed: tuple[Region, ...]
    """Byte ranges a change to which must fail verification."""
    fields: tuple[tuple[int, int], ...] = ()
    """(offset, width) of its length and type fields: overwritten with edge values."""
    extra: dict[str, Any] = field(default_factory=dict)
    hot: tuple[Region, ...] = ()
    """Where half of the changes go (default: the signed regions), so that more of them get past
    parsing: most of a TDX quote is its PEM chain, where a changed character fails the parse."""

    def changed_signed_region(self, data: bytes) -> bool:
        return any(data[lo:hi] != self.data[lo:hi] for lo, hi in self.signed)


EDGE_VALUES = (0, 1, 2, 3, 4, 5, 6, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


@st.composite
def mutated(draw: st.DrawFn, sample: Sample, min_changes: int = 1) -> bytes:
    """Mostly changes in place (the length kept, so that more of them get past parsing to the
    signatures), else anything: truncations, insertions, deletions, bytes appended."""
    out = bytearray(sample.data)
    in_place = ["flip", "flip", "byte", "field", "field"]
    actions = in_place if draw(st.integers(0, 9)) < 7 else [*in_place, "truncate", "extend", "insert", "delete"]
    for _ in range(draw(st.integers(min_changes, 4))):
        action = draw(st.sampled_from(actions))
        if action == "field" and not sample.fields:
            action = "flip"
        hot = [(lo, min(hi, len(out))) for lo, hi in (sample.hot or sample.signed) if lo < min(hi, len(out))]
        if hot and draw(st.booleans()):
            lo, hi = draw(st.sampled_from(hot))
            at = draw(st.integers(lo, hi - 1))
        else:
            at = draw(st.integers(0, max(len(out) - 1, 0)))
        if action == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "byte" and out:
            out[at] = draw(st.integers(0, 255))
        elif action == "field":
            offset, width = draw(st.sampled_from(sample.fields))
            value = draw(
                st.sampled_from(EDGE_VALUES) | st.integers(0, 2**64 - 1) | st.just(len(out)) | st.just(len(out) - offset)
            )
            if offset + width <= len(out):
                out[offset : offset + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
        elif action == "truncate":
            del out[at:]
        elif action == "extend":
            out += draw(st.binary(min_size=1, max_size=64))
        elif action == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif action == "delete":
            del out[at : at + draw(st.integers(1, 64))]
    return bytes(out)


def pick(samples: list[Sample]) -> st.SearchStrategy[Sample]:
    return st.sampled_from(samples)


# --- the evidence -----------------------------------------------------------------------


def _der(path: Path) -> bytes:
    return path.read_bytes()


def _tdx_fields(quote: bytes) -> tuple[tuple[int, int], ...]:
    """The length and type fields of a TDX quote (v4/v5), by its layout."""
    parsed = tdx.parse_tdx_quote(quote)
    len_at = len(parsed.signed_region)
    sig_at = len_at + 4
    qe = sig_at + tdx.abi.SIGNATURE_DATA_HEAD_SIZE
    auth_size = int.from_bytes(quote[qe + 448 : qe + 450], "little")
    inner = qe + 450 + auth_size
    fields = [
        (len_at, 4),
        (sig_at + 128, 2),
        (sig_at + 130, 4),
        (qe + 448, 2),
        (inner, 2),
        (inner + 2, 4),
        (0, 2),
        (2, 2),
        (4, 4),
    ]
    if parsed.version == 5:
        fields += [(48, 2), (50, 4)]
    return tuple(fields)


def _cert_table_fields(table: bytes) -> tuple[tuple[int, int], ...]:
    entries = snp.parse_cert_table(table).entries
    return tuple((24 * i + at, 4) for i in range(len(entries) + 1) for at in (16, 20))


HCL_FIELDS = ((4, 4), (8, 4), (12, 4)) + tuple(
    (hcl_layout.RUNTIME_DATA_OFFSET + f.offset, 4) for f in hcl_layout.RUNTIME_DATA_FIELDS
)


def _hcl_signed(report: bytes) -> tuple[Region, ...]:
    """What a verifier checks of an HCL report: the runtime data (hashed into the hardware report
    data), and the hardware report's signed part (SNP) or the TDREPORT fields the quote repeats (TDX)."""
    parsed = parse_hcl_report(report)
    variable = (hcl_layout.VARIABLE_DATA_OFFSET, hcl_layout.VARIABLE_DATA_OFFSET + len(parsed.variable_data))
    hw = hcl_layout.HW_REPORT_OFFSET
    if parsed.platform == "snp":
        return ((hw, hw + snp.SIGNED_REGION_END), variable)
    tables = {
        "REPORTMACSTRUCT": hcl_layout.REPORTMACSTRUCT_FIELDS,
        "TEE_TCB_INFO": hcl_layout.TEE_TCB_INFO_FIELDS,
        "TDINFO_STRUCT": hcl_layout.TDINFO_FIELDS,
    }
    bases = {f.name: f.offset for f in hcl_layout.TDREPORT_FIELDS}
    regions = [variable]
    for attr in {f.attr for f in TD_REPORT10_FIELDS}:  # the azure quotes are v4: TD report 1.0
        struct, name = hcl_layout.TD_QUOTE_BODY_SOURCE[attr].split(".")
        f = next(f for f in tables[struct] if f.name == name)
        regions.append((hw + bases[struct] + f.offset, hw + bases[struct] + f.offset + f.size))
    return tuple(regions)


class TestMaa:
    """A stand-in for an MAA instance's key: the recorded tokens' claims are real, their keys
    Azure's, so they are re-signed with this one (as tests/unit/attestation/azure does)."""

    __test__ = False

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "duet fuzz MAA")])
        start = datetime(2020, 1, 1, tzinfo=UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=365 * 20))
            .sign(self.key, hashes.SHA256())
        )

    def jwks(self) -> dict[str, Any]:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        return {"keys": [{"kid": "fuzz", "kty": "RSA", "x5c": [base64.b64encode(der).decode()]}]}

    def sign(self, claims: Any, instance: str, **header: Any) -> str:
        """RS256 over any claims and any header, by hand (PyJWT will not write every header)."""
        head = {"alg": "RS256", "kid": "fuzz", "jku": f"{instance}/certs", **header}
        signing_input = f"{_b64url_encode(dumps(head))}.{_b64url_encode(dumps(claims))}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url_encode(signature)}"


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


@dataclass(frozen=True)
class Token:
    name: str
    claims: dict[str, Any]
    instance: str
    now: datetime
    signed: str
    """The claims as they are, signed by the test MAA key."""


@dataclass
class Evidence:
    snp_reports: list[Sample]
    cert_tables: list[Sample]
    vceks: list[Sample]
    tdx_quotes: list[Sample]
    hcl_reports: list[Sample]
    runtime_docs: list[dict[str, Any]]
    tokens: list[Token]
    maa: TestMaa
    bundles: list[Sample]
    """Each bundle's JSON document as bytes; ``extra``: the document, now, what the judgement expects,
    and the hardware evidence's blob and its signed region."""
    roots: CvmRoots


@pytest.fixture(scope="module")
def evidence(tmp_path_factory: pytest.TempPathFactory) -> Evidence:
    hardware = tmp_path_factory.mktemp("fuzz-cvm-hardware")
    roots = simulated_roots(hardware)  # the local CVMs' SIMULATED AMD and Intel
    sim_amd_root, sim_intel_key = roots.amd[0], roots.intel[0]  # type: ignore[index]
    all_roots = CvmRoots(amd=(*amd_roots(), sim_amd_root), intel=(intel_sgx_root_key(), sim_intel_key))
    now = datetime.now(UTC)
    report_data = binding(HOST_KEY, NONCE)

    sim_snp = snp_evidence(hardware, report_data)
    sim_report, sim_table = base64.b64decode(sim_snp["outblob"]), base64.b64decode(sim_snp["auxblob"])
    snp_signed = ((0, snp.SIGNED_REGION_END),)
    report_fields = tuple((f.offset, min(f.size, 8)) for f in snp.REPORT_FIELDS if f.size <= 8)
    snp_reports = [
        Sample("milan", _der(ASSETS / "snp" / "go-sev-guest_milan_attestation.bin"), snp_signed, report_fields,
               {"vcek": _der(ASSETS / "snp" / "go-sev-guest_milan_vcek.der"), "roots": None, "now": SNP_NOW}),
        Sample("vlek", _der(ASSETS / "snp" / "trustee_milan_vlek_report.bin"), snp_signed, report_fields,
               {"vcek": _der(ASSETS / "snp" / "trustee_milan_vlek.der"), "roots": None, "now": SNP_NOW}),
        Sample("simulated", sim_report, snp_signed, report_fields,
               {"vcek": None, "auxblob": sim_table, "roots": [sim_amd_root], "now": now}),
    ]  # fmt: skip
    milan = snp_reports[0]
    milan_root = next(r for r in amd_roots() if r.product == "Milan")
    ask = next(c for c in milan_root.intermediates if snp.roots.common_name(c) == "SEV-Milan")
    der = serialization.Encoding.DER
    real_table = snp.pack_cert_table(
        {"vcek": milan.extra["vcek"], "ask": ask.public_bytes(der), "ark": milan_root.ark.public_bytes(der)}
    )
    cert_tables = [
        Sample(
            "simulated", sim_table, (), _cert_table_fields(sim_table), {"report": sim_report, "roots": [sim_amd_root], "now": now}
        ),
        Sample("milan", real_table, (), _cert_table_fields(real_table), {"report": milan.data, "roots": None, "now": SNP_NOW}),
    ]
    vceks = [Sample("milan vcek", milan.extra["vcek"], ((0, len(milan.extra["vcek"])),))]

    sim_tdx = load_or_create_platform(hardware / "intel")
    sim_tdx_bundle = tdx_evidence(hardware, report_data)
    tdx_raw = [(p.name, p.read_bytes(), None, TDX_NOW) for p in sorted((ASSETS / "tdx").glob("*_v[45]*.bin"))]
    tdx_raw += [
        ("simulated v4", base64.b64decode(sim_tdx_bundle["outblob"]), [sim_intel_key], now),
        ("simulated v5 td1.0", sim_tdx.quote(report_data, version=5, body_type=2), [sim_intel_key], now),
        ("simulated v5 td1.5", sim_tdx.quote(report_data, version=5, body_type=3), [sim_intel_key], now),
    ]
    tdx_quotes = [
        Sample(name, quote, ((0, len(tdx.parse_tdx_quote(quote).signed_region)),), _tdx_fields(quote),
               {"roots": keys, "now": when, "version": tdx.parse_tdx_quote(quote).version},
               hot=((0, max(offset + width for offset, width in _tdx_fields(quote))),))  # all before the PEM chain
        for name, quote, keys, when in tdx_raw
    ]  # fmt: skip

    amd = SimulatedAmd(hardware / "amd")
    sim_snp_hcl = simulated_snp_hcl(amd, user_data=report_data, vm_unique_id="00000000-0000-0000-0000-00000000f022")
    sim_tdx_hcl = simulated_tdx_hcl(sim_tdx, user_data=report_data, vm_unique_id="00000000-0000-0000-0000-00000000f022")
    azure = ASSETS / "azure"
    real_chain = (azure / "trustee_azure_snp_vcek_chain.pem").read_bytes()
    real_td_quote = (azure / "trustee_azure_tdx_td_quote_v4.bin").read_bytes()
    hcl_raw = [
        ("real snp", (azure / "trustee_azure_snp_hcl_report.bin").read_bytes(), {"vcek_chain": real_chain, "now": AZURE_NOW}),
        ("real tdx", (azure / "trustee_azure_tdx_hcl_report.bin").read_bytes(), {"td_quote": real_td_quote, "now": AZURE_NOW}),
        ("simulated snp", sim_snp_hcl.report, {"vcek_chain": sim_snp_hcl.vcek_chain, "now": now, "amd": [sim_amd_root]}),
        ("simulated tdx", sim_tdx_hcl.report, {"td_quote": sim_tdx_hcl.td_quote, "now": now, "intel": [sim_intel_key]}),
    ]
    hcl_reports = [Sample(name, data, _hcl_signed(data), HCL_FIELDS, extra) for name, data, extra in hcl_raw]
    runtime_docs = [json.loads(parse_hcl_report(s.data).variable_data) for s in hcl_reports]

    maa = TestMaa()
    tokens = []
    for path, nest in (
        ("azure-samples_sevsnpvm_sharedweu-test_2025-04-08.jwt", False),
        ("cvm-guest-attestation_azurevm_ClientLibTests_line138.jwt", True),
    ):
        claims = _claims_of((azure / path).read_text().strip())
        if nest:  # the guest token's runtime data has no user-data: give it one, so that it passes
            claims["x-ms-isolation-tee"]["x-ms-runtime"]["user-data"] = report_data.hex().upper()
        else:
            claims["x-ms-compliance-status"] = "azure-compliant-cvm"
        at = datetime.fromtimestamp(claims["iat"] + 60, UTC)
        tokens.append(Token(path.split("_")[1], claims, claims["iss"], at, maa.sign(claims, claims["iss"])))

    bound = Expected(HOST_KEY, NONCE)
    tsm = {"format": FORMAT, "source": "simulated", "report_data": report_data.hex()}

    def vtpm(hcl: Sample) -> dict[str, Any]:
        chain = hcl.extra["vcek_chain"]
        return {
            "format": FORMAT,
            "source": "azure-vtpm",
            "report_data": report_data.hex(),
            "hcl_report": base64.b64encode(hcl.data).decode(),
            "vcek_chain": chain.decode(),
        }

    bundle_docs = [
        ("simulated snp", {**tsm, **sim_snp}, now, bound),
        ("simulated tdx", {**tsm, **sim_tdx_bundle}, now, bound),
        ("simulated azure snp", vtpm(hcl_reports[2]), now, bound),
        ("real azure snp", vtpm(hcl_reports[0]), AZURE_NOW, Expected(None, None, vm_id="911B0EF8-9DBA-48B0-B275-4E4DF2D39252")),
    ]
    bundles = []
    for name, doc, when, expected in bundle_docs:
        blob = "hcl_report" if "hcl_report" in doc else "outblob"
        raw = base64.b64decode(doc[blob])
        signed = next(s for s in (*snp_reports, *tdx_quotes, *hcl_reports) if s.data == raw).signed
        extra = {"doc": doc, "now": when, "expected": expected, "blob": blob, "signed": signed}
        bundles.append(Sample(name, json.dumps(doc).encode(), (), (), extra))
    return Evidence(snp_reports, cert_tables, vceks, tdx_quotes, hcl_reports, runtime_docs, tokens, maa, bundles, all_roots)


def test_the_evidence_verifies_unmutated(evidence: Evidence) -> None:
    """Every sample passes as it is: a mutation that fails fails because of the mutation."""
    for s in evidence.snp_reports:
        v = verify_snp(s, s.data)
        assert v.ok, (s.name, failure_of(v))
    for s in evidence.cert_tables:
        v = snp.verify_snp_report(
            s.extra["report"], vcek=None, auxblob=s.data, trusted_roots=s.extra["roots"], now=s.extra["now"]
        )
        assert v.ok, (s.name, failure_of(v))
    for s in evidence.tdx_quotes:
        assert verify_tdx(s, s.data).ok, s.name
    for s in evidence.hcl_reports:
        v = verify_hcl(s, s.data)
        assert v.ok, (s.name, failure_of(v))
    for t in evidence.tokens:
        v = verify_maa_cvm_token(t.signed, instance=t.instance, jwks=evidence.maa.jwks(), now=t.now)
        assert v.ok, (t.name, failure_of(v))
    for s in evidence.bundles:
        v = judge_bundle(evidence, s, parse_bundle(s.data))
        assert v.ok, (s.name, failure_of(v))


# --- SNP --------------------------------------------------------------------------------


def verify_snp(sample: Sample, report: bytes, vcek: bytes | None = None) -> CvmVerdict:
    return snp.verify_snp_report(
        report,
        vcek=sample.extra["vcek"] if vcek is None else vcek,
        auxblob=sample.extra.get("auxblob"),
        trusted_roots=sample.extra["roots"],
        now=sample.extra["now"],
    )


@fuzz
@given(data=st.data())
def test_snp_parse_report(evidence: Evidence, data: st.DataObject) -> None:
    report = data.draw(
        st.binary(max_size=1400) | st.binary(min_size=1184, max_size=1184) | pick(evidence.snp_reports).flatmap(mutated)
    )
    parses("snp.parse_report", lambda: snp.parse_report(report), snp.SnpReportFormatError)


@fuzz
@given(data=st.data())
def test_snp_verify_report(evidence: Evidence, data: st.DataObject) -> None:
    sample = data.draw(pick(evidence.snp_reports))
    report = data.draw(mutated(sample))
    verdict = a_verdict("snp.verify_snp_report", verify_snp(sample, report))
    if sample.changed_signed_region(report):
        assert not verdict.ok, f"{sample.name}: a report changed in its signed region verified"


@settings(fuzz, max_examples=max(EXAMPLES // 3, 20))
@given(data=st.data())
def test_snp_verify_with_a_mutated_vcek(evidence: Evidence, data: st.DataObject) -> None:
    vcek = data.draw(mutated(evidence.vceks[0]))
    verdict = a_verdict(
        "snp.verify_snp_report (mutated VCEK)", verify_snp(evidence.snp_reports[0], evidence.snp_reports[0].data, vcek)
    )
    original = evidence.vceks[0].data
    if vcek[: len(original)] != original:  # bytes appended after the certificate may be ignored
        assert not verdict.ok, "a changed VCEK certificate verified"


@fuzz
@given(data=st.data())
def test_snp_cert_table(evidence: Evidence, data: st.DataObject) -> None:
    sample = data.draw(pick(evidence.cert_tables))
    table = data.draw(st.binary(max_size=400) | mutated(sample))
    parses("snp.parse_cert_table", lambda: snp.parse_cert_table(table), snp.CertTableFormatError)
    a_verdict(
        "snp.verify_snp_report (mutated cert table)",
        snp.verify_snp_report(
            sample.extra["report"], vcek=None, auxblob=table, trusted_roots=sample.extra["roots"], now=sample.extra["now"]
        ),
    )


# --- TDX --------------------------------------------------------------------------------


def verify_tdx(sample: Sample, quote: bytes) -> CvmVerdict:
    roots = sample.extra["roots"]
    if roots is None:
        return tdx.verify_tdx_quote(quote, now=sample.extra["now"])
    return tdx.verify_tdx_quote(quote, trusted_root_keys=roots, now=sample.extra["now"])


@fuzz
@given(data=st.data())
def test_tdx_parse_quote(evidence: Evidence, data: st.DataObject) -> None:
    quote = data.draw(st.binary(max_size=1200) | pick(evidence.tdx_quotes).flatmap(mutated))
    parses("tdx.parse_tdx_quote", lambda: tdx.parse_tdx_quote(quote), tdx.TdxQuoteFormatError)


@pytest.mark.parametrize("version", [4, 5])
@fuzz
@given(data=st.data())
def test_tdx_verify_quote(evidence: Evidence, version: int, data: st.DataObject) -> None:
    sample = data.draw(pick([s for s in evidence.tdx_quotes if s.extra["version"] == version]))
    quote = data.draw(mutated(sample))
    verdict = a_verdict(f"tdx.verify_tdx_quote v{version}", verify_tdx(sample, quote))
    if sample.changed_signed_region(quote):
        assert not verdict.ok, f"{sample.name}: a quote changed in its signed region verified"


# --- Azure HCL, runtime data, MAA tokens ------------------------------------------------


def verify_hcl(sample: Sample, report: bytes, **over: Any) -> CvmVerdict:
    args = {
        "vcek_chain": sample.extra.get("vcek_chain"),
        "td_quote": sample.extra.get("td_quote"),
        "snp_trusted_roots": sample.extra.get("amd"),
        "tdx_trusted_root_keys": sample.extra.get("intel"),
        "now": sample.extra["now"],
        **over,
    }
    return verify_azure_hcl(report, **args)


@fuzz
@given(data=st.data())
def test_hcl_parse_report(evidence: Evidence, data: st.DataObject) -> None:
    report = data.draw(st.binary(max_size=1400) | pick(evidence.hcl_reports).flatmap(mutated))
    parses("azure.parse_hcl_report", lambda: parse_hcl_report(report), HclFormatError)


@fuzz
@given(data=st.data(), what=st.sampled_from(["report", "report", "report", "companion", "both"]))
def test_hcl_verify(evidence: Evidence, data: st.DataObject, what: str) -> None:
    """The report mutated, or what comes beside it (the VCEK chain, the TD quote), or both."""
    sample = data.draw(pick(evidence.hcl_reports))
    report = data.draw(mutated(sample)) if what != "companion" else sample.data
    over: dict[str, Any] = {}
    if what != "report":
        name = "vcek_chain" if "vcek_chain" in sample.extra else "td_quote"
        companion = Sample(name, bytes(sample.extra[name]), ())
        over[name] = data.draw(mutated(companion) | st.binary(max_size=300))
        if data.draw(st.booleans()):
            over["platform"] = data.draw(st.sampled_from(["snp", "tdx"]))
    verdict = a_verdict("azure.verify_azure_hcl", verify_hcl(sample, report, **over))
    if sample.changed_signed_region(report):
        assert not verdict.ok, f"{sample.name}: an HCL report changed in what its hardware report covers verified"


def mutate_json(value: Any, path: list[Any], replacement: Any, delete: bool = False) -> Any:
    if not path:
        return replacement
    if isinstance(value, dict) and path[0] in value:
        out = dict(value)
        if delete and len(path) == 1:
            del out[path[0]]
        else:
            out[path[0]] = mutate_json(value[path[0]], path[1:], replacement, delete)
        return out
    if isinstance(value, list) and isinstance(path[0], int) and path[0] < len(value):
        items = list(value)
        if delete and len(path) == 1:
            del items[path[0]]
        else:
            items[path[0]] = mutate_json(value[path[0]], path[1:], replacement, delete)
        return items
    return value


def json_paths(value: Any, depth: int = 3) -> list[list[Any]]:
    """Every member's path, down to ``depth``."""
    paths: list[list[Any]] = [[]]
    if depth == 0:
        return paths
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, inner in items:
        paths += [[key, *rest] for rest in json_paths(inner, depth - 1)]
    return paths


@st.composite
def mutated_json(draw: st.DrawFn, doc: Any) -> Any:
    out = doc
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(json_paths(out)))
        out = mutate_json(out, path, draw(json_values), delete=draw(st.integers(0, 4)) == 0)
    return out


def dumps(doc: Any) -> bytes:
    try:
        return json.dumps(doc).encode()
    except (ValueError, TypeError):  # out of JSON's domain (a lone surrogate): as text anyway
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


@fuzz
@given(data=st.data())
def test_runtime_data(evidence: Evidence, data: st.DataObject) -> None:
    doc = data.draw(st.sampled_from(evidence.runtime_docs))
    user_data = st.text("0123456789abcdefABCDEF", max_size=140) | st.text(max_size=130) | json_values
    raw = data.draw(
        mutated_json(doc).map(dumps)
        | user_data.map(lambda value: dumps({**doc, "user-data": value}))
        | st.binary(max_size=300)
        | json_values.map(dumps)
        | mutated(Sample("runtime", json.dumps(doc).encode(), ()))
    )
    runtime = parses("azure.parse_runtime_data", lambda: parse_runtime_data(raw), RuntimeDataError)
    if runtime is not None:
        parses("azure.decode_user_data", lambda: decode_user_data(runtime), RuntimeDataError)


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _b64url(segment: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (ValueError, UnicodeEncodeError):
        return None


@st.composite
def mutated_token_text(draw: st.DrawFn, token: str) -> str:
    out = token
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        action = draw(st.sampled_from(["char", "char", "char", "truncate", "insert", "delete", "segment"]))
        if action == "char":
            out = out[:at] + draw(st.sampled_from(B64URL + ".=+/ é\x00")) + out[at + 1 :]
        elif action == "truncate":
            out = out[:at]
        elif action == "insert":
            out = out[:at] + draw(st.text(B64URL + ".", min_size=1, max_size=8)) + out[at:]
        elif action == "delete":
            out = out[:at] + out[at + draw(st.integers(1, 20)) :]
        else:  # one segment replaced by another's, or by arbitrary JSON
            parts = out.split(".")
            i = draw(st.integers(0, len(parts) - 1))
            other = draw(st.sampled_from(parts) | json_values.map(lambda v: _b64url_encode(dumps(v))))
            out = ".".join([*parts[:i], other, *parts[i + 1 :]])
    return out


@fuzz
@given(data=st.data(), how=st.sampled_from(["claims", "claims", "text", "text", "header", "garbage"]))
def test_maa_cvm_token(evidence: Evidence, data: st.DataObject, how: str) -> None:
    """Claims re-signed by the trusted key (any claims: a verdict); header and payload changed
    after signing (never ok); the signature changed (never ok unless it decodes to the same bytes)."""
    t = data.draw(st.sampled_from(evidence.tokens))
    maa, jwks = evidence.maa, evidence.maa.jwks()
    signed = t.signed
    if how == "claims":
        token = maa.sign(data.draw(mutated_json(t.claims)), t.instance)
    elif how == "header":
        header = data.draw(st.dictionaries(st.sampled_from(["alg", "kid", "jku", "typ", "x5c", "crit"]), json_values, max_size=3))
        token = maa.sign(t.claims, t.instance, **header)
    elif how == "garbage":
        token = data.draw(st.text(max_size=200) | st.just("..") | st.just(".".join(["e30"] * 3)))
    else:
        token = data.draw(mutated_token_text(signed))
    verdict = a_verdict("azure.verify_maa_cvm_token", verify_maa_cvm_token(token, instance=t.instance, jwks=jwks, now=t.now))
    if how == "text" and token != signed:
        parts, original = token.split("."), signed.split(".")
        if len(parts) != 3 or parts[:2] != original[:2] or _b64url(parts[2]) != _b64url(original[2]):
            assert not verdict.ok, f"a token changed after signing verified: {token!r}"


# --- evidence bundles -------------------------------------------------------------------


def judge_bundle(evidence: Evidence, sample: Sample, bundle: Any, expected: str | None = None) -> CvmVerdict:
    verdict = verify_bundle(bundle, roots=evidence.roots, now=sample.extra["now"], expected=expected)  # type: ignore[arg-type]
    return judge(verdict, sample.extra["expected"])


@st.composite
def mutated_bundle(draw: st.DrawFn, sample: Sample) -> tuple[bytes, bool]:
    """(bundle bytes, whether the hardware evidence changed in its signed region)."""
    doc = sample.extra["doc"]
    how = draw(st.sampled_from(["blob", "blob", "json", "bytes"]))
    if how == "bytes":
        return draw(mutated(Sample("bundle", sample.data, ()))), False
    if how == "json":
        return dumps(draw(mutated_json(doc))), False
    name = sample.extra["blob"]
    original = base64.b64decode(doc[name])
    blob = draw(mutated(Sample(name, original, sample.extra["signed"])))
    changed = any(blob[lo:hi] != original[lo:hi] for lo, hi in sample.extra["signed"])
    return dumps({**doc, name: base64.b64encode(blob).decode()}), changed


@fuzz
@given(data=st.data())
def test_bundle_parse(evidence: Evidence, data: st.DataObject) -> None:
    sample = data.draw(pick(evidence.bundles))
    raw = data.draw(mutated_bundle(sample).map(lambda drawn: drawn[0]) | st.binary(max_size=300) | json_values.map(dumps))
    parses("bundle.parse_bundle", lambda: parse_bundle(raw), BundleFormatError)


@fuzz
@given(data=st.data(), expected=st.sampled_from([None, None, "snp", "tdx"]))
def test_bundle_verify_and_judge(evidence: Evidence, data: st.DataObject, expected: str | None) -> None:
    sample = data.draw(pick(evidence.bundles))
    raw, changed = data.draw(mutated_bundle(sample))
    bundle = parses("bundle.parse_bundle", lambda: parse_bundle(raw), BundleFormatError)
    if bundle is None:
        return
    verdict = a_verdict("bundle.verify_bundle+judge", judge_bundle(evidence, sample, bundle, expected))
    if changed:
        assert not verdict.ok, f"{sample.name}: a bundle whose evidence changed in its signed region passed"


def test_the_mutations_keep_their_regions(evidence: Evidence) -> None:
    """The signed regions are where they are said to be: one flipped bit in each fails."""
    for sample in (*evidence.snp_reports, *evidence.tdx_quotes, *evidence.hcl_reports):
        verify: Callable[[Sample, bytes], CvmVerdict] = (
            verify_snp if sample in evidence.snp_reports else verify_tdx if sample in evidence.tdx_quotes else verify_hcl
        )
        for lo, hi in sample.signed:
            for at in (lo, (lo + hi) // 2, hi - 1):
                flipped = bytearray(sample.data)
                flipped[at] ^= 0x01
                assert not verify(sample, bytes(flipped)).ok, (sample.name, at)
