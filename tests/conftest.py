"""Shared fixtures: an owner key, a real controller process on loopback, a client.

The ``controller`` fixture serves plain HTTP with TEE none (``--no-tls``), so that tests can also
talk raw HTTP to it; the ``client`` fixture therefore uses it with ``insecure=True`` (identity
taken as presented, every answer still checked against that key). Attestation, ``duet verify``,
pinning and TLS are tested against HTTPS controllers with the simulated TEE in
tests/integration/test_verify.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from duet.client.sdk import DuetClient
from duet.client.trust import TrustStore
from duet.testing.process import ControllerProcess
from support import Owner, make_owner, serving


@pytest.fixture
def owner(tmp_path: Path) -> Owner:
    return make_owner(tmp_path)


@pytest.fixture
def controller(tmp_path: Path, owner: Owner) -> Iterator[ControllerProcess]:
    with serving(ControllerProcess(tmp_path / "state", [owner.pub_path])) as process:
        yield process


@pytest.fixture
def client(tmp_path: Path, controller: ControllerProcess, owner: Owner) -> Iterator[DuetClient]:
    with DuetClient(controller.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as duet_client:
        yield duet_client
