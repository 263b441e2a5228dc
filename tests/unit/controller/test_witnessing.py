"""Checkpoints and their witnessing (issue 13, items 3 and 4): the controller's C2SP checkpoint
at /v1/ledger/checkpoint, and the controller as a tlog-witness client.

The real controller in-process (application over httpx's ASGI transport, service, ledger and
sealed state, fake provider and SSH), and real HTTP witnesses on loopback
(tests/fakes/fake_witness.py, following c2sp.org/tlog-witness) that can hang, fail or lie.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.fakes.fake_witness import FakeWitness

from duet import keys
from duet.client.checkpoints import (
    CheckpointHeadMismatch,
    QuorumNotMet,
    check_checkpoint_matches_head,
    controller_log_verifier,
    verify_checkpoint_quorum,
    witness_keys,
)
from duet.controller.app import build_app
from duet.controller.runtime import Controller, open_controller
from duet.controller.settings import Settings
from duet.controller.witnessing import Checkpoints, add_checkpoint_body, configure_witnesses, parse_witness_option
from duet.errors import ConfigError
from duet.ledger.checkpoint import Checkpoint, controller_origin, parse_checkpoint, verify_checkpoint
from duet.ledger.heads import verify_head
from duet.ledger.note import NoteSigner, parse_note
from duet.protocol import lifecycle as lc
from duet.protocol.envelope import verify_answer
from duet.testing.fakes import FakeProvider, FakeSsh

WAIT_S = 10.0


@pytest.fixture
def witnesses() -> Iterator[tuple[FakeWitness, FakeWitness]]:
    one, two = FakeWitness("witness.example/w1").start(), FakeWitness("witness.example/w2").start()
    try:
        yield one, two
    finally:
        one.stop()
        two.stop()


def settings_for(state_dir: Path, owner_pub: Path, witnesses: tuple[FakeWitness, ...] = (), **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "witness_timeout_s": 1.0,
        "witness_retry_s": 0.05,
        "witness_retry_max_s": 0.2,
        **overrides,
    }
    return Settings(
        state_dir=state_dir,
        owner_keys=(owner_pub,),
        providers=("fake",),
        tee="none",
        witnesses=tuple((w.url, w.vkey) for w in witnesses),
        **fields,
    )


def owner_key(directory: Path) -> Path:
    """The owner's public key file (made once per directory)."""
    path = directory / "owner.pem"
    if not path.exists():
        keys.write_key_pair(path, keys.generate("ed25519"))
    return path.with_name(path.name + ".pub")


@asynccontextmanager
async def running(
    settings: Settings, witnesses: tuple[FakeWitness, ...] = (), *, start: bool = True
) -> AsyncIterator[tuple[Controller, httpx.AsyncClient]]:
    """An opened controller whose witnesses trust its log key, its submitter started (as the
    app's lifespan does), and an HTTP client on its application."""
    controller = open_controller(settings, providers={"fake": FakeProvider()}, ssh=FakeSsh())
    try:
        assert controller.checkpoints is not None
        for witness in witnesses:
            witness.trust(controller.checkpoints.verifier)
        await controller.service.recover()
        if start and controller.witnessing is not None:
            controller.witnessing.start()
        transport = httpx.ASGITransport(app=build_app(controller))
        async with httpx.AsyncClient(transport=transport, base_url="http://controller") as http:
            yield controller, http
    finally:
        await controller.close()


