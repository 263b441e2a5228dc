"""Fixtures for the SNP tests: simulated AMDs (RSA keys are slow to make, so one per session)."""

from __future__ import annotations

import pytest

from duet.attestation.snp import SimulatedAmd


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimulatedAmd:
    return SimulatedAmd(tmp_path_factory.mktemp("sim-amd") / "milan")


@pytest.fixture(scope="session")
def sim_turin(tmp_path_factory: pytest.TempPathFactory) -> SimulatedAmd:
    return SimulatedAmd(tmp_path_factory.mktemp("sim-amd") / "turin", product="Turin")
