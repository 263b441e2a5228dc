"""Object stores a tiled log is published to: Azure Blob Storage, S3-compatible buckets, a directory.

Every store does three things with objects named by their path under the log's prefix
(``checkpoint``, ``tile/0/x001/234``, ``tile/entries/005.p/17``):

* ``put(path, data, immutable=...)``: an immutable object (every tile and entry bundle: a path
  of a tiled log always holds the same bytes) is written only where there is none yet, with the
  store's create-only condition (Azure ``If-None-Match: *``, S3 ``IfNoneMatch='*'``, a hard
  link on a file system), so it is never rewritten; one already there with the same bytes is
  left alone (``put`` answers False), one with other bytes raises ``StoreConflict`` (another
  log lives there). A mutable object (the checkpoint) is replaced.
* ``get(path, max_bytes=...)``: the bytes, or None where there is no such object.
* ``delete(path)``: gone (partial tiles superseded by full ones; a missing object is no error).

Content types and caching are the ones c2sp.org/tlog-tiles asks for: the checkpoint is
``text/plain; charset=utf-8`` and is not cached beyond a few seconds; tiles and bundles are
``application/octet-stream``, cacheable for a year (``immutable``). A local directory store
writes the files only: the HTTP server in front of it sets the types (see docs).

Failures of the service (unreachable, timeouts, 5xx, throttling, bad credentials) raise
``StoreError``: the publisher retries them with backoff. ``open_store(url)`` makes a store from
the controller's ``--publish-tiles`` setting (see its docstring for the URL forms and where the
credentials come from).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from duet.errors import ConfigError, DuetError, UpstreamError

if TYPE_CHECKING:  # the SDKs are optional extras, imported when a store of theirs is made
    from azure.storage.blob import ContainerClient

__all__ = [
    "CACHE_CONTROL_CHECKPOINT",
    "CACHE_CONTROL_IMMUTABLE",
    "CHECKPOINT",
    "AzureBlobStore",
    "LocalDirectoryStore",
    "ObjectStore",
    "ObjectTooLarge",
    "S3Store",
    "StoreConflict",
    "StoreError",
    "cache_control",
    "check_path",
    "content_type",
    "open_store",
]

CHECKPOINT = "checkpoint"
"""The path of a tiled log's checkpoint under its prefix."""

CONTENT_TYPE_CHECKPOINT = "text/plain; charset=utf-8"
CONTENT_TYPE_TILE = "application/octet-stream"
CACHE_CONTROL_IMMUTABLE = "public, max-age=31536000, immutable"
CACHE_CONTROL_CHECKPOINT = "public, max-age=5, must-revalidate"
"""tlog-tiles: the checkpoint's headers SHOULD prevent caching beyond a few seconds."""

DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 30.0

AZURITE_ACCOUNT = "devstoreaccount1"


class StoreError(UpstreamError):
    """The object store failed or could not be reached (retried by the publisher)."""

    code = "store_unavailable"


class StoreConflict(ConfigError):
    """An object that must never change (a tile, an entry bundle) already holds other bytes:
    the store holds another log, and nothing in it is overwritten."""

    code = "store_conflict"

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class ObjectTooLarge(DuetError):
    """An object is larger than its reader allows (``get(..., max_bytes=)``)."""

    code = "object_too_large"

    def __init__(self, message: str, *, path: str, limit: int) -> None:
        super().__init__(message)
        self.path = path
        self.limit = limit


class ObjectStore(Protocol):
    """Where a tiled log is written (see the module's docstring for the rules)."""

    def put(self, path: str, data: bytes, *, immutable: bool) -> bool:
        """Write ``data`` at ``path``; False when an immutable object with these bytes was already there."""
        ...

    def get(self, path: str, *, max_bytes: int | None = None) -> bytes | None:
        """The object's bytes, None if there is none; ObjectTooLarge past ``max_bytes``."""
        ...

    def delete(self, path: str) -> None: ...

    def describe(self) -> str:
        """Where the store is, for messages and status lines (never a secret)."""
        ...

    def close(self) -> None: ...


def content_type(path: str) -> str:
    return CONTENT_TYPE_CHECKPOINT if path == CHECKPOINT else CONTENT_TYPE_TILE


def cache_control(immutable: bool) -> str:
    return CACHE_CONTROL_IMMUTABLE if immutable else CACHE_CONTROL_CHECKPOINT