def append(controller: Controller, count: int = 1, event: str = "test.entry") -> list[float]:
    """Append ``count`` entries, one commit each; the time each commit took."""
    took = []
    for _ in range(count):
        began = time.perf_counter()
        with controller.store.transaction() as tx:
            controller.ledger.append(tx, cvm=None, event=event, actor=lc.CONTROLLER_ACTOR)
        took.append(time.perf_counter() - began)
    return took


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def note_of(http: httpx.AsyncClient, **params: str) -> bytes:
    response = await http.get("/v1/ledger/checkpoint", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    return response.content


def policy(*witnesses: FakeWitness) -> list[tuple[str, str]]:
    return [(w.name, w.vkey) for w in witnesses]


def log_key(controller: Controller) -> Any:
    return controller_log_verifier(controller.identity.controller_id, controller.identity.signing_key.public_key())


def cosigned_by(note: bytes, controller: Controller, *witnesses: FakeWitness) -> list[str]:
    return verify_checkpoint_quorum(note, log_verifier=log_key(controller), witnesses=policy(*witnesses), quorum=0)[1]


def checkpoint_of(note: bytes) -> Checkpoint:
    return parse_checkpoint(parse_note(note).text)


def head_root(controller: Controller) -> tuple[int, bytes]:
    return controller.ledger.size, controller.ledger.tree.root()


def witness_logs(caplog: pytest.LogCaptureFixture, witness: FakeWitness, level: int = logging.WARNING) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "duet.witnessing" and r.levelno >= level and f"witness {witness.name} (" in r.getMessage()
    ]


# --- the checkpoint route --------------------------------------------------------------------------


async def test_the_checkpoint_is_the_head_as_a_c2sp_note_signed_under_the_controllers_origin(tmp_path: Path) -> None:
    async with running(settings_for(tmp_path / "state", owner_key(tmp_path))) as (controller, http):
        identity = controller.identity
        verifier = controller_log_verifier(identity.controller_id, identity.signing_key.public_key())
        assert verifier.name == controller_origin(identity.controller_id) == f"duet.controller/{identity.controller_id}"

        note = await note_of(http)
        checkpoint = verify_checkpoint(note, verifier)
        public_key = identity.signing_key.public_key()
        answer = (await http.get("/v1/ledger/head")).json()
        head = verify_head(
            verify_answer(answer, controller=identity.controller_id, public_key=public_key),
            controller=identity.controller_id,
            public_key=public_key,
        )
        assert (checkpoint.size, checkpoint.root) == (head.tree_size, head.root) == head_root(controller)
        check_checkpoint_matches_head(checkpoint, head)
        assert note.decode().startswith(f"{verifier.name}\n{head.tree_size}\n")
        assert len(parse_note(note).signatures) == 1  # no witnesses: the controller's signature alone
        assert await note_of(http) == note  # one size, one note: no timestamp, deterministic Ed25519

        append(controller, 3)
        later = verify_checkpoint(await note_of(http), verifier)
        assert (later.size, later.root) == head_root(controller) and later.size == checkpoint.size + 3
        with pytest.raises(CheckpointHeadMismatch):
            check_checkpoint_matches_head(later, head)  # the head the audit saw is older: a proof is needed
        proof = controller.ledger.tree.consistency_proof(checkpoint.size, later.size)
        check_checkpoint_matches_head(checkpoint, {**head.to_json()}, proof=[])  # same size: no proof needed
        newer_head = verify_head(
            verify_answer((await http.get("/v1/ledger/head")).json(), controller=identity.controller_id, public_key=public_key),
            controller=identity.controller_id,
            public_key=public_key,
        )
        check_checkpoint_matches_head(checkpoint, newer_head, proof=proof)


async def test_the_json_form_is_a_signed_answer_around_the_same_note(tmp_path: Path) -> None:
    async with running(settings_for(tmp_path / "state", owner_key(tmp_path))) as (controller, http):
        nonce = "ab" * 16
        response = await http.get("/v1/ledger/checkpoint", params={"format": "json", "nonce": nonce})
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        result = verify_answer(
            response.json(),
            controller=controller.identity.controller_id,
            public_key=controller.identity.signing_key.public_key(),
            nonce=nonce,
        )
        note = await note_of(http)
        assert result["checkpoint"].encode() == note
        size, root = head_root(controller)
        assert (result["tree_size"], result["root_hash"], result["origin"]) == (size, root.hex(), log_key(controller).name)
        assert (result["cosigned_by"], result["witnesses"], result["quorum"]) == ([], [], 0)
        assert result["log_vkey"] == log_key(controller).vkey
        bad = await http.get("/v1/ledger/checkpoint", params={"format": "xml"})
        assert bad.status_code == 422 and "error" in bad.json()["result"]


