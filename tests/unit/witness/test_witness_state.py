"""The witness's state on disk: made at the first start, the same after a restart, one process at
a time, written atomically, and refused (never silently restarted from blank) when damaged."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from witness_helpers import WITNESS_NAME, FakeLog

from duet import keys
from duet.errors import ConfigError
from duet.ledger.checkpoint import CosignatureVerifier, witness_vkey
from duet.ledger.note import NoteSigner, parse_vkey
from duet.witness import state as state_module
from duet.witness.server import Witness, parse_add_checkpoint
from duet.witness.state import (
    KEY_FILE,
    STATE_FILE,
    Cosigned,
    RollbackRefused,
    StaleState,
    StateBusy,
    StateDamaged,
    StateWriteFailed,
    WitnessState,
    WitnessStateError,
    configured_logs,
    default_name,
    parse_log_option,
)


def cosign(state: WitnessState, log: FakeLog, old: int) -> str:
    witness = Witness(state, {log.origin: (log.signer.verifier(),)})
    return witness.add_checkpoint(parse_add_checkpoint(log.body(old)))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the first start and later ones --------------------------------------------------------------


def test_the_first_start_makes_a_private_key_and_a_state(state_dir: Path) -> None:
    with WitnessState.open(state_dir, name=WITNESS_NAME) as state:
        assert mode(state_dir) == 0o700
        assert mode(state_dir / KEY_FILE) == 0o600
        assert mode(state_dir / STATE_FILE) == 0o600
        key = keys.load_private_key(state_dir / KEY_FILE)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        assert state.vkey == witness_vkey(WITNESS_NAME, key.public_key())
        assert parse_vkey(state.vkey).signature_type == 0x04  # cosignature/v1
        assert json.loads((state_dir / STATE_FILE).read_text())["logs"] == {}


def test_a_restart_is_the_same_witness_with_what_it_cosigned(state_dir: Path, log: FakeLog) -> None:
    with WitnessState.open(state_dir, name=WITNESS_NAME) as state:
        vkey = state.vkey
        cosign(state, log, 0)
    with WitnessState.open(state_dir) as again:  # no --name: the recorded one
        assert again.vkey == vkey and again.name == WITNESS_NAME
        latest = again.latest(log.origin)
        assert latest is not None and (latest.size, latest.root) == (10, log.tree.root())


def test_the_default_name_comes_from_the_host_and_is_then_recorded(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module.socket, "getfqdn", lambda: "Witness-Host.Example.ORG")
    assert default_name() == "witness-host.example.org/witness"
    with WitnessState.open(state_dir) as state:
        assert state.name == "witness-host.example.org/witness"
    monkeypatch.setattr(state_module.socket, "getfqdn", lambda: "renamed.example.org")
    with WitnessState.open(state_dir) as state:
        assert state.name == "witness-host.example.org/witness"  # the host was renamed, not the witness


def test_a_host_name_that_cannot_name_a_key_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module.socket, "getfqdn", lambda: "with space")
    monkeypatch.setattr(state_module.socket, "gethostname", lambda: "")
    assert default_name() == "localhost/witness"


def test_another_name_than_the_recorded_one_is_refused(state_dir: Path) -> None:
    WitnessState.open(state_dir, name=WITNESS_NAME).close()
    with pytest.raises(WitnessStateError) as refused:
        WitnessState.open(state_dir, name="other.test/w")
    assert refused.value.code == "witness_name_mismatch" and WITNESS_NAME in refused.value.message


@pytest.mark.parametrize("name", ["", "with space", "with+plus", "tab\there"])
def test_names_that_are_no_key_names_are_refused(state_dir: Path, name: str) -> None:
    with pytest.raises(WitnessStateError) as refused:
        WitnessState.open(state_dir, name=name)
    assert refused.value.code == "bad_witness_name"
    assert not (state_dir / KEY_FILE).exists()


def test_one_process_at_a_time(state_dir: Path) -> None:
    with WitnessState.open(state_dir, name=WITNESS_NAME) as state:
        with pytest.raises(StateBusy) as refused:
            WitnessState.open(state_dir)
        assert str(os.getpid()) in refused.value.message
        reader = WitnessState.open(state_dir, read_only=True)  # duet witness key, while it serves
        assert reader.vkey == state.vkey
        with pytest.raises(StateWriteFailed):
            reader.record(None, Cosigned(FakeLog().grow(1).checkpoint(), b"", 1))
    WitnessState.open(state_dir).close()  # released on close


def test_read_only_makes_a_new_state_like_a_first_start(state_dir: Path) -> None:
    reader = WitnessState.open(state_dir, name=WITNESS_NAME, read_only=True)
    with WitnessState.open(state_dir) as state:
        assert state.vkey == reader.vkey


def test_leftover_temporary_files_are_removed(state_dir: Path) -> None:
    WitnessState.open(state_dir, name=WITNESS_NAME).close()
    leftover = state_dir / ".state.json.123.abcd.tmp"
    leftover.write_text("half written")
    WitnessState.open(state_dir).close()
    assert not leftover.exists()


# --- record --------------------------------------------------------------------------------------


def test_record_is_a_compare_and_swap(state: WitnessState, log: FakeLog) -> None:
    cosign(state, log, 0)
    first = state.latest(log.origin)
    log.grow(2)
    cosign(state, log, 10)
    second = state.latest(log.origin)
    assert first is not None and second is not None and second.size == 12
    with pytest.raises(StaleState) as stale:
        state.record(first, Cosigned(log.checkpoint(), second.note, second.timestamp))  # checked against 10, but it is 12 now
    assert stale.value.current == second


def test_record_never_rolls_back(state: WitnessState, log: FakeLog) -> None:
    cosign(state, log, 0)
    latest = state.latest(log.origin)
    assert latest is not None
    with pytest.raises(RollbackRefused):
        state.record(latest, Cosigned(log.checkpoint(5), latest.note, latest.timestamp))
    fork = log.fork(3).grow(7)
    with pytest.raises(RollbackRefused):
        state.record(latest, Cosigned(fork.checkpoint(), latest.note, latest.timestamp))
    assert state.latest(log.origin) == latest


def test_a_failed_write_stops_all_cosigning_until_a_restart(
    state_dir: Path, log: FakeLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    with WitnessState.open(state_dir, name=WITNESS_NAME) as state:
        cosign(state, log, 0)

        def disk_full(path: Path, data: bytes, mode: int = 0o600) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(state_module, "write_atomically", disk_full)
        log.grow(1)
        with pytest.raises(Exception) as failed:
            cosign(state, log, 10)
        assert getattr(failed.value, "status", None) == 500
        monkeypatch.undo()
        with pytest.raises(Exception) as again:  # the disk is back, but what is on it is unknown
            cosign(state, log, 10)
        assert getattr(again.value, "status", None) == 500
        assert state.latest(log.origin).size == 10  # type: ignore[union-attr]
    with WitnessState.open(state_dir) as restarted:
        cosign(restarted, log, 10)
        assert restarted.latest(log.origin).size == 11  # type: ignore[union-attr]


def test_the_state_file_is_replaced_never_rewritten_in_place(state: WitnessState, log: FakeLog) -> None:
    inode = (state.state_dir / STATE_FILE).stat().st_ino
    cosign(state, log, 0)
    assert (state.state_dir / STATE_FILE).stat().st_ino != inode
    assert sorted(p.name for p in state.state_dir.iterdir()) == sorted([KEY_FILE, STATE_FILE, "lock"])


# --- damage: refused, never a blank start --------------------------------------------------------


@pytest.fixture
def witnessed(state_dir: Path, log: FakeLog) -> Path:
    """A state directory whose witness cosigned the log at size 10."""
    with WitnessState.open(state_dir, name=WITNESS_NAME) as state:
        cosign(state, log, 0)
    return state_dir


def rewrite(state_dir: Path, change: object) -> None:
    """Edit state.json and fix its checksum, as someone who knows the format but not the key could."""
    path = state_dir / STATE_FILE
    document = json.loads(path.read_text())
    del document["sha256"]
    change(document)  # type: ignore[operator]
    document["sha256"] = state_module.hashlib.sha256(state_module._canonical(document)).hexdigest()
    path.write_text(json.dumps(document))


def refused_start(state_dir: Path) -> str:
    with pytest.raises(StateDamaged) as refused:
        WitnessState.open(state_dir)
    assert refused.value.code == "witness_state_damaged"
    return refused.value.message


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"garbage",
        b"{",
        b"[]",
        b"\xff\xfe",
        b'{"format": "duet.witness.state/1", "name": "a", "logs": {}}',  # no checksum
    ],
)
def test_a_state_file_that_is_not_the_state_is_refused(witnessed: Path, damage: bytes) -> None:
    (witnessed / STATE_FILE).write_bytes(damage)
    assert "damaged" in refused_start(witnessed)


def test_a_truncated_state_file_is_refused(witnessed: Path) -> None:
    path = witnessed / STATE_FILE
    path.write_bytes(path.read_bytes()[:-40])
    assert "damaged" in refused_start(witnessed)


def test_a_flipped_bit_is_refused(witnessed: Path) -> None:
    path = witnessed / STATE_FILE
    data = bytearray(path.read_bytes())
    data[data.index(b'"size": 10') + 9] ^= 0x01  # 10 -> 11
    path.write_bytes(bytes(data))
    assert "does not match its sha256" in refused_start(witnessed)


def test_an_edited_size_with_a_fixed_checksum_is_refused(witnessed: Path, log: FakeLog) -> None:
    rewrite(witnessed, lambda d: d["logs"][log.origin].update(size=3))
    assert "does not match its checkpoint note" in refused_start(witnessed)


def test_an_edited_checkpoint_with_a_fixed_checksum_is_refused(witnessed: Path, log: FakeLog) -> None:
    """Rolling the witness back to an earlier checkpoint of the log needs the witness's key."""
    earlier = log.checkpoint(3)

    def roll_back(document: dict) -> None:  # type: ignore[type-arg]
        record = document["logs"][log.origin]
        record["note"] = record["note"].replace(log.checkpoint().body(), earlier.body())
        record.update(size=3, root=state_module.b64encode(earlier.root))

    rewrite(witnessed, roll_back)
    assert "does not verify" in refused_start(witnessed)


