"""``duet audit --witness VKEY ... --witness-quorum K`` against real controller processes that
submit their checkpoints to two witnesses (tests/fakes/fake_witness.py, C2SP tlog-witness on
loopback) (issue 13, item 4 and its first must-hold).

* Both witnesses up: a quorum of two passes and the report names both signers.
* One witness down (and the controller restarted, so it holds no checkpoint both cosigned): a
  quorum of two is refused, naming the missing witness; a quorum of one passes.
* Two copies of one controller's state run side by side, both pointed at the same witnesses:
  only the first history gets cosigned, and an audit of the other copy with the quorum policy
  never passes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.fake_witness import FakeWitness

from duet.client.checkpoints import QuorumNotMet, controller_log_verifier, verify_checkpoint_quorum
from duet.client.sdk import DuetClient
from duet.client.trust import TrustStore
from duet.ledger.heads import parse_head
from duet.ledger.note import NoteVerifier
from duet.testing.process import ControllerProcess
from support import Owner, serving, wait_until

WAIT_S = 30.0


def duet_audit(url: str, home: Path, *args: str, json_output: bool = True) -> tuple[int, Any, str]:
    """The real CLI; the user's state (last heads, audit checkpoints) lives in ``home``."""
    proc = subprocess.run(
        [sys.executable, "-m", "duet", "--url", url, *(["--json"] if json_output else []), "audit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DUET_HOME": str(home), "DUET_INSECURE": "1", "COLUMNS": "250"},
    )
    if not json_output:
        return proc.returncode, proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def codes(report: dict[str, Any]) -> list[str]:
    return [finding["code"] for finding in report["findings"]]


def log_verifier(client: DuetClient) -> NoteVerifier:
    pin = client.pin()
    return controller_log_verifier(pin.controller, pin.public_key())


def cosigned_by(client: DuetClient, policy: list[tuple[str, str]], quorum: int) -> bool:
    """Whether the controller's latest checkpoint, at its head's size, meets the policy."""
    try:
        checkpoint, _ = verify_checkpoint_quorum(
            client.checkpoint(), log_verifier=log_verifier(client), witnesses=policy, quorum=quorum
        )
    except QuorumNotMet:
        return False
    return checkpoint.size == parse_head(client.head()).tree_size


@pytest.fixture
def witnesses() -> Iterator[tuple[FakeWitness, FakeWitness]]:
    one, two = FakeWitness("witness.example/w1").start(), FakeWitness("witness.example/w2").start()
    try:
        yield one, two
    finally:
        one.stop()
        two.stop()


def test_a_quorum_of_two_passes_naming_both_then_refuses_when_one_is_down(
    tmp_path: Path, client: DuetClient, controller: ControllerProcess, witnesses: tuple[FakeWitness, FakeWitness]
) -> None:
    one, two = witnesses
    verifier = log_verifier(client)
    one.trust(verifier), two.trust(verifier)
    policy = [(one.name, one.vkey), (two.name, two.vkey)]
    controller.stop()
    controller.extra_args = ("--witness", one.option, "--witness", two.option)
    controller.start()
    wait_until(lambda: cosigned_by(client, policy, 2), "both witnesses to cosign the latest checkpoint")

    home = tmp_path / "auditor"
    options = ("--witness", one.vkey, "--witness", two.vkey)
    rc, report, _ = duet_audit(controller.url, home, *options, "--witness-quorum", "2")
    assert rc == 0 and report["ok"], report["findings"]
    assert report["witnesses"]["signed_by"] == [one.name, two.name] and report["witnesses"]["missing"] == []
    assert report["witnesses"]["checkpoint"]["tree_size"] == report["head"]["tree_size"]
    rc, out, _ = duet_audit(controller.url, home, *options, json_output=False)  # default quorum: all of them
    said = " ".join(out.split())
    assert (
        rc == 0
        and f"✓ witnessed: the checkpoint of {report['head']['tree_size']} entries is cosigned by {one.name}, {two.name}" in said
    )

    two.stop()  # one witness down
    controller.restart()  # a new entry; the controller keeps no checkpoint cosigned by both any more
    wait_until(lambda: cosigned_by(client, policy[:1], 1), "the remaining witness to cosign the latest checkpoint")

    rc, refused, _ = duet_audit(controller.url, home, *options, "--witness-quorum", "2")
    assert rc == 3 and not refused["ok"] and codes(refused) == ["witness_quorum_not_met"]
    assert (refused["witnesses"]["signed_by"], refused["witnesses"]["missing"]) == ([one.name], [two.name])
    assert f"Not cosigned by: {two.name}" in refused["findings"][0]["message"]
    assert refused["timeline"] == [] and refused["checked"] == 0

    rc, passed, _ = duet_audit(controller.url, home, *options, "--witness-quorum", "1")
    assert rc == 0 and passed["ok"], passed["findings"]
    assert passed["witnesses"]["signed_by"] == [one.name] and passed["witnesses"]["missing"] == [two.name]
    assert passed["resumed_from"] is not None  # the incremental audit went on from the last clean one
    assert passed["checked"] == passed["head"]["tree_size"] - report["head"]["tree_size"]


