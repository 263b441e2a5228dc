"""Attacks on protocol v1 and bad input, against a real controller process on loopback.

Each attack gets its own failing test: the controller must refuse with the right status and
code, sign the refusal, and change nothing (the ledger does not grow, no CVM appears).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from duet.client.sdk import DuetClient
from duet.errors import VerificationError
from duet.protocol.canonical import timestamp
from duet.protocol.envelope import request_digest, sign_request, verify_answer
from support import make_owner, start_cvm


def post(
    client: DuetClient, path: str, body: bytes | dict[str, Any], *, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(client.url + path, content=content, headers=headers or {"content-type": "application/json"}, timeout=30)
    answer = response.json()
    pin = client.pin()
    verify_answer(answer, controller=pin.controller, public_key=pin.public_key())  # every refusal is signed
    return response.status_code, answer["result"]


def snapshot(client: DuetClient) -> tuple[int, list[dict[str, Any]]]:
    return client.head()["tree_size"], client.list_cvms()


def test_replayed_request_is_refused_and_changes_nothing(client: DuetClient, owner: Any) -> None:
    cvm_id = start_cvm(client)
    envelope = sign_request(
        "cvm.run", client.pin().controller, {"cvm_id": cvm_id, "commands": ["echo once >> count.txt"]}, owner.key
    )
    status, result = post(client, f"/v1/cvms/{cvm_id}/run", envelope)
    assert status == 200 and result["results"][0]["exit_status"] == 0
    before = snapshot(client)

    status, result = post(client, f"/v1/cvms/{cvm_id}/run", envelope)

    assert status == 409
    assert result["error"]["code"] == "replayed_request"
    assert snapshot(client) == before
    assert client.run(cvm_id, ["wc -l < count.txt"])["results"][0]["stdout"].strip() == "1"


def test_replay_survives_a_controller_restart(client: DuetClient, controller: Any, owner: Any) -> None:
    envelope = sign_request("cvm.start", client.pin().controller, {"cvm_type": "snp"}, owner.key)
    status, result = post(client, "/v1/cvms", envelope)
    assert status == 202
    client.wait_job(result["job_id"])
    controller.restart()
    before = snapshot(client)

    status, result = post(client, "/v1/cvms", envelope)

    assert (status, result["error"]["code"]) == (409, "replayed_request")
    assert snapshot(client) == before


def test_request_for_another_controller_is_refused(client: DuetClient, owner: Any) -> None:
    before = snapshot(client)
    envelope = sign_request("cvm.start", "ab" * 32, {"cvm_type": "snp"}, owner.key)
    status, result = post(client, "/v1/cvms", envelope)
    assert (status, result["error"]["code"]) == (401, "wrong_controller")
    assert snapshot(client) == before


@pytest.mark.parametrize("age", [timedelta(minutes=6), timedelta(days=1), -timedelta(minutes=6)])
def test_request_issued_outside_the_window_is_refused(client: DuetClient, owner: Any, age: timedelta) -> None:
    before = snapshot(client)
    issued = timestamp(datetime.now(UTC) - age)
    envelope = sign_request("cvm.start", client.pin().controller, {"cvm_type": "snp"}, owner.key, issued_at=issued)
    status, result = post(client, "/v1/cvms", envelope)
    assert status == 401
    assert result["error"]["code"] == ("request_expired" if age > timedelta(0) else "request_from_future")
    assert snapshot(client) == before


def test_request_signed_by_an_unknown_key_is_refused(client: DuetClient, tmp_path: Any) -> None:
    stranger = make_owner(tmp_path, "stranger")
    before = snapshot(client)
    envelope = sign_request("cvm.start", client.pin().controller, {"cvm_type": "snp"}, stranger.key)
    status, result = post(client, "/v1/cvms", envelope)
    assert (status, result["error"]["code"]) == (401, "unknown_signer")
    assert snapshot(client) == before


def test_stranger_claiming_the_owners_key_id_is_refused(client: DuetClient, owner: Any, tmp_path: Any) -> None:
    stranger = make_owner(tmp_path, "stranger")
    envelope = sign_request("cvm.start", client.pin().controller, {"cvm_type": "snp"}, stranger.key)
    envelope["signer"] = owner.key_id
    before = snapshot(client)
    status, result = post(client, "/v1/cvms", envelope)
    assert (status, result["error"]["code"]) == (401, "bad_signature")
    assert snapshot(client) == before


def test_body_altered_after_signing_is_refused(client: DuetClient, owner: Any) -> None:
    cvm_id = start_cvm(client)
    envelope = sign_request("cvm.run", client.pin().controller, {"cvm_id": cvm_id, "commands": ["true"]}, owner.key)
    envelope["request"]["params"]["commands"] = ["touch pwned"]
    before = snapshot(client)
    status, result = post(client, f"/v1/cvms/{cvm_id}/run", envelope)
    assert (status, result["error"]["code"]) == (401, "bad_signature")
    assert snapshot(client) == before
    assert client.run(cvm_id, ["test -e pwned"])["results"][0]["exit_status"] == 1


def test_request_sent_to_the_route_of_another_op_is_refused(client: DuetClient, owner: Any) -> None:
    cvm_id = start_cvm(client)
    envelope = sign_request("cvm.mark", client.pin().controller, {"cvm_id": cvm_id, "mode": "in-service"}, owner.key)
    before = snapshot(client)
    status, result = post(client, f"/v1/cvms/{cvm_id}/stop", envelope)
    assert (status, result["error"]["code"]) == (400, "wrong_op")
    assert snapshot(client) == before


def test_answers_are_bound_to_their_request(client: DuetClient, owner: Any) -> None:
    envelope = sign_request("cvm.start", client.pin().controller, {"cvm_type": "tdx"}, owner.key)
    response = httpx.post(client.url + "/v1/cvms", json=envelope, timeout=30)
    answer = response.json()
    assert answer["request_digest"] == request_digest(envelope["request"])
    client.wait_job(answer["result"]["job_id"])
    # The same answer presented as the answer to another request does not verify.
    other = sign_request("cvm.start", client.pin().controller, {"cvm_type": "tdx"}, owner.key)
    pin = client.pin()
    with pytest.raises(Exception, match="different request"):
        verify_answer(
            answer, controller=pin.controller, public_key=pin.public_key(), request_digest=request_digest(other["request"])
        )


def _signed(client: DuetClient, owner: Any, op: str, params: Any) -> dict[str, Any]:
    return sign_request(op, client.pin().controller, params, owner.key)


def malformed_probes(client: DuetClient, owner: Any, cvm_id: str) -> list[tuple[str, str, bytes | dict[str, Any], int]]:
    """(name, path, body, expected status): the kinds of input the seed answered with an HTML 500."""
    run_path = f"/v1/cvms/{cvm_id}/run"
    valid = _signed(client, owner, "cvm.run", {"cvm_id": cvm_id, "commands": ["true"]})
    no_signature = {key: value for key, value in valid.items() if key != "signature"}
    return [
        ("not json", run_path, b"{not json", 400),
        ("empty body", run_path, b"", 400),
        ("json array", run_path, b"[1, 2]", 400),
        ("json string", run_path, b'"hello"', 400),
        ("NaN", run_path, b'{"request": NaN}', 400),
        ("invalid utf-8", run_path, b'{"a": "\xff\xfe"}', 400),
        ("missing signature", run_path, no_signature, 400),
        ("signature not base64", run_path, {**valid, "signature": "***"}, 401),
        ("signer not hex", run_path, {**valid, "signer": "me"}, 400),
        ("request not an object", run_path, {**valid, "request": "x"}, 400),
        ("extra envelope field", run_path, {**valid, "extra": 1}, 400),
        ("nonce wrong type", run_path, {**valid, "request": {**valid["request"], "nonce": 5}}, 400),
        ("commands as one string", run_path, _signed(client, owner, "cvm.run", {"cvm_id": cvm_id, "commands": "ls -la"}), 422),
        ("commands empty", run_path, _signed(client, owner, "cvm.run", {"cvm_id": cvm_id, "commands": []}), 422),
        ("command not a string", run_path, _signed(client, owner, "cvm.run", {"cvm_id": cvm_id, "commands": [42]}), 422),
        ("blank command", run_path, _signed(client, owner, "cvm.run", {"cvm_id": cvm_id, "commands": ["  "]}), 422),
        ("missing commands", run_path, _signed(client, owner, "cvm.run", {"cvm_id": cvm_id}), 422),
        (
            "negative timeout",
            run_path,
            _signed(client, owner, "cvm.run", {"cvm_id": cvm_id, "commands": ["true"], "timeout_s": -1}),
            422,
        ),
        (
            "huge timeout",
            run_path,
            _signed(client, owner, "cvm.run", {"cvm_id": cvm_id, "commands": ["true"], "timeout_s": 1e9}),
            422,
        ),
        (
            "unknown param",
            run_path,
            _signed(client, owner, "cvm.run", {"cvm_id": cvm_id, "commands": ["true"], "sudo": True}),
            422,
        ),
        ("unknown cvm type", "/v1/cvms", _signed(client, owner, "cvm.start", {"cvm_type": "sgx"}), 422),
        ("cvm type wrong type", "/v1/cvms", _signed(client, owner, "cvm.start", {"cvm_type": 1}), 422),
        (
            "unknown mode",
            f"/v1/cvms/{cvm_id}/mark",
            _signed(client, owner, "cvm.mark", {"cvm_id": cvm_id, "mode": "maintenance"}),
            422,
        ),
        (
            "final in-update",
            f"/v1/cvms/{cvm_id}/mark",
            _signed(client, owner, "cvm.mark", {"cvm_id": cvm_id, "mode": "in-update", "final": True}),
            422,
        ),
        (
            "final as string",
            f"/v1/cvms/{cvm_id}/mark",
            _signed(client, owner, "cvm.mark", {"cvm_id": cvm_id, "mode": "in-service", "final": "yes"}),
            422,
        ),
        (
            "unknown cvm",
            f"/v1/cvms/{'0' * 64}/run",
            _signed(client, owner, "cvm.run", {"cvm_id": "0" * 64, "commands": ["true"]}),
            404,
        ),
        ("cvm id not hex", "/v1/cvms/xyz/run", _signed(client, owner, "cvm.run", {"cvm_id": "xyz", "commands": ["true"]}), 422),
        (
            "path and params differ",
            f"/v1/cvms/{'1' * 64}/run",
            _signed(client, owner, "cvm.run", {"cvm_id": cvm_id, "commands": ["true"]}),
            400,
        ),
        ("oversized body", run_path, b'{"pad": "' + b"x" * (1024 * 1024 + 10) + b'"}', 413),
        ("unknown route", "/v1/cvms/nope/reboot", valid, 404),
    ]


def test_malformed_input_gets_a_clear_signed_4xx_and_changes_nothing(client: DuetClient, owner: Any) -> None:
    cvm_id = start_cvm(client)
    before = snapshot(client)
    probes = malformed_probes(client, owner, cvm_id)
    assert len(probes) == 30
    outcomes = {}
    for name, path, body, expected in probes:
        status, result = post(client, path, body)
        outcomes[name] = (status, result)
        assert status == expected, (name, status, result)
        assert result["error"]["message"], name
    assert snapshot(client) == before
    assert "params.commands" in outcomes["commands as one string"][1]["error"]["message"]


def test_unknown_cvm_reads_are_signed_404(client: DuetClient) -> None:
    response = httpx.get(client.url + "/v1/cvms/" + "0" * 64, timeout=10)
    assert response.status_code == 404
    pin = client.pin()
    result = verify_answer(response.json(), controller=pin.controller, public_key=pin.public_key())
    assert result["error"]["code"] == "unknown_cvm"


def test_reads_echo_the_clients_nonce(client: DuetClient) -> None:
    response = httpx.get(client.url + "/v1/ledger/head", params={"nonce": "ab" * 16}, timeout=10)
    pin = client.pin()
    verify_answer(response.json(), controller=pin.controller, public_key=pin.public_key(), nonce="ab" * 16)
    with pytest.raises(Exception, match="nonce"):
        verify_answer(response.json(), controller=pin.controller, public_key=pin.public_key(), nonce="cd" * 16)


def test_a_forged_answer_is_refused_by_the_client(client: DuetClient, controller: Any, tmp_path: Any) -> None:
    """An answer altered in transit (or made up) does not verify against the pinned key."""
    client.pin()
    real = httpx.get(client.url + "/v1/ledger/head", params={"nonce": "ef" * 16}, timeout=10).json()
    forged = {**real, "result": {**real["result"], "tree_size": real["result"]["tree_size"] + 5}}
    pin = client.pin()
    with pytest.raises(VerificationError) as refused:
        verify_answer(forged, controller=pin.controller, public_key=pin.public_key(), nonce="ef" * 16)
    assert refused.value.code == "bad_answer_signature"


def test_a_malformed_read_nonce_is_a_signed_400(client: DuetClient) -> None:
    for path in ("/v1/cvms/" + "0" * 64, "/v1/ledger/head", "/v1/cvms"):
        response = httpx.get(client.url + path, params={"nonce": "not-hex!"}, timeout=10)
        pin = client.pin()
        result = verify_answer(response.json(), controller=pin.controller, public_key=pin.public_key())
        assert (response.status_code, result["error"]["code"]) == (400, "bad_nonce"), path


def test_hostile_json_shapes_get_a_signed_400_and_change_nothing(client: DuetClient) -> None:
    before = snapshot(client)
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b'{"request": ' + b"9" * 5000 + b"}"):
        status, result = post(client, "/v1/cvms", body)
        assert (status, result["error"]["code"]) == (400, "malformed_json")
    assert snapshot(client) == before