def test_a_record_without_the_witness_cosignature_is_refused(witnessed: Path, log: FakeLog) -> None:
    rewrite(witnessed, lambda d: d["logs"][log.origin].update(note=log.note().decode()))
    assert "no cosignature of this witness" in refused_start(witnessed)


def test_a_record_under_another_origin_is_refused(witnessed: Path, log: FakeLog) -> None:
    rewrite(witnessed, lambda d: d["logs"].update({"other.example/log": d["logs"].pop(log.origin)}))
    assert "does not match its checkpoint note" in refused_start(witnessed)


def test_another_key_is_refused(witnessed: Path) -> None:
    keys.write_private_key(witnessed / KEY_FILE, ed25519.Ed25519PrivateKey.generate())
    assert "is witness.key the key it was made with?" in refused_start(witnessed)


@pytest.mark.parametrize("content", [b"", b"not a key", keys.private_pem(ec.generate_private_key(ec.SECP256R1()))])
def test_a_damaged_key_is_refused(witnessed: Path, content: bytes) -> None:
    (witnessed / KEY_FILE).write_bytes(content)
    assert KEY_FILE in refused_start(witnessed)


def test_a_key_without_its_state_is_refused(witnessed: Path) -> None:
    (witnessed / STATE_FILE).unlink()
    message = refused_start(witnessed)
    assert "no state.json" in message and "NEW witness" in message
    assert not (witnessed / STATE_FILE).exists()  # nothing made up


