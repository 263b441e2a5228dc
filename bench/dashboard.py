"""The auditor dashboard (issue 15): time until a CVM timeline of 1,000 entries is fully verified
in the page, against the same verification done by ``duet audit CVM_ID`` in Python, in one run.

A real controller (HTTPS, simulated SGX TEE, as users run it) with one local CVM that ran 500
commands (two ledger entries each: about 1,000 entries with its start and attestation). Then:

* ``duet audit CVM_ID`` in Python: the library (``Auditor``, in this process, the pinned client)
  and the CLI (a new process, what a user types), each first with no head seen before (fresh)
  and then again (warm: the last head kept, one consistency proof more);
* the page, in headless Chromium (the system's, through Playwright): a fresh load in a new
  browser context (empty cache, nothing in localStorage) and a second load in the same context
  (cached files revalidated, the head seen before kept). The figure is the page's own
  ``performance.now()`` when every entry of the timeline is proven (from navigation start:
  fetching the page and its modules, the identity, the head, the entries, the proofs).

Both verify the same things of each entry (signed answers, the signed head, every entry hashed
into it, the CVM's links); ``duet audit`` also replays the lifecycle rules and checks the CVM's
attestation evidence again, which the page leaves to it. Each figure is the median of 3 runs.

Run: .venv/bin/python bench/dashboard.py  (about a minute).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from _setup import running_controller  # noqa: E402
from duet.attestation.bundle import load_cvm_roots  # noqa: E402
from duet.client.audit import Auditor, HeadStore  # noqa: E402
from duet.testing.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

COMMANDS = 500
RUNS = 3


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: `make deps` installs Debian's chromium package", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    with running_controller() as bench:
        cvm_id = bench.start_cvm()
        for _ in range(COMMANDS // 100):
            bench.client.run(cvm_id, [f"echo {i}" for i in range(100)])
        entries = len(bench.client.entries(cvm=cvm_id))
        size = bench.client.head()["tree_size"]
        roots = load_cvm_roots(bench.controller.cvm_roots_file().read_bytes())
        controller_id = bench.client.pin().controller
        print(f"dashboard: a CVM timeline of {entries:,} entries (ledger of {size:,}), HTTPS, Ed25519")

        library_fresh, library_warm = [], []
        for _ in range(RUNS):
            with tempfile.TemporaryDirectory() as home:
                for figures in (library_fresh, library_warm):
                    auditor = Auditor(bench.client, HeadStore(Path(home)), cvm=cvm_id, cvm_roots=roots)
                    started = time.perf_counter()
                    result = auditor.audit()
                    figures.append(time.perf_counter() - started)
                    assert result.ok and result.checked == entries, result.findings

        cli_fresh, cli_warm = [], []
        env = {**os.environ, "DUET_CVM_ROOTS": str(bench.controller.cvm_roots_file())}
        for _ in range(RUNS):
            with tempfile.TemporaryDirectory() as home:
                for path in bench.workdir.joinpath("user").iterdir():
                    (Path(home) / path.name).write_bytes(path.read_bytes()) if path.is_file() else None
                for figures in (cli_fresh, cli_warm):
                    started = time.perf_counter()
                    done = subprocess.run(
                        [sys.executable, "-m", "duet", "--url", bench.controller.url, "--json", "audit", cvm_id],
                        capture_output=True,
                        env={**env, "DUET_HOME": home},
                        check=False,
                    )
                    figures.append(time.perf_counter() - started)
                    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

        page_fresh, page_warm, timeline_fresh = [], [], []
        url = f"{bench.controller.url}/?controller={controller_id}&cvm={cvm_id}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
            for _ in range(RUNS):
                context = browser.new_context(ignore_https_errors=True)  # the controller's own certificate
                page = context.new_page()
                for figures in (page_fresh, page_warm):
                    if figures is page_fresh:
                        page.goto(url)
                    else:
                        page.reload()
                    page.wait_for_selector(f"html[data-verified='{entries}']", state="attached", timeout=120_000)
                    figures.append(page.evaluate("window.duetDashboard.verifiedAt") / 1000)
                    if figures is page_fresh:
                        timeline_fresh.append(page.evaluate("window.duetDashboard.timelineMs") / 1000)
                    assert page.get_attribute("html", "data-state") == "verified"
                context.close()
            browser.close()

    print(f"  duet audit CVM_ID, library (in process): fresh {median(library_fresh):.2f} s, warm {median(library_warm):.2f} s")
    print(f"  duet audit CVM_ID, CLI (a new process):  fresh {median(cli_fresh):.2f} s, warm {median(cli_warm):.2f} s")
    print(
        f"  the page, until every entry is verified: fresh load {median(page_fresh):.2f} s "
        f"(of which the timeline {median(timeline_fresh):.2f} s), second load {median(page_warm):.2f} s"
    )
    print(
        f"ratio page / duet audit (CLI): fresh {median(page_fresh) / median(cli_fresh):.2f}, "
        f"warm {median(page_warm) / median(cli_warm):.2f}; "
        f"page / library: fresh {median(page_fresh) / median(library_fresh):.2f}, warm {median(page_warm) / median(library_warm):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
