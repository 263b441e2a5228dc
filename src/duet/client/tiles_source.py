"""Where an auditor reads a published tiled log from (``duet audit --tiles URL``).

A tiles source is a ``fetch(path) -> bytes | None`` for ``duet.ledger.tiles.TiledLog``: it reads
``checkpoint``, ``tile/<L>/<N>[.p/<W>]`` and ``tile/entries/<N>[.p/<W>]`` under the log's
prefix, answers None for a file the log does not have, and trusts nothing it reads: the
checkpoint is verified with the controller's key (``read_checkpoint``), every tile by the
reader. What it guards itself is the reading: a time limit per request, and a size limit per
file (a hash tile is at most 8,192 bytes, an entry bundle at most 256 entries of 65,535 bytes,
a checkpoint 64 KiB), so a hostile host can neither stall an audit nor fill its memory; a file
past its limit is a ``MalformedTile`` naming it.

URLs (``open_tiles_source``):

* ``https://HOST/PREFIX`` or ``http://...``: any static host of the log, the public URL of a
  bucket or container (``https://ACCOUNT.blob.core.windows.net/CONTAINER``, Azurite's
  ``http://127.0.0.1:10000/devstoreaccount1/CONTAINER``, ``https://BUCKET.s3.REGION.amazonaws.com``),
  or a CDN in front of one. Anonymous GETs; a 404 (and a 403, which S3 answers for a missing
  object to whoever may not list the bucket) is a missing file.
* ``azure://ACCOUNT/CONTAINER[/PREFIX]``, ``s3://BUCKET[/PREFIX][?endpoint=...]``: a private
  container or bucket, read with the credentials ``duet.publish.stores.open_store`` takes from
  the environment.
* ``file:///DIR`` or a plain path: a copy of the log on disk.

The whole audit::

    with open_tiles_source(url) as source:
        checkpoint = source.read_checkpoint(NoteVerifier(controller_origin(pin.controller), pin.public_key()))
        log = TiledLog(source, checkpoint)            # the right edge checked against the root
        for entry in log.entries(start):              # every entry proven by its leaf hash
            ...
        log.root_at(previous.size) == previous.root   # an older checkpoint is consistent with it
"""

from __future__ import annotations

import time
from typing import Self

import httpx

from duet.errors import UpstreamError
from duet.ledger.checkpoint import Checkpoint, verify_checkpoint
from duet.ledger.merkle import HASH_SIZE
from duet.ledger.note import NoteVerifier
from duet.ledger.tiles import MAX_ENTRY_SIZE, TILE_WIDTH, MalformedTile
from duet.publish.stores import CHECKPOINT, ObjectStore, ObjectTooLarge, check_path, open_store

__all__ = [
    "MAX_BUNDLE_BYTES",
    "MAX_CHECKPOINT_BYTES",
    "MAX_HASH_TILE_BYTES",
    "HttpTilesSource",
    "StoreTilesSource",
    "TilesSource",
    "TilesUnavailable",
    "open_tiles_source",
    "size_limit",
]

MAX_CHECKPOINT_BYTES = 1 << 16
MAX_HASH_TILE_BYTES = TILE_WIDTH * HASH_SIZE
MAX_BUNDLE_BYTES = TILE_WIDTH * (2 + MAX_ENTRY_SIZE)
DEFAULT_TIMEOUT_S = 15.0


class TilesUnavailable(UpstreamError):
    """The tiles could not be read (network, HTTP error, no checkpoint there)."""

    code = "tiles_unavailable"


def size_limit(path: str) -> int:
    """The most bytes a file of a tiled log may have."""
    if path == CHECKPOINT:
        return MAX_CHECKPOINT_BYTES
    if path.startswith("tile/entries/"):
        return MAX_BUNDLE_BYTES
    if path.startswith("tile/"):
        return MAX_HASH_TILE_BYTES
    raise ValueError(f"{path[:100]!r} is not a file of a tiled log")


