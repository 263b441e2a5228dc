"""Hostile clients against a real controller process: oversized and endless request heads,
half-sent requests, silent and trickling connections, connection floods from one address, stalled
TLS handshakes (docs/security.md, "Hostile clients").

Each test starts its controller with small limits (flags of ``controller serve``) so that it is
fast; bounds on time are generous (a loaded 2-core machine), since what they catch is a hang.
Per-address limits use 127.0.0.1 and 127.0.0.2: Linux routes all of 127/8 to the loopback.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from duet.testing.process import ControllerProcess, free_port
from support import Owner, serving

HEAD = b"GET /v1/ledger/head HTTP/1.1\r\nHost: duet\r\n"


@contextmanager
def controller(tmp_path: Path, owner: Owner, *args: str, tls: bool = False) -> Iterator[ControllerProcess]:
    with serving(ControllerProcess(tmp_path / "state", [owner.pub_path], extra_args=args, tls=tls)) as process:
        yield process


def connect(process: ControllerProcess, source: str = "127.0.0.1", port: int | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port or process.port), timeout=10, source_address=(source, 0))
    return sock


def answer(sock: socket.socket, timeout: float = 15.0) -> bytes:
    """What the controller says before it closes the connection: b"" for a silent close, a
    status line for an answer; a hang fails the test (socket.timeout)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def head_latency(url: str, *, source: str = "127.0.0.1") -> float:
    start = time.monotonic()
    transport = httpx.HTTPTransport(local_address=source, verify=False)
    with httpx.Client(transport=transport, timeout=30) as client:
        assert client.get(url + "/v1/ledger/head").status_code == 200
    return time.monotonic() - start


