"""Fixtures of the witness's unit tests: a log (witness_helpers.FakeLog) and a witness state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from witness_helpers import WITNESS_NAME, FakeLog

from duet.witness.state import WitnessState


@pytest.fixture
def log() -> FakeLog:
    return FakeLog().grow(10)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "witness"


@pytest.fixture
def state(state_dir: Path) -> Iterator[WitnessState]:
    with WitnessState.open(state_dir, name=WITNESS_NAME) as opened:
        yield opened
