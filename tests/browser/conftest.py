"""Fixtures of the browser tests: Debian's Chromium driven through Playwright for Python.

The system browser is used (``make deps`` installs the ``chromium`` package where it is missing);
Playwright never downloads one. Each test gets a fresh browser context (empty localStorage: a
first visit) whose requests are recorded (``browser_support.Visit``). Every test here is marked
``browser`` (``pytest -m browser`` selects them, ``-m 'not browser'`` leaves them out).
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from browser_support import LAPTOP, Visit
from duet.dashboard import export
from duet.testing.chromium import CHROMIUM, CHROMIUM_ARGS

if TYPE_CHECKING:
    from playwright.sync_api import Browser


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One browser per module: Playwright's sync API keeps an event loop running in this thread
    while it is open, which would break ``asyncio.run`` in the tests of other directories."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make deps` installs Debian's chromium package (or set DUET_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        yield launched
        launched.close()


@pytest.fixture
def visit(browser: Browser) -> Iterator[Visit]:
    context = browser.new_context(viewport=LAPTOP, service_workers="block")
    recorded = Visit(context)
    try:
        yield recorded
    finally:
        context.close()
    assert recorded.errors == [], recorded.errors


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The page's files on a static server (a secure context on 127.0.0.1): no controller needed."""
    directory = tmp_path_factory.mktemp("site")
    export(directory)
    handler = functools.partial(QuietHandler, directory=str(directory))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()
