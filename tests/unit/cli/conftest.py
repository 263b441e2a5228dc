"""The CLI's tests reuse the auditor's fake ledgers (tests/unit/client/ledger_fakes.py)."""

from __future__ import annotations

import sys
from pathlib import Path

CLIENT_TESTS = str(Path(__file__).resolve().parents[1] / "client")
if CLIENT_TESTS not in sys.path:
    sys.path.insert(0, CLIENT_TESTS)
