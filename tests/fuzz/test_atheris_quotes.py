"""Runs tests/fuzz/atheris_quotes.py (atheris on ``parse_quote`` and ``verify_quote``) for a bounded time.

Skipped where atheris is not installed. ``DUET_ATHERIS_SECONDS`` sets the time (default 20 s in
``make test``); a crash or a hang (an input over ``-timeout``) fails the test with libFuzzer's
report, and the input it saved (under the test's tmp directory) for reproduction.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("atheris")

SCRIPT = Path(__file__).with_name("atheris_quotes.py")
SECONDS = int(os.environ.get("DUET_ATHERIS_SECONDS", "20"))
HANG_S = 10


def test_atheris_on_the_quote_parsers_finds_no_crash_and_no_hang(tmp_path: Path, fuzz_summary: Callable[[str], None]) -> None:
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(SCRIPT), "--seeds-into", str(corpus)], check=True, timeout=60)
    assert len(list(corpus.iterdir())) >= 3, "the real quotes are the seed corpus"
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
    )
    output = run.stdout + run.stderr
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
    report = "\n".join(line for line in output.splitlines() if not line.startswith("INFO: Instrumenting"))[-6000:]
    assert run.returncode == 0, f"atheris found a crash or a hang (exit {run.returncode}):\n{report}"
    fuzz_summary(
        f"atheris quotes: {runs.group(1) if runs else '?'} inputs in {SECONDS} s "
        f"(corpus grew to {len(list(corpus.iterdir()))} files); 0 crashes, 0 hangs"
    )
