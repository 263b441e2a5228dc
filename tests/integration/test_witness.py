"""A real witness process (``python -m duet witness serve``) on loopback, over real HTTP: the
tlog-witness answers, kill -9 right after a cosignature and a restart, a damaged state, bodies
over the limit, one process per state directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from duet.ledger.checkpoint import Checkpoint, CosignatureVerifier, sign_checkpoint, verify_cosignature
from duet.ledger.merkle import MerkleTree, leaf_hash
from duet.ledger.note import NoteSigner, b64encode
from duet.testing.process import free_port
from duet.witness.state import STATE_FILE

LIMIT = 16 * 1024


class Log:
    """A log: a Merkle tree and the key that signs its checkpoints."""

    def __init__(
        self, key: ed25519.Ed25519PrivateKey | None = None, leaves: list[bytes] | None = None, origin: str = "example.com/log"
    ) -> None:
        self.key = key or ed25519.Ed25519PrivateKey.generate()
        self.origin = origin
        self.signer = NoteSigner(origin, self.key)
        self.tree = MerkleTree(leaves or [])

    def grow(self, count: int, tag: str = "") -> Log:
        for _ in range(count):
            self.tree.append(leaf_hash(f"{tag}{self.tree.size}".encode()))
        return self

    def fork(self, at: int) -> Log:
        return Log(self.key, [self.tree.leaf(i) for i in range(at)])

    def checkpoint(self, size: int | None = None) -> Checkpoint:
        size = self.tree.size if size is None else size
        return Checkpoint(self.origin, size, self.tree.root(size))

    def body(
        self, old: int, size: int | None = None, *, proof: list[bytes] | None = None, signer: NoteSigner | None = None
    ) -> bytes:
        size = self.tree.size if size is None else size
        proof = (self.tree.consistency_proof(old, size) if old else []) if proof is None else proof
        head = "".join(f"{line}\n" for line in [f"old {old}", *(b64encode(p) for p in proof)])
        return head.encode() + b"\n" + sign_checkpoint(self.checkpoint(size), signer or self.signer)


class WitnessProcess:
    def __init__(self, state_dir: Path, logs: list[str], *extra: str) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable,
            "-m",
            "duet",
            "witness",
            "serve",
            "--state-dir",
            str(state_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--name",
            "witness.test/w1",
            "--max-body-bytes",
            str(LIMIT),
            *(arg for log in logs for arg in ("--log", log)),
            *extra,
        ]
        self.output = state_dir.parent / f"witness-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> WitnessProcess:
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the witness exited ({self.process.returncode}): {self.output.read_text()}")
            try:
                if httpx.get(self.url + "/vkey", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the witness did not start: {self.output.read_text()}")

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def log() -> Log:
    return Log().grow(10)


@pytest.fixture
def witness(tmp_path: Path, log: Log) -> Iterator[WitnessProcess]:
    process = WitnessProcess(tmp_path / "witness", [log.signer.vkey]).start()
    try:
        yield process
    finally:
        process.stop()


def add(witness: WitnessProcess, body: bytes) -> httpx.Response:
    return httpx.post(witness.url + "/add-checkpoint", content=body, timeout=10)


def vkey_of(witness: WitnessProcess) -> str:
    """What an operator runs to learn the witness's key (while it serves)."""
    result = subprocess.run(
        [sys.executable, "-m", "duet", "witness", "key", "--state-dir", str(witness.state_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.strip()


def cosigned_at(witness: WitnessProcess, checkpoint: Checkpoint, response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return verify_cosignature(checkpoint, response.text, CosignatureVerifier.from_vkey(vkey_of(witness)))


def test_the_witness_protocol_over_http(witness: WitnessProcess, log: Log) -> None:
    vkey = vkey_of(witness)
    assert httpx.get(witness.url + "/vkey").text == vkey + "\n"

    first = add(witness, log.body(0))
    assert abs(cosigned_at(witness, log.checkpoint(), first) - time.time()) < 60
    log.grow(5)
    second = add(witness, log.body(10))
    assert abs(cosigned_at(witness, log.checkpoint(), second) - time.time()) < 60

    conflict = add(witness, log.body(10))
    assert (conflict.status_code, conflict.text, conflict.headers["content-type"]) == (409, "15\n", "text/x.tlog.size")
    log.grow(3)
    proof = log.tree.consistency_proof(15, 18)
    assert add(witness, log.body(15, proof=[bytes(32), *proof[1:]])).status_code == 422
    assert add(witness, log.body(15, proof=proof)).status_code == 200
    assert add(witness, Log().grow(3).body(0)).status_code == 403  # another key, same origin
    assert add(witness, Log(origin="other.example/log").grow(2).body(0)).status_code == 404
    assert add(witness, b"old 0\n\nnot a checkpoint\n").status_code == 400
    assert add(witness, b"").status_code == 400


def test_a_fork_of_one_size_is_cosigned_once(witness: WitnessProcess, log: Log) -> None:
    fork = log.fork(6).grow(4, tag="fork ")
    assert fork.tree.size == log.tree.size and fork.tree.root() != log.tree.root()
    assert add(witness, log.body(0)).status_code == 200
    assert add(witness, fork.body(10, proof=[])).status_code == 422
    assert add(witness, fork.body(0)).status_code == 409
    cosigned_at(witness, log.checkpoint(), add(witness, log.body(10)))  # the same root: again


def test_kill_9_right_after_a_cosignature_then_restart(tmp_path: Path, log: Log) -> None:
    """Each cosignature the witness answered is on disk: killed at once and restarted, it knows
    the new size (409 to the old one) and refuses a fork of it; then goes on from there."""
    process = WitnessProcess(tmp_path / "witness", [log.signer.vkey]).start()
    try:
        assert add(process, log.body(0)).status_code == 200
        for _ in range(3):
            old = log.tree.size
            log.grow(7)
            assert add(process, log.body(old)).status_code == 200
            process.kill9()
            process.start()
            stale = add(process, log.body(old))
            assert (stale.status_code, stale.text) == (409, f"{log.tree.size}\n")
            fork = log.fork(old).grow(7, tag="fork ")
            assert add(process, fork.body(log.tree.size, proof=[])).status_code == 422
            assert add(process, fork.body(old, proof=fork.tree.consistency_proof(old, fork.tree.size))).status_code == 409
    finally:
        process.stop()


def test_kill_9_while_cosigning_never_loses_an_answered_cosignature(tmp_path: Path, log: Log) -> None:
    """A log submitting as fast as it can, the witness killed at a random moment: after the
    restart the witness's size is at least the last one it answered 200 for, with its root."""
    process = WitnessProcess(tmp_path / "witness", [log.signer.vkey]).start()
    try:
        assert add(process, log.body(0)).status_code == 200
        answered: list[int] = [log.tree.size]
        stop = threading.Event()

        def submit() -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    old = answered[-1]
                    log.grow(1)
                    try:
                        response = client.post(process.url + "/add-checkpoint", content=log.body(old))
                    except httpx.TransportError:
                        return
                    if response.status_code != 200:
                        return
                    answered.append(log.tree.size)

        thread = threading.Thread(target=submit)
        thread.start()
        time.sleep(1.0)
        process.kill9()
        stop.set()
        thread.join(20)
        last = answered[-1]
        assert last > 10  # it was cosigning when killed
        process.start()
        response = add(process, log.body(0, last))
        known = int(response.text)
        assert response.status_code == 409 and known >= last
        # known is last, or one more if the witness recorded a request whose answer the kill lost;
        # either way its root there is the log's: a fork of that size is refused, the log goes on
        assert known <= log.tree.size
        fork = log.fork(known - 1).grow(1, tag="fork ")
        assert add(process, fork.body(known, proof=[])).status_code == 422
        log.grow(3)
        cosigned_at(process, log.checkpoint(), add(process, log.body(known)))
    finally:
        process.stop()


def test_a_damaged_state_file_refuses_to_start(tmp_path: Path, log: Log) -> None:
    process = WitnessProcess(tmp_path / "witness", [log.signer.vkey]).start()
    assert add(process, log.body(0)).status_code == 200
    process.stop()
    state = tmp_path / "witness" / STATE_FILE
    state.write_bytes(state.read_bytes()[:-20])
    with pytest.raises(RuntimeError, match="damaged"):
        process.start()
    assert process.process is not None and process.process.returncode == 1
    state.unlink()
    with pytest.raises(RuntimeError, match="no state.json"):
        process.start()


def test_one_witness_process_per_state_directory(witness: WitnessProcess, log: Log) -> None:
    second = WitnessProcess(witness.state_dir, [log.signer.vkey])
    with pytest.raises(RuntimeError, match="another witness process"):
        second.start()


def raw_answer(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_a_body_over_the_limit_is_refused_without_being_read(witness: WitnessProcess) -> None:
    declared = 100 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", witness.port), timeout=10) as sock:
        sock.sendall(
            b"POST /add-checkpoint HTTP/1.1\r\nHost: witness\r\nContent-Length: %d\r\n\r\nold 0\n" % declared
        )  # and nothing more of the 100 MiB it announced
        answer = raw_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_a_streamed_body_over_the_limit_is_cut_off(witness: WitnessProcess) -> None:
    sent = 0
    with socket.create_connection(("127.0.0.1", witness.port), timeout=10) as sock:
        sock.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: witness\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 4096
        try:
            while sent < 64 * 1024 * 1024:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = raw_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413 ") or answer == b""  # the answer may be lost to the reset
    assert sent < 8 * 1024 * 1024  # refused long before the client was done
