"""Checkpoints and witnesses with real controller processes (issue 13, items 3 and 4).

``GET /v1/ledger/checkpoint`` over HTTP and through the SDK; a host that copies a controller's
whole state directory and runs both copies, each pointed at the same two witnesses
(tests/fakes/fake_witness.py, in this process): the copies' histories differ from the first entry
each appends (its ``controller.started``), each witness cosigns only the first checkpoint of a
size it sees, so only one history gets a quorum of two; and duet's own witness
(``duet witness serve``) cosigning a controller's checkpoints.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.fakes.fake_witness import FakeWitness

from duet.client.checkpoints import (
    QuorumNotMet,
    check_checkpoint_matches_head,
    controller_log_verifier,
    verify_checkpoint_quorum,
)
from duet.client.sdk import DuetClient
from duet.client.trust import TrustStore
from duet.errors import UntrustedAnswer
from duet.ledger.checkpoint import parse_checkpoint, verify_checkpoint
from duet.ledger.heads import parse_head
from duet.ledger.note import NoteVerifier, parse_note
from duet.testing.process import ControllerProcess, free_port
from support import Owner, serving, wait_until

WAIT_S = 30.0


def log_verifier(client: DuetClient) -> NoteVerifier:
    pin = client.pin()
    return controller_log_verifier(pin.controller, pin.public_key())


@pytest.fixture
def witnesses() -> Iterator[tuple[FakeWitness, FakeWitness]]:
    one, two = FakeWitness("witness.example/w1").start(), FakeWitness("witness.example/w2").start()
    try:
        yield one, two
    finally:
        one.stop()
        two.stop()


def test_the_checkpoint_is_served_as_a_signed_note_that_follows_the_head(
    client: DuetClient, controller: ControllerProcess
) -> None:
    raw = httpx.get(controller.url + "/v1/ledger/checkpoint", timeout=10)
    assert raw.status_code == 200 and raw.headers["content-type"] == "text/plain; charset=utf-8"

    note = client.checkpoint()
    assert note == raw.content
    checkpoint = verify_checkpoint(note, log_verifier(client))
    head = parse_head(client.head())
    assert (checkpoint.size, checkpoint.root_hash) == (head.tree_size, head.root_hash)
    check_checkpoint_matches_head(checkpoint, head)

    answer = client.get("/v1/ledger/checkpoint", format="json")  # the signed JSON form: the SDK's answer checks apply
    assert answer["checkpoint"].encode() == note and answer["tree_size"] == checkpoint.size

    controller.restart()  # each start is a new entry
    later = verify_checkpoint(client.checkpoint(), log_verifier(client))
    assert later.size == checkpoint.size + 1
    head = parse_head(client.head())
    assert (later.size, later.root_hash) == (head.tree_size, head.root_hash)


def test_the_sdk_refuses_a_checkpoint_not_signed_by_the_pinned_controller(
    client: DuetClient, controller: ControllerProcess
) -> None:
    """A checkpoint altered on the way (here: served by another party) is refused."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from duet.ledger.checkpoint import sign_checkpoint

    genuine = parse_checkpoint(parse_note(client.checkpoint()).text)
    forged = sign_checkpoint(genuine, ed25519.Ed25519PrivateKey.generate())  # same text, another key

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/ledger/checkpoint":
            return httpx.Response(200, content=forged, headers={"content-type": "text/plain; charset=utf-8"})
        passed = real.send(request)  # everything else from the real controller (its identity, first)
        return httpx.Response(passed.status_code, headers=passed.headers, content=passed.read())

    with (
        httpx.Client() as real,
        DuetClient(controller.url, trust=client.trust, transport=httpx.MockTransport(handler), insecure=True) as other,
    ):
        assert other.pin().controller == client.pin().controller
        with pytest.raises(UntrustedAnswer) as refused:
            other.checkpoint()
    assert refused.value.code == "bad_checkpoint"


