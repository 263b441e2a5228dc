"""The tile publisher: keeps an object store's C2SP tiled log (c2sp.org/tlog-tiles) up to date
with the ledger, so auditors read it from the bucket (or a CDN, or any static host of it)
without touching the controller.

Each round publishes the ledger's current size N, from the size P the store's checkpoint has:

1. the entry bundles and hash tiles that changed between P and N (``changed_tiles``): new full
   ones, written once and never again (create-only writes, see ``stores``), and the new
   partial ones (``.p/<W>``);
2. THEN the checkpoint of N, signed with the controller's log key: a reader never sees a
   checkpoint whose tiles are not all there yet;
3. then the partial tiles that the new full ones supersede are deleted (the spec allows it;
   a reader holding an older checkpoint falls back to the full tile). A partial tile is kept
   while its tile is still partial, since older checkpoints may need it.

``refresh()`` writes the checkpoint of the same size again, for a ``sign`` that adds what it
learnt since (witnesses' cosignatures arriving after the checkpoint was first published).

Appends never wait for it: the ledger's listener only wakes the publisher, which runs as an
asyncio task, coalesces bursts (one round for all the entries committed since the last one,
at most one round per ``min_interval_s``) and does the store's blocking I/O in its own
threads. Each round first reads the store's checkpoint back, so publication always resumes
from what the store really has: after a failure (retried with exponential backoff), after a
restart, or when the store lost its data (then the whole log is written again).

The store's checkpoint is trusted only if the controller's key signed it, for this log, at a
size the ledger has and with the root the ledger has there. Otherwise (``PublishRefused``)
the store holds another controller's log, or a forked or tampered one, and nothing is
written: the publisher stops and says why, loudly, rather than overwrite it. That holds at
start (``start()`` raises) and at every later round (someone else wrote the checkpoint since).
A tile that already holds other bytes stops it the same way (``StoreConflict``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from duet.errors import ConfigError, DuetError
from duet.ledger.checkpoint import Checkpoint, controller_origin, parse_checkpoint, sign_checkpoint, verify_checkpoint
from duet.ledger.merkle import MerkleTree, leaf_hash
from duet.ledger.note import NoteError, NoteSigner, parse_note
from duet.ledger.tiles import ENTRIES, TILE_WIDTH, TileId, changed_tiles, encode_entry_bundle, hash_tile, tiles_for_size
from duet.protocol.canonical import canonical
from duet.publish.stores import CHECKPOINT, ObjectStore, ObjectTooLarge, StoreConflict

if TYPE_CHECKING:
    from duet.ledger.log import Ledger

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "EntrySource",
    "PublishError",
    "PublishRefused",
    "PublisherStatus",
    "TilePublisher",
    "ledger_entries",
]

log = logging.getLogger("duet.publish")

EntrySource = Callable[[int, int], Sequence[bytes]]
"""The bytes of entries ``start`` ≤ i < ``end`` (each the data its leaf hash is of)."""

MAX_CHECKPOINT_BYTES = 1 << 16
"""The largest checkpoint note read back from a store (a checkpoint with a hundred
cosignatures is about 10 KB)."""

T = TypeVar("T")


class PublishRefused(ConfigError):
    """The store holds a log this controller did not write, or one its ledger contradicts:
    nothing is published there."""

    code = "tiles_store_refused"


class PublishError(DuetError):
    """The ledger could not be read for publication (an entry not matching its leaf hash)."""

    code = "tiles_publish_failed"


def ledger_entries(ledger: Ledger) -> EntrySource:
    """The ledger's entries as the bytes its tree hashed (their canonical JSON), each checked
    against its leaf hash before it is published."""

    def read(start: int, end: int) -> list[bytes]:
        out = []
        for entry in ledger.entries(start, end):
            data = canonical(entry)
            if leaf_hash(data) != ledger.tree.leaf(entry["seq"]):
                raise PublishError(f"ledger entry {entry['seq']} does not re-encode to the bytes its leaf hash is of")
            out.append(data)
        return out

    return read


@dataclass(frozen=True)
class PublisherStatus:
    """What a status line shows: how far the store is behind the ledger, and why."""

    store: str
    state: str
    """``starting``, ``idle``, ``publishing``, ``retrying`` (the store failed; ``last_error``
    says how), ``refused`` (stopped for good: ``last_error``), ``stopped``."""
    ledger_size: int
    published_size: int | None
    """The size of the store's checkpoint; None until it was read."""
    last_error: str | None
    last_published_at: float | None
    """When the last checkpoint was written (POSIX seconds)."""
    objects_written: int

    @property
    def lag(self) -> int:
        return self.ledger_size - (self.published_size or 0)

    def line(self) -> str:
        published = "?" if self.published_size is None else f"{self.published_size:,}"
        text = f"tiles {self.store}: {published}/{self.ledger_size:,} entries published"
        if self.lag:
            text += f" ({self.lag:,} behind)"
        text += f", {self.state}"
        if self.last_error and self.state in ("retrying", "refused"):
            text += f": {self.last_error}"
        return text


