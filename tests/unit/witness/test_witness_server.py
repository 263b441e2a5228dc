"""The add-checkpoint protocol (c2sp.org/tlog-witness) of duet's witness, through its ASGI app:
every answer the spec names, the cosignature it returns, forks, concurrency and body limits.

A real process, real HTTP, kill -9 and restarts: tests/integration/test_witness.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from witness_helpers import WITNESS_NAME, FakeLog

from duet.ledger.checkpoint import (
    Checkpoint,
    CosignatureVerifier,
    WitnessQuorumNotMet,
    sign_checkpoint,
    verify_cosignature,
    verify_cosigned_checkpoint,
)
from duet.ledger.note import NoteSigner, b64encode, parse_note, sign_note
from duet.witness.server import SIZE_CONTENT_TYPE, Witness, WitnessApp, origin_hash, parse_add_checkpoint
from duet.witness.state import WitnessState

LIMIT = 8192


def make_app(state: WitnessState, *logs: FakeLog, clock: Any = time.time) -> WitnessApp:
    configured = {log.origin: (log.signer.verifier(),) for log in logs}
    return WitnessApp(Witness(state, configured, clock=clock), max_body_bytes=LIMIT, body_timeout_s=2.0)


@pytest.fixture
async def http(state: WitnessState, log: FakeLog) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app(state, log)) as client:
        yield client


def client_for(app: WitnessApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://witness")


async def add(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await http.post("/add-checkpoint", content=body)


def cosigned_timestamp(state: WitnessState, checkpoint: Checkpoint, response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    assert response.text.startswith("— ") and response.text.endswith("\n")
    return verify_cosignature(checkpoint, response.text, CosignatureVerifier.from_vkey(state.vkey))


def refused(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert not any(line.startswith("— ") for line in response.text.splitlines())  # never a cosignature
    return response.text


# --- 200 ---------------------------------------------------------------------------------------


async def test_cosigns_from_size_zero_then_with_a_consistency_proof(
    http: httpx.AsyncClient, state: WitnessState, log: FakeLog
) -> None:
    first = await add(http, log.body(0))
    timestamp = cosigned_timestamp(state, log.checkpoint(), first)
    assert abs(timestamp - time.time()) < 60

    log.grow(7)
    second = await add(http, log.body(10))
    timestamp = cosigned_timestamp(state, log.checkpoint(), second)
    assert abs(timestamp - time.time()) < 60
    # what a log does with the answer: append it to its checkpoint, which then passes a quorum policy
    cosigned = verify_cosigned_checkpoint(
        log.note() + second.content, log.signer.verifier(), [CosignatureVerifier.from_vkey(state.vkey)], quorum=1
    )
    assert cosigned.witnesses == (WITNESS_NAME,) and cosigned.checkpoint == log.checkpoint()
    assert state.latest(log.origin) is not None and state.latest(log.origin).size == 17  # type: ignore[union-attr]


async def test_the_cosignature_is_timestamped_by_the_witness_clock(state: WitnessState, log: FakeLog) -> None:
    async with client_for(make_app(state, log, clock=lambda: 1_700_000_000.9)) as http:
        response = await add(http, log.body(0))
    assert cosigned_timestamp(state, log.checkpoint(), response) == 1_700_000_000


async def test_a_clock_stepped_back_never_dates_a_cosignature_before_the_last_one(state: WitnessState, log: FakeLog) -> None:
    now = [1_700_000_500.0]
    async with client_for(make_app(state, log, clock=lambda: now[0])) as http:
        assert cosigned_timestamp(state, log.checkpoint(), await add(http, log.body(0))) == 1_700_000_500
        now[0] = 1_700_000_000.0
        log.grow(1)
        assert cosigned_timestamp(state, log.checkpoint(), await add(http, log.body(10))) == 1_700_000_500
        now[0] = 1_700_000_600.0
        log.grow(1)
        assert cosigned_timestamp(state, log.checkpoint(), await add(http, log.body(11))) == 1_700_000_600


async def test_an_independent_implementation_verifies_the_cosignature(
    http: httpx.AsyncClient, state: WitnessState, log: FakeLog
) -> None:
    signing = pytest.importorskip("tlog_scales.signing")
    tlog = pytest.importorskip("tlog_scales.tlog")
    response = await add(http, log.body(0))
    parsed = tlog.Checkpoint.from_text((log.note() + response.content).decode())
    theirs = signing.Vkey.from_string(state.vkey)
    assert theirs.serialize() == state.vkey
    parsed.verify(theirs)
    parsed.verify(signing.Vkey.from_string(log.vkey))


async def test_the_same_checkpoint_is_cosigned_again(http: httpx.AsyncClient, state: WitnessState, log: FakeLog) -> None:
    assert (await add(http, log.body(0))).status_code == 200
    again = await add(http, log.body(10))  # old size = its size, no proof: the same tree head
    cosigned_timestamp(state, log.checkpoint(), again)


async def test_an_empty_log_is_cosigned(state: WitnessState) -> None:
    empty = FakeLog()
    async with client_for(make_app(state, empty)) as http:
        response = await add(http, empty.body(0))
        cosigned_timestamp(state, empty.checkpoint(), response)
        empty.grow(3)
        cosigned_timestamp(state, empty.checkpoint(), await add(http, empty.body(0)))


async def test_several_trusted_keys_for_one_origin(state: WitnessState, log: FakeLog) -> None:
    """A log rotating its key: either key is trusted; other signatures on the note are ignored."""
    new_signer = NoteSigner(log.origin, ed25519.Ed25519PrivateKey.generate())
    stranger = NoteSigner("someone.else/key", ed25519.Ed25519PrivateKey.generate())
    witness = Witness(state, {log.origin: (log.signer.verifier(), new_signer.verifier())})
    async with client_for(WitnessApp(witness, max_body_bytes=LIMIT, body_timeout_s=2)) as http:
        with_stranger = sign_note(log.checkpoint().body(), [new_signer, stranger])
        response = await add(http, log.body(0, note=with_stranger))
        cosigned_timestamp(state, log.checkpoint(), response)


# --- 409 ---------------------------------------------------------------------------------------


async def test_an_old_size_other_than_the_witness_size_is_409_with_that_size(
    http: httpx.AsyncClient, state: WitnessState, log: FakeLog
) -> None:
    assert (await add(http, log.body(0))).status_code == 200
    log.grow(5)
    for old in (0, 3, 11):
        response = await add(http, log.body(old))
        assert refused(response, 409) == "10\n"
        assert response.headers["content-type"] == SIZE_CONTENT_TYPE


async def test_a_new_log_answers_409_with_zero(http: httpx.AsyncClient, log: FakeLog) -> None:
    response = await add(http, log.body(4))
    assert refused(response, 409) == "0\n" and response.headers["content-type"] == SIZE_CONTENT_TYPE


async def test_a_smaller_checkpoint_never_rolls_the_witness_back(http: httpx.AsyncClient, log: FakeLog) -> None:
    assert (await add(http, log.body(0))).status_code == 200
    assert refused(await add(http, log.body(0, 5)), 409) == "10\n"  # old 0 ≠ 10
    refused(await add(http, log.body(10, 5, proof=[])), 400)  # old size larger than the checkpoint's


# --- 422 ---------------------------------------------------------------------------------------


async def test_a_proof_that_does_not_verify_is_422(http: httpx.AsyncClient, log: FakeLog) -> None:
    assert (await add(http, log.body(0))).status_code == 200
    log.grow(6)
    proof = log.tree.consistency_proof(10, 16)
    damaged = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    refused(await add(http, log.body(10, proof=damaged)), 422)
    refused(await add(http, log.body(10, proof=proof[:-1])), 422)
    refused(await add(http, log.body(10, proof=[])), 422)
    refused(await add(http, log.body(10, proof=log.tree.consistency_proof(9, 16))), 422)
    assert (await add(http, log.body(10, proof=proof))).status_code == 200  # the right one still passes


async def test_a_fork_is_refused(http: httpx.AsyncClient, state: WitnessState, log: FakeLog) -> None:
    assert (await add(http, log.body(0))).status_code == 200
    fork = log.fork(6).grow(10)  # agrees up to 6 leaves, then another history, signed by the log's key
    log.grow(6)
    refused(await add(http, fork.body(10, 16)), 422)  # the fork's own proof, from its own root at 10
    assert (await add(http, log.body(10))).status_code == 200
    refused(await add(http, fork.body(10, 16, proof=[])), 409)  # the witness moved on to 16
    refused(await add(http, fork.body(16, 16, proof=[])), 422)  # same size, another root
    assert state.latest(log.origin).root == log.tree.root(16)  # type: ignore[union-attr]


async def test_the_same_size_with_another_root_is_refused(http: httpx.AsyncClient, state: WitnessState, log: FakeLog) -> None:
    assert (await add(http, log.body(0))).status_code == 200
    fork = log.fork(7).grow(3)
    assert fork.size == log.size and fork.tree.root() != log.tree.root()
    refused(await add(http, fork.body(10, proof=[])), 422)
    cosigned_timestamp(state, log.checkpoint(), await add(http, log.body(10)))  # the cosigned root: again


async def test_an_empty_checkpoint_with_a_root_is_422(http: httpx.AsyncClient, log: FakeLog) -> None:
    bogus = Checkpoint(log.origin, 0, bytes(32))  # not SHA-256 of nothing
    refused(await add(http, b"old 0\n\n" + sign_checkpoint(bogus, log.signer)), 422)


async def test_a_proof_from_size_zero_is_422(http: httpx.AsyncClient, log: FakeLog) -> None:
    refused(await add(http, log.body(0, proof=[log.tree.root(1)])), 422)


# --- 404, 403 ----------------------------------------------------------------------------------


async def test_an_unknown_origin_is_404(http: httpx.AsyncClient) -> None:
    other = FakeLog("other.example/log").grow(3)
    assert "does not witness" in refused(await add(http, other.body(0)), 404)


async def test_a_checkpoint_signed_by_another_key_is_403(http: httpx.AsyncClient, log: FakeLog) -> None:
    impostor = NoteSigner(log.origin, ed25519.Ed25519PrivateKey.generate())  # same name, another key
    refused(await add(http, log.body(0, note=log.note(signer=impostor))), 403)
    other_name = NoteSigner("someone.else/log", log.key)  # the log's key under another name
    refused(await add(http, log.body(0, note=log.note(signer=other_name))), 403)


async def test_a_bad_signature_is_403(http: httpx.AsyncClient, log: FakeLog) -> None:
    note = parse_note(log.note())
    signature = note.signatures[0]
    forged = type(signature)(signature.name, signature.key_id, bytes(64))
    text = note.text + "\n" + forged.line()
    refused(await add(http, log.body(0, note=text.encode())), 403)
    # the checkpoint altered under a valid signature of another checkpoint
    altered = log.note().replace(b"\n10\n", b"\n11\n", 1)
    refused(await add(http, log.body(0, note=altered)), 403)
    # a valid signature beside a bad one of the same key: the note is rejected (signed-note)
    refused(await add(http, log.body(0, note=log.note() + forged.line().encode())), 403)


async def test_nothing_is_recorded_for_a_refused_checkpoint(http: httpx.AsyncClient, state: WitnessState, log: FakeLog) -> None:
    impostor = NoteSigner(log.origin, ed25519.Ed25519PrivateKey.generate())
    refused(await add(http, log.body(0, note=log.note(signer=impostor))), 403)
    assert state.latest(log.origin) is None


# --- 400 ---------------------------------------------------------------------------------------


def malformed_bodies(log: FakeLog) -> dict[str, bytes]:
    note = log.note()
    hash_line = b64encode(bytes(32)).encode()
    return {
        "empty": b"",
        "no blank line": b"old 0\n" + note.replace(b"\n\n", b"\n"),
        "no old line": b"\n" + note,
        "old without size": b"old \n\n" + note,
        "leading zero": b"old 00\n\n" + note,
        "negative": b"old -1\n\n" + note,
        "two spaces": b"old  0\n\n" + note,
        "new instead of old": b"new 0\n\n" + note,
        "CR LF": b"old 0\r\n\r\n" + note,
        "beyond uint64": b"old 18446744073709551616\n\n" + note,
        "proof not base64": b"old 0\nnot base64!\n\n" + note,
        "proof of 31 bytes": b"old 0\n" + b64encode(bytes(31)).encode() + b"\n\n" + note,
        "64 proof lines": b"old 0\n" + (hash_line + b"\n") * 64 + b"\n" + note,
        "unsigned note": b"old 0\n\n" + note.partition(b"\n\n")[0] + b"\n",
        "not a checkpoint": b"old 0\n\n" + note.replace(b"\n10\n", b"\nten\n", 1),
        "root not 32 bytes": b"old 0\n\n" + sign_note(f"{log.origin}\n10\n{b64encode(bytes(31))}\n", [log.signer]),
        "not UTF-8": b"old 0\n\n" + note.replace(b"example", b"ex\xffample", 1),
        "a control character": b"old 0\n\n" + note.replace(b"example", b"ex\x00ample", 1),
        "signature line garbage": b"old 0\n\n" + note + b"garbage\n",
    }


@pytest.mark.parametrize("case", list(malformed_bodies(FakeLog().grow(10))))
async def test_malformed_bodies_are_400(http: httpx.AsyncClient, state: WitnessState, log: FakeLog, case: str) -> None:
    body = malformed_bodies(log)[case]
    refused(await add(http, body), 400)
    assert state.latest(log.origin) is None


async def test_an_old_size_larger_than_the_checkpoint_is_400(http: httpx.AsyncClient, log: FakeLog) -> None:
    refused(await add(http, log.body(11, 10, proof=[])), 400)


def test_63_proof_lines_are_allowed() -> None:
    log = FakeLog().grow(1)
    body = log.body(0, proof=[bytes(32)] * 63)
    assert len(parse_add_checkpoint(body).proof) == 63


# --- body limits, methods, paths ---------------------------------------------------------------


async def test_a_declared_oversized_body_is_refused_before_it_is_read(state: WitnessState, log: FakeLog) -> None:
    app = make_app(state, log)
    received = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/add-checkpoint",
        "headers": [(b"content-length", b"%d" % (100 * LIMIT))],
    }
    await app(scope, receive, send)
    assert received == 0
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"]


async def test_a_streamed_oversized_body_is_refused_at_the_limit(state: WitnessState, log: FakeLog) -> None:
    app = make_app(state, log)
    received = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:  # chunked: no length declared, and it never ends
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": "/add-checkpoint", "headers": []}, receive, send)
    assert received == LIMIT // 1024 + 1
    assert sent[0]["status"] == 413


async def test_a_body_that_never_ends_is_408(state: WitnessState, log: FakeLog) -> None:
    witness = Witness(state, {log.origin: (log.signer.verifier(),)})
    app = WitnessApp(witness, max_body_bytes=LIMIT, body_timeout_s=0.2)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"o", "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": "/add-checkpoint", "headers": []}, receive, send)
    assert sent[0]["status"] == 408


async def test_other_methods_and_paths(http: httpx.AsyncClient, state: WitnessState) -> None:
    response = await http.get("/add-checkpoint")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert (await http.get("/")).status_code == 404
    assert (await http.post("/vkey")).status_code == 405
    vkey = await http.get("/vkey")
    assert vkey.status_code == 200 and vkey.text == state.vkey + "\n"
    assert CosignatureVerifier.from_vkey(vkey.text.strip()).name == WITNESS_NAME


async def test_the_latest_cosigned_checkpoint_is_served_to_monitors(
    http: httpx.AsyncClient, state: WitnessState, log: FakeLog
) -> None:
    path = f"/{origin_hash(log.origin)}/checkpoint"
    assert (await http.get(path)).status_code == 404
    stranger = NoteSigner("someone.else/key", ed25519.Ed25519PrivateKey.generate())
    note = sign_note(log.checkpoint().body(), [log.signer, stranger])
    response = await add(http, log.body(0, note=note))
    served = await http.get(path)
    assert served.status_code == 200
    assert served.content == log.note() + response.content  # the log's verified signature and the cosignature only
    cosigned = verify_cosigned_checkpoint(
        served.content, log.signer.verifier(), [CosignatureVerifier.from_vkey(state.vkey)], quorum=1
    )
    assert cosigned.checkpoint == log.checkpoint()


# --- concurrency and forks ---------------------------------------------------------------------


async def test_concurrent_forks_get_at_most_one_root_per_size_cosigned(state: WitnessState, log: FakeLog) -> None:
    """Many submissions at once for one log, half of them of a fork that agrees with it up to 10
    leaves: the witness cosigns at most one root per size, and past 10 only one history."""
    fork = log.fork(10)
    log.grow(20)
    fork.grow(20)
    app = make_app(state, log)
    cosigned: dict[int, set[bytes]] = {}
    histories: set[str] = set()

    async def submit(source: FakeLog, size: int) -> None:
        async with client_for(app) as http:
            for _ in range(100):  # follow the witness's size (409) until it is past ours
                latest = state.latest(log.origin)
                old = latest.size if latest is not None else 0
                if old > size:
                    return
                response = await add(http, source.body(old, size))
                if response.status_code == 200:
                    cosigned.setdefault(size, set()).add(source.tree.root(size))
                    if size > 10:
                        histories.add(source.tag)
                    return
                if response.status_code != 409:
                    assert response.status_code == 422, response.text
                    return
            raise AssertionError("no answer but 409 a hundred times")

    await asyncio.gather(*(submit(source, size) for size in range(8, 31) for source in (log, fork)))
    assert all(len(roots) == 1 for roots in cosigned.values())
    assert len(histories) == 1
    latest = state.latest(log.origin)
    assert latest is not None and latest.size == 30


async def test_a_fork_shown_to_two_witnesses_gets_each_one_cosignature_at_most(tmp_path: Path, log: FakeLog) -> None:
    """A log showing two histories of one size to two witnesses: each cosigns what it saw first
    and refuses the other, so with a quorum of two neither history passes."""
    fork = log.fork(5).grow(5)
    assert fork.size == log.size and fork.tree.root() != log.tree.root()
    with WitnessState.open(tmp_path / "a", name="a.test/w") as a, WitnessState.open(tmp_path / "b", name="b.test/w") as b:
        async with client_for(make_app(a, log)) as wa, client_for(make_app(b, log)) as wb:
            cosigned = {
                "log": [(await add(wa, log.body(0))).content],
                "fork": [(await add(wb, fork.body(0))).content],
            }
            # each history then shown to the other witness, in every way the protocol allows
            refused(await add(wa, fork.body(10, proof=[])), 422)
            refused(await add(wa, fork.body(0)), 409)
            refused(await add(wb, log.body(10, proof=[])), 422)
            refused(await add(wb, log.body(0)), 409)
        witnesses = [CosignatureVerifier.from_vkey(a.vkey), CosignatureVerifier.from_vkey(b.vkey)]
        for history, name in ((log, "log"), (fork, "fork")):
            note = history.note() + b"".join(cosigned[name])
            one = verify_cosigned_checkpoint(note, log.signer.verifier(), witnesses, quorum=1)
            assert len(one.cosignatures) == 1
            with pytest.raises(WitnessQuorumNotMet):
                verify_cosigned_checkpoint(note, log.signer.verifier(), witnesses, quorum=2)
