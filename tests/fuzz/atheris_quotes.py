"""Atheris (libFuzzer, coverage-guided) on the SGX quote parsers: ``parse_quote`` and ``verify_quote``.

Run as a script; libFuzzer's own arguments follow, e.g. a bounded run over the real quotes::

    .venv/bin/python tests/fuzz/atheris_quotes.py -max_total_time=600 -timeout=10 CORPUS_DIR

``CORPUS_DIR`` is written to (libFuzzer keeps the inputs that reach new coverage there): give a
copy of the seeds (``--seeds-into DIR`` copies tests/assets/sgx/*_sgx_quote_v3.bin into DIR and
exits). An input may make ``parse_quote`` raise ``QuoteFormatError`` (a ``DuetError``) and
``verify_quote`` return a failed verdict; any other exception is a crash, and an input that
runs longer than ``-timeout`` seconds is a hang. tests/fuzz/test_atheris_quotes.py runs this for
a bounded time in ``make test``.

What it found earlier (tests/fuzz/test_found.py: cryptography's errors out of ``verify_quote``,
``x509.InvalidVersion`` out of ``parse_quote``) is fixed, and no longer tolerated.
"""

from __future__ import annotations

import atexit
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from duet.attestation import sgx
    from duet.errors import DuetError

SEEDS = Path(__file__).resolve().parent.parent / "assets" / "sgx"
NOW = datetime(2024, 6, 1, tzinfo=UTC)
ROOTS = [sgx.intel_sgx_root_key()]
KNOWN: tuple[type[Exception], ...] = ()
"""Nothing is tolerated any more: what the fuzzers found is fixed (tests/fuzz/test_found.py)."""
KNOWN_IN_PARSE: tuple[type[Exception], ...] = ()
known_inputs = 0


def one_input(data: bytes) -> None:
    global known_inputs
    try:
        sgx.parse_quote(data)
    except DuetError:
        pass
    except KNOWN_IN_PARSE:
        known_inputs += 1
        return
    try:
        verdict = sgx.verify_quote(data, trusted_root_keys=ROOTS, now=NOW)
    except KNOWN:
        known_inputs += 1
        return
    if not isinstance(verdict.ok, bool):
        raise AssertionError(f"a verdict without a boolean ok: {verdict!r}")


def report() -> None:
    print(f"known-finding inputs: {known_inputs}", flush=True)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds-into":
        target = Path(sys.argv[2])
        target.mkdir(parents=True, exist_ok=True)
        for seed in sorted(SEEDS.glob("*_sgx_quote_v3.bin")):
            shutil.copy(seed, target / seed.name)
        return
    atexit.register(report)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
