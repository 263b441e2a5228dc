"""The ledger published as C2SP tlog-tiles to real object storage, and audited from it.

The stores are real servers on loopback, spoken to by the real SDKs: Azurite (Microsoft's
Azure Storage emulator) for Azure Blob Storage through azure-storage-blob, and moto's S3
server through boto3 (tests/fakes/object_stores.py). The reader is the auditor's: anonymous
HTTP GETs of the container's or bucket's public URL (``duet.client.tiles_source``) into the
ledger's verifying ``TiledLog``, which trusts nothing but the controller's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from duet import keys
from duet.client.tiles_source import HttpTilesSource, StoreTilesSource, TilesUnavailable, open_tiles_source
from duet.ledger.checkpoint import (
    Checkpoint,
    CosignatureSigner,
    controller_origin,
    cosign,
    log_signer,
    parse_checkpoint,
    sign_checkpoint,
    verify_cosigned_checkpoint,
)
from duet.ledger.log import Ledger
from duet.ledger.merkle import MerkleTree, leaf_hash
from duet.ledger.note import NoteError, NoteSignature, NoteSigner, NoteVerifier, parse_note, parse_signature_lines
from duet.ledger.tiles import MalformedTile, TiledLog, TileMismatch, tiles_for_size, verify_tiled_log
from duet.protocol.canonical import canonical
from duet.publish.stores import (
    CHECKPOINT,
    AzureBlobStore,
    LocalDirectoryStore,
    ObjectStore,
    S3Store,
    StoreConflict,
    StoreError,
    open_store,
)
from duet.publish.tiles import PublishRefused, TilePublisher
from fakes.object_stores import Azurite, MotoS3
from support import open_ledger

FAST = {"min_interval_s": 0.0, "retry_initial_s": 0.2, "retry_max_s": 1.0}


# --- servers (one of each per module) and a fresh container or bucket per test ----------------------


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Backend:
    """One container (Azure) or bucket (S3) of a running server, readable anonymously."""

    kind: str
    make_store: Callable[[], ObjectStore]
    public_url: str
    store_url: str
    """The ``azure://`` / ``s3://`` form, credentials from the environment."""
    raw_put: Callable[[str, bytes], None]
    """Write an object behind the publisher's back (an attacker with bucket access)."""
    versions: Callable[[], dict[str, str]]
    """path → what changes whenever the object is written (Azure's ETag, S3's LastModified + ETag)."""
    outage: Callable[[], None]
    recover: Callable[[], None]