class TilePublisher:
    """Publishes ``tree`` (with its entries from ``entries``) as a tiled log to ``store``,
    its checkpoints signed by ``signer`` (the controller's ``log_signer``; the checkpoint's
    origin is the signer's name). ``sign`` replaces the signing (e.g. to carry witnesses'
    cosignatures); what it returns must still verify with ``signer``'s key.

    ``start()`` in the event loop, ``notify()`` after each commit (``for_ledger`` subscribes it),
    ``close()`` at shutdown. The publisher owns ``store`` and closes it."""

    def __init__(
        self,
        store: ObjectStore,
        tree: MerkleTree,
        entries: EntrySource,
        signer: NoteSigner,
        *,
        sign: Callable[[Checkpoint], bytes] | None = None,
        min_interval_s: float = 0.5,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        concurrency: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency is at least 1")
        self.store = store
        self._tree = tree
        self._entries = entries
        self._signer = signer
        self._verifier = signer.verifier()
        self._origin = signer.name
        self._sign = sign or (lambda checkpoint: sign_checkpoint(checkpoint, signer))
        self._min_interval = min_interval_s
        self._retry_initial = retry_initial_s
        self._retry_max = retry_max_s
        self._concurrency = concurrency
        self._clock = clock
        self._ledger: Ledger | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._wake: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        # what the store has, as far as this publisher knows (None: not read yet)
        self._published: int | None = None
        self._synced = False
        """False: read the store's checkpoint before writing (at start, and after a failure)."""
        self._refresh = False
        """True: write the checkpoint again even at the same size (``refresh``)."""
        self._last_note: bytes | None = None
        """The checkpoint note the store had or was given last by this publisher."""
        self._store_has_checkpoint = False
        self._partials: dict[tuple[int, int], set[int]] = {}
        self._state = "starting"
        self._last_error: str | None = None
        self._refusal: DuetError | None = None
        self._last_published_at: float | None = None
        self._written = 0

    @classmethod
    def for_ledger(cls, ledger: Ledger, store: ObjectStore, signer: NoteSigner, **options: Any) -> TilePublisher:
        """A publisher of ``ledger``, fed by its commits once started. ``signer`` must be the
        controller's log signer (named ``controller_origin(ledger.controller_id)``)."""
        origin = controller_origin(ledger.controller_id)
        if signer.name != origin:
            raise ConfigError(f"the tiles' checkpoints are signed as {signer.name!r}, but this ledger's log is {origin!r}")
        publisher = cls(store, ledger.tree, ledger_entries(ledger), signer, **options)
        publisher._ledger = ledger
        return publisher

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the store's checkpoint, then publish in the background from there.

        Raises ``PublishRefused`` (or ``StoreConflict``) at once when the store holds a log that
        is not this ledger's; a store that cannot be reached now is retried in the background."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._wake.set()
        self._progress = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="tile-publisher")
        try:
            await self._sync()
        except (PublishRefused, StoreConflict) as exc:
            self._refuse(exc)
            self._executor.shutdown(wait=False, cancel_futures=True)
            raise
        except Exception as exc:
            self._failed(exc, retry_in=0.0)
        if self._ledger is not None and self._unsubscribe is None:
            self._unsubscribe = self._ledger.subscribe(lambda _entry: self.notify())
        self._task = asyncio.create_task(self._run(), name="tile-publication")

    def notify(self) -> None:
        """The ledger grew: publish soon. Safe from any thread; never blocks."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        if threading.get_ident() == self._loop_thread:
            wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to publish to
                loop.call_soon_threadsafe(wake.set)

    def refresh(self) -> None:
        """Write the checkpoint again, even if the ledger did not grow: ``sign`` has more to say
        about it (a witness's cosignature arrived). Called from the event loop."""
        self._refresh = True
        self.notify()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until the store's checkpoint covers the ledger as it is now; False on timeout.
        Raises the refusal if the publisher stopped on one."""
        target = self._tree.size

        async def reached() -> None:
            while True:
                if self._refusal is not None:
                    raise self._refusal
                if self._store_has_checkpoint and self._published is not None and self._published >= target:
                    return
                assert self._progress is not None, "flush() before start()"
                await self._progress.wait()

        try:
            await asyncio.wait_for(reached(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, *, flush_timeout: float | None = None) -> None:
        """Stop publishing (first waiting up to ``flush_timeout`` s for the last entries)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._task is not None:
            if flush_timeout and self._refusal is None:
                with contextlib.suppress(DuetError):
                    await self.flush(flush_timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._state != "refused":
            self._state = "stopped"
        self.store.close()

    def status(self) -> PublisherStatus:
        return PublisherStatus(
            store=self.store.describe(),
            state=self._state,
            ledger_size=self._tree.size,
            published_size=self._published,
            last_error=self._last_error,
            last_published_at=self._last_published_at,
            objects_written=self._written,
        )

    @property
    def published_size(self) -> int | None:
        """The size of the checkpoint in the store (None until read, 0 for a store without one)."""
        return self._published

    # --- the loop ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        backoff = self._retry_initial
        while True:
            self._wake.clear()
            try:
                if not self._synced or self._due():
                    await self._sync()  # every round starts from what the store has (one read)
                    if self._due():
                        await self._publish(self._tree.size)
                self._state, self._last_error = "idle", None
                backoff = self._retry_initial
            except asyncio.CancelledError:
                raise
            except (PublishRefused, StoreConflict) as exc:
                self._refuse(exc)
                self._signal_progress()
                return
            except Exception as exc:
                delay = backoff * random.uniform(0.5, 1.0)
                self._failed(exc, retry_in=delay)
                self._synced = False  # read the store's checkpoint again: resume from what it has
                self._signal_progress()
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self._retry_max)
                continue
            self._signal_progress()
            await self._wake.wait()
            if self._min_interval > 0:
                await asyncio.sleep(self._min_interval)  # coalesce a burst into one round

    def _due(self) -> bool:
        assert self._published is not None
        return self._tree.size > self._published or not self._store_has_checkpoint or self._refresh

    def _signal_progress(self) -> None:
        if self._progress is not None:
            self._progress.set()
            self._progress = asyncio.Event()

    def _failed(self, exc: Exception, *, retry_in: float) -> None:
        message = exc.message if isinstance(exc, DuetError) else f"{type(exc).__name__}: {exc}"
        self._state, self._last_error = "retrying", message
        log.warning("publishing tiles to %s failed (retrying in %.1f s): %s", self.store.describe(), retry_in, message)

    def _refuse(self, exc: DuetError) -> None:
        self._state, self._last_error, self._refusal = "refused", exc.message, exc
        log.error("tile publication to %s stopped: %s", self.store.describe(), exc.message)

    async def _io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        assert self._loop is not None and self._executor is not None
        return await self._loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # --- what the store has --------------------------------------------------------------------------

    async def _sync(self) -> None:
        try:
            note = await self._io(self.store.get, CHECKPOINT, max_bytes=MAX_CHECKPOINT_BYTES)
        except ObjectTooLarge:
            raise PublishRefused(
                f"{self.store.describe()} holds a 'checkpoint' of more than {MAX_CHECKPOINT_BYTES} bytes: it is not this "
                "controller's tiled log; refusing to publish over it"
            ) from None
        if note is not None and note == self._last_note:  # as this publisher left it
            self._synced = True
            return
        if note is None:
            if self._store_has_checkpoint:
                log.warning(
                    "%s no longer has the checkpoint this publisher wrote (for %s entries): the store lost its data; "
                    "publishing the whole log again",
                    self.store.describe(),
                    self._published,
                )
            self._published, self._store_has_checkpoint, self._synced, self._last_note = 0, False, True, None
            self._partials.clear()
            return
        checkpoint = self._check_store_checkpoint(note)
        self._published, self._store_has_checkpoint, self._synced, self._last_note = checkpoint.size, True, True, note
        for tile in tiles_for_size(checkpoint.size):
            if tile.partial:
                self._partials.setdefault((tile.level, tile.index), set()).add(tile.width)

    def _check_store_checkpoint(self, note: bytes) -> Checkpoint:
        where = self.store.describe()
        advice = "point the publication at an empty location, or at this controller's own"
        try:
            checkpoint = verify_checkpoint(note, self._verifier)
        except NoteError as exc:
            try:
                origin = parse_checkpoint(parse_note(note).text).origin
            except Exception:
                origin = None
            if origin is not None and origin != self._origin:
                whose = f"of another log ({origin!r}, not this controller's {self._origin!r})"
            elif origin is not None:
                whose = "of this log's name but not signed by this controller's key (a forgery, or another key)"
            else:
                whose = "that is not a signed checkpoint"
            raise PublishRefused(
                f"{where} already holds a checkpoint {whose}: {exc.message}. Refusing to overwrite it; {advice}"
            ) from None
        size = self._tree.size
        if checkpoint.size > size:
            raise PublishRefused(
                f"{where} holds this controller's checkpoint for {checkpoint.size} entries, but its ledger has only {size}: "
                "the store is ahead of the ledger (a ledger rolled back, or another instance publishing). Refusing to "
                f"publish over it; {advice}"
            )
        root = self._tree.root(checkpoint.size)
        if checkpoint.root != root:
            raise PublishRefused(
                f"{where} holds a checkpoint for {checkpoint.size} entries with root {checkpoint.root.hex()[:16]}…, but this "
                f"ledger's first {checkpoint.size} entries hash to {root.hex()[:16]}…: the published log is inconsistent "
                f"with the ledger (a fork). Refusing to publish over it; {advice}"
            )
        return checkpoint

    # --- one round -----------------------------------------------------------------------------------

    def _tile_bytes(self, tile: TileId) -> bytes:
        if tile.level != ENTRIES:
            return hash_tile(self._tree, tile.level, tile.index, tile.width)
        first = tile.index * TILE_WIDTH
        entries = self._entries(first, first + tile.width)
        if len(entries) != tile.width:
            raise PublishError(f"{len(entries)} entries were read for {tile.path}, not {tile.width}")
        return encode_entry_bundle(entries, first_index=first)

    async def _publish(self, size: int) -> None:
        assert self._published is not None
        if self._state != "retrying":  # a retry stays "retrying" (with its error) until it succeeds
            self._state = "publishing"
        refreshing, self._refresh = self._refresh, False  # a refresh asked for from here on takes another round
        try:
            await self._write(size)
        except BaseException:
            self._refresh = self._refresh or refreshing
            raise

    async def _write(self, size: int) -> None:
        assert self._published is not None
        tiles = list(changed_tiles(self._published, size))
        for start in range(0, len(tiles), self._concurrency):
            batch = [(tile, self._tile_bytes(tile)) for tile in tiles[start : start + self._concurrency]]
            results = await asyncio.gather(
                *(self._io(self.store.put, tile.path, data, immutable=True) for tile, data in batch), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            self._written += sum(1 for result in results if result is True)
        # Last: the checkpoint, once every tile it needs is in the store.
        note = self._sign(Checkpoint(self._origin, size, self._tree.root(size)))
        await self._io(self.store.put, CHECKPOINT, note, immutable=False)
        self._written += 1
        self._last_note = note
        self._published, self._store_has_checkpoint = size, True
        self._last_published_at = self._clock()
        await self._prune_partials(tiles)

    async def _prune_partials(self, tiles: list[TileId]) -> None:
        """Forget (and delete) the partial versions of tiles that are full now."""
        stale: list[str] = []
        for tile in tiles:
            if tile.partial:
                self._partials.setdefault((tile.level, tile.index), set()).add(tile.width)
            else:
                widths = self._partials.pop((tile.level, tile.index), set())
                stale += [TileId(tile.level, tile.index, width).path for width in sorted(widths)]
        for start in range(0, len(stale), self._concurrency):
            batch = stale[start : start + self._concurrency]
            results = await asyncio.gather(*(self._io(self.store.delete, path) for path in batch), return_exceptions=True)
            for path, result in zip(batch, results):
                if isinstance(result, Exception):  # harmless: a superseded partial tile stays behind
                    log.info("could not delete the superseded partial tile %s: %s", path, result)
