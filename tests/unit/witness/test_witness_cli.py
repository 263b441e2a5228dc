"""``duet witness key`` and the refusals of ``duet witness serve`` before it serves anything."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner
from witness_helpers import WITNESS_NAME, FakeLog

from duet.cli.main import app
from duet.ledger.checkpoint import CosignatureVerifier
from duet.witness.state import STATE_FILE, WitnessState

runner = CliRunner()


def test_key_makes_the_witness_and_prints_its_vkey(state_dir: Path) -> None:
    first = runner.invoke(app, ["witness", "key", "--state-dir", str(state_dir), "--name", WITNESS_NAME])
    assert first.exit_code == 0, first.output
    vkey = first.stdout.strip()
    assert CosignatureVerifier.from_vkey(vkey).name == WITNESS_NAME
    again = runner.invoke(app, ["--json", "witness", "key", "--state-dir", str(state_dir)])
    assert json.loads(again.stdout) == {"name": WITNESS_NAME, "vkey": vkey}
    with WitnessState.open(state_dir) as state:  # what serve will use
        assert state.vkey == vkey


def test_key_works_while_the_witness_serves(state: WitnessState) -> None:
    result = runner.invoke(app, ["witness", "key", "--state-dir", str(state.state_dir)])
    assert result.exit_code == 0 and result.stdout.strip() == state.vkey


def test_key_refuses_another_name(state: WitnessState) -> None:
    result = runner.invoke(app, ["witness", "key", "--state-dir", str(state.state_dir), "--name", "other.test/w"])
    assert result.exit_code == 1 and "witness_name_mismatch" in result.output


def test_serve_refuses_a_damaged_state(state_dir: Path, log: FakeLog) -> None:
    WitnessState.open(state_dir, name=WITNESS_NAME).close()
    (state_dir / STATE_FILE).write_text("{}")
    result = runner.invoke(app, ["witness", "serve", "--state-dir", str(state_dir), "--log", log.vkey])
    assert result.exit_code == 1 and "witness_state_damaged" in result.output


def test_serve_refuses_bad_logs(state_dir: Path) -> None:
    result = runner.invoke(app, ["witness", "serve", "--state-dir", str(state_dir), "--log", "example.com/log=nope"])
    assert result.exit_code == 1 and "bad_log" in result.output
    missing = runner.invoke(app, ["witness", "serve", "--state-dir", str(state_dir)])
    assert missing.exit_code != 0 and "--log" in missing.output


def test_serve_refuses_a_bad_listen_address(state_dir: Path, log: FakeLog) -> None:
    for listen in ("nowhere", "127.0.0.1:", "127.0.0.1:99999"):
        result = runner.invoke(app, ["witness", "serve", "--state-dir", str(state_dir), "--log", log.vkey, "--listen", listen])
        assert result.exit_code != 0 and "HOST:PORT" in result.output
