"""The auditor dashboard (design.md §9): a read-only page at ``/`` that verifies the ledger in
the browser.

The server's part is only to hand out files: ``index.html`` at ``/`` and its scripts and style
under ``/dashboard/``. The page trusts nothing it reads from the controller: it checks every
answer's signature with the key the user pinned, every entry against the signed tree head,
every new head against the last one the browser saw, every output against its hash
(``static/verify.js``; docs/dashboard.md). So this module depends on nothing of duet's: the
files are the same whoever serves them, and can be copied next to the published tiles
(``python -m duet.dashboard export DIR``) and served from a bucket.

Every file is sent with a Content-Security-Policy that allows scripts, styles and images only
from the page's own origin (no inline script, no CDN, no font), and connections to the origin
and to HTTPS hosts, so ``?tiles=https://bucket/...`` can read a published log; whatever it
reads is verified against the pinned key, and the page sends nothing but GETs without
credentials. Files are revalidated on every load (``no-cache`` with an ETag): a controller
upgrade is picked up at once, a repeat visit costs a 304.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC", "export", "router"]

STATIC = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' https:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class _File:
    body: bytes
    media_type: str
    etag: str


def _load() -> dict[str, _File]:
    """Every file of the page, read once: the page is a few tens of kilobytes, and a fixed set of
    names leaves no path for a request to walk out of the directory with."""
    files = {}
    for path in sorted(STATIC.iterdir()):
        if path.is_file() and path.suffix in _TYPES:
            body = path.read_bytes()
            files[path.name] = _File(body, _TYPES[path.suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return files


_FILES = _load()


def _serve(request: Request, name: str) -> Response:
    found = _FILES.get(name)
    if found is None:
        return Response(status_code=404, content=b"no such file\n", media_type="text/plain", headers=_HEADERS)
    headers = {**_HEADERS, "ETag": found.etag}
    if found.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(content=found.body, media_type=found.media_type, headers=headers)


router = APIRouter(include_in_schema=False)
"""``GET /`` (the page) and ``GET /dashboard/{name}`` (its modules and style); not in the OpenAPI
schema, which describes the signed protocol."""


@router.get("/")
async def page(request: Request) -> Response:
    return _serve(request, "index.html")


@router.get("/dashboard/{name}")
async def asset(request: Request, name: str) -> Response:
    return _serve(request, name if name != "index.html" else "")  # the page is at /: its paths are relative to it


def export(directory: Path) -> list[Path]:
    """Write the page as static files: ``index.html`` in ``directory``, the rest in
    ``directory/dashboard/`` (the layout the controller serves), e.g. next to the published tiles
    so that ``index.html?tiles=.&controller=<vkey>`` reads them from the same origin."""
    (directory / "dashboard").mkdir(parents=True, exist_ok=True)
    written = []
    for name in _FILES:
        target = directory / name if name == "index.html" else directory / "dashboard" / name
        shutil.copyfile(STATIC / name, target)
        written.append(target)
    return written
