"""The seed's protocol (specs/seed-api.md) on a real controller process started with --seed-api.

The seed client here is written from the spec alone (httpx, cryptography, ``json.dumps``) and
shares no code with duet's own (neither duet.protocol.seed nor duet.cli.seed_client), so a
mistake in duet's byte rules cannot hide behind the same mistake in its client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from duet.client.sdk import DuetClient
from duet.client.trust import TrustStore
from duet.protocol import lifecycle as lc
from duet.testing.process import ControllerProcess, free_port, remove_all
from support import Owner, make_owner, serving

SEED_ALLOW_REPLAYS = "--seed-allow-replays"

PSS_MAX = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
IN_SERVICE_ERROR = "run-commands: Running commands not allowed while CVM is in service."
PRIVILEGED_ERRORS = {
    "/start_cvm": "start-cvm: Starting a new CVM is a privileged operation for the service owner.",
    "/run_commands": "run-commands: Running commands on a CVM is a privileged operation for the service owner.",
    "/mark_cvm": "mark-cvm: Changing the mode of a CVM is a privileged operation for the service owner.",
    "/stop_cvm": "stop-cvm: Stopping a CVM is a privileged operation for the service owner.",
}


# --- an independent seed client, from the spec ----------------------------------------------


def spec_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True).encode("utf-8")


def spec_sign(key: rsa.RSAPrivateKey, params: Any) -> str:
    return base64.b64encode(key.sign(spec_bytes(params), PSS_MAX, hashes.SHA256())).decode()


class SpecClient:
    def __init__(self, url: str, owner_key: rsa.RSAPrivateKey) -> None:
        self.url = url
        self.owner_key = owner_key
        response = httpx.get(url + "/quote", timeout=30)
        assert response.status_code == 200
        self.quote_answer = response.json()
        assert set(self.quote_answer) == {"quote", "public_key"}
        self.pem: str = self.quote_answer["public_key"]
        key = serialization.load_pem_public_key(self.pem.encode())
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 4096
        self.controller_key = key

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body``; the answer must be HTTP 200 and ``{"result", "signature"}`` signed over the exact bytes."""
        response = httpx.post(self.url + path, json=body, timeout=120)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert set(answer) == {"result", "signature"}
        self.controller_key.verify(  # raises InvalidSignature if the bytes rule is not the spec's
            base64.b64decode(answer["signature"], validate=True), spec_bytes(answer["result"]), PSS_MAX, hashes.SHA256()
        )
        return answer["result"]  # type: ignore[no-any-return]

    def call(self, path: str, params: dict[str, Any], *, signer: rsa.RSAPrivateKey | None = None) -> dict[str, Any]:
        return self.post(path, {"params": params, "signature": spec_sign(signer or self.owner_key, params)})

    def state(self, cvm_id: str, *, long: bool) -> dict[str, Any]:
        return self.post("/get_cvm_state", {"params": {"cvm_id": cvm_id, "should_be_long": long}})


# --- fixtures ---------------------------------------------------------------------------------


def v1_client(url: str, owner_key: Any, user_dir: Path) -> DuetClient:
    """A v1 client of this test controller (not verified: TEE none; answers still checked)."""
    return DuetClient(url, owner_key=owner_key, trust=TrustStore(user_dir), insecure=True)


@dataclass(frozen=True)
class RsaOwner:
    key: rsa.RSAPrivateKey
    path: Path
    pub_path: Path


