"""Commands through the controller: timeouts, output caps, separate streams, the history kept."""

from __future__ import annotations

import hashlib

from duet.client.sdk import DuetClient
from support import start_cvm


def test_a_command_past_its_timeout_is_killed_and_recorded(client: DuetClient) -> None:
    cvm_id = start_cvm(client)
    result = client.run(cvm_id, ["echo begun; sleep 20; echo never"], timeout_s=0.5)["results"][0]
    assert result["timed_out"] is True
    assert result["exit_status"] is None
    assert result["stdout"] == "begun\n"
    assert result["duration_ms"] < 10_000
    finished = client.entries(cvm=cvm_id)[-1]
    assert (finished["event"], finished["timed_out"]) == ("command.finished", True)
    assert client.run(cvm_id, ["echo next"])["results"][0]["stdout"] == "next\n"  # the CVM is still usable


def test_output_beyond_the_cap_is_cut_and_marked(client: DuetClient) -> None:
    cvm_id = start_cvm(client)
    result = client.run(
        cvm_id, ["head -c 100000 /dev/zero | tr '\\0' a; head -c 50 /dev/zero | tr '\\0' b >&2"], output_limit=1000
    )["results"][0]
    assert result["exit_status"] == 0
    assert result["stdout"] == "a" * 1000 and result["stdout_truncated"] is True
    assert result["stderr"] == "b" * 50 and result["stderr_truncated"] is False
    assert result["stdout_sha256"] == hashlib.sha256(b"a" * 1000).hexdigest()
    assert client.blob(result["stdout_sha256"]) == b"a" * 1000


def test_binary_output_is_kept_exactly_in_the_blob(client: DuetClient) -> None:
    cvm_id = start_cvm(client)
    result = client.run(cvm_id, ["printf '\\377\\000\\001'"])["results"][0]
    assert client.blob(result["stdout_sha256"]) == b"\xff\x00\x01"
    assert result["stdout_size"] == 3


def test_history_names_the_signer_and_binds_each_entry_to_its_request(client: DuetClient, owner: object) -> None:
    cvm_id = start_cvm(client)
    client.run(cvm_id, ["true", "false"])
    entries = client.entries(cvm=cvm_id)
    started = [entry for entry in entries if entry["event"] == "command.started"]
    finished = [entry for entry in entries if entry["event"] == "command.finished"]
    assert [entry["command"] for entry in started] == ["true", "false"]
    assert [entry["exit_status"] for entry in finished] == [0, 1]
    assert {entry["actor"] for entry in started} == {owner.key_id}  # type: ignore[attr-defined]
    assert len({entry["request_digest"] for entry in started + finished}) == 1
    assert [entry["started_seq"] for entry in finished] == [entry["seq"] for entry in started]
    assert all(later["seq"] > earlier["seq"] for earlier, later in zip(entries, entries[1:]))