# --- witnesses -------------------------------------------------------------------------------------


async def test_two_witnesses_cosign_and_a_quorum_of_two_verifies(
    tmp_path: Path, witnesses: tuple[FakeWitness, FakeWitness]
) -> None:
    one, two = witnesses
    settings = settings_for(tmp_path / "state", owner_key(tmp_path), witnesses, witness_quorum=2)
    async with running(settings, witnesses) as (controller, http):
        append(controller, 5)

        async def both_cosign_the_head() -> bool:
            note = await note_of(http)
            return checkpoint_of(note).size == controller.ledger.size and len(parse_note(note).signatures) == 3

        await wait_until(both_cosign_the_head, "both witnesses to cosign the latest checkpoint")
        note = await note_of(http)
        checkpoint, signed_by = verify_checkpoint_quorum(
            note, log_verifier=log_key(controller), witnesses=policy(one, two), quorum=2
        )
        assert signed_by == [one.name, two.name]
        assert (checkpoint.size, checkpoint.root) == head_root(controller)
        lines = note.decode().split("\n\n", 1)[1].splitlines()
        assert lines[0].startswith(f"— {log_key(controller).name} ")  # the log's signature first, then the witnesses'
        assert [line.split(" ")[1] for line in lines[1:]] == [one.name, two.name]

        # the policy's own names are reported; unknown witnesses' cosignatures are ignored
        assert verify_checkpoint_quorum(note, log_verifier=log_key(controller), witnesses=[("first", one.vkey)], quorum=1)[1] == [
            "first"
        ]
        assert witness_keys([one.vkey])[0][0] == one.name
        served = (await http.get("/v1/ledger/checkpoint", params={"format": "json"})).json()["result"]
        assert (served["cosigned_by"], served["quorum"]) == ([one.name, two.name], 2)