def test_of_two_forked_copies_only_the_witnessed_history_passes_a_quorum(
    tmp_path: Path, client: DuetClient, controller: ControllerProcess, owner: Owner, witnesses: tuple[FakeWitness, FakeWitness]
) -> None:
    """The host copies the whole state directory and runs both copies, each pointed at the same
    two witnesses: each witness cosigns only the first checkpoint of a size it sees."""
    one, two = witnesses
    verifier = log_verifier(client)
    one.trust(verifier), two.trust(verifier)
    policy = [(one.name, one.vkey), (two.name, two.vkey)]
    flags = ("--witness", one.option, "--witness", two.option)
    options = ("--witness", one.vkey, "--witness", two.vkey, "--witness-quorum", "2")

    controller.stop()
    shutil.copytree(controller.state_dir, tmp_path / "copy")
    controller.extra_args = flags
    controller.start()  # history A
    wait_until(lambda: cosigned_by(client, policy, 2), "both witnesses to cosign history A")
    alice = tmp_path / "alice"  # audits the first copy
    rc, seen, _ = duet_audit(controller.url, alice, *options)
    assert rc == 0 and seen["witnesses"]["signed_by"] == [one.name, two.name]

    copy = ControllerProcess(tmp_path / "copy", [owner.pub_path], extra_args=flags)
    with serving(copy), DuetClient(copy.url, trust=TrustStore(tmp_path / "user-b"), insecure=True) as other:
        assert other.pin().controller == client.pin().controller  # one identity, two histories
        wait_until(
            lambda: all(any(s.status == 409 for s in w.seen) for w in witnesses) and copy.log().count("(a fork)") >= 2,
            "both witnesses to refuse the second history",
        )
        bob = tmp_path / "bob"  # has only ever seen the second copy: the witnesses alone tell him
        for k in ("2", "1"):
            rc, report, _ = duet_audit(copy.url, bob, *options[:-1], k)
            assert rc == 3 and not report["ok"] and "witness_quorum_not_met" in codes(report), report["findings"]
            assert report["witnesses"]["signed_by"] == [] and report["witnesses"]["missing"] == [one.name, two.name]
            assert not list((bob / "heads").glob("*.json"))  # its head was never adopted
        rc, report, _ = duet_audit(copy.url, alice, *options)  # alice also sees the fork itself
        assert rc == 3 and codes(report)[0] == "witness_quorum_not_met" and "fork" in codes(report)
        assert not report["ok"]

    rc, again, _ = duet_audit(controller.url, alice, *options)  # the witnessed history still passes
    assert rc == 0 and again["ok"], again["findings"]