def _azure_backend(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Backend:
    container = f"log-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)

    def make_store() -> ObjectStore:
        return AzureBlobStore.from_connection_string(azurite.connection_string, container, connect_timeout=2, read_timeout=5)

    admin = AzureBlobStore.from_connection_string(azurite.connection_string, container)
    admin.create_container(public_read=True)

    def raw_put(path: str, data: bytes) -> None:
        admin.container.upload_blob(path, data, overwrite=True)

    def versions() -> dict[str, str]:
        return {blob.name: blob.etag for blob in admin.container.list_blobs()}

    def recover() -> None:
        azurite.start()

    return Backend(
        "azure", make_store, azurite.container_url(container), f"azure://devstoreaccount1/{container}",
        raw_put, versions, azurite.stop, recover,
    )  # fmt: skip


def _s3_backend(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> Backend:
    bucket = f"log-{uuid.uuid4().hex[:12]}"
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    moto_s3.public_bucket(bucket)
    admin = moto_s3.client()

    def make_store() -> ObjectStore:
        return S3Store(bucket, endpoint_url=moto_s3.endpoint, region=moto_s3.region, connect_timeout=1, read_timeout=1)

    def raw_put(path: str, data: bytes) -> None:
        admin.put_object(Bucket=bucket, Key=path, Body=data)

    def versions() -> dict[str, str]:
        found: dict[str, str] = {}
        for page in admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                found[item["Key"]] = f"{item['ETag']}@{item['LastModified'].isoformat()}"
        return found

    return Backend(
        "s3", make_store, moto_s3.bucket_url(bucket), f"s3://{bucket}?endpoint={moto_s3.endpoint}",
        raw_put, versions, moto_s3.freeze, moto_s3.thaw,
    )  # fmt: skip


@pytest.fixture(params=["azure", "s3"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    if request.param == "azure":
        return _azure_backend(request.getfixturevalue("azurite"), monkeypatch)
    return _s3_backend(request.getfixturevalue("moto_s3"), monkeypatch)


@pytest.fixture
def azure(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Backend:
    return _azure_backend(azurite, monkeypatch)


# --- a controller's ledger and key ------------------------------------------------------------------


@dataclass
class Log:
    ledger: Ledger
    signer: NoteSigner
    added: int = 0

    @property
    def verifier(self) -> NoteVerifier:
        return self.signer.verifier()

    def add(self, count: int, per_commit: int = 100) -> None:
        """``count`` entries, committed ``per_commit`` at a time (as a busy controller would)."""
        while count:
            batch = min(count, per_commit)
            with self.ledger.db.transaction() as tx:
                for _ in range(batch):
                    n = self.added
                    self.ledger.append(
                        tx, cvm=f"cvm-{n % 7}", event="command.finished", actor="test", command="echo " + "x" * (n % 300), n=n
                    )
                    self.added += 1
            count -= batch

    def entry_bytes(self) -> list[bytes]:
        return [canonical(entry) for entry in self.ledger.entries()]


def make_log(directory: Path, key: keys.PrivateKey | None = None) -> Log:
    key = key or keys.generate("ed25519")
    controller = keys.key_id(key.public_key())
    return Log(open_ledger(directory, controller), log_signer(key, controller))


@pytest.fixture
def ledger_log(tmp_path: Path) -> Log:
    return make_log(tmp_path / "ledger")


# --- a store that records, checks and fails on demand -----------------------------------------------


@dataclass
class Recording:
    """Wraps a store: records every write; ``fail`` decides which calls raise as a dead store would."""

    inner: ObjectStore
    writes: list[tuple[str, bool]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    fail: Callable[[str, str], bool] | None = None
    before_checkpoint: Callable[[bytes], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, path: str, data: bytes, *, immutable: bool) -> bool:
        if self.fail is not None and self.fail("put", path):
            raise StoreError(f"injected: the store failed writing {path}")
        if path == CHECKPOINT and self.before_checkpoint is not None:
            self.before_checkpoint(data)
        wrote = self.inner.put(path, data, immutable=immutable)
        with self.lock:
            self.writes.append((path, wrote))
        return wrote

    def get(self, path: str, *, max_bytes: int | None = None) -> bytes | None:
        if self.fail is not None and self.fail("get", path):
            raise StoreError(f"injected: the store failed reading {path}")
        return self.inner.get(path, max_bytes=max_bytes)

    def delete(self, path: str) -> None:
        self.inner.delete(path)
        with self.lock:
            self.deletes.append(path)

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()

    def written(self) -> list[str]:
        """Paths actually written (an existing identical tile is not written again)."""
        with self.lock:
            return [path for path, wrote in self.writes if wrote]


# --- helpers ------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def publishing(store: ObjectStore, log: Log, **options: Any) -> AsyncIterator[TilePublisher]:
    publisher = TilePublisher.for_ledger(log.ledger, store, log.signer, **{**FAST, **options})
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.close()


async def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.05)


def audit(url: str, verifier: NoteVerifier) -> tuple[Checkpoint, list[bytes]]:
    """What ``duet audit --tiles URL`` does: the checkpoint verified with the controller's key,
    then every tile and entry against it."""
    with open_tiles_source(url, timeout=5) as source:
        checkpoint = source.read_checkpoint(verifier)
        log = TiledLog(source, checkpoint)
        entries = list(log.entries())
        assert log.root_at(checkpoint.size) == checkpoint.root
    return checkpoint, entries


def assert_audit_matches(url: str, log: Log) -> None:
    checkpoint, entries = audit(url, log.verifier)
    assert checkpoint.origin == controller_origin(log.ledger.controller_id)
    assert checkpoint.size == log.ledger.size
    assert checkpoint.root == log.ledger.tree.root()
    assert entries == log.entry_bytes()
    assert MerkleTree(leaf_hash(entry) for entry in entries).root() == log.ledger.tree.root()  # recomputed here too


def audit_error(url: str, verifier: NoteVerifier) -> TileMismatch | MalformedTile:
    with open_tiles_source(url, timeout=5) as source:
        checkpoint = source.read_checkpoint(verifier)
        with pytest.raises((TileMismatch, MalformedTile)) as caught:
            verify_tiled_log(source, checkpoint)
    assert isinstance(caught.value, (TileMismatch, MalformedTile))
    return caught.value


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


# --- tests ---------------------------------------------------------------------------------------------


async def test_a_ledger_published_to_the_store_is_audited_from_its_public_url(backend: Backend, ledger_log: Log) -> None:
    ledger_log.add(3000)
    store = Recording(backend.make_store())
    async with publishing(store, ledger_log) as publisher:
        assert await publisher.flush(60)
        status = publisher.status()
        assert (status.published_size, status.lag, status.state) == (3000, 0, "idle")
        assert "3,000/3,000 entries published, idle" in status.line()

        assert_audit_matches(backend.public_url, ledger_log)  # anonymous HTTP, as from a CDN
        assert_audit_matches(backend.store_url, ledger_log)  # azure:// or s3://, credentials from the environment

        checkpoint = httpx.get(f"{backend.public_url}/checkpoint")
        assert checkpoint.headers["content-type"].startswith("text/plain")
        assert "max-age=5" in checkpoint.headers["cache-control"]
        tile = httpx.get(f"{backend.public_url}/tile/0/000")
        assert tile.headers["content-type"] == "application/octet-stream"
        assert "immutable" in tile.headers["cache-control"] and len(tile.content) == 8192

        before = backend.versions()
        assert set(before) == {tile.path for tile in tiles_for_size(3000)} | {CHECKPOINT}

        # The log grows past three tile boundaries: new full tiles, new partial ones; the partial
        # tiles the full ones supersede are deleted, the level-1 one (still partial) is kept.
        ledger_log.add(700)
        assert await publisher.flush(60)
        after = backend.versions()
        assert set(after) == {tile.path for tile in tiles_for_size(3700)} | {CHECKPOINT, "tile/1/000.p/11"}
        assert sorted(store.deletes) == ["tile/0/011.p/184", "tile/entries/011.p/184"]
        unchanged = {path: version for path, version in before.items() if ".p/" not in path and path != CHECKPOINT}
        assert {path: after[path] for path in unchanged} == unchanged  # full tiles never rewritten
        assert after[CHECKPOINT] != before[CHECKPOINT]
        written = store.written()
        assert len(written) == len(set(written)) + written.count(CHECKPOINT) - 1  # each tile written once
        assert_audit_matches(backend.public_url, ledger_log)

    # A restarted controller resumes from the store's checkpoint: nothing is written again.
    again = Recording(backend.make_store())
    async with publishing(again, ledger_log) as publisher:
        assert publisher.published_size == 3700
        assert await publisher.flush(10)
        assert again.writes == [] and publisher.status().objects_written == 0
    assert backend.versions() == after


async def test_the_checkpoint_is_written_only_after_every_tile_it_needs(backend: Backend, ledger_log: Log) -> None:
    ledger_log.add(1000)
    inner = backend.make_store()
    problems: list[str] = []
    proven: list[int] = []

    def before_checkpoint(note: bytes) -> None:
        """At the moment the checkpoint is written, the store alone already proves it."""
        checkpoint = parse_checkpoint(parse_note(note).text)
        try:
            assert verify_tiled_log(lambda path: inner.get(path), checkpoint) == checkpoint.size
            proven.append(checkpoint.size)
        except Exception as exc:  # recorded: an assertion raised here would only make the publisher retry
            problems.append(f"checkpoint {checkpoint.size}: {exc!r}")

    down = threading.Event()
    store = Recording(
        inner, before_checkpoint=before_checkpoint, fail=lambda op, path: down.is_set() and op == "put" and path == CHECKPOINT
    )
    async with publishing(store, ledger_log) as publisher:
        assert await publisher.flush(30)
        old = httpx.get(f"{backend.public_url}/checkpoint").content

        down.set()  # the store fails between the tiles and the checkpoint
        ledger_log.add(600)
        await eventually(lambda: publisher.status().state == "retrying")
        assert not await publisher.flush(0.3)
        assert "injected" in (publisher.status().last_error or "")
        assert httpx.get(f"{backend.public_url}/checkpoint").content == old
        checkpoint, entries = audit(backend.public_url, ledger_log.verifier)  # a reader sees the old log, whole
        assert checkpoint.size == 1000 and entries == ledger_log.entry_bytes()[:1000]
        assert inner.get("tile/entries/005") is not None  # the new tiles are there, unannounced

        down.clear()
        assert await publisher.flush(30)
    assert problems == [] and proven == [1000, 1600]
    written = store.written()
    assert len(written) == len(set(written)) + written.count(CHECKPOINT) - 1  # the retry wrote no tile twice
    assert_audit_matches(backend.public_url, ledger_log)


async def test_an_altered_tile_is_detected_and_named(backend: Backend, ledger_log: Log) -> None:
    ledger_log.add(3000)
    async with publishing(backend.make_store(), ledger_log) as publisher:
        assert await publisher.flush(60)
    url, verifier = backend.public_url, ledger_log.verifier

    tile = httpx.get(f"{url}/tile/0/003").content
    backend.raw_put("tile/0/003", flip(tile, 100))
    error = audit_error(url, verifier)
    assert isinstance(error, TileMismatch) and error.path == "tile/0/003" and "tile/0/003" in error.message
    backend.raw_put("tile/0/003", tile)

    bundle = httpx.get(f"{url}/tile/entries/005").content
    altered = bundle.replace(b'"n":1300', b'"n":1301', 1)  # entry 1300, same length: only its hash can tell
    assert altered != bundle
    backend.raw_put("tile/entries/005", altered)
    error = audit_error(url, verifier)
    assert isinstance(error, TileMismatch)
    assert (error.code, error.path, error.index) == ("entry_mismatch", "tile/entries/005", 1300)
    backend.raw_put("tile/entries/005", bundle)

    edge = httpx.get(f"{url}/tile/0/011.p/184").content
    backend.raw_put("tile/0/011.p/184", flip(edge, 5))
    error = audit_error(url, verifier)
    assert error.code == "tiles_root_mismatch" and "tile/0/011.p/184" in error.paths
    backend.raw_put("tile/0/011.p/184", edge)

    backend.raw_put("tile/0/002", tile + b"\0" * 32)  # larger than any tile: not even read whole
    error = audit_error(url, verifier)
    assert isinstance(error, MalformedTile) and error.path == "tile/0/002"
    backend.raw_put("tile/0/002", httpx.get(f"{url}/tile/0/001").content)  # another tile's hashes
    error = audit_error(url, verifier)
    assert isinstance(error, TileMismatch) and error.path == "tile/0/002"

    checkpoint = httpx.get(f"{url}/checkpoint").content
    backend.raw_put(CHECKPOINT, checkpoint.replace(b"\n3000\n", b"\n2999\n"))
    with open_tiles_source(url) as source, pytest.raises(NoteError):
        source.read_checkpoint(verifier)


async def test_publication_resumes_after_the_store_was_down(backend: Backend, ledger_log: Log) -> None:
    """Azurite is stopped (connections refused) and started again on its data; the S3 server is
    frozen (it accepts connections and never answers: every request times out)."""
    ledger_log.add(1000)
    store = Recording(backend.make_store())
    async with publishing(store, ledger_log) as publisher:
        assert await publisher.flush(30)
        backend.outage()
        try:
            slowest = 0.0
            for _ in range(15):  # the controller goes on appending while the store is down
                started = time.monotonic()
                ledger_log.add(100)
                slowest = max(slowest, time.monotonic() - started)
                await asyncio.sleep(0.05)
            assert slowest < 1.0, "appends waited for the store"
            await eventually(lambda: publisher.status().state == "retrying")
            status = publisher.status()
            assert status.lag > 0 and status.last_error and "behind), retrying: cannot " in status.line()
            assert not await publisher.flush(0.5)
        finally:
            backend.recover()
        assert await publisher.flush(60)
        ledger_log.add(1)  # and it goes on publishing
        assert await publisher.flush(30)
        assert publisher.status().state == "idle"
    assert_audit_matches(backend.public_url, ledger_log)
    written = store.written()  # resumed from what the store had: what it held was not written again
    assert written.count("tile/entries/000") == written.count("tile/0/002") == 1


async def test_a_store_holding_another_controllers_log_is_refused(backend: Backend, tmp_path: Path) -> None:
    other = make_log(tmp_path / "other")
    other.add(300)
    async with publishing(backend.make_store(), other) as publisher:
        assert await publisher.flush(30)
    theirs = httpx.get(f"{backend.public_url}/checkpoint").content

    mine = make_log(tmp_path / "mine")
    mine.add(500)
    publisher = TilePublisher.for_ledger(mine.ledger, backend.make_store(), mine.signer, **FAST)
    with pytest.raises(PublishRefused) as caught:
        await publisher.start()
    message = caught.value.message
    assert "another log" in message and controller_origin(other.ledger.controller_id) in message
    assert "Refusing to overwrite" in message
    assert publisher.status().state == "refused"
    await publisher.close()
    assert httpx.get(f"{backend.public_url}/checkpoint").content == theirs
    assert_audit_matches(backend.public_url, other)  # their log is intact


async def test_forged_forked_and_ahead_checkpoints_are_refused(azure: Backend, tmp_path: Path) -> None:
    key = keys.generate("ed25519")
    mine = make_log(tmp_path / "mine", key)
    mine.add(400)
    origin = controller_origin(mine.ledger.controller_id)

    async def refusal(log: Log) -> str:
        publisher = TilePublisher.for_ledger(log.ledger, azure.make_store(), log.signer, **FAST)
        with pytest.raises(PublishRefused) as caught:
            await publisher.start()
        await publisher.close()
        return caught.value.message

    # A checkpoint under this log's name, signed by another key.
    forged = sign_checkpoint(Checkpoint(origin, 400, mine.ledger.tree.root()), NoteSigner(origin, keys.generate("ed25519")))
    azure.raw_put(CHECKPOINT, forged)
    assert "not signed by this controller's key" in await refusal(mine)

    # This controller's key, another history (a fork): inconsistent with the ledger.
    fork = make_log(tmp_path / "fork", key)
    fork.add(300)
    azure.raw_put(CHECKPOINT, sign_checkpoint(Checkpoint(origin, 300, fork.ledger.tree.root()), mine.signer))
    assert "inconsistent" in await refusal(mine)

    # The store is ahead of the ledger.
    azure.raw_put(CHECKPOINT, sign_checkpoint(Checkpoint(origin, 401, mine.ledger.tree.root()), mine.signer))
    assert "ahead of the ledger" in await refusal(mine)


async def test_a_tile_someone_else_wrote_is_never_overwritten(backend: Backend, ledger_log: Log) -> None:
    """No checkpoint yet, but another log's tile where this one's goes: the publisher stops."""
    ledger_log.add(300)
    backend.raw_put("tile/0/000", b"\1" * 8192)
    publisher = TilePublisher.for_ledger(ledger_log.ledger, backend.make_store(), ledger_log.signer, **FAST)
    await publisher.start()
    with pytest.raises(StoreConflict) as conflict:
        await publisher.flush(30)
    assert conflict.value.path == "tile/0/000" and "another log" in conflict.value.message
    assert publisher.status().state == "refused" and "tile/0/000" in publisher.status().line()
    await publisher.close()
    assert httpx.get(f"{backend.public_url}/tile/0/000").content == b"\1" * 8192
    assert httpx.get(f"{backend.public_url}/checkpoint").status_code in (403, 404)


async def test_a_checkpoint_someone_else_writes_later_stops_the_publisher(backend: Backend, tmp_path: Path) -> None:
    mine = make_log(tmp_path / "mine")
    mine.add(300)
    other = make_log(tmp_path / "other")
    other.add(10)
    theirs = sign_checkpoint(Checkpoint(other.signer.name, 10, other.ledger.tree.root()), other.signer)
    async with publishing(backend.make_store(), mine) as publisher:
        assert await publisher.flush(30)
        backend.raw_put(CHECKPOINT, theirs)
        mine.add(10)
        with pytest.raises(PublishRefused, match="another log"):
            await publisher.flush(30)
        assert publisher.status().state == "refused"
    assert httpx.get(f"{backend.public_url}/checkpoint").content == theirs


async def test_a_store_that_lost_its_data_is_written_again(tmp_path: Path, ledger_log: Log) -> None:
    root = tmp_path / "www"
    ledger_log.add(600)
    async with publishing(LocalDirectoryStore(root), ledger_log) as publisher:
        assert await publisher.flush(30)
        shutil.rmtree(root / "tile")
        (root / "checkpoint").unlink()
        ledger_log.add(10)
        assert await publisher.flush(30)
    assert_audit_matches(root.as_uri(), ledger_log)


async def test_a_directory_served_by_a_static_http_server(tmp_path: Path, ledger_log: Log) -> None:
    ledger_log.add(700)
    root = tmp_path / "www"
    async with publishing(open_store(str(root)), ledger_log) as publisher:
        assert await publisher.flush(30)
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/"
            assert_audit_matches(url, ledger_log)
            ledger_log.add(100)
            assert await publisher.flush(30)
            assert_audit_matches(url, ledger_log)
        finally:
            server.shutdown()
            server.server_close()
    assert not list(root.rglob(".tmp-*"))  # every file was written whole, then linked or renamed


async def test_bursts_are_coalesced(tmp_path: Path, ledger_log: Log) -> None:
    store = Recording(LocalDirectoryStore(tmp_path / "www"))
    async with publishing(store, ledger_log, min_interval_s=0.2) as publisher:
        for _ in range(60):  # 60 commits in about a second
            ledger_log.add(3)
            await asyncio.sleep(0.015)
        assert await publisher.flush(30)
    rounds = [path for path in store.written() if path == CHECKPOINT]
    assert 1 <= len(rounds) <= 12
    assert_audit_matches((tmp_path / "www").as_uri(), ledger_log)


async def test_cosignatures_that_arrive_later_are_published_with_the_checkpoint(tmp_path: Path, ledger_log: Log) -> None:
    witness_key = keys.generate("ed25519")
    witness = CosignatureSigner("witness.example/w1", witness_key)
    cosignatures: dict[Checkpoint, list[NoteSignature]] = {}

    def sign(checkpoint: Checkpoint) -> bytes:  # as the controller would: its signature, then the cosignatures kept
        return sign_checkpoint(checkpoint, ledger_log.signer, keep=cosignatures.get(checkpoint, []))

    ledger_log.add(300)
    store = LocalDirectoryStore(tmp_path / "www")
    async with publishing(store, ledger_log, sign=sign) as publisher:
        assert await publisher.flush(30)
        note = store.get(CHECKPOINT)
        assert note is not None
        checkpoint = verify_cosigned_checkpoint(note, ledger_log.verifier, [witness.verifier()], quorum=0).checkpoint
        line = cosign(checkpoint, witness_key, witness.name, int(time.time()))
        cosignatures[checkpoint] = list(parse_signature_lines(line.encode()))
        publisher.refresh()
        await eventually(lambda: store.get(CHECKPOINT) != note)
    cosigned = verify_cosigned_checkpoint(store.get(CHECKPOINT) or b"", ledger_log.verifier, [witness.verifier()], quorum=1)
    assert cosigned.witnesses == ("witness.example/w1",) and cosigned.checkpoint == checkpoint


def test_a_hanging_host_fails_the_read_in_time(moto_s3: MotoS3) -> None:
    source = HttpTilesSource(moto_s3.endpoint + "/whatever", timeout=0.5, retries=0)
    moto_s3.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(TilesUnavailable, match="ReadTimeout"):
            source("checkpoint")
        assert time.monotonic() - started < 3
    finally:
        moto_s3.thaw()
        source.close()


def test_store_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        "AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:1/devstoreaccount1",
    )
    with pytest.raises(Exception, match="names storage account 'elsewhere'"):
        open_store("azure://elsewhere/tiles")
    store = open_store("azure://devstoreaccount1/tiles/ledger/v1")
    assert isinstance(store, AzureBlobStore) and store.prefix == "ledger/v1/"
    s3 = open_store("s3://bucket/pre?endpoint=http://127.0.0.1:1&region=eu-west-1")
    assert isinstance(s3, S3Store) and s3.prefix == "pre/" and "s3://bucket/pre at http://127.0.0.1:1" == s3.describe()
    assert isinstance(open_store(f"file://{tmp_path}/d"), LocalDirectoryStore)
    with pytest.raises(Exception, match="not a tiles location"):
        open_store("ftp://x/y")
    source = open_tiles_source(str(tmp_path / "nothing"))
    assert isinstance(source, StoreTilesSource) and not (tmp_path / "nothing").exists()
    with pytest.raises(TilesUnavailable, match="no checkpoint"):
        source.checkpoint_note()
