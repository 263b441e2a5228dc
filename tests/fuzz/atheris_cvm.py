"""Atheris (libFuzzer, coverage-guided) on the CVM evidence parsers and verifiers: SNP reports and
certificate tables, TDX quotes (v4, v5), Azure HCL reports (and their runtime data).

The first byte of an input picks the target (:data:`TARGETS`, modulo their number), the rest is
the evidence. Run as a script; libFuzzer's own arguments follow, e.g. a bounded run::

    .venv/bin/python tests/fuzz/atheris_cvm.py --seeds-into /tmp/cvm-corpus
    .venv/bin/python tests/fuzz/atheris_cvm.py -max_total_time=600 -timeout=10 /tmp/cvm-corpus

``--seeds-into DIR`` writes the real evidence of tests/assets/{snp,tdx,azure} into DIR, each
prefixed with its target's byte, and exits. A parser may raise only its documented format error
(``SnpReportFormatError``, ``CertTableFormatError``, ``TdxQuoteFormatError``, ``HclFormatError``,
``RuntimeDataError``) and a verifier must return a verdict; any other exception is a crash, and
an input that runs longer than ``-timeout`` seconds a hang. tests/fuzz/test_atheris_cvm.py runs
this for a bounded time in ``make test``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import atheris

SEEDING = len(sys.argv) == 3 and sys.argv[1] == "--seeds-into"
"""Writing the seeds needs no coverage: the imports are not instrumented then (it takes seconds)."""

# Only duet's modules are instrumented (cryptography's Python layer, httpx, jwt, rich are not).
with contextlib.nullcontext() if SEEDING else atheris.instrument_imports(include=["duet"]):
    from duet.attestation import snp, tdx
    from duet.attestation.azure.hcl import HclFormatError, RuntimeDataError, parse_hcl_report, parse_runtime_data
    from duet.attestation.azure.verify import verify_azure_hcl
    from duet.attestation.cvm import CvmVerdict

warnings.simplefilter("ignore")  # cryptography warns about AMD's serial-0 VCEKs and mutated names

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SNP_NOW = datetime(2025, 6, 1, tzinfo=UTC)
TDX_NOW = datetime(2026, 2, 15, tzinfo=UTC)
AZURE_NOW = datetime(2024, 6, 1, tzinfo=UTC)
MILAN_REPORT = (ASSETS / "snp" / "go-sev-guest_milan_attestation.bin").read_bytes()
CERTS = {
    "VCEK": (ASSETS / "snp" / "go-sev-guest_milan_vcek.der").read_bytes(),
    "VLEK": (ASSETS / "snp" / "trustee_milan_vlek.der").read_bytes(),
}
VCEK_CHAIN = (ASSETS / "azure" / "trustee_azure_snp_vcek_chain.pem").read_bytes()
TD_QUOTE = (ASSETS / "azure" / "trustee_azure_tdx_td_quote_v4.bin").read_bytes()
KNOWN: tuple[type[Exception], ...] = ()
"""Nothing tolerated: a finding is fixed, and reproduced in tests/fuzz/test_found.py."""
COUNTS_FILE = os.environ.get("DUET_ATHERIS_COUNTS")
"""Where the inputs run per target are written (JSON), every ``COUNTS_EVERY_S``: libFuzzer ends
the process without running Python's exit handlers, so a count printed at exit would be lost."""
COUNTS_EVERY_S = 0.25
runs: Counter[str] = Counter()
written = time.monotonic()


def a_verdict(verdict: object) -> None:
    if not isinstance(verdict, CvmVerdict) or not isinstance(verdict.ok, bool):
        raise AssertionError(f"not a verdict: {verdict!r}")


def snp_report(data: bytes) -> None:
    try:
        signer = snp.parse_report(data).signer.kind
    except snp.SnpReportFormatError:
        signer = "VCEK"
    a_verdict(snp.verify_snp_report(data, vcek=CERTS[signer], now=SNP_NOW))


def snp_cert_table(data: bytes) -> None:
    try:
        snp.parse_cert_table(data)
    except snp.CertTableFormatError:
        pass
    a_verdict(snp.verify_snp_report(MILAN_REPORT, vcek=None, auxblob=data, now=SNP_NOW))


def tdx_quote(data: bytes) -> None:
    try:
        tdx.parse_tdx_quote(data)
    except tdx.TdxQuoteFormatError:
        pass
    a_verdict(tdx.verify_tdx_quote(data, now=TDX_NOW))


def hcl_report(data: bytes) -> None:
    try:
        parsed = parse_hcl_report(data)
    except HclFormatError:
        pass
    else:
        try:
            parse_runtime_data(parsed.variable_data)
        except RuntimeDataError:
            pass
    a_verdict(verify_azure_hcl(data, vcek_chain=VCEK_CHAIN, td_quote=TD_QUOTE, now=AZURE_NOW))


TARGETS: tuple[tuple[str, Callable[[bytes], None]], ...] = (
    ("snp_report", snp_report),
    ("snp_cert_table", snp_cert_table),
    ("tdx_quote", tdx_quote),
    ("hcl_report", hcl_report),
)


def seeds() -> dict[str, bytes]:
    """The real evidence, each prefixed with its target's byte."""
    from cryptography.hazmat.primitives.serialization import Encoding

    milan = next(r for r in snp.amd_roots() if r.product == "Milan")
    ask = next(c for c in milan.intermediates if snp.roots.common_name(c) == "SEV-Milan")
    table = snp.pack_cert_table(
        {"vcek": CERTS["VCEK"], "ask": ask.public_bytes(Encoding.DER), "ark": milan.ark.public_bytes(Encoding.DER)}
    )
    index = {name: bytes([i]) for i, (name, _) in enumerate(TARGETS)}
    out = {f"snp_report-{p.name}": index["snp_report"] + p.read_bytes() for p in sorted((ASSETS / "snp").glob("*.bin"))}
    out["snp_cert_table-milan.bin"] = index["snp_cert_table"] + table
    out.update(
        {f"tdx_quote-{p.name}": index["tdx_quote"] + p.read_bytes() for p in sorted((ASSETS / "tdx").glob("*_v[45]*.bin"))}
    )
    out.update(
        {
            f"hcl_report-{p.name}": index["hcl_report"] + p.read_bytes()
            for p in sorted((ASSETS / "azure").glob("*_hcl_report.bin"))
        }
    )
    return out


def one_input(data: bytes) -> None:
    global written
    if not data:
        return
    name, target = TARGETS[data[0] % len(TARGETS)]
    runs[name] += 1
    try:
        target(data[1:])
    except KNOWN:
        runs[f"{name} (known finding)"] += 1
    if COUNTS_FILE and time.monotonic() - written > COUNTS_EVERY_S:
        Path(COUNTS_FILE).write_text(json.dumps(dict(sorted(runs.items()))))
        written = time.monotonic()


def main() -> None:
    if SEEDING:
        target = Path(sys.argv[2])
        target.mkdir(parents=True, exist_ok=True)
        for name, data in seeds().items():
            (target / name).write_bytes(data)
        return
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