def write_rsa_owner(directory: Path, name: str, key: rsa.RSAPrivateKey) -> RsaOwner:
    """As the seed's key generator writes them: PKCS#8 private PEM, SubjectPublicKeyInfo public PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub_path = directory / f"{name}.pub"
    pub_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return RsaOwner(key, path, pub_path)


@pytest.fixture(scope="module")
def rsa_owner(tmp_path_factory: pytest.TempPathFactory) -> RsaOwner:
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    return write_rsa_owner(tmp_path_factory.mktemp("seed-owner"), "service_owner_private_key", key)


@pytest.fixture(scope="module")
def intruder() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def v1_owner(tmp_path_factory: pytest.TempPathFactory) -> Owner:
    return make_owner(tmp_path_factory.mktemp("v1-owner"))


@pytest.fixture(scope="module")
def seed_controller(
    tmp_path_factory: pytest.TempPathFactory, rsa_owner: RsaOwner, v1_owner: Owner
) -> Iterator[ControllerProcess]:
    """One controller for the module (its RSA-4096 key takes a moment to make); tests use their own CVMs."""
    with serving(
        ControllerProcess(
            tmp_path_factory.mktemp("seed-controller") / "state",
            [v1_owner.pub_path, rsa_owner.pub_path],
            extra_args=("--seed-api",),
        )
    ) as process:
        yield process


@pytest.fixture
def spec(seed_controller: ControllerProcess, rsa_owner: RsaOwner) -> SpecClient:
    return SpecClient(seed_controller.url, rsa_owner.key)


@pytest.fixture
def v1(tmp_path: Path, seed_controller: ControllerProcess, v1_owner: Owner) -> Iterator[DuetClient]:
    with v1_client(seed_controller.url, v1_owner.key, tmp_path / "user") as client:
        yield client


def fresh(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with a random field of the client's own: signed, so part of the request's digest, and ignored
    by the controller. A start or a reopen repeated with the same params is refused as a replay; this is how a
    seed client that means to repeat one makes each request unique (duet seed-client does the same)."""
    return {**params, "request_id": secrets.token_hex(16)}


def start(spec: SpecClient) -> str:
    result = spec.call("/start_cvm", fresh({"cvm_type": "snp"}))
    assert result["success"] is True, result
    return result["state"]["cvm_id"]  # type: ignore[no-any-return]


# --- the seed's scenario ----------------------------------------------------------------------


def test_seed_scenario_start_run_mark_refuse_state_stop(
    spec: SpecClient, seed_controller: ControllerProcess, v1: DuetClient
) -> None:
    assert spec.quote_answer["quote"] == ""  # no TEE

    started = spec.call("/start_cvm", {"cvm_type": "snp"})
    cvm_id = started["state"]["cvm_id"]
    assert started == {"success": True, "state": {"cvm_id": cvm_id, "command_output_hashes": []}}
    authorized = (seed_controller.state_dir / "local-cvms" / cvm_id / "authorized_keys").read_text().strip()
    assert hashlib.sha256(authorized.encode()).hexdigest() == cvm_id  # SHA-256 of the OpenSSH public key line
    assert v1.state(cvm_id)["cvm"]["mode"] == "in-update"  # start answered once the CVM was up

    commands = ["python3 --version", "echo out; echo err >&2", "printf 'no newline'"]
    ran = spec.call("/run_commands", {"cvm_id": cvm_id, "commands": commands})
    assert ran["success"] is True
    version = ran["output"][0]
    assert version.startswith("Python 3.") and version.endswith("\n")
    assert ran["output"] == [version, "out\n", "err\n", "no newline"]

    marked = spec.call("/mark_cvm", {"cvm_id": cvm_id, "cvm_mode": "in-service"})
    assert marked == {"success": True, "mode": {"cvm_id": cvm_id, "cvm_mode": "in-service"}}

    refused = spec.call("/run_commands", {"cvm_id": cvm_id, "commands": ["python3 --version"]})
    assert refused == {"success": False, "error": IN_SERVICE_ERROR}

    outputs = [[version], ["out\n", "err\n"], ["no newline"]]
    long = spec.state(cvm_id, long=True)
    assert long == {
        "success": True,
        "state": {"cvm_id": cvm_id, "command_outputs": [{"command": c, "output": o} for c, o in zip(commands, outputs)]},
    }
    short = spec.state(cvm_id, long=False)
    assert short == {
        "success": True,
        "state": {
            "cvm_id": cvm_id,
            "command_output_hashes": [
                {"command": c, "output_hash": hashlib.sha256(str(o).encode()).hexdigest()} for c, o in zip(commands, outputs)
            ],
        },
    }

    stopped = spec.call("/stop_cvm", {"cvm_id": cvm_id})
    assert stopped == {"success": True, "status": True}
    assert v1.state(cvm_id)["cvm"]["mode"] == "stopped"  # stop answered once the CVM was gone