async def test_a_witness_that_hangs_never_slows_appends_and_is_cosigned_again_once_back(
    tmp_path: Path, witnesses: tuple[FakeWitness, FakeWitness]
) -> None:
    one, two = witnesses
    two.mode = "block"  # accepts connections, never answers
    timeout_s = 2.0  # anything waiting on the hung witness would take this long
    settings = settings_for(tmp_path / "state", owner_key(tmp_path), witnesses, witness_quorum=2, witness_timeout_s=timeout_s)
    async with asyncio.timeout(30), running(settings, witnesses) as (controller, http):
        began = time.perf_counter()
        took: list[float] = []
        for _ in range(40):  # appends interleaved with the event loop, which runs the submitter
            took += append(controller, 5)
            reading = time.perf_counter()
            await note_of(http)
            took.append(time.perf_counter() - reading)
            await asyncio.sleep(0)
        assert max(took) < timeout_s / 4, max(took)
        assert time.perf_counter() - began < timeout_s, "200 appends and 40 reads waited on the hung witness"

        async def one_cosigns_the_head() -> bool:
            note = await note_of(http)
            return checkpoint_of(note).size == controller.ledger.size and cosigned_by(note, controller, one, two) == [one.name]

        await wait_until(one_cosigns_the_head, "the live witness to cosign the latest checkpoint")
        note = await note_of(http)
        with pytest.raises(QuorumNotMet) as refused:
            verify_checkpoint_quorum(note, log_verifier=log_key(controller), witnesses=policy(one, two), quorum=2)
        assert refused.value.code == "witness_quorum_not_met"
        assert (refused.value.signed_by, refused.value.missing, refused.value.quorum) == ([one.name], [two.name], 2)
        assert one.name in refused.value.message and two.name in refused.value.message
        assert verify_checkpoint_quorum(note, log_verifier=log_key(controller), witnesses=policy(one, two), quorum=1)[1] == [
            one.name
        ]

        two.mode = "ok"  # back (its hung requests are answered late; the controller gave up on them)
        append(controller)

        async def both_cosign_the_head() -> bool:
            note = await note_of(http)
            return checkpoint_of(note).size == controller.ledger.size and len(cosigned_by(note, controller, one, two)) == 2

        await wait_until(both_cosign_the_head, "both witnesses to cosign again")
        assert verify_checkpoint_quorum(
            await note_of(http), log_verifier=log_key(controller), witnesses=policy(one, two), quorum=2
        )[1] == [one.name, two.name]


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("fault", ["garbage", "error", "other_key"])
async def test_a_witness_answering_garbage_500_or_another_keys_cosignature_is_not_kept_and_logged_once_per_streak(
    tmp_path: Path, witnesses: tuple[FakeWitness, FakeWitness], fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="duet.witnessing")
    good, bad = witnesses
    bad.mode = fault
    settings = settings_for(tmp_path / "state", owner_key(tmp_path), witnesses, witness_quorum=1)
    async with running(settings, witnesses) as (controller, http):
        assert controller.witnessing is not None
        for _ in range(8):  # many appends, spread over several retries of the bad witness
            append(controller, 3)
            await asyncio.sleep(0.08)

        async def failed_often() -> bool:
            return len(bad.seen) >= 4

        await wait_until(failed_often, "the faulty witness to be tried several times")
        await wait_until(
            lambda: _true(cosigned_by(_sync_note(controller), controller, good, bad) == [good.name]),
            "the good witness to cosign the latest checkpoint",
        )
        status = {s.name: s for s in controller.witnessing.status()}
        assert status[bad.name].failures >= 3 and status[bad.name].cosigned_size is None
        note = await note_of(http)
        assert len(parse_note(note).signatures) == 2  # the controller's and the good witness's: nothing of the bad one
        assert len(witness_logs(caplog, bad)) == 1, witness_logs(caplog, bad)  # once per streak, not per append
        assert witness_logs(caplog, good) == []

        bad.mode = "ok"
        append(controller)
        await wait_until(
            lambda: _true(len(cosigned_by(_sync_note(controller), controller, good, bad)) == 2), "the witness to recover"
        )
        assert any("cosigns again" in r.getMessage() for r in caplog.records if r.name == "duet.witnessing")
        bad.mode = fault  # a new streak is logged again, once
        for _ in range(4):
            append(controller)
            await asyncio.sleep(0.1)
        await wait_until(lambda: _true(controller.witnessing is not None and _failures(controller, bad) >= 2), "new failures")
        assert len(witness_logs(caplog, bad)) == 2


def _cosigned_size(controller: Controller, witness: FakeWitness) -> int | None:
    """The size of the last checkpoint the controller holds ``witness``'s cosignature of."""
    assert controller.witnessing is not None
    return next(s.cosigned_size for s in controller.witnessing.status() if s.name == witness.name)


def _failures(controller: Controller, witness: FakeWitness) -> int:
    assert controller.witnessing is not None
    return next(s.failures for s in controller.witnessing.status() if s.name == witness.name)


def _sync_note(controller: Controller) -> bytes:
    assert controller.checkpoints is not None
    return controller.checkpoints.served().note


async def test_only_the_newest_checkpoint_is_sent_one_request_at_a_time(
    tmp_path: Path, witnesses: tuple[FakeWitness, FakeWitness]
) -> None:
    one, two = witnesses
    one.mode = "block"
    settings = settings_for(tmp_path / "state", owner_key(tmp_path), (one,), witness_timeout_s=10.0)
    async with running(settings, (one,)) as (controller, http):
        await wait_until(lambda: _true(one.received == 1), "the first request (the checkpoint at start) to be held")
        first = controller.ledger.size
        for _ in range(50):
            append(controller)
            await asyncio.sleep(0.002)
        one.mode = "ok"

        async def cosigned_head() -> bool:
            return checkpoint_of(await note_of(http)).size == controller.ledger.size and len(one.cosigned) >= 2

        await wait_until(cosigned_head, "the newest checkpoint to be cosigned")
        sizes = [seen.size for seen in one.seen]
        assert sizes == [first, controller.ledger.size], sizes  # not 51 requests: the 50 appends coalesced into one


