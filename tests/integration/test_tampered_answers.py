"""A man in the middle who alters the controller's answers is caught, and the user told plainly.

A real TCP proxy sits between the `duet` command and a real controller and rewrites bytes of
answers (or of requests) in flight (same length, so the HTTP framing stays valid).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from duet.client.sdk import DuetClient
from duet.client.trust import TrustStore
from duet.errors import UntrustedAnswer
from duet.testing.process import ControllerProcess
from support import start_cvm


class TamperingProxy:
    """Forwards 127.0.0.1:port to the controller, replacing ``old`` by ``new`` in answers (or,
    with ``requests=True``, in the requests sent to the controller)."""

    def __init__(self, upstream_port: int, old: bytes, new: bytes, *, requests: bool = False) -> None:
        assert len(old) == len(new)
        self.upstream_port, self.old, self.new = upstream_port, old, new
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests = requests
        self.tampered = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(downstream, upstream, self.requests), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, downstream, not self.requests), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, tamper: bool) -> None:
        try:
            while data := source.recv(1 << 20):
                if tamper and self.old in data:
                    data = data.replace(self.old, self.new)
                    self.tampered += 1
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def in_update_cvm(client: DuetClient) -> str:
    return start_cvm(client)


@pytest.fixture
def proxy(controller: ControllerProcess) -> Iterator[TamperingProxy]:
    # Make an in-update CVM look in-service (or any other lie of the same length).
    tampering = TamperingProxy(controller.port, b'"mode":"in-update"', b'"mode":"in-servic"')
    yield tampering
    tampering.close()


def duet_cli(proxy: TamperingProxy, owner: Any, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DUET_URL": f"http://127.0.0.1:{proxy.port}",
        "DUET_KEY": str(owner.path),
        "DUET_HOME": str(tmp_path / "user"),
        "DUET_INSECURE": "1",
    }
    return subprocess.run([sys.executable, "-m", "duet", *args], env=env, capture_output=True, text=True, timeout=60)


def test_an_altered_answer_is_refused_and_the_user_told(
    proxy: TamperingProxy, in_update_cvm: str, owner: Any, tmp_path: Path
) -> None:
    done = duet_cli(proxy, owner, tmp_path, "cvm", "state", in_update_cvm)
    assert proxy.tampered >= 1, "the proxy must have altered the answer for this test to mean anything"
    assert done.returncode == 3
    assert "UNTRUSTED ANSWER" in done.stderr
    assert "in-servic" not in done.stdout  # nothing of the forged answer is shown


def test_an_altered_answer_is_a_json_error_for_scripts(
    proxy: TamperingProxy, in_update_cvm: str, owner: Any, tmp_path: Path
) -> None:
    done = duet_cli(proxy, owner, tmp_path, "--json", "cvm", "state", in_update_cvm)
    assert done.returncode == 3
    assert json.loads(done.stdout)["error"]["code"] == "bad_answer_signature"


def test_the_same_call_without_the_lie_succeeds(
    controller: ControllerProcess, in_update_cvm: str, owner: Any, tmp_path: Path
) -> None:
    honest = TamperingProxy(controller.port, b"never-in-any-answer", b"never-in-any-answer")
    try:
        done = duet_cli(honest, owner, tmp_path, "--json", "cvm", "state", in_update_cvm)
    finally:
        honest.close()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cvm"]["mode"] == "in-update"


# --- a proxy that sends the question elsewhere: the answer must name what was asked --------------


@pytest.fixture
def two_cvms(client: DuetClient) -> tuple[str, str]:
    """Two CVMs: ``asked`` in-update, ``other`` in-service (the lie a rewritten path would tell)."""
    asked, other = start_cvm(client), start_cvm(client)
    client.mark(other, "in-service")
    return asked, other


def test_a_read_sent_to_another_path_is_refused(
    controller: ControllerProcess, two_cvms: tuple[str, str], owner: Any, tmp_path: Path
) -> None:
    asked, other = two_cvms
    rewriting = TamperingProxy(controller.port, f"/v1/cvms/{asked}".encode(), f"/v1/cvms/{other}".encode(), requests=True)
    try:
        with DuetClient(f"http://127.0.0.1:{rewriting.port}", trust=TrustStore(tmp_path / "sdk"), insecure=True) as through_proxy:
            with pytest.raises(UntrustedAnswer) as refused:
                through_proxy.state(asked)
            assert refused.value.code == "answer_not_bound"
            assert rewriting.tampered >= 1, "the proxy must have rewritten the request for this test to mean anything"
        done = duet_cli(rewriting, owner, tmp_path, "--json", "cvm", "state", asked)
    finally:
        rewriting.close()
    assert done.returncode == 3, done.stdout + done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "answer_not_bound"
    assert other not in done.stdout and "in-service" not in done.stdout


def test_a_read_with_a_rewritten_query_is_refused(
    controller: ControllerProcess, two_cvms: tuple[str, str], tmp_path: Path
) -> None:
    asked, other = two_cvms
    rewriting = TamperingProxy(controller.port, f"cvm={asked}".encode(), f"cvm={other}".encode(), requests=True)
    try:
        with DuetClient(f"http://127.0.0.1:{rewriting.port}", trust=TrustStore(tmp_path / "sdk"), insecure=True) as through_proxy:
            with pytest.raises(UntrustedAnswer) as refused:
                through_proxy.entries(cvm=asked)
            assert refused.value.code == "answer_not_bound"
            assert rewriting.tampered >= 1
    finally:
        rewriting.close()


# --- refusals are bound to the request they refuse ---------------------------------------------


def test_refusals_are_bound_to_the_request_and_malformed_ones_to_none(
    controller: ControllerProcess, client: DuetClient, in_update_cvm: str, owner: Any
) -> None:
    import httpx

    from duet.protocol.envelope import request_digest, request_target, sign_request, verify_answer

    pin = client.pin()
    path = f"/v1/cvms/{in_update_cvm}/run"
    cases = {
        "invalid_params": sign_request("cvm.run", pin.controller, {"cvm_id": in_update_cvm, "commands": []}, owner.key),
        "wrong_op": sign_request("cvm.stop", pin.controller, {"cvm_id": in_update_cvm}, owner.key),
        "request_expired": sign_request(
            "cvm.run",
            pin.controller,
            {"cvm_id": in_update_cvm, "commands": ["true"]},
            owner.key,
            issued_at="2020-01-01T00:00:00Z",
        ),
    }
    for code, envelope in cases.items():
        response = httpx.post(controller.url + path, json=envelope)
        answer = response.json()
        assert answer["request_digest"] == request_digest(envelope["request"]), code
        result = verify_answer(
            answer,
            controller=pin.controller,
            public_key=pin.public_key(),
            request_digest=request_digest(envelope["request"]),
            request_target=request_target("POST", path),
        )
        assert result["error"]["code"] == code

    malformed = httpx.post(controller.url + path, content=b"{not json")
    assert malformed.status_code == 400
    answer = malformed.json()
    assert answer["request_digest"] is None
    result = verify_answer(
        answer, controller=pin.controller, public_key=pin.public_key(), request_digest=request_digest({"op": "cvm.run"})
    )
    assert result["error"]["code"] == "malformed_json"