def test_answers_are_signed_over_json_dumps_bytes_only(spec: SpecClient) -> None:
    """Non-ASCII output: the signature covers the ensure_ascii=True bytes, and no other serialization."""
    cvm_id = start(spec)
    response = httpx.post(
        spec.url + "/run_commands",
        json={
            "params": {"cvm_id": cvm_id, "commands": ["printf 'caf\\303\\251\\n'"]},
            "signature": spec_sign(spec.owner_key, {"cvm_id": cvm_id, "commands": ["printf 'caf\\303\\251\\n'"]}),
        },
        timeout=60,
    )
    answer = response.json()
    assert answer["result"] == {"success": True, "output": ["café\n"]}
    signature = base64.b64decode(answer["signature"])
    exact = json.dumps(answer["result"], sort_keys=True).encode()
    assert b"\\u00e9" in exact
    spec.controller_key.verify(signature, exact, PSS_MAX, hashes.SHA256())
    for other in (
        json.dumps(answer["result"], sort_keys=True, ensure_ascii=False).encode(),
        json.dumps(answer["result"], sort_keys=True, separators=(",", ":")).encode(),
    ):
        with pytest.raises(InvalidSignature):
            spec.controller_key.verify(signature, other, PSS_MAX, hashes.SHA256())


# --- refusals -----------------------------------------------------------------------------------


def test_bad_signatures_get_the_seeds_privileged_error_signed_and_change_nothing(
    spec: SpecClient, v1: DuetClient, intruder: rsa.RSAPrivateKey
) -> None:
    cvm_id = start(spec)
    params_of = {
        "/start_cvm": {"cvm_type": "snp"},
        "/run_commands": {"cvm_id": cvm_id, "commands": ["touch pwned"]},
        "/mark_cvm": {"cvm_id": cvm_id, "cvm_mode": "in-service"},
        "/stop_cvm": {"cvm_id": cvm_id},
    }
    before = (v1.head()["tree_size"], v1.list_cvms())
    salt32 = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    for path, params in params_of.items():
        bodies = {
            "stranger's key": {"params": params, "signature": spec_sign(intruder, params)},
            "other params": {"params": params, "signature": spec_sign(spec.owner_key, {**params, "x": 1})},
            "no signature": {"params": params},
            "not base64": {"params": params, "signature": "%%%"},
            "salt not maximal": {
                "params": params,
                "signature": base64.b64encode(spec.owner_key.sign(spec_bytes(params), salt32, hashes.SHA256())).decode(),
            },
        }
        for name, body in bodies.items():
            assert spec.post(path, body) == {"success": False, "error": PRIVILEGED_ERRORS[path]}, (path, name)
    assert (v1.head()["tree_size"], v1.list_cvms()) == before


def test_bad_input_is_answered_in_the_body_signed(spec: SpecClient, v1: DuetClient) -> None:
    cvm_id = start(spec)
    before = v1.head()["tree_size"]
    unknown = "0" * 64
    assert spec.call("/run_commands", {"cvm_id": unknown, "commands": ["id"]}) == {
        "success": False,
        "error": "run-commands: No such CVM.",
    }
    assert spec.call("/mark_cvm", {"cvm_id": unknown, "cvm_mode": "in-service"}) == {
        "success": False,
        "error": "mark-cvm: No such CVM.",
    }
    assert spec.call("/stop_cvm", {"cvm_id": unknown}) == {"success": False, "error": "stop-cvm: No such CVM."}
    assert spec.state(unknown, long=False) == {"success": False, "error": "get-cvm-state: No such CVM."}
    bad_mode = spec.call("/mark_cvm", {"cvm_id": cvm_id, "cvm_mode": "in-between"})
    assert bad_mode["success"] is False and bad_mode["error"].startswith("mark-cvm: invalid params: params.cvm_mode")
    bad_type = spec.call("/start_cvm", {"cvm_type": "sgx"})
    assert bad_type["success"] is False and bad_type["error"].startswith("start-cvm: invalid params: params.cvm_type")
    not_a_list = spec.call("/run_commands", {"cvm_id": cvm_id, "commands": "ls"})
    assert not_a_list["success"] is False and not_a_list["error"].startswith("run-commands: invalid params: params.commands")
    response = httpx.post(spec.url + "/run_commands", content=b"{not json", timeout=30)
    assert response.status_code == 200
    garbage = response.json()
    spec.controller_key.verify(base64.b64decode(garbage["signature"]), spec_bytes(garbage["result"]), PSS_MAX, hashes.SHA256())
    assert garbage["result"]["success"] is False and garbage["result"]["error"].startswith(
        "run-commands: the request body is not valid JSON"
    )
    assert v1.head()["tree_size"] == before