async def test_a_restarted_controller_learns_the_witness_size_from_its_409(
    tmp_path: Path, witnesses: tuple[FakeWitness, FakeWitness]
) -> None:
    one, _ = witnesses
    settings = settings_for(tmp_path / "state", owner_key(tmp_path), (one,))
    async with running(settings, (one,)) as (controller, http):
        append(controller, 4)
        await wait_until(lambda: _true(bool(one.cosigned) and one.cosigned[-1].size == controller.ledger.size), "a cosignature")
        held = controller.ledger.size
    one.seen.clear()
    async with running(settings, (one,)) as (controller, http):  # a new process: it believes the witness has 0
        append(controller, 2)

        async def cosigned_head() -> bool:
            return cosigned_by(await note_of(http), controller, one) == [one.name]

        await wait_until(cosigned_head, "the restarted controller's checkpoint to be cosigned")
        assert (one.seen[0].old, one.seen[0].status) == (0, 409)
        assert one.seen[1].old == held and one.seen[1].status == 200  # sent again at once, with a proof from its size


async def test_witnessed_serves_the_newest_checkpoint_with_the_quorum(
    tmp_path: Path, witnesses: tuple[FakeWitness, FakeWitness]
) -> None:
    one, two = witnesses
    two.mode = "reject"
    settings = settings_for(tmp_path / "state", owner_key(tmp_path), witnesses, witness_quorum=2)
    async with running(settings, witnesses) as (controller, http):
        await wait_until(lambda: _true(len(one.cosigned) >= 1), "the first witness")
        missing = await http.get("/v1/ledger/checkpoint", params={"witnessed": "true"})
        assert missing.status_code == 404 and missing.json()["result"]["error"]["code"] == "no_witnessed_checkpoint"

        two.mode = "ok"
        append(controller)
        await wait_until(lambda: _true(len(cosigned_by(_sync_note(controller), controller, one, two)) == 2), "both")
        witnessed_size = controller.ledger.size
        two.mode = "reject"
        append(controller, 3)
        await wait_until(lambda: _true(_cosigned_size(controller, one) == controller.ledger.size), "the first witness again")

        latest = await note_of(http)
        assert checkpoint_of(latest).size == controller.ledger.size and cosigned_by(latest, controller, one, two) == [one.name]
        witnessed = await note_of(http, witnessed="true")
        checkpoint, signed_by = verify_checkpoint_quorum(
            witnessed, log_verifier=log_key(controller), witnesses=policy(one, two), quorum=2
        )
        assert checkpoint.size == witnessed_size < controller.ledger.size and signed_by == [one.name, two.name]


# --- a forked controller ---------------------------------------------------------------------------


