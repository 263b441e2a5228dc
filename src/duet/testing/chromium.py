"""How duet's browser tests and benchmarks start Debian's Chromium (through Playwright, which is
never asked to download a browser): the system binary, headless, with nothing reaching out to
Google's hosts (this machine's network is closed; without these flags Chromium keeps trying)."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("DUET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