# --- one set of CVMs, two protocols ----------------------------------------------------------------


def seed_marked(entries: list[dict[str, Any]]) -> dict[str, list[int]]:
    marked: dict[str, list[int]] = {}
    for entry in entries:
        if entry.get("protocol") == "seed":
            marked.setdefault(entry["event"], []).append(entry["seq"])
    return marked


def test_mixed_use_seed_started_cvm_is_audited_with_its_seed_marks(
    tmp_path: Path, spec: SpecClient, v1: DuetClient, seed_controller: ControllerProcess
) -> None:
    cvm_id = start(spec)
    run_params = {"cvm_id": cvm_id, "commands": ["echo via seed"]}
    assert spec.call("/run_commands", run_params)["output"] == ["via seed\n"]
    assert v1.run(cvm_id, ["echo via v1"])["results"][0]["stdout"] == "via v1\n"
    assert spec.call("/mark_cvm", {"cvm_id": cvm_id, "cvm_mode": "in-service"})["success"] is True

    entries = v1.entries(cvm=cvm_id)
    marked = seed_marked(entries)
    assert set(marked) == {"cvm.provisioning", "command.started", "command.finished", "mode.changed"}
    by_seq = {entry["seq"]: entry for entry in entries}
    seed_run = by_seq[marked["command.started"][0]]
    assert seed_run["command"] == "echo via seed"
    assert seed_run["request_digest"] == hashlib.sha256(spec_bytes(run_params)).hexdigest()
    assert (
        seed_run["actor"]
        == hashlib.sha256(
            spec.owner_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ).hexdigest()
    )
    v1_run = next(e for e in entries if e["event"] == "command.started" and e["command"] == "echo via v1")
    assert "protocol" not in v1_run  # v1 entries are unchanged
    # The seed's view shows the v1 command too: one CVM, one history.
    assert [item["command"] for item in spec.state(cvm_id, long=True)["state"]["command_outputs"]] == [
        "echo via seed",
        "echo via v1",
    ]

    audit = _duet_audit(tmp_path, seed_controller, cvm_id)
    assert audit["ok"] is True, audit["findings"]
    assert [row["seq"] for row in audit["timeline"]] == [entry["seq"] for entry in entries]
    audited_marks = {row["seq"] for row in audit["timeline"] if row["protocol"] == "seed"}
    assert audited_marks == {seq for seqs in marked.values() for seq in seqs}
    assert {row["protocol"] for row in audit["timeline"]} == {"seed", "v1"}


def _duet_audit(tmp_path: Path, controller: ControllerProcess, cvm_id: str) -> dict[str, Any]:
    """``duet --json audit CVM_ID`` in its own user directory, trusting the local CVMs' SIMULATED roots."""
    roots = str(controller.cvm_roots_file())
    result = subprocess.run(
        [sys.executable, "-m", "duet", "--json", "--url", controller.url, "audit", cvm_id],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DUET_HOME": str(tmp_path / "auditor"), "DUET_INSECURE": "1", "DUET_CVM_ROOTS": roots},
    )
    assert result.stdout, result.stderr
    return json.loads(result.stdout.splitlines()[0])  # type: ignore[no-any-return]


