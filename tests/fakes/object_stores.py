"""Real object storage servers on loopback for the tile publication tests.

* ``Azurite``: Microsoft's Azure Storage emulator (npm package ``azurite``), blob service only,
  with its data in a directory so that it can be stopped and started again with what it held.
  ``make deps`` installs it under ``.venv/node`` (``DUET_AZURITE_BLOB`` names another binary).
* ``MotoS3``: moto's server (``moto[server]`` from PyPI, the dev extra), an S3-compatible
  endpoint in its own process, so it can be frozen (SIGSTOP) to play a store that hangs. moto
  implements what the publisher relies on: create-only writes (``If-None-Match: *`` answered
  412), ranged reads, bucket policies for anonymous reads, delete.

Neither is a mock of the SDKs: azure-storage-blob and boto3 talk HTTP to them as to the clouds.
A server that is not installed skips its tests in a developer's shell and fails them in CI
(``CI`` set), where ``make test`` installs both.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from duet.testing.process import free_port

REPO = Path(__file__).resolve().parents[2]

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's fixed development account and key (published in its documentation)."""


def unavailable(what: str, how: str) -> NoReturn:
    message = f"{what} is not installed ({how})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: `make test` installs it, so CI must have it")
    pytest.skip(message)


def azurite_blob_binary() -> str | None:
    for candidate in (
        os.environ.get("DUET_AZURITE_BLOB"),
        str(REPO / ".venv" / "node" / "node_modules" / ".bin" / "azurite-blob"),
        shutil.which("azurite-blob"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{log.read_text(errors='replace')[-2000:]}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not answer at {url} within {timeout} s:\n{log.read_text(errors='replace')[-2000:]}")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGCONT)  # a frozen server cannot handle SIGTERM
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class Azurite:
    """Azurite's blob service on 127.0.0.1, its data kept in ``workdir`` across restarts."""

    def __init__(self, workdir: Path) -> None:
        binary = azurite_blob_binary()
        if binary is None or shutil.which("node") is None:
            unavailable("Azurite (npm package azurite)", "make deps installs it under .venv/node")
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def start(self, timeout: float = 30.0) -> None:
        log = self.workdir / "azurite.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    self.binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                    "--location", str(self.workdir / "data"),
                    "--skipApiVersionCheck",  # the SDK may speak a newer API version than this Azurite
                    "--loose", "--disableTelemetry", "--silent",
                ],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        _wait_http(f"http://127.0.0.1:{self.port}/", self.process, log, timeout)

    def stop(self) -> None:
        _stop(self.process)
        self.process = None

    def container_url(self, container: str) -> str:
        return f"{self.blob_endpoint}/{container}"


class MotoS3:
    """moto's S3-compatible server on 127.0.0.1, in its own process (state in memory)."""

    region = "us-east-1"

    def __init__(self, workdir: Path) -> None:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            unavailable("moto's server (moto[server])", "pip install -e '.[dev]' installs it")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        log = self.workdir / "moto.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        _wait_http(self.endpoint + "/", self.process, log, timeout)

    def freeze(self) -> None:
        """The server stops answering (connections are accepted, nothing comes back)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        _stop(self.process)
        self.process = None

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id="test", aws_secret_access_key="test",
            config=Config(s3={"addressing_style": "path"}),
        )  # fmt: skip

    def public_bucket(self, bucket: str) -> None:
        """A bucket anyone may read objects from (not list), as a log's bucket is served."""
        client = self.client()
        client.create_bucket(Bucket=bucket)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}
            ],
        }
        client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
        client.close()

    def bucket_url(self, bucket: str) -> str:
        return f"{self.endpoint}/{bucket}"