_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def check_path(path: str) -> str:
    """A relative object path of plain segments (no ``..``, no empty segment, no scheme)."""
    segments = path.split("/") if isinstance(path, str) else []
    if not segments or any(not _SEGMENT.fullmatch(s) or s in (".", "..") for s in segments):
        raise ValueError(f"{str(path)[:100]!r} is not an object path of a tiled log")
    return path


def _check_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    if prefix:
        check_path(prefix)
    return f"{prefix}/" if prefix else ""


def _too_large(path: str, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise ObjectTooLarge(f"{path} is larger than the {max_bytes} bytes allowed for it", path=path, limit=max_bytes)


def _conflict(store: ObjectStore, path: str) -> StoreConflict:
    return StoreConflict(
        f"{store.describe()} already holds {path} with other bytes than this log's: the store holds another log "
        "(or was written by someone else); nothing in it is overwritten",
        path=path,
    )


def _same_or_conflict(store: ObjectStore, path: str, data: bytes) -> bool:
    """After a create-only write found an object: False if it is ours, else StoreConflict."""
    try:
        existing = store.get(path, max_bytes=len(data))
    except ObjectTooLarge:  # larger is different
        raise _conflict(store, path) from None
    if existing == data:
        return False
    if existing is None:  # deleted in between: the write may go ahead
        return store.put(path, data, immutable=True)
    raise _conflict(store, path)


# --- a local directory (served by any static HTTP server) -------------------------------------------


class LocalDirectoryStore:
    """Files under ``root``, written atomically (a temporary file, then a hard link for an
    immutable file, a rename for the checkpoint), so a web server never serves half a file."""

    def __init__(self, root: Path | str, *, create: bool = True) -> None:
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"directory {self.root}"

    def _file(self, path: str) -> Path:
        return self.root.joinpath(*check_path(path).split("/"))

    def put(self, path: str, data: bytes, *, immutable: bool) -> bool:
        target = self._file(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp, 0o644)
                if not immutable:
                    os.replace(tmp, target)
                    return True
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    return _same_or_conflict(self, path, data)
                return True
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as exc:
            raise StoreError(f"cannot write {path} in {self.describe()}: {exc}") from exc

    def get(self, path: str, *, max_bytes: int | None = None) -> bytes | None:
        try:
            with self._file(path).open("rb") as source:
                data = source.read(-1 if max_bytes is None else max_bytes + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {path} in {self.describe()}: {exc}") from exc
        _too_large(path, len(data), max_bytes)
        return data

    def delete(self, path: str) -> None:
        try:
            self._file(path).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {path} in {self.describe()}: {exc}") from exc

    def close(self) -> None:
        pass


# --- Azure Blob Storage ---------------------------------------------------------------------------


def _azure_client_options(connect_timeout: float, read_timeout: float) -> dict[str, Any]:
    from azure.storage.blob import ExponentialRetry

    # The SDK's own retries stay short (its default waits 15 s, then 18 s): a blip is retried
    # here, an outage by the publisher, with its own backoff, from what the store has.
    retry = ExponentialRetry(initial_backoff=0, increment_base=2, retry_total=2, random_jitter_range=1)
    return {"connection_timeout": connect_timeout, "read_timeout": read_timeout, "retry_policy": retry}


class AzureBlobStore:
    """Block blobs in one container of an Azure Storage account (or Azurite), under ``prefix``."""

    def __init__(self, container: ContainerClient, *, prefix: str = "", label: str | None = None) -> None:
        self.container = container
        self.prefix = _check_prefix(prefix)
        self._label = label or f"azure://{container.account_name}/{container.container_name}/{self.prefix}".rstrip("/")

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        container: str,
        *,
        prefix: str = "",
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    ) -> AzureBlobStore:
        from azure.storage.blob import ContainerClient

        client = ContainerClient.from_connection_string(
            connection_string, container, **_azure_client_options(connect_timeout, read_timeout)
        )
        return cls(client, prefix=prefix)

    @classmethod
    def from_account_url(
        cls,
        account_url: str,
        container: str,
        *,
        credential: Any = None,
        prefix: str = "",
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    ) -> AzureBlobStore:
        """``credential``: anything the SDK takes (a TokenCredential, a SAS token, an account
        key dict); None: ``azure.identity.DefaultAzureCredential`` (managed identity, the
        environment's service principal, ``az login``)."""
        from azure.storage.blob import ContainerClient

        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        client = ContainerClient(
            account_url, container, credential=credential, **_azure_client_options(connect_timeout, read_timeout)
        )
        return cls(client, prefix=prefix)

    def describe(self) -> str:
        return self._label

    def _failed(self, doing: str, path: str, exc: Exception) -> StoreError:
        status = getattr(exc, "status_code", None)
        if status:
            detail = f"HTTP {status} {getattr(exc, 'error_code', None) or getattr(exc, 'reason', '')}".strip()
        else:
            detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        return StoreError(f"cannot {doing} {path} in {self.describe()}: {detail}")

    def create_container(self, *, public_read: bool = False) -> None:
        """Make the container if it is missing; ``public_read`` lets anyone read its blobs (a
        static HTTP host of the log), never list them."""
        from azure.core.exceptions import AzureError, ResourceExistsError

        try:
            self.container.create_container(public_access="blob" if public_read else None)
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise self._failed("create the container for", "the log", exc) from exc

    def put(self, path: str, data: bytes, *, immutable: bool) -> bool:
        from azure.core.exceptions import AzureError, ResourceExistsError
        from azure.storage.blob import ContentSettings

        key = self.prefix + check_path(path)
        settings = ContentSettings(content_type=content_type(path), cache_control=cache_control(immutable))
        try:
            # overwrite=False sends If-None-Match: * (create only)
            self.container.upload_blob(key, data, overwrite=not immutable, content_settings=settings)
        except ResourceExistsError as exc:
            if not immutable:
                raise self._failed("write", path, exc) from exc
            return _same_or_conflict(self, path, data)
        except AzureError as exc:
            raise self._failed("write", path, exc) from exc
        return True

    def get(self, path: str, *, max_bytes: int | None = None) -> bytes | None:
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

        key = self.prefix + check_path(path)
        try:
            if max_bytes is None:
                data = self.container.download_blob(key).readall()
            else:
                data = self.container.download_blob(key, offset=0, length=max_bytes + 1).readall()
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            if exc.status_code == 416:  # a range on an empty blob
                return b""
            raise self._failed("read", path, exc) from exc
        except AzureError as exc:
            raise self._failed("read", path, exc) from exc
        _too_large(path, len(data), max_bytes)
        return bytes(data)

    def delete(self, path: str) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            self.container.delete_blob(self.prefix + check_path(path))
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise self._failed("delete", path, exc) from exc

    def close(self) -> None:
        self.container.close()


# --- S3-compatible buckets ---------------------------------------------------------------------------


class S3Store:
    """Objects in an S3 bucket (AWS, or any S3-compatible server given ``endpoint_url``), under
    ``prefix``. Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, an instance role) unless
    a ``client`` is given.

    Create-only writes use ``If-None-Match: *`` (S3 since 2024; MinIO, Ceph RGW, R2 too). A
    server that ignores it overwrites a tile with the same bytes, which changes nothing.

    The publisher's credentials need s3:PutObject, s3:GetObject, s3:DeleteObject and
    s3:ListBucket (without which S3 answers 403, not 404, for a missing object)."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str | None = None,
        client: Any = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": 2, "mode": "standard"},  # the publisher retries with its own backoff
                s3={"addressing_style": addressing_style or ("path" if endpoint_url else "auto")},
            )
            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self.client = client
        self.bucket = bucket
        self.prefix = _check_prefix(prefix)
        where = f" at {endpoint_url}" if endpoint_url else ""
        self._label = f"s3://{bucket}/{self.prefix}".rstrip("/") + where

    def describe(self) -> str:
        return self._label

    def _failed(self, doing: str, path: str, exc: Exception) -> StoreError:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            error = response.get("Error", {})
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = f"HTTP {status} {error.get('Code', '')}: {error.get('Message', '')}".strip(": ")
        else:
            detail = str(exc)[:200] or type(exc).__name__
        return StoreError(f"cannot {doing} {path} in {self.describe()}: {detail}")

    @staticmethod
    def _code(exc: Exception) -> tuple[str, int | None]:
        response = getattr(exc, "response", None) or {}
        return str(response.get("Error", {}).get("Code", "")), response.get("ResponseMetadata", {}).get("HTTPStatusCode")

    def put(self, path: str, data: bytes, *, immutable: bool) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.prefix + check_path(path)
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type(path),
            "CacheControl": cache_control(immutable),
        }
        if immutable:
            args["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**args)
        except ClientError as exc:
            code, status = self._code(exc)
            if immutable and (code == "PreconditionFailed" or status == 412):
                return _same_or_conflict(self, path, data)
            raise self._failed("write", path, exc) from exc
        except BotoCoreError as exc:
            raise self._failed("write", path, exc) from exc
        return True

    def get(self, path: str, *, max_bytes: int | None = None) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.prefix + check_path(path)
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if max_bytes is not None:
            args["Range"] = f"bytes=0-{max_bytes}"
        try:
            answer = self.client.get_object(**args)
            data = answer["Body"].read()
        except ClientError as exc:
            code, status = self._code(exc)
            if code in ("NoSuchKey", "404") or status == 404:
                return None
            if code == "InvalidRange" or status == 416:  # a range on an empty object
                return b""
            raise self._failed("read", path, exc) from exc
        except BotoCoreError as exc:
            raise self._failed("read", path, exc) from exc
        _too_large(path, len(data), max_bytes)
        return bytes(data)

    def delete(self, path: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + check_path(path))
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("delete", path, exc) from exc

    def close(self) -> None:
        self.client.close()


# --- from a URL -------------------------------------------------------------------------------------


def _connection_string_account(connection_string: str) -> str | None:
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() == "accountname":
            return value.strip()
    return None


def open_store(
    url: str,
    *,
    environ: dict[str, str] | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    create_directory: bool = True,
) -> ObjectStore:
    """The store a URL names:

    * ``azure://ACCOUNT/CONTAINER[/PREFIX][?endpoint=URL]``: Azure Blob Storage. Credentials:
      ``AZURE_STORAGE_CONNECTION_STRING`` if set (its AccountName must be ACCOUNT; this is how
      Azurite is reached), else the account key ``AZURE_STORAGE_KEY``, else the SAS token
      ``AZURE_STORAGE_SAS_TOKEN``, else ``DefaultAzureCredential`` (managed identity, a service
      principal in ``AZURE_CLIENT_ID``/``AZURE_TENANT_ID``/``AZURE_CLIENT_SECRET``, ``az login``).
      ``endpoint`` replaces ``https://ACCOUNT.blob.core.windows.net`` (e.g. Azurite's
      ``http://127.0.0.1:10000/devstoreaccount1``).
    * ``s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION&addressing=path|virtual]``: an S3 or
      S3-compatible bucket; credentials from boto3's chain (``AWS_ACCESS_KEY_ID``, ...).
    * ``file:///DIR`` or a plain path: a local directory (for a static HTTP host).
    """
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    timeouts = {"connect_timeout": connect_timeout, "read_timeout": read_timeout}
    if parts.scheme == "azure":
        account = parts.hostname or ""
        container, _, prefix = parts.path.lstrip("/").partition("/")
        if not account or not container:
            raise ConfigError(f"{url!r}: an Azure tiles location is azure://ACCOUNT/CONTAINER[/PREFIX]", code="bad_store_url")
        connection_string = env.get("AZURE_STORAGE_CONNECTION_STRING")
        if connection_string:
            named = _connection_string_account(connection_string)
            if named is not None and named != account:
                raise ConfigError(
                    f"{url!r} names storage account {account!r}, but AZURE_STORAGE_CONNECTION_STRING is for {named!r}",
                    code="bad_store_url",
                )
            return AzureBlobStore.from_connection_string(connection_string, container, prefix=unquote(prefix), **timeouts)
        account_url = query.get("endpoint") or f"https://{account}.blob.core.windows.net"
        credential: Any = None
        if env.get("AZURE_STORAGE_KEY"):
            credential = {"account_name": account, "account_key": env["AZURE_STORAGE_KEY"]}
        elif env.get("AZURE_STORAGE_SAS_TOKEN"):
            credential = env["AZURE_STORAGE_SAS_TOKEN"]
        return AzureBlobStore.from_account_url(account_url, container, credential=credential, prefix=unquote(prefix), **timeouts)
    if parts.scheme == "s3":
        bucket = parts.hostname or ""
        if not bucket:
            raise ConfigError(f"{url!r}: an S3 tiles location is s3://BUCKET[/PREFIX]", code="bad_store_url")
        addressing = query.get("addressing")
        if addressing not in (None, "path", "virtual", "auto"):
            raise ConfigError(f"{url!r}: addressing is path, virtual or auto", code="bad_store_url")
        return S3Store(
            bucket,
            prefix=unquote(parts.path),
            endpoint_url=query.get("endpoint"),
            region=query.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            addressing_style=addressing,
            **timeouts,
        )
    if parts.scheme == "file":
        return LocalDirectoryStore(unquote(parts.path), create=create_directory)
    if parts.scheme == "" and url:
        return LocalDirectoryStore(url, create=create_directory)
    raise ConfigError(
        f"{url!r} is not a tiles location: azure://ACCOUNT/CONTAINER[/PREFIX], s3://BUCKET[/PREFIX] or a directory",
        code="bad_store_url",
    )