def test_a_replayed_seed_run_commands_runs_again_and_the_ledger_shows_it(spec: SpecClient, v1: DuetClient) -> None:
    """The rule for run_commands: running the same commands again is normal seed use, so a repeated (or replayed)
    run is accepted, but only while the CVM is in-update, which a replay can no longer bring about; auditors see
    the repeats as entries with the same digest."""
    cvm_id = start(spec)
    params = {"cvm_id": cvm_id, "commands": ["echo again >> count.txt; wc -l < count.txt"]}
    body = {"params": params, "signature": spec_sign(spec.owner_key, params)}
    assert spec.post("/run_commands", body)["output"] == ["1\n"]
    assert spec.post("/run_commands", body)["output"] == ["2\n"]
    digests = [
        e["request_digest"] for e in v1.entries(cvm=cvm_id) if e["event"] == "command.started" and e.get("protocol") == "seed"
    ]
    assert digests == [hashlib.sha256(spec_bytes(params)).hexdigest()] * 2


def signed(spec: SpecClient, params: dict[str, Any]) -> dict[str, Any]:
    """A signed seed request body, as a listener on the wire captures it."""
    return {"params": params, "signature": spec_sign(spec.owner_key, params)}


def seed_process(tmp_path: Path, rsa_owner: RsaOwner, v1_owner: Owner, *extra: str) -> ControllerProcess:
    """A controller of its own (it restarts, or its settings differ from the module's)."""
    return ControllerProcess(tmp_path / "state", [v1_owner.pub_path, rsa_owner.pub_path], extra_args=("--seed-api", *extra))


def assert_refused_as_replay(result: dict[str, Any], op: str, params: dict[str, Any]) -> None:
    assert result["success"] is False, result
    assert result["error"].startswith(f"{op}: refused as a replay: "), result
    assert hashlib.sha256(spec_bytes(params)).hexdigest()[:16] in result["error"]


def test_captured_start_and_reopen_are_refused_after_a_v1_mark_in_service_and_after_a_restart(
    tmp_path: Path, rsa_owner: RsaOwner, v1_owner: Owner
) -> None:
    """The attack reproduced on the seed protocol: requests captured on the wire, replayed once the owner closed
    the CVM through v1, reopened it, re-ran commands and started more CVMs. The seed listener now refuses a
    start_cvm or a mark_cvm in-update it has already accepted, remembered from the verified ledger."""
    with serving(seed_process(tmp_path, rsa_owner, v1_owner)) as process:
        spec = SpecClient(process.url, rsa_owner.key)
        captured_start = signed(spec, {"cvm_type": "snp"})  # exactly what the seed's client sends
        started = spec.post("/start_cvm", captured_start)
        assert started["success"] is True, started
        cvm_id = started["state"]["cvm_id"]
        assert spec.call("/mark_cvm", {"cvm_id": cvm_id, "cvm_mode": "in-service"})["success"] is True
        captured_reopen = signed(spec, {"cvm_id": cvm_id, "cvm_mode": "in-update"})
        assert spec.post("/mark_cvm", captured_reopen) == {"success": True, "mode": {"cvm_id": cvm_id, "cvm_mode": "in-update"}}
        captured_run = signed(spec, {"cvm_id": cvm_id, "commands": ["echo ran >> runs.txt"]})
        assert spec.post("/run_commands", captured_run)["success"] is True

        def replays_are_refused(v1: DuetClient) -> None:
            entries, cvms = v1.entries(), v1.list_cvms()
            assert_refused_as_replay(spec.post("/mark_cvm", captured_reopen), "mark-cvm", captured_reopen["params"])
            assert_refused_as_replay(spec.post("/start_cvm", captured_start), "start-cvm", captured_start["params"])
            assert spec.post("/run_commands", captured_run) == {"success": False, "error": IN_SERVICE_ERROR}
            assert (v1.entries(), v1.list_cvms()) == (entries, cvms)  # nothing changed, nothing recorded
            assert v1.state(cvm_id)["cvm"]["mode"] == "in-service"

        with v1_client(process.url, v1_owner.key, tmp_path / "user") as v1:
            v1.mark(cvm_id, "in-service")  # the owner closes the CVM through v1
            replays_are_refused(v1)
            assert not [e for e in v1.entries() if e["event"] == "controller.seed_replays_allowed"]

        process.restart()  # the digests are derived from the verified ledger again, not from the database
        spec = SpecClient(process.url, rsa_owner.key)
        with v1_client(process.url, v1_owner.key, tmp_path / "user") as v1:
            replays_are_refused(v1)
            # The owner can still reopen through the seed protocol with a request never seen before.
            reopened = spec.call("/mark_cvm", fresh({"cvm_id": cvm_id, "cvm_mode": "in-update"}))
            assert reopened == {"success": True, "mode": {"cvm_id": cvm_id, "cvm_mode": "in-update"}}
            assert len(v1.list_cvms()) == 1