def _too_large(path: str, limit: int) -> MalformedTile:
    return MalformedTile(f"{path} is larger than the {limit} bytes such a file can have", path=path)


class TilesSource:
    """A ``fetch`` for ``TiledLog``, and the log's checkpoint."""

    location: str

    def __call__(self, path: str) -> bytes | None:
        raise NotImplementedError

    def read_checkpoint(self, verifier: NoteVerifier, *, origin: str | None = None) -> Checkpoint:
        """The log's checkpoint, if ``verifier`` (the controller's log key) signed it for
        ``origin`` (default: the key's name). Raises ``TilesUnavailable`` when there is none,
        a ``NoteError`` when it does not verify."""
        note = self.checkpoint_note()
        return verify_checkpoint(note, verifier, origin=origin)

    def checkpoint_note(self) -> bytes:
        """The checkpoint's signed note as served (unverified), e.g. to count cosignatures."""
        note = self(CHECKPOINT)
        if note is None:
            raise TilesUnavailable(f"there is no checkpoint at {self.location}: no tiled log is published there{self._hint()}")
        return note

    def _hint(self) -> str:
        return ""

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HttpTilesSource(TilesSource):
    """A tiled log on a static HTTP(S) host, fetched anonymously, ``retries`` more times on a
    connection failure or a 5xx/429 answer."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"{base_url!r} is not an http(s) URL")
        self.location = base_url.rstrip("/")
        self._base = self.location + "/"
        self._retries = retries
        self._last_status: int | None = None
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=True,
            headers={"Accept-Encoding": "gzip, identity", "User-Agent": "duet-audit (tlog-tiles)"},
        )

    def __call__(self, path: str) -> bytes | None:
        limit = size_limit(check_path(path))
        url = self._base + path
        headers = {"Cache-Control": "no-cache"} if path == CHECKPOINT else {}
        for attempt in range(self._retries + 1):
            last = attempt == self._retries
            try:
                with self._client.stream("GET", url, headers=headers) as response:
                    self._last_status = response.status_code
                    if response.status_code in (403, 404, 410):
                        return None
                    if response.status_code == 429 or response.status_code >= 500:
                        if last:
                            raise TilesUnavailable(f"{url} answered HTTP {response.status_code}")
                        time.sleep(0.5 * 2**attempt)
                        continue
                    if response.status_code != 200:
                        raise TilesUnavailable(f"{url} answered HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if "content-encoding" not in response.headers and declared and declared.isdigit() and int(declared) > limit:
                        raise _too_large(path, limit)
                    data = bytearray()
                    for chunk in response.iter_bytes():  # decoded: the limit holds after decompression too
                        data += chunk
                        if len(data) > limit:
                            raise _too_large(path, limit)
                    return bytes(data)
            except httpx.TransportError as exc:  # includes DecodingError, timeouts, refused connections
                if last or isinstance(exc, httpx.DecodingError):
                    raise TilesUnavailable(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _hint(self) -> str:
        if self._last_status == 403:
            return " (HTTP 403: is the bucket or container readable anonymously?)"
        return f" (HTTP {self._last_status})" if self._last_status else ""

    def close(self) -> None:
        self._client.close()


class StoreTilesSource(TilesSource):
    """A tiled log read through an object store's own API (a private bucket or container)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.location = store.describe()

    def __call__(self, path: str) -> bytes | None:
        limit = size_limit(check_path(path))
        try:
            return self.store.get(path, max_bytes=limit)
        except ObjectTooLarge:
            raise _too_large(path, limit) from None

    def close(self) -> None:
        self.store.close()


def open_tiles_source(
    url: str, *, timeout: float = DEFAULT_TIMEOUT_S, transport: httpx.BaseTransport | None = None
) -> TilesSource:
    """The tiles source a ``--tiles`` URL names (see the module's docstring)."""
    if url.startswith(("http://", "https://")):
        return HttpTilesSource(url, timeout=timeout, transport=transport)
    return StoreTilesSource(open_store(url, read_timeout=timeout, connect_timeout=min(timeout, 10.0), create_directory=False))
