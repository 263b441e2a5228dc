"""Fixtures for the TDX tests: one simulated TDX platform per session."""

from __future__ import annotations

import pytest

from duet.attestation.tdx.simulated import SimulatedTdxPlatform, load_or_create_platform


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimulatedTdxPlatform:
    return load_or_create_platform(tmp_path_factory.mktemp("tdx") / "simulated-tdx")