def test_a_state_that_cosigned_without_its_key_is_refused(witnessed: Path) -> None:
    (witnessed / KEY_FILE).unlink()
    assert "key" in refused_start(witnessed)
    assert not (witnessed / KEY_FILE).exists()


def test_a_first_start_interrupted_before_the_key_is_completed(state_dir: Path) -> None:
    WitnessState.open(state_dir, name=WITNESS_NAME).close()
    (state_dir / KEY_FILE).unlink()  # as if killed between the state's write and the key's
    with WitnessState.open(state_dir) as state:
        assert state.name == WITNESS_NAME and (state_dir / KEY_FILE).exists()


# --- the logs it is told about -------------------------------------------------------------------


def test_log_options() -> None:
    log = FakeLog("duet.controller/" + "ab" * 32)
    assert parse_log_option(f"{log.origin}={log.vkey}") == (log.origin, log.signer.verifier())
    assert parse_log_option(log.vkey) == (log.origin, log.signer.verifier())  # origin = key name
    other_name = NoteSigner("log-key", log.key)
    assert parse_log_option(f"example.com/log={other_name.vkey}") == ("example.com/log", other_name.verifier())
    rotated = NoteSigner(log.origin, ed25519.Ed25519PrivateKey.generate())
    logs = configured_logs([log.vkey, f"{log.origin}={rotated.vkey}", log.vkey])
    assert logs == {log.origin: (log.signer.verifier(), rotated.verifier())}


@pytest.mark.parametrize(
    "value",
    [
        "",
        "example.com/log=",
        "example.com/log=not-a-vkey",
        "example.com/log+deadbeef+AAAA",
    ],
)
def test_bad_log_options_are_refused(value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_log_option(value)
    assert refused.value.code == "bad_log"


def test_a_witness_key_is_no_log_key() -> None:
    vkey = CosignatureVerifier("witness.example/w", ed25519.Ed25519PrivateKey.generate().public_key()).vkey
    with pytest.raises(ConfigError):
        parse_log_option(f"example.com/log={vkey}")