def rss_bytes(process: ControllerProcess) -> int:
    assert process.process is not None
    for line in Path(f"/proc/{process.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# --- the size of a request head -------------------------------------------------------------


def test_oversized_header_gets_431_and_memory_does_not_grow(tmp_path: Path, owner: Owner) -> None:
    with controller(tmp_path, owner, "--max-header-bytes", "16384") as process:
        before = rss_bytes(process)
        sock = connect(process)
        sock.sendall(HEAD + b"X-Big: ")
        sent = 0
        chunk = b"a" * 65536
        try:
            while sent < 64 * 1024 * 1024:  # 64 MiB of one header's value
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        reply = answer(sock)
        sock.close()
        assert sent < 64 * 1024 * 1024, "the controller read a 64 MiB header"
        assert reply == b"" or reply.startswith(b"HTTP/1.1 431 "), reply[:80]
        assert rss_bytes(process) - before < 16 * 1024 * 1024
        assert head_latency(process.url) < 10


def test_header_count_and_request_line_limits(tmp_path: Path, owner: Owner) -> None:
    with controller(tmp_path, owner, "--max-header-count", "20", "--max-request-line", "1024") as process:
        with connect(process) as sock:
            sock.sendall(HEAD + b"".join(b"X-%d: v\r\n" % i for i in range(40)) + b"\r\n")
            assert answer(sock).startswith(b"HTTP/1.1 431 ")
        with connect(process) as sock:
            sock.sendall(b"GET /v1/ledger/head?" + b"a" * 4096 + b" HTTP/1.1\r\nHost: duet\r\n\r\n")
            assert answer(sock).startswith(b"HTTP/1.1 414 ")
        # Within the limits, all is as before.
        with connect(process) as sock:
            sock.sendall(HEAD + b"".join(b"X-%d: v\r\n" % i for i in range(10)) + b"Connection: close\r\n\r\n")
            assert answer(sock).startswith(b"HTTP/1.1 200 ")


def test_an_endless_header_over_tls_does_not_starve_the_ledger_head(tmp_path: Path, owner: Owner) -> None:
    with controller(tmp_path, owner, tls=True) as process:
        stop = threading.Event()
        refused = []

        def attack() -> None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            while not stop.is_set():
                try:
                    with connect(process) as raw, context.wrap_socket(raw) as sock:
                        sock.sendall(HEAD + b"X-Endless: ")
                        while not stop.is_set():
                            sock.sendall(b"a" * 65536)
                except OSError:
                    refused.append(1)

        attacker = threading.Thread(target=attack, daemon=True)
        attacker.start()
        try:
            time.sleep(1)
            latencies = sorted(head_latency(process.url) for _ in range(20))
        finally:
            stop.set()
            attacker.join(30)
        assert refused, "the endless header was never cut off"
        assert latencies[len(latencies) // 2] < 1.0, latencies


# --- time limits ----------------------------------------------------------------------------


def test_half_sent_and_silent_connections_are_closed_while_honest_clients_are_served(tmp_path: Path, owner: Owner) -> None:
    with controller(tmp_path, owner, "--header-timeout", "1") as process:
        half = [connect(process) for _ in range(20)]
        for sock in half:
            sock.sendall(HEAD)  # no blank line: the head never ends
        silent = [connect(process) for _ in range(5)]
        assert head_latency(process.url) < 10
        started = time.monotonic()
        for sock in half:
            assert answer(sock).startswith(b"HTTP/1.1 408 ")
        for sock in silent:
            assert answer(sock) == b""
        assert time.monotonic() - started < 15
        for sock in half + silent:
            sock.close()


def test_a_trickled_head_is_cut_at_the_header_deadline(tmp_path: Path, owner: Owner) -> None:
    with controller(tmp_path, owner, "--header-timeout", "1", "--idle-timeout", "30") as process:
        with connect(process) as sock:
            sock.sendall(HEAD)
            started = time.monotonic()
            try:
                while time.monotonic() - started < 20:  # one byte every 0.2 s: never idle, never done
                    sock.sendall(b"X")
                    time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert time.monotonic() - started < 15
            sock.settimeout(5)
            try:
                reply = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                reply = b""
            assert reply == b"" or reply.startswith(b"HTTP/1.1 408 ")


def test_a_stalled_body_is_closed_after_the_idle_timeout(tmp_path: Path, owner: Owner) -> None:
    with controller(tmp_path, owner, "--idle-timeout", "1") as process:
        with connect(process) as sock:
            sock.sendall(b"POST /v1/cvms HTTP/1.1\r\nHost: duet\r\nContent-Type: application/json\r\n")
            sock.sendall(b'Content-Length: 1000\r\n\r\n{"request":')
            assert answer(sock).startswith(b"HTTP/1.1 408 ")
        time.sleep(0.5)  # the route sees the body end early: an ordinary event, not the controller's failure
        assert "unexpected error" not in process.log() and "Traceback" not in process.log()


def test_an_idle_keep_alive_connection_is_closed(tmp_path: Path, owner: Owner) -> None:
    with controller(tmp_path, owner, "--keep-alive-timeout", "1") as process:
        with connect(process) as sock:
            sock.sendall(HEAD + b"\r\n")
            sock.settimeout(10)
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 ")
            started = time.monotonic()
            rest = answer(sock)  # the rest of the answer, if any, then the close
            assert b"HTTP/1.1" not in rest and time.monotonic() - started < 15


def test_a_stalled_tls_handshake_is_closed(tmp_path: Path, owner: Owner) -> None:
    with controller(tmp_path, owner, "--tls-handshake-timeout", "1", tls=True) as process:
        silent = connect(process)
        half = connect(process)
        half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
        started = time.monotonic()
        assert answer(silent) == b""
        assert not answer(half).startswith(b"HTTP")  # closed (perhaps with a TLS alert), not held
        assert time.monotonic() - started < 15
        silent.close()
        half.close()
        assert head_latency(process.url) < 10


# --- connection counts ----------------------------------------------------------------------


def test_connections_are_limited_per_address_and_overall(tmp_path: Path, owner: Owner) -> None:
    args = ("--max-connections", "8", "--max-connections-per-address", "3", "--header-timeout", "60")
    with controller(tmp_path, owner, *args) as process:
        held = [connect(process, "127.0.0.1") for _ in range(3)]
        time.sleep(0.5)
        with connect(process, "127.0.0.1") as extra:
            assert answer(extra).startswith(b"HTTP/1.1 503 ")
        assert head_latency(process.url, source="127.0.0.2") < 10  # another address is still served

        held += [connect(process, "127.0.0.3") for _ in range(3)] + [connect(process, "127.0.0.4") for _ in range(2)]
        time.sleep(0.5)
        with connect(process, "127.0.0.5") as extra:  # 8 connections in all: full
            assert answer(extra).startswith(b"HTTP/1.1 503 ")

        for sock in held:
            sock.close()
        deadline = time.monotonic() + 15
        while True:  # the slots are given back as the controller sees the connections close
            try:
                assert head_latency(process.url, source="127.0.0.1") < 10
                break
            except (httpx.HTTPError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def test_the_seed_listener_is_under_the_same_limits(tmp_path: Path, owner: Owner) -> None:
    seed_port = free_port()
    args = ("--seed-listen", f"127.0.0.1:{seed_port}", "--header-timeout", "1", "--max-header-bytes", "8192")
    with controller(tmp_path, owner, *args) as process:
        with connect(process, port=seed_port) as sock:
            sock.sendall(b"GET /quote HTTP/1.1\r\nHost: duet\r\n")
            assert answer(sock).startswith(b"HTTP/1.1 408 ")
        with connect(process, port=seed_port) as sock:
            try:
                sock.sendall(b"GET /quote HTTP/1.1\r\nHost: duet\r\nX-Big: " + b"a" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
            reply = answer(sock)
            assert reply == b"" or reply.startswith(b"HTTP/1.1 431 ")
