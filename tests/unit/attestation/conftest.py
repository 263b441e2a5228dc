"""Fixtures for the SGX tests: a simulated SGX platform and one of its quotes."""

from __future__ import annotations

import base64

import pytest
from sgx_helpers import REPORT_DATA

from duet.tee.simulated import SimulatedSgxTee


@pytest.fixture(scope="session")
def sim_tee(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSgxTee:
    return SimulatedSgxTee(tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="session")
def sim_quote(sim_tee: SimulatedSgxTee) -> bytes:
    return base64.b64decode(sim_tee.quote(REPORT_DATA)["quote"])
