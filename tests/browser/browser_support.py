"""Helpers of the browser tests (importable as ``browser_support``): the browser's settings,
a recorded visit, screenshots and waits.

Screenshots of the main views are written as artefacts to ``$DUET_SCREENSHOTS`` (default
``build/screenshots/``), never compared pixel by pixel.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from duet.testing.process import ControllerProcess, remove_all

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

SCREENSHOTS = Path(os.environ.get("DUET_SCREENSHOTS") or Path(__file__).resolve().parents[2] / "build" / "screenshots")
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@contextmanager
def serving(process: ControllerProcess) -> Iterator[ControllerProcess]:
    """``support.serving`` for tests that hold a browser: Playwright's sync API keeps an event loop
    running in this thread, so the local CVMs are removed from another one (``asyncio.run``)."""
    process.start(timeout=60)
    try:
        yield process
    finally:
        process.stop()
        cleanup = threading.Thread(target=remove_all, args=(process.state_dir,))
        cleanup.start()
        cleanup.join()


@dataclass
class Visit:
    """One browser context (its own localStorage) and the requests its pages made."""

    context: BrowserContext
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def page(self, url: str, *, viewport: dict[str, int] | None = None) -> Page:
        page = self.context.new_page()
        if viewport:
            page.set_viewport_size(viewport)
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.goto(url)
        return page

    def outside(self, *origins: str) -> list[str]:
        """The requests that went anywhere but ``origins`` (data: URLs are the page's own)."""
        return [url for url in self.requests if not url.startswith(("data:", *(origin.rstrip("/") + "/" for origin in origins)))]


def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def wait_verified(page: Page, timeout: float = 20_000) -> None:
    """Until the page says everything shown is verified (a locator: the page's CSP forbids eval)."""
    page.wait_for_selector("html[data-state='verified'], html[data-state='failed']", state="attached", timeout=timeout)
    state = page.get_attribute("html", "data-state")
    assert state == "verified", f"the page says {state}: {page.inner_text('#alert') if state == 'failed' else ''}"


def wait_failure(page: Page, code: str, timeout: float = 20_000) -> str:
    """Until the red banner names ``code``; returns the banner's text."""
    page.wait_for_selector(f"#alert [data-failure='{code}']", state="visible", timeout=timeout)
    return page.inner_text("#alert")


Tamper = Callable[[str, bytes], bytes]
"""(request path with query, answer body) → the body the browser gets."""


class TamperingProxy:
    """A man in the middle between the browser and a controller: it forwards every GET (event
    streams chunk by chunk) and lets ``tamper`` rewrite the bodies of the answers it picks. The
    page reads the controller through it, at ``url``; the test sets ``tamper`` for its attack."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.tamper: Tamper | None = None
        self.tampered = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection; a stream ends when it closes

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                headers = {
                    name: value for name, value in self.headers.items() if name.lower() in ("last-event-id", "if-none-match")
                }
                try:
                    with httpx.stream("GET", proxy.upstream + self.path, headers=headers, timeout=None) as answer:
                        self.send_response(answer.status_code)
                        for name, value in answer.headers.items():
                            if name.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                                self.send_header(name, value)
                        if answer.headers.get("content-type", "").startswith("text/event-stream"):
                            self.end_headers()
                            for chunk in answer.iter_raw():
                                self.wfile.write(chunk)
                                self.wfile.flush()
                            return
                        body = answer.read()
                        tamper = proxy.tamper
                        if tamper is not None:
                            changed = tamper(self.path, body)
                            proxy.tampered += changed != body
                            body = changed
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                except (httpx.HTTPError, OSError):
                    pass  # the controller restarted or the browser left: the connection just ends

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> TamperingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