def test_two_copies_of_a_state_dir_get_at_most_one_checkpoint_cosigned_by_a_quorum(
    tmp_path: Path, client: DuetClient, controller: ControllerProcess, owner: Owner, witnesses: tuple[FakeWitness, FakeWitness]
) -> None:
    one, two = witnesses
    verifier = log_verifier(client)
    one.trust(verifier), two.trust(verifier)
    policy = [(one.name, one.vkey), (two.name, two.vkey)]
    flags = ("--witness", one.option, "--witness", two.option, "--witness-quorum", "2")

    controller.stop()
    shutil.copytree(controller.state_dir, tmp_path / "copy")  # the host copies the whole state, sealed state too
    controller.extra_args = flags
    controller.start()  # its controller.started entry is the first of history A

    def a_cosigned_by_both() -> bool:
        note = client.checkpoint()
        try:
            return (
                verify_checkpoint_quorum(note, log_verifier=verifier, witnesses=policy, quorum=2)[0].size
                == parse_head(client.head()).tree_size
            )
        except QuorumNotMet:
            return False

    wait_until(a_cosigned_by_both, "the first copy's checkpoint to be cosigned by both witnesses")
    note_a = client.checkpoint()
    checkpoint_a, signed_by = verify_checkpoint_quorum(note_a, log_verifier=verifier, witnesses=policy, quorum=2)
    assert signed_by == [one.name, two.name]

    copy = ControllerProcess(tmp_path / "copy", [owner.pub_path], extra_args=flags)
    with serving(copy), DuetClient(copy.url, trust=TrustStore(tmp_path / "user-b"), insecure=True) as other:
        assert other.pin().controller == client.pin().controller  # one identity, two histories
        note_b = other.checkpoint()
        checkpoint_b = verify_checkpoint(note_b, verifier)
        assert checkpoint_b.size == checkpoint_a.size and checkpoint_b.root != checkpoint_a.root  # the fork

        def both_refused() -> bool:
            refused = all(any(s.size == checkpoint_b.size and s.status == 409 for s in w.seen) for w in witnesses)
            return refused and copy.log().count("(a fork)") >= 2

        wait_until(both_refused, "both witnesses to refuse the second history")
        with pytest.raises(QuorumNotMet) as refused:
            verify_checkpoint_quorum(other.checkpoint(), log_verifier=verifier, witnesses=policy, quorum=2)
        assert refused.value.code == "witness_quorum_not_met"
        assert (refused.value.signed_by, refused.value.missing) == ([], [one.name, two.name])
        assert "cosigned by 0 of the 2 known witnesses" in refused.value.message
        # the first history is still the one the witnesses hold
        assert verify_checkpoint_quorum(client.checkpoint(), log_verifier=verifier, witnesses=policy, quorum=2)[1] == [
            one.name,
            two.name,
        ]
        assert [w.latest[verifier.name].root for w in witnesses] == [checkpoint_a.root] * 2
    errors = [line for line in copy.log().splitlines() if "duet.witnessing" in line and " ERROR " in line]
    assert len(errors) == 2, errors  # once per witness, not once per attempt


def test_duets_own_witness_cosigns_the_controllers_checkpoints(
    tmp_path: Path, client: DuetClient, controller: ControllerProcess
) -> None:
    verifier = log_verifier(client)
    state = tmp_path / "witness"
    key = subprocess.run(
        [sys.executable, "-m", "duet", "witness", "key", "--state-dir", str(state), "--name", "witness.test/duet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if key.returncode != 0:
        pytest.skip(f"`duet witness key` is not usable here: {key.stderr.strip()[-300:]}")
    vkey = key.stdout.strip()
    port = free_port()
    out = open(tmp_path / "witness.log", "wb")
    witness = subprocess.Popen(
        [
            sys.executable, "-m", "duet", "witness", "serve", "--state-dir", str(state),
            "--listen", f"127.0.0.1:{port}", "--log", verifier.vkey,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    out.close()
    try:
        controller.stop()
        controller.extra_args = ("--witness", f"http://127.0.0.1:{port}={vkey}")
        controller.start()

        def cosigned() -> bool:
            note = client.checkpoint()
            try:
                checkpoint, _ = verify_checkpoint_quorum(note, log_verifier=verifier, witnesses=[("duet", vkey)], quorum=1)
            except QuorumNotMet:
                return False
            return checkpoint.size == parse_head(client.head()).tree_size

        wait_until(cosigned, "duet's witness to cosign the latest checkpoint")
        controller.restart()  # a new entry; the controller starts again believing the witness has size 0
        wait_until(cosigned, "duet's witness to cosign the checkpoint after a restart (a 409, then a proof)")
    finally:
        witness.terminate()
        witness.wait(10)
