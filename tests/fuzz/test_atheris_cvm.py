"""Runs tests/fuzz/atheris_cvm.py (atheris on the SNP, TDX and Azure HCL parsers and verifiers) for
a bounded time, seeded with the real evidence of tests/assets/{snp,tdx,azure}.

Skipped where atheris is not installed. ``DUET_ATHERIS_CVM_SECONDS`` sets the time (default 10 s
in ``make test``; ``DUET_ATHERIS_SECONDS``, when set, sets it too, for a long run of both); a crash
or a hang (an input over ``-timeout``) fails the test with libFuzzer's report, and the input it
saved (under the test's tmp directory) for reproduction.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("atheris")

SCRIPT = Path(__file__).with_name("atheris_cvm.py")
SECONDS = int(os.environ.get("DUET_ATHERIS_CVM_SECONDS") or os.environ.get("DUET_ATHERIS_SECONDS") or "10")
HANG_S = 10


def test_atheris_on_the_cvm_evidence_parsers_finds_no_crash_and_no_hang(
    tmp_path: Path, fuzz_summary: Callable[[str], None]
) -> None:
    corpus, counts = tmp_path / "corpus", tmp_path / "counts.json"
    subprocess.run([sys.executable, str(SCRIPT), "--seeds-into", str(corpus)], check=True, timeout=60)
    seeds = {path.name.split("-", 1)[0] for path in corpus.iterdir()}
    assert seeds == {"snp_report", "snp_cert_table", "tdx_quote", "hcl_report"}, "the real evidence seeds every target"
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            f"-max_total_time={SECONDS}",
            f"-timeout={HANG_S}",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        env={**os.environ, "DUET_ATHERIS_COUNTS": str(counts)},
    )
    output = run.stdout + run.stderr
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
    report = "\n".join(line for line in output.splitlines() if not line.startswith("INFO: Instrumenting"))[-6000:]
    assert run.returncode == 0, f"atheris found a crash or a hang (exit {run.returncode}):\n{report}"
    per_target = json.loads(counts.read_text()) if counts.exists() else {}
    assert set(per_target) == {"snp_report", "snp_cert_table", "tdx_quote", "hcl_report"}, per_target
    fuzz_summary(
        f"atheris cvm evidence: {runs.group(1) if runs else '?'} inputs in {SECONDS} s "
        f"(corpus grew to {len(list(corpus.iterdir()))} files); per target (to the last 0.25 s) {per_target}; "
        "0 crashes, 0 hangs"
    )