def test_with_the_operators_opt_in_seed_replays_are_accepted_and_the_ledger_says_so(
    tmp_path: Path, rsa_owner: RsaOwner, v1_owner: Owner
) -> None:
    with serving(seed_process(tmp_path, rsa_owner, v1_owner, SEED_ALLOW_REPLAYS)) as process:
        assert "replays of captured seed requests are ALLOWED" in process.log()
        spec = SpecClient(process.url, rsa_owner.key)
        captured_start = signed(spec, {"cvm_type": "snp"})
        first, second = spec.post("/start_cvm", captured_start), spec.post("/start_cvm", captured_start)
        assert first["success"] is True and second["success"] is True
        assert first["state"]["cvm_id"] != second["state"]["cvm_id"]
        cvm_id = first["state"]["cvm_id"]
        with v1_client(process.url, v1_owner.key, tmp_path / "user") as v1:
            v1.mark(cvm_id, "in-service")
            captured_reopen = signed(spec, {"cvm_id": cvm_id, "cvm_mode": "in-update"})
            assert spec.post("/mark_cvm", captured_reopen)["success"] is True
            v1.mark(cvm_id, "in-service")
            assert spec.post("/mark_cvm", captured_reopen)["success"] is True  # replayed, and accepted
            assert v1.state(cvm_id)["cvm"]["mode"] == "in-update"
            entries = v1.entries()
            started = [e for e in entries if e["event"] == "controller.started"]
            allowed = [e for e in entries if e["event"] == "controller.seed_replays_allowed"]
            assert len(started) == 1 and len(allowed) == 1
            assert allowed[0]["seq"] == started[0]["seq"] + 1 and allowed[0]["actor"] == "controller"
            assert "replay" in allowed[0]["reason"]


def test_start_up_warns_that_the_seed_protocol_has_no_replay_protection(seed_controller: ControllerProcess) -> None:
    assert "NO replay protection" in seed_controller.log()


def test_the_seed_protocol_is_off_by_default(tmp_path: Path, rsa_owner: RsaOwner) -> None:
    with ControllerProcess(
        tmp_path / "state",
        [rsa_owner.pub_path],
    ) as controller:
        assert httpx.get(controller.url + "/quote", timeout=10).status_code == 404
        assert httpx.post(controller.url + "/start_cvm", json={"params": {"cvm_type": "snp"}}, timeout=10).status_code == 404
        assert not (controller.state_dir / "sealed" / "controller-seed-rsa.pem").exists()
        assert "replay" not in controller.log()


# --- the quote ---------------------------------------------------------------------------------------


def test_quote_binds_the_rsa_key_and_the_key_survives_a_restart(tmp_path: Path, rsa_owner: RsaOwner) -> None:
    from duet.attestation import sgx
    from duet.tee.simulated import simulated_root_pem

    process = ControllerProcess(tmp_path / "state", [rsa_owner.pub_path], tee="simulated", extra_args=("--seed-api",))
    process.start(timeout=60)
    try:
        first = httpx.get(process.url + "/quote", timeout=30).json()
        quote = base64.b64decode(first["quote"], validate=True)
        root = sgx.load_trust_root(simulated_root_pem(process.state_dir))
        assert sgx.verify_quote(quote, trusted_root_keys=[root], now=datetime.now(UTC)).ok
        assert quote[368:400] == hashlib.sha256(first["public_key"].encode()).digest()  # where the seed's client looks
        assert quote[400:432] == bytes(32)
        attestation = httpx.get(process.url + "/v1/attestation", timeout=30).json()["result"]
        v1_quote = base64.b64decode(attestation["evidence"]["quote"])
        assert v1_quote[368:432] != quote[368:432]  # /v1/attestation keeps its own binding

        process.restart()
        assert httpx.get(process.url + "/quote", timeout=30).json()["public_key"] == first["public_key"]
    finally:
        process.stop()
        remove_all(process.state_dir)


