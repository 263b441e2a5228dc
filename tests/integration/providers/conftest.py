"""Fixtures for cloud-provider tests: fake clouds on loopback and a controller-side SSH key."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # make `tests.fakes` importable however pytest was started
    sys.path.insert(0, str(ROOT))

from tests.fakes.fake_arm import FakeArm  # noqa: E402
from tests.fakes.sshd import free_port  # noqa: E402


@dataclass(frozen=True)
class ClientKey:
    private: str
    public: str


@pytest.fixture
def client_key() -> ClientKey:
    """The per-CVM login key the controller would generate."""
    key = ed25519.Ed25519PrivateKey.generate()
    return ClientKey(
        private=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ).decode(),
        public=key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode(),
    )


@pytest.fixture
def fake_arm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeArm]:
    fake = FakeArm(tmp_path / "arm", ssh_port=free_port()).start()
    for k, v in fake.identity_env().items():  # azure-identity reads these from the process environment
        monkeypatch.setenv(k, v)
    for k in ("MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT"):
        monkeypatch.delenv(k, raising=False)
    yield fake
    fake.stop()


@pytest.fixture
def azure_env(fake_arm: FakeArm) -> dict[str, str]:
    """Seed-style configuration pointing at the fake; the admin user is us, so sshd can log us in."""
    return fake_arm.env() | {"DUET_AZURE_ADMIN_USERNAME": getpass.getuser()}
