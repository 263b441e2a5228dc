"""The auditor dashboard against an honest controller: a real controller process with local CVMs
(real sshd), its published tiles served as static files, and Chromium.

One controller serves the whole module (the tests only add to its ledger); each test opens the
page in a fresh browser context, so every visit is a first visit with its own localStorage.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import httpx
import pytest

from browser_support import PHONE, Visit, screenshot, serving, wait_failure, wait_verified
from duet import keys
from duet.client.checkpoints import controller_log_verifier
from duet.client.sdk import DuetClient
from duet.client.trust import TrustStore
from duet.dashboard import CONTENT_SECURITY_POLICY, export
from duet.testing.process import ControllerProcess
from support import make_owner, start_cvm

if TYPE_CHECKING:
    from playwright.sync_api import Browser

LAYOUT_SHIFTS = """
window.__shifts = 0;
window.__sources = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) if (!entry.hadRecentInput) {
    window.__shifts += entry.value;
    window.__sources.push(entry.sources.map((s) => s.node && (s.node.id || s.node.className || s.node.nodeName)).join(', '));
  }
}).observe({ type: 'layout-shift', buffered: true });
"""
"""Cumulative layout shift, summed as the page runs (init scripts run before the page's CSP applies)."""


@dataclass
class Dashboard:
    controller: ControllerProcess
    client: DuetClient
    controller_id: str
    vkey: str
    tiles: Path

    @property
    def url(self) -> str:
        return self.controller.url

    def page_url(self, **query: str) -> str:
        return f"{self.url}/?" + "&".join(
            f"{name}={value}" for name, value in {"controller": self.controller_id, **query}.items()
        )


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    tmp = tmp_path_factory.mktemp("dashboard")
    owner = make_owner(tmp)
    tiles = tmp / "tiles"
    process = ControllerProcess(tmp / "state", [owner.pub_path], extra_args=("--publish-tiles", str(tiles)))
    with (
        serving(process),
        DuetClient(process.url, owner_key=owner.key, trust=TrustStore(tmp / "user"), insecure=True) as client,
    ):
        identity = httpx.get(process.url + "/v1/attestation", timeout=10).json()["result"]["identity"]
        public_key = keys.load_public_key_bytes(identity["signing_key"].encode())
        vkey = controller_log_verifier(identity["controller"], public_key).vkey
        yield Dashboard(process, client, identity["controller"], vkey, tiles)


def rows(page: object, selector: str = "") -> int:
    return page.locator(f"#entries li{selector}").count()  # type: ignore[attr-defined, no-any-return]


def test_the_lifecycle_appears_live_each_entry_verified(dash: Dashboard, visit: Visit) -> None:
    visit.context.add_init_script(LAYOUT_SHIFTS)
    page = visit.page(dash.page_url())
    wait_verified(page)

    cvm_id = start_cvm(dash.client)  # while the page is open
    page.locator(f"#cvm-list [data-cvm='{cvm_id}'] button").click()
    page.wait_for_selector("#entries li[data-event='cvm.ready'][data-state='verified']")
    assert page.locator("#entries li[data-event='cvm.attested'] [data-simulated='true']").count() == 1
    page.evaluate("window.__shifts = 0; window.__sources = []")  # from here on, only entries arrive

    dash.client.run(cvm_id, ["echo hello", "exit 3"])
    page.wait_for_selector("#entries li[data-event='command.finished'] >> nth=1")
    finished = page.locator("#entries li[data-event='command.finished']")
    assert [finished.nth(i).locator("[data-exit]").get_attribute("data-exit") for i in range(2)] == ["0", "3"]
    stdout = finished.nth(0).locator("details[data-stream='stdout']")
    stdout.locator("summary").click()
    stdout.locator("[data-mark='verified']").wait_for()  # fetched by hash, and the hash checked
    assert stdout.locator("pre").inner_text() == "hello\n"

    dash.client.mark(cvm_id, "in-service")
    page.wait_for_selector("#entries li[data-event='mode.changed'][data-state='verified']")
    page.wait_for_selector(f"#cvm-list [data-cvm='{cvm_id}'] [data-mode='in-service']")
    page.wait_for_selector("#timeline-header [data-mode='in-service']")

    total = rows(page)
    assert total == len(dash.client.entries(cvm=cvm_id)) and total >= 9
    assert rows(page, "[data-state='verified']") == total
    assert page.get_attribute("html", "data-state") == "verified"
    assert page.evaluate("window.__shifts") < 0.05, page.evaluate("window.__sources")
    assert visit.outside(dash.url) == []
    screenshot(page, "dashboard-laptop")
    page.set_viewport_size(PHONE)
    screenshot(page, "dashboard-phone", full_page=False)


def test_the_page_loads_nothing_from_elsewhere_and_is_served_strictly(dash: Dashboard, visit: Visit) -> None:
    page = visit.page(dash.page_url())
    wait_verified(page)

    assert visit.requests, "the recorder saw no request"
    assert visit.outside(dash.url) == []
    index = httpx.get(dash.url + "/", timeout=10)
    script = httpx.get(dash.url + "/dashboard/verify.js", timeout=10)
    assert index.headers["content-security-policy"] == script.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    assert script.headers["content-type"].startswith("text/javascript") and script.headers["cache-control"] == "no-cache"
    assert httpx.get(dash.url + "/dashboard/verify.js", headers={"If-None-Match": script.headers["etag"]}).status_code == 304
    assert httpx.get(dash.url + "/dashboard/..%2Fsettings.py", timeout=10).status_code == 404
    assert "/" not in httpx.get(dash.url + "/openapi.json", timeout=10).json()["paths"]


def test_a_first_visit_compares_the_fingerprint_before_pinning(dash: Dashboard, visit: Visit) -> None:
    page = visit.page(dash.url + "/")
    page.wait_for_selector("#pin [data-fingerprint]")
    assert page.get_attribute("#pin [data-fingerprint]", "data-fingerprint") == dash.controller_id
    assert page.locator("#entries li").count() == 0 and page.get_attribute("html", "data-state") != "verified"
    screenshot(page, "dashboard-first-visit", full_page=False)

    page.fill("#pin-input", "00" * 32)
    page.click("#pin form button[type='submit']")
    assert "not this key" in page.inner_text("#pin .pin-result")
    assert page.get_attribute("html", "data-state") != "verified"

    page.fill("#pin-input", dash.controller_id.upper())  # as copied from a terminal, any case
    page.click("#pin form button[type='submit']")
    wait_verified(page)
    assert page.is_hidden("#pin")
    page.reload()  # pinned in this browser: no question the second time
    wait_verified(page)
    assert page.is_hidden("#pin")

    label = page.get_attribute(".pin-link button", "aria-label") or ""
    link = label.removeprefix("Copy link that pins this key ")
    assert link.startswith(dash.url) and f"controller={dash.controller_id}" in link
    other = visit.context.browser.new_context()  # type: ignore[union-attr]  # another browser, given the link
    try:
        shared = other.new_page()
        shared.goto(link)
        wait_verified(shared)
        assert shared.is_hidden("#pin")
    finally:
        other.close()


def test_a_link_pinning_another_key_is_refused(dash: Dashboard, visit: Visit) -> None:
    page = visit.page(f"{dash.url}/?controller={'ab' * 32}")
    banner = wait_failure(page, "key_mismatch")
    assert "KEY MISMATCH" in banner and dash.controller_id[:4] in banner
    assert page.locator("#entries li[data-state='verified']").count() == 0


def test_the_controllers_own_entries_are_shown_and_verified(dash: Dashboard, visit: Visit) -> None:
    page = visit.page(dash.page_url())
    wait_verified(page)
    page.focus("#cvm-list [data-cvm=''] button")  # by keyboard: the list is made of buttons
    page.keyboard.press("Enter")
    page.wait_for_selector("#entries li[data-event='controller.started'][data-state='verified']")
    assert page.locator("#entries li[data-event='controller.owners']").count() >= 1
    assert rows(page, "[data-state='verified']") == rows(page)


def test_times_are_shown_in_the_viewers_zone(dash: Dashboard, browser: Browser) -> None:
    context = browser.new_context(timezone_id="Asia/Kolkata", locale="en-GB")  # UTC+05:30, whatever the machine's zone
    try:
        page = context.new_page()
        page.goto(dash.page_url())
        wait_verified(page)
        page.locator("#cvm-list [data-cvm=''] button").click()
        first = page.locator("#entries li[data-event='controller.started'] time").first
        first.wait_for()
        moment = datetime.fromisoformat(first.get_attribute("datetime").replace("Z", "+00:00"))  # type: ignore[union-attr]
        local = moment.astimezone(ZoneInfo("Asia/Kolkata"))
        assert page.inner_text("#zone") in ("Asia/Kolkata", "Asia/Calcutta")  # ICU keeps the old name
        assert f"{local:%H:%M:%S}" in first.inner_text()
    finally:
        context.close()


def test_the_published_tiles_verify_as_static_files(dash: Dashboard, visit: Visit, tmp_path: Path) -> None:
    cvm_id = start_cvm(dash.client)
    dash.client.run(cvm_id, ["echo from the bucket"])
    size = dash.client.head()["tree_size"]
    site = tmp_path / "site"
    export(site)
    (site / "tiles").symlink_to(dash.tiles)
    handler = functools.partial(QuietHandler, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        origin = f"http://127.0.0.1:{server.server_address[1]}"
        wait_published(dash.tiles, size)
        page = visit.page(f"{origin}/index.html?tiles=tiles/&controller={dash.vkey}&cvm={cvm_id}")
        wait_verified(page)
        page.wait_for_selector("#entries li[data-event='command.finished'][data-state='verified']")
        assert page.locator("#entries li[data-event='command.started'] .command").inner_text() == "$ echo from the bucket"
        assert page.get_attribute("#controller-facts [data-controller]", "data-controller") == dash.controller_id
        assert visit.outside(origin) == [], "a statically hosted page read from elsewhere"
        screenshot(page, "dashboard-tiles")
        server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def wait_published(tiles: Path, size: int, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checkpoint = tiles / "checkpoint"
        if checkpoint.exists() and int(checkpoint.read_text().split("\n")[1]) >= size:
            return
        time.sleep(0.1)
    raise AssertionError(f"the publisher did not reach {size} entries")