# --- duet seed-client runs a script written for the seed's client -----------------------------------

SEED_STYLE_SCRIPT = """\
#!/bin/bash
# The seed's end-to-end scenario, as its script drives its client; only the program name is duet's.
client="$1"

start_output=$($client --action start-cvm --cvm-type snp)
echo "${start_output}"
CVM_ID=$(echo "${start_output}" | grep "started cvm_id" | awk '{print $NF}')
echo "cvm_id: $CVM_ID"
$client --cvm-id $CVM_ID --action run-commands --command "python3 --version"
$client --cvm-id $CVM_ID --action mark-cvm --cvm-mode in-service
$client --cvm-id $CVM_ID --action run-commands --command "python3 --version"
$client --cvm-id $CVM_ID --action get-cvm-state-long
$client --cvm-id $CVM_ID --action stop-cvm
"""


def test_seed_style_end_to_end_script_runs_with_duet_seed_client(
    tmp_path: Path, seed_controller: ControllerProcess, rsa_owner: RsaOwner, v1: DuetClient
) -> None:
    workdir = tmp_path / "client"
    write_rsa_owner(workdir, "service_owner_private_key", rsa_owner.key)  # the seed client's default key file
    script = workdir / "end_to_end.sh"
    script.write_text(SEED_STYLE_SCRIPT)
    duet = Path(sys.executable).parent / "duet"
    result = subprocess.run(
        ["bash", str(script), f"{duet} seed-client --insecure"],  # no TEE here: nothing to verify
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "DUET_URL": seed_controller.url},
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    cvm_id = next(line.split()[-1] for line in out.splitlines() if line.startswith("started cvm_id: "))
    assert len(cvm_id) == 64 and f"cvm_id: {cvm_id}\n" in out
    lines = out.splitlines()
    assert "==========Start of command: start-cvm==========" in lines
    assert "===========End of command: stop-cvm===========" in lines
    assert f"cvm_id: {cvm_id}" in lines and "command: [['python3 --version']]" in lines
    assert lines.count("[WARNING]: Unverified SGX controller.") == 6
    assert any(line.startswith("['Python 3.") and line.endswith("\\n']") for line in lines)
    assert str({"cvm_id": cvm_id, "cvm_mode": "in-service"}) in lines
    assert f"ERROR: {IN_SERVICE_ERROR}" in lines
    state_start = lines.index("command: python3 --version")
    assert (
        lines[state_start + 1] == "-" * 20
        and lines[state_start + 2].startswith("Python 3.")
        and lines[state_start + 3] == "=" * 20
    )
    assert lines[lines.index("===========End of command: stop-cvm===========") - 1] == "True"
    assert v1.state(cvm_id)["cvm"]["mode"] == "stopped"


def test_the_seed_protocol_on_its_own_plain_listener_beside_https(tmp_path: Path, rsa_owner: RsaOwner, v1_owner: Owner) -> None:
    """The seed's clients speak plain HTTP; /v1 stays HTTPS. One controller, one set of CVMs."""
    seed_port = free_port()
    controller = ControllerProcess(
        tmp_path / "state",
        [v1_owner.pub_path, rsa_owner.pub_path],
        tls=True,
        extra_args=("--seed-listen", f"127.0.0.1:{seed_port}"),
    )
    try:
        with controller:
            assert controller.url.startswith("https://")
            spec = SpecClient(f"http://127.0.0.1:{seed_port}", rsa_owner.key)
            cvm_id = start(spec)
            with v1_client(controller.url, v1_owner.key, tmp_path / "user") as v1:
                assert v1.state(cvm_id)["cvm"]["mode"] == "in-update"
                assert [e["protocol"] for e in v1.entries(cvm=cvm_id) if e["event"] == "cvm.provisioning"] == ["seed"]
            assert spec.call("/stop_cvm", {"cvm_id": cvm_id}) == {"success": True, "status": True}
            # The HTTPS listener does not serve the seed's routes.
            assert httpx.get(controller.url + "/quote", verify=False, timeout=10).status_code == 404
            assert "plain HTTP, no replay protection" in controller.log()
    finally:
        remove_all(controller.state_dir)


