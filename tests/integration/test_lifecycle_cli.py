"""The whole lifecycle through the `duet` command, against a real controller and real sshd."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from duet.testing.process import ControllerProcess
from support import duet_cli


def duet(controller: ControllerProcess, owner: Any, user_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return duet_cli(controller, owner, user_dir, *args)


def duet_json(controller: ControllerProcess, owner: Any, user_dir: Path, *args: str, ok: bool = True) -> dict[str, Any]:
    done = duet(controller, owner, user_dir, "--json", *args)
    assert (done.returncode == 0) == ok, (args, done.returncode, done.stdout, done.stderr)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json must print exactly one JSON object, got: {done.stdout!r}"
    return json.loads(lines[0])  # type: ignore[no-any-return]


def test_whole_lifecycle_through_the_cli(controller: ControllerProcess, owner: Any, tmp_path: Path) -> None:
    user = tmp_path / "user"

    started = duet_json(controller, owner, user, "cvm", "start", "--type", "tdx")
    cvm_id = started["cvm_id"]
    assert started["mode"] == "in-update"

    ran = duet_json(controller, owner, user, "cvm", "run", cvm_id, "--", "echo", "hello", "&&", "echo", "oops", ">&2")
    assert ran["results"][0]["command"] == "echo hello && echo oops >&2"
    assert ran["results"][0]["exit_status"] == 0
    assert (ran["results"][0]["stdout"], ran["results"][0]["stderr"]) == ("hello\n", "oops\n")

    several = duet_json(
        controller, owner, user, "cvm", "run", cvm_id, "--cmd", "echo one > f", "--cmd", "cat f", "--cmd", "exit 3", ok=False
    )
    assert [item["exit_status"] for item in several["results"]] == [0, 0, 3]
    assert several["results"][1]["stdout"] == "one\n"

    marked = duet_json(controller, owner, user, "cvm", "mark", cvm_id, "in-service")
    assert marked["mode"] == "in-service"

    refused = duet_json(controller, owner, user, "cvm", "run", cvm_id, "--", "cat", "f", ok=False)
    assert refused["error"]["code"] == "not_in_update"
    assert "in-service" in refused["error"]["message"]

    state = duet_json(controller, owner, user, "cvm", "state", cvm_id, "--long")
    assert state["cvm"]["mode"] == "in-service"
    commands = state["commands"]
    assert [item["command"] for item in commands] == ["echo hello && echo oops >&2", "echo one > f", "cat f", "exit 3"]
    assert commands[2]["stdout"] == "one\n"
    assert commands[2]["stdout_sha256"] == hashlib.sha256(b"one\n").hexdigest()
    assert commands[3]["exit_status"] == 3

    short = duet_json(controller, owner, user, "cvm", "state", cvm_id)
    assert "stdout" not in short["commands"][2] and short["commands"][2]["stdout_sha256"]

    listed = duet_json(controller, owner, user, "cvm", "list")
    assert [(cvm["cvm_id"], cvm["mode"]) for cvm in listed["cvms"]] == [(cvm_id, "in-service")]

    duet_json(controller, owner, user, "cvm", "mark", cvm_id, "in-update")
    again = duet_json(controller, owner, user, "cvm", "run", cvm_id, "--", "cat", "f")
    assert again["results"][0]["stdout"] == "one\n"

    stopped = duet_json(controller, owner, user, "cvm", "stop", cvm_id)
    assert stopped["mode"] == "stopped"
    assert not (controller.state_dir / "local-cvms" / cvm_id).exists()
    gone = duet_json(controller, owner, user, "cvm", "run", cvm_id, "--", "true", ok=False)
    assert gone["error"]["code"] == "not_in_update"


def test_readable_output_without_json(controller: ControllerProcess, owner: Any, tmp_path: Path) -> None:
    user = tmp_path / "user"
    cvm_id = duet_json(controller, owner, user, "cvm", "start")["cvm_id"]
    done = duet(controller, owner, user, "cvm", "run", cvm_id, "--", "echo", "visible")
    assert done.returncode == 0, done.stderr
    assert "visible" in done.stdout and "exit 0" in done.stdout
    listing = duet(controller, owner, user, "cvm", "list")
    assert cvm_id[:12] in listing.stdout and "in-update" in listing.stdout
    assert "attested" in listing.stdout and "SIMULATED" in listing.stdout  # local CVMs: simulated hardware, said so


def test_owner_operation_without_a_key_is_refused_plainly(controller: ControllerProcess, owner: Any, tmp_path: Path) -> None:
    env = {**os.environ, "DUET_URL": controller.url, "DUET_HOME": str(tmp_path / "user")}
    env.pop("DUET_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "duet", "--json", "cvm", "start"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert json.loads(done.stdout)["error"]["code"] == "no_owner_key"


def test_keygen_writes_a_private_key_only_the_user_can_read(tmp_path: Path) -> None:
    for key_type in ("ed25519", "ecdsa", "rsa"):
        out = tmp_path / f"{key_type}.pem"
        done = subprocess.run(
            [sys.executable, "-m", "duet", "--json", "keygen", "--out", str(out), "--type", key_type],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert out.stat().st_mode & 0o777 == 0o600
        assert Path(result["public_key"]).read_text().startswith("-----BEGIN PUBLIC KEY-----")
        from duet import keys

        assert result["key_id"] == keys.key_id(keys.load_private_key(out).public_key())
    again = subprocess.run(
        [sys.executable, "-m", "duet", "--json", "keygen", "--out", str(tmp_path / "rsa.pem")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode != 0 and json.loads(again.stdout)["error"]["code"] == "key_exists"


def test_start_on_a_provider_the_controller_did_not_enable_is_refused(
    controller: ControllerProcess, owner: Any, tmp_path: Path
) -> None:
    user = tmp_path / "user"
    refused = duet_json(controller, owner, user, "cvm", "start", "--provider", "gcp", ok=False)
    assert refused["error"]["code"] == "provider_not_enabled"
    assert "local" in refused["error"]["message"]
    started = duet_json(controller, owner, user, "cvm", "start", "--provider", "local")
    assert started["mode"] == "in-update"
    assert duet_json(controller, owner, user, "cvm", "list")["cvms"][0]["provider"] == "local"


def test_a_request_the_controller_refuses_is_reported_as_its_refusal(
    controller: ControllerProcess, owner: Any, tmp_path: Path
) -> None:
    """Refusals are bound to the request they refuse, so the CLI says what was wrong (exit 1),
    not that the answer is untrusted (exit 3)."""
    user = tmp_path / "user"
    cvm_id = duet_json(controller, owner, user, "cvm", "start")["cvm_id"]
    too_many = [arg for index in range(101) for arg in ("--cmd", f"echo {index}")]
    done = duet(controller, owner, user, "cvm", "run", cvm_id, *too_many)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "UNTRUSTED" not in done.stdout + done.stderr
    assert "at most 100" in done.stdout + done.stderr
    refused = duet_json(controller, owner, user, "cvm", "run", cvm_id, *too_many, ok=False)
    assert refused["error"]["code"] == "invalid_params"

    # A key the controller does not know: refused as such, not reported as a forgery.
    from support import make_owner

    stranger = make_owner(tmp_path, "stranger")
    unknown = duet(controller, stranger, user, "--json", "cvm", "run", cvm_id, "--", "true")
    assert unknown.returncode == 1, (unknown.returncode, unknown.stdout, unknown.stderr)
    assert json.loads(unknown.stdout)["error"]["code"] == "unknown_signer"
