"""A first start that stops half-way must not brick the state directory (found by attacking an
earlier version: a mistyped --owner-key left a signing key without sealed state, and every later
start was refused as tampering), while a deleted anchor stays tampering."""

from __future__ import annotations

from pathlib import Path

import pytest

from duet import keys
from duet.controller.identity import SIGNING_KEY_FILE
from duet.controller.runtime import open_controller
from duet.controller.sealed_state import ANCHOR_FILE, SealedStateError
from duet.controller.settings import Settings
from duet.errors import ConfigError
from duet.testing.fakes import FakeProvider, FakeSsh


def settings(tmp_path: Path, *owner_keys: Path) -> Settings:
    return Settings(
        state_dir=tmp_path / "state", owner_keys=owner_keys, providers=("fake",), tee="none", trust_simulated_cvm=True
    )


def open_(s: Settings) -> str:
    controller = open_controller(s, providers={"fake": FakeProvider()}, ssh=FakeSsh())
    controller.store.close()
    return controller.identity.controller_id


@pytest.fixture
def owner_pub(tmp_path: Path) -> Path:
    return keys.write_key_pair(tmp_path / "owner.pem", keys.generate("ed25519"))


def test_a_mistyped_owner_key_at_first_start_leaves_nothing_behind(tmp_path: Path, owner_pub: Path) -> None:
    with pytest.raises(ConfigError):
        open_(settings(tmp_path, tmp_path / "ownr.pem.pub"))
    assert not (tmp_path / "state" / "sealed" / SIGNING_KEY_FILE).exists()
    first = open_(settings(tmp_path, owner_pub))
    assert open_(settings(tmp_path)) == first  # and it is the controller from then on


def test_a_first_start_cut_before_its_anchor_starts_afresh(tmp_path: Path, owner_pub: Path) -> None:
    sealed = tmp_path / "state" / "sealed"
    sealed.mkdir(parents=True)
    keys.write_private_key(sealed / (SIGNING_KEY_FILE + ".pending"), keys.generate("ed25519"))  # a crash left it
    controller_id = open_(settings(tmp_path, owner_pub))
    assert (sealed / SIGNING_KEY_FILE).exists() and not (sealed / (SIGNING_KEY_FILE + ".pending")).exists()
    assert open_(settings(tmp_path)) == controller_id


def test_a_deleted_anchor_is_still_tampering(tmp_path: Path, owner_pub: Path) -> None:
    open_(settings(tmp_path, owner_pub))
    (tmp_path / "state" / "sealed" / ANCHOR_FILE).unlink()
    with pytest.raises(SealedStateError, match="is missing, but this controller's signing key exists"):
        open_(settings(tmp_path, owner_pub))