def run_seed_client(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    duet = Path(sys.executable).parent / "duet"
    environment = {k: v for k, v in os.environ.items() if k not in ("DUET_INSECURE", "DUET_URL")}
    return subprocess.run(
        [str(duet), "seed-client", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment, **(env or {})},
    )


def test_seed_client_stops_on_a_failed_attestation_unless_insecure(
    tmp_path: Path, seed_controller: ControllerProcess, rsa_owner: RsaOwner, v1: DuetClient
) -> None:
    """The seed's client printed "Valid SGX controller: False" and sent the owner's signed request anyway."""
    workdir = tmp_path / "client"
    write_rsa_owner(workdir, "service_owner_private_key", rsa_owner.key)
    url = ("--url", seed_controller.url)
    before = (v1.head()["tree_size"], v1.list_cvms())

    refused = run_seed_client(workdir, *url, "--action", "start-cvm", "--cvm-type", "snp")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    lines = refused.stdout.splitlines()
    assert "Valid SGX controller: False" in lines
    assert any(line.startswith("ERROR: ") and "nothing was sent" in line and "--insecure" in line for line in lines)
    assert not any(line.startswith("started cvm_id") for line in lines)
    assert (v1.head()["tree_size"], v1.list_cvms()) == before  # the signed request never left the client

    read = run_seed_client(workdir, *url, "--action", "get-cvm-state", "--cvm-id", "0" * 64)
    assert read.returncode == 3 and "No such CVM" not in read.stdout  # an unverified controller is not asked at all

    insecure = run_seed_client(workdir, *url, "--insecure", "--action", "start-cvm", "--cvm-type", "snp")
    assert insecure.returncode == 0, insecure.stdout + insecure.stderr
    lines = insecure.stdout.splitlines()
    assert "[WARNING]: Unverified SGX controller." in lines
    assert any("--insecure" in line and "WARNING" in line for line in lines)
    cvm_id = next(line.split()[-1] for line in lines if line.startswith("started cvm_id: "))
    assert v1.state(cvm_id)["cvm"]["mode"] == "in-update"

    by_env = run_seed_client(workdir, *url, "--action", "get-cvm-state", "--cvm-id", cvm_id, env={"DUET_INSECURE": "1"})
    assert by_env.returncode == 0, by_env.stdout + by_env.stderr


def test_operations_that_need_several_owners_are_refused_naming_the_v1_route(
    tmp_path: Path, rsa_owner: RsaOwner, v1_owner: Owner
) -> None:
    """The seed protocol speaks for one owner: with `mark in-update` needing two, its reopen is refused (and nothing
    changes), while what one owner may do still works; v1 proposes the reopen and the other owner approves it."""
    policy = tmp_path / "approvals.toml"
    policy.write_text('[thresholds]\n"cvm.mark.in-update" = 2\n')
    with serving(seed_process(tmp_path, rsa_owner, v1_owner, "--approval-policy", str(policy))) as process:
        spec = SpecClient(process.url, rsa_owner.key)
        cvm_id = start(spec)
        assert spec.call("/mark_cvm", {"cvm_id": cvm_id, "cvm_mode": "in-service"})["success"] is True

        refused = spec.call("/mark_cvm", fresh({"cvm_id": cvm_id, "cvm_mode": "in-update"}))

        assert refused["success"] is False
        assert "cvm.mark.in-update needs 2 owner signatures" in refused["error"]
        assert "POST /v1/cvms/{id}/mark" in refused["error"] and "`duet cvm mark`" in refused["error"]
        with v1_client(process.url, v1_owner.key, tmp_path / "user") as v1:
            assert v1.state(cvm_id)["cvm"]["mode"] == lc.IN_SERVICE
            proposal = v1.mark(cvm_id, lc.IN_UPDATE)["proposal"]
            with v1_client(process.url, rsa_owner.key, tmp_path / "rsa-user") as other:
                assert other.approve(proposal["id"])["proposal"]["status"] == "executed"
            assert v1.state(cvm_id)["cvm"]["mode"] == lc.IN_UPDATE