async def fork(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A controller's state directory and a copy of it, taken while it was stopped."""
    owner_pub = owner_key(tmp_path)
    async with running(settings_for(tmp_path / "state", owner_pub)) as (controller, _):
        append(controller, 3)
    shutil.copytree(tmp_path / "state", tmp_path / "copy")
    return tmp_path / "state", tmp_path / "copy", owner_pub


async def test_two_copies_of_a_controller_get_at_most_one_history_cosigned_by_the_quorum(
    tmp_path: Path, witnesses: tuple[FakeWitness, FakeWitness], caplog: pytest.LogCaptureFixture
) -> None:
    one, two = witnesses
    state, copy, owner_pub = await fork(tmp_path)
    settings_a = settings_for(state, owner_pub, witnesses, witness_quorum=2)
    settings_b = settings_for(copy, owner_pub, witnesses, witness_quorum=2)
    async with running(settings_a, witnesses) as (a, http_a):
        append(a, 2, event="test.history-a")

        async def a_cosigned() -> bool:
            note = await note_of(http_a)
            return checkpoint_of(note).size == a.ledger.size and len(cosigned_by(note, a, one, two)) == 2

        await wait_until(a_cosigned, "the first copy's checkpoint to be cosigned by both")
        async with running(settings_b, witnesses) as (b, http_b):
            assert b.identity.controller_id == a.identity.controller_id  # one identity, two histories
            append(b, 2, event="test.history-b")
            fork_size = b.ledger.size
            assert fork_size == a.ledger.size and b.ledger.tree.root() != a.ledger.tree.root()

            async def both_refused_b() -> bool:
                seen = all(any(s.size == fork_size and s.status == 409 for s in w.seen[-4:]) for w in witnesses)
                return seen and all(_failures(b, w) >= 2 for w in witnesses)

            await wait_until(both_refused_b, "both witnesses to refuse the second history")
            note_a, note_b = await note_of(http_a), await note_of(http_b)
            assert checkpoint_of(note_a).size == checkpoint_of(note_b).size and note_a != note_b
            checkpoint, signed_by = verify_checkpoint_quorum(
                note_a, log_verifier=log_key(a), witnesses=policy(one, two), quorum=2
            )
            assert signed_by == [one.name, two.name]
            with pytest.raises(QuorumNotMet) as refused:
                verify_checkpoint_quorum(note_b, log_verifier=log_key(b), witnesses=policy(one, two), quorum=2)
            assert refused.value.signed_by == [] and refused.value.missing == [one.name, two.name]
            forks = [r for r in caplog.records if r.name == "duet.witnessing" and r.levelno == logging.ERROR]
            assert {r.getMessage().split(" (")[0] for r in forks} == {f"witness {one.name}", f"witness {two.name}"}
            assert all("fork" in r.getMessage() for r in forks)


async def test_a_fork_split_between_the_witnesses_meets_the_quorum_with_neither_history(
    tmp_path: Path, witnesses: tuple[FakeWitness, FakeWitness]
) -> None:
    """Each witness cosigns the first checkpoint of a size it sees: shown one history to one
    witness and the other to the other, neither history reaches a quorum of two."""
    one, two = witnesses
    state, copy, owner_pub = await fork(tmp_path)
    settings_a = settings_for(state, owner_pub, witnesses, witness_quorum=2)
    settings_b = settings_for(copy, owner_pub, witnesses, witness_quorum=2)
    two.mode = "reject"  # the second witness does not see the first history
    async with running(settings_a, witnesses) as (a, _):
        append(a, 2, event="test.history-a")
        await wait_until(lambda: _true(bool(one.cosigned) and one.cosigned[-1].size == a.ledger.size), "w1 to cosign A")
    one.mode, two.mode = "reject", "ok"  # and the first witness does not see the second
    async with running(settings_b, witnesses) as (b, http_b):
        append(b, 2, event="test.history-b")
        await wait_until(lambda: _true(bool(two.cosigned) and two.cosigned[-1].size == b.ledger.size), "w2 to cosign B")
        one.mode = "ok"  # now both copies run side by side and reach both witnesses
        async with running(settings_a, witnesses) as (a, http_a):
            append(a, 2, event="test.history-a")
            append(b, 3, event="test.history-b")
            await wait_until(lambda: _true(_cosigned_size(a, one) == a.ledger.size), "w1 to cosign A again")
            await wait_until(lambda: _true(_cosigned_size(b, two) == b.ledger.size), "w2 to cosign B again")
            await wait_until(lambda: _true(_failures(a, two) >= 2 and _failures(b, one) >= 2), "each witness to refuse the other")
            for controller, http, alone in ((a, http_a, one), (b, http_b, two)):
                note = await note_of(http)
                assert cosigned_by(note, controller, one, two) == [alone.name]
                with pytest.raises(QuorumNotMet) as refused:
                    verify_checkpoint_quorum(note, log_verifier=log_key(controller), witnesses=policy(one, two), quorum=2)
                assert refused.value.signed_by == [alone.name]


# --- configuration and wire format -----------------------------------------------------------------


def test_witness_options_are_url_equals_vkey_with_base64_padding_in_the_key() -> None:
    witness = FakeWitness("witness.example/w1")
    assert parse_witness_option(f"https://witness.example/w1/={witness.vkey}") == ("https://witness.example/w1", witness.vkey)
    assert parse_witness_option(f"http://127.0.0.1:8080={witness.vkey}") == ("http://127.0.0.1:8080", witness.vkey)
    odd = FakeWitness("w=1")  # a key name may hold "=": the option is split where a vkey follows
    assert parse_witness_option(f"http://w.example={odd.vkey}") == ("http://w.example", odd.vkey)
    log_vkey = NoteSigner("log.example", keys.generate("ed25519")).vkey  # type 0x01: a log key, not a witness's
    for bad in ("https://w.example", witness.vkey, f"ftp://w.example={witness.vkey}", f"https://w.example={log_vkey}"):
        with pytest.raises(ConfigError) as refused:
            parse_witness_option(bad)
        assert refused.value.code == "bad_witness"


def test_witnesses_need_their_own_names_and_keys_and_a_quorum_they_can_meet() -> None:
    one, two = FakeWitness("witness.example/w1"), FakeWitness("witness.example/w2")
    same_key = FakeWitness("witness.example/w3", key=one.key)
    pairs = [("http://a.example", one.vkey), ("http://b.example", two.vkey)]
    assert configure_witnesses(pairs, None)[1] == 2  # default: all of them
    assert configure_witnesses(pairs, 1)[1] == 1
    assert configure_witnesses([], None) == ((), 0)
    for bad_pairs, quorum in (
        (pairs, 3),
        (pairs, -1),
        ([*pairs, ("http://c.example", one.vkey)], None),
        ([*pairs, ("http://c.example", same_key.vkey)], None),
        ([], 1),
    ):
        with pytest.raises(ConfigError):
            configure_witnesses(bad_pairs, quorum)


async def test_an_unusable_witness_setting_stops_the_start_before_anything_is_written(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path / "state",
        owner_keys=(owner_key(tmp_path),),
        providers=("fake",),
        witnesses=(("http://w.example", "not a vkey"),),
    )
    with pytest.raises(ConfigError):
        open_controller(settings, providers={"fake": FakeProvider()}, ssh=FakeSsh())
    assert not (tmp_path / "state" / "duet.sqlite3").exists()


def test_the_add_checkpoint_body_follows_the_spec() -> None:
    note = b"log.example\n2\nAAAA\n\n\xe2\x80\x94 log.example AAAA\n"
    proof = [bytes(32), bytes([1]) * 32]
    body = add_checkpoint_body(1, proof, note)
    assert body == b"old 1\n" + b"".join(base64.b64encode(h) + b"\n" for h in proof) + b"\n" + note
    assert add_checkpoint_body(0, [], note) == b"old 0\n\n" + note
    with pytest.raises(ValueError):
        add_checkpoint_body(1, [bytes(32)] * 64, note)


async def test_cosignatures_are_kept_for_recent_checkpoints_only_and_only_if_they_verify(tmp_path: Path) -> None:
    from duet.ledger.checkpoint import CheckpointError, cosign
    from duet.ledger.note import parse_signature_lines

    witness = FakeWitness("witness.example/w1")
    (configured,), _ = configure_witnesses([("http://w.example", witness.vkey)], None)
    async with running(settings_for(tmp_path / "state", owner_key(tmp_path))) as (controller, _):
        checkpoints = Checkpoints(
            controller.ledger,
            controller.identity.signing_key,
            controller.identity.controller_id,
            witnesses=[configured],
            quorum=1,
            keep=3,
        )
        kept = []
        for _ in range(5):
            append(controller)
            signed = checkpoints.latest()
            (line,) = parse_signature_lines(cosign(signed.checkpoint, witness.key, witness.name, 1_700_000_000).encode())
            checkpoints.add_cosignature(signed, configured, line)
            kept.append(signed.checkpoint)
        assert [bool(checkpoints.cosignatures(c)) for c in kept] == [False, False, True, True, True]
        append(controller)
        stranger = FakeWitness("witness.example/w1")  # same name, another key
        (forged,) = parse_signature_lines(cosign(checkpoints.latest().checkpoint, stranger.key, stranger.name, 1).encode())
        with pytest.raises(CheckpointError):
            checkpoints.add_cosignature(checkpoints.latest(), configured, forged)
        assert checkpoints.cosignatures(checkpoints.latest().checkpoint) == ()
