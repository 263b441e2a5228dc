"""SshPool against an in-process asyncssh server that counts connections and sessions.

The fake server stands in for a POSIX shell just far enough: it answers the pool's pid
prologue, runs a handful of named commands, and honours ``kill -KILL -- -PID PID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from tests.fakes.sshd import SSHD, LocalSshd, free_port

from duet.errors import ConfigError
from duet.remote import ssh
from duet.remote.ssh import (
    ExecResult,
    HostKeyMismatch,
    SshPool,
    SshTarget,
    SshUnavailable,
    fingerprint,
    generate_client_key,
)

LIMIT = 1 << 20


@dataclass
class ServerState:
    connections: int = 0
    sessions: int = 0
    live: list[asyncssh.SSHServerConnection] = field(default_factory=list)
    hanging: dict[int, asyncio.Event] = field(default_factory=dict)
    killed: list[int] = field(default_factory=list)
    hang_ended: list[int] = field(default_factory=list)
    pids: itertools.count = field(default_factory=lambda: itertools.count(1000))


class CountingServer(asyncssh.SSHServer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.state.connections += 1
        self.state.live.append(conn)


def make_handler(state: ServerState):
    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        state.sessions += 1
        command = process.command or ""
        kill = re.fullmatch(r"kill -KILL -- -(\d+) (\d+) 2>/dev/null", command)
        if kill:
            pid = int(kill.group(2))
            state.killed.append(pid)
            if pid in state.hanging:
                state.hanging[pid].set()
            process.exit(0)
            return
        pid = next(state.pids)
        if command.startswith(ssh._PROLOGUE):
            command = command[len(ssh._PROLOGUE) :]
            marker = b"\x1eduet-pid %d\x1e" % pid
            if command == "split-marker":  # the marker may arrive in pieces
                for i in range(0, len(marker), 3):
                    process.stderr.write(marker[i : i + 3])
                    await process.stderr.drain()
            else:
                process.stderr.write(marker)
        if command in ("out-err-3", "split-marker"):
            process.stdout.write(b"to stdout\n")
            process.stderr.write(b"to stderr\n")
            process.exit(3)
        elif command.startswith("big "):
            process.stdout.write(b"x" * int(command.split()[1]))
            process.stderr.write(b"small")
            process.exit(0)
        elif command == "hang":
            state.hanging[pid] = asyncio.Event()
            await state.hanging[pid].wait()
            state.hang_ended.append(pid)
            process.exit_with_signal("KILL")
        elif command == "drop-connection":
            process.channel.get_connection().abort()
        elif command == "true":
            process.exit(0)
        else:
            process.stderr.write(b"unknown command\n")
            process.exit(127)

    return handle


@dataclass
class FakeCvm:
    state: ServerState
    target: SshTarget
    server_key: asyncssh.SSHKey
    server: asyncssh.SSHAcceptor


async def start_server(
    state: ServerState, server_key: asyncssh.SSHKey, client_public: str, port: int = 0
) -> asyncssh.SSHAcceptor:
    return await asyncssh.create_server(
        lambda: CountingServer(state),
        "127.0.0.1",
        port,
        server_host_keys=[server_key],
        authorized_client_keys=asyncssh.import_authorized_keys(client_public + "\n"),
        process_factory=make_handler(state),
        encoding=None,
    )


@pytest.fixture
async def cvm() -> AsyncIterator[FakeCvm]:
    state = ServerState()
    server_key = asyncssh.generate_private_key("ssh-ed25519")
    private, public = generate_client_key()
    server = await start_server(state, server_key, public)
    port = server.sockets[0].getsockname()[1]
    host_key = server_key.export_public_key("openssh").decode().strip()
    target = SshTarget("127.0.0.1", port, "tester", host_key, private)
    yield FakeCvm(state, target, server_key, server)
    server.close()
    await server.wait_closed()


@pytest.fixture
async def pool() -> AsyncIterator[SshPool]:
    p = SshPool()
    yield p
    await p.close()


async def run(pool: SshPool, cvm: FakeCvm, command: str, **kw: float) -> ExecResult:
    return await pool.run(
        "cvm-1", cvm.target, command, timeout=kw.get("timeout", 5.0), output_limit=int(kw.get("output_limit", LIMIT))
    )


async def poll(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


# -- running commands ---------------------------------------------------------------------


async def test_run_separates_stdout_stderr_and_exit_status(cvm: FakeCvm, pool: SshPool) -> None:
    result = await run(pool, cvm, "out-err-3")
    assert result.stdout == b"to stdout\n"
    assert result.stderr == b"to stderr\n"  # the pid marker is stripped
    assert result.exit_status == 3
    assert not result.timed_out and not result.stdout_truncated and not result.stderr_truncated
    assert 0 < result.duration_s < 5


async def test_pid_marker_split_across_packets_is_still_stripped(cvm: FakeCvm, pool: SshPool) -> None:
    result = await run(pool, cvm, "split-marker")
    assert result.stderr == b"to stderr\n"


@pytest.mark.parametrize(
    ("chunks", "stderr", "pid"),
    [
        ([b"\x1eduet-pid 42\x1erest"], b"rest", 42),
        ([b"\x1edu", b"et-pid 7", b"\x1e", b"tail"], b"tail", 7),
        ([b"plain stderr"], b"plain stderr", None),  # a shell that printed no marker
        ([b"\x1eduet-pid " + b"9" * 60], b"\x1eduet-pid " + b"9" * 60, None),  # never closed
        ([b"\x1edu"], b"\x1edu", None),  # stream ended inside what looked like a marker
    ],
)
async def test_collector_marker_parsing(chunks: list[bytes], stderr: bytes, pid: int | None) -> None:
    collector = ssh._Collector(LIMIT)
    for chunk in chunks:
        collector.data_received(chunk, asyncssh.EXTENDED_DATA_STDERR)
    collector.connection_lost(None)
    assert bytes(collector.err) == stderr
    assert collector.remote_pid == pid


async def test_output_cap_truncates_each_stream_separately(cvm: FakeCvm, pool: SshPool) -> None:
    result = await run(pool, cvm, "big 300000", output_limit=1000)
    assert result.stdout == b"x" * 1000
    assert result.stdout_truncated
    assert result.stderr == b"small" and not result.stderr_truncated
    assert result.exit_status == 0  # drained to the end, so the exit status is known


async def test_output_exactly_at_the_limit_is_not_truncated(cvm: FakeCvm, pool: SshPool) -> None:
    result = await run(pool, cvm, "big 1000", output_limit=1000)
    assert len(result.stdout) == 1000 and not result.stdout_truncated


async def test_timeout_kills_the_remote_process_group_and_reports(cvm: FakeCvm, pool: SshPool) -> None:
    started = time.perf_counter()
    result = await run(pool, cvm, "hang", timeout=0.2)
    assert result.timed_out
    assert result.exit_status is None
    assert 0.2 <= result.duration_s < 2.0
    assert time.perf_counter() - started < 2.0
    assert len(cvm.state.killed) == 1 and cvm.state.killed == cvm.state.hang_ended
    # The connection is still usable afterwards.
    assert (await run(pool, cvm, "true")).exit_status == 0


async def test_cancelled_run_still_kills_the_remote_process(cvm: FakeCvm, pool: SshPool) -> None:
    task = asyncio.ensure_future(run(pool, cvm, "hang", timeout=30))
    await poll(lambda: bool(cvm.state.hanging))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await poll(lambda: cvm.state.killed == list(cvm.state.hanging))


# -- connection reuse ---------------------------------------------------------------------


async def test_connection_is_reused_across_commands(cvm: FakeCvm, pool: SshPool) -> None:
    for _ in range(5):
        assert (await run(pool, cvm, "true")).exit_status == 0
    assert cvm.state.sessions == 5
    assert cvm.state.connections == 1


async def test_concurrent_runs_for_one_cvm_open_one_connection(cvm: FakeCvm, pool: SshPool) -> None:
    results = await asyncio.gather(*(run(pool, cvm, "true") for _ in range(8)))
    assert [r.exit_status for r in results] == [0] * 8
    assert cvm.state.connections == 1


async def test_dead_connection_is_replaced_transparently(cvm: FakeCvm, pool: SshPool) -> None:
    await run(pool, cvm, "true")
    for conn in cvm.state.live:
        conn.abort()
    assert (await run(pool, cvm, "true")).exit_status == 0
    assert cvm.state.connections == 2


async def test_changed_target_reconnects(cvm: FakeCvm, pool: SshPool) -> None:
    """A resumed CVM may come back on another port: the cached connection must not be used
    for a different target."""
    await run(pool, cvm, "true")
    other = await start_server(cvm.state, cvm.server_key, generate_client_key()[1])
    try:
        moved = replace(cvm.target, port=other.sockets[0].getsockname()[1])
        with pytest.raises(SshUnavailable):  # the new server does not know this client key
            await pool.run("cvm-1", moved, "true", timeout=5, output_limit=LIMIT)
        assert cvm.state.connections == 2
    finally:
        other.close()


async def test_refused_channel_on_a_live_connection_keeps_the_connection(
    cvm: FakeCvm, pool: SshPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E.g. sshd's MaxSessions: closing the connection would kill other running commands."""
    await run(pool, cvm, "true")
    conn = pool._conns["cvm-1"].conn

    async def refuse(*args: object, **kwargs: object) -> None:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "too many sessions")

    monkeypatch.setattr(conn, "create_session", refuse)
    with pytest.raises(SshUnavailable, match="too many sessions"):
        await run(pool, cvm, "true")
    assert not conn.is_closed()
    monkeypatch.undo()
    assert (await run(pool, cvm, "true")).exit_status == 0
    assert cvm.state.connections == 1


async def test_connection_lost_during_a_command_raises_and_does_not_rerun(cvm: FakeCvm, pool: SshPool) -> None:
    with pytest.raises(SshUnavailable, match="lost while a command ran"):
        await run(pool, cvm, "drop-connection")
    assert cvm.state.sessions == 1
    assert (await run(pool, cvm, "true")).exit_status == 0  # and the pool recovers


async def test_drop_closes_the_connection(cvm: FakeCvm, pool: SshPool) -> None:
    await run(pool, cvm, "true")
    server_conn = cvm.state.live[0]
    await pool.drop("cvm-1")
    await poll(lambda: server_conn.is_closed())
    await run(pool, cvm, "true")
    assert cvm.state.connections == 2


# -- host keys and authentication ---------------------------------------------------------


async def test_wrong_pinned_key_raises_mismatch_with_both_fingerprints(cvm: FakeCvm, pool: SshPool) -> None:
    impostor_pin = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
    target = replace(cvm.target, host_key=impostor_pin)
    with pytest.raises(HostKeyMismatch) as info:
        await pool.run("cvm-1", target, "true", timeout=5, output_limit=LIMIT)
    err = info.value
    assert err.code == "host_key_mismatch"
    assert err.expected_fingerprint == fingerprint(impostor_pin)
    assert err.presented_fingerprint == fingerprint(cvm.target.host_key)
    assert err.expected_fingerprint in err.message and err.presented_fingerprint in err.message
    assert cvm.state.sessions == 0


async def test_pinned_key_of_another_type_is_a_mismatch(cvm: FakeCvm, pool: SshPool) -> None:
    """Only the pinned key's algorithms are offered, so a server without such a key fails
    the key exchange; that is still a mismatch, not a transient outage."""
    ecdsa_pin = asyncssh.generate_private_key("ecdsa-sha2-nistp256").export_public_key("openssh").decode().strip()
    with pytest.raises(HostKeyMismatch) as info:
        await pool.run("cvm-1", replace(cvm.target, host_key=ecdsa_pin), "true", timeout=5, output_limit=LIMIT)
    assert info.value.presented_fingerprint is None


async def test_an_unpinned_target_reports_the_presented_key_as_a_candidate(cvm: FakeCvm, pool: SshPool) -> None:
    """Before attestation pins the CVM's own host key, the pool connects to whatever Ed25519
    key is presented and names it in each result, for the binding to check (design §10)."""
    pinned = await run(pool, cvm, "out-err-3")
    assert pinned.host_key == cvm.target.host_key
    candidate = await pool.run("cvm-2", replace(cvm.target, host_key=""), "out-err-3", timeout=5, output_limit=LIMIT)
    assert candidate.host_key == cvm.target.host_key and candidate.exit_status == 3


async def test_a_candidate_connection_accepts_only_ed25519(pool: SshPool) -> None:
    state = ServerState()
    server_key = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    private, public = generate_client_key()
    server = await start_server(state, server_key, public)
    try:
        target = SshTarget("127.0.0.1", server.sockets[0].getsockname()[1], "tester", "", private)
        with pytest.raises(HostKeyMismatch):
            await pool.run("cvm-1", target, "true", timeout=5, output_limit=LIMIT)
        assert state.sessions == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_wrong_client_key_is_unavailable_and_secret_free(cvm: FakeCvm, pool: SshPool) -> None:
    wrong_private, _ = generate_client_key()
    target = replace(cvm.target, client_key=wrong_private)
    with pytest.raises(SshUnavailable) as info:
        await pool.run("cvm-1", target, "true", timeout=5, output_limit=LIMIT)
    assert info.value.code == "ssh_unavailable"
    assert "authentication" in info.value.message and info.value.reason == "auth"
    assert_secret_free(info.value, wrong_private)


async def test_unreadable_client_key_is_a_config_error_without_the_text(cvm: FakeCvm, pool: SshPool) -> None:
    garbage = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LXNlY3JldA==\n-----END OPENSSH PRIVATE KEY-----\n"
    with pytest.raises(ConfigError) as info:
        await pool.run("cvm-1", replace(cvm.target, client_key=garbage), "true", timeout=5, output_limit=LIMIT)
    assert_secret_free(info.value, garbage)


def assert_secret_free(exc: BaseException, secret: str) -> None:
    body = "".join(line for line in secret.splitlines() if "-----" not in line)
    for text in (str(exc), repr(exc), str(exc.__cause__), str(exc.__context__)):
        assert body not in text
        assert "PRIVATE KEY" not in text


def test_secret_not_in_repr_of_target() -> None:
    private, public = generate_client_key()
    target = SshTarget("127.0.0.1", 22, "u", public, private)
    body = "".join(line for line in private.splitlines() if "-----" not in line)
    assert body not in repr(target) and "PRIVATE" not in repr(target)
    assert body not in str(target)
    assert "client_key" not in repr(target)


# -- wait_ready ---------------------------------------------------------------------------


async def test_wait_ready_polls_until_the_server_listens(cvm: FakeCvm, pool: SshPool) -> None:
    port = cvm.target.port
    cvm.server.close()
    await cvm.server.wait_closed()
    late = asyncio.get_running_loop().call_later(
        0.3, lambda: asyncio.ensure_future(start_server(cvm.state, cvm.server_key, public_of(cvm.target), port))
    )
    try:
        started = time.monotonic()
        await pool.wait_ready(cvm.target, timeout=5)
        assert 0.25 < time.monotonic() - started < 5
    finally:
        late.cancel()


async def test_wait_ready_gives_up_at_the_deadline(cvm: FakeCvm, pool: SshPool) -> None:
    cvm.server.close()
    await cvm.server.wait_closed()
    started = time.monotonic()
    with pytest.raises(SshUnavailable, match="refused") as info:
        await pool.wait_ready(cvm.target, timeout=0.5)
    assert info.value.reason == "refused"
    assert 0.4 < time.monotonic() - started < 2


async def test_wait_ready_fails_fast_on_host_key_mismatch(cvm: FakeCvm, pool: SshPool) -> None:
    impostor_pin = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
    started = time.monotonic()
    with pytest.raises(HostKeyMismatch):
        await pool.wait_ready(replace(cvm.target, host_key=impostor_pin), timeout=10)
    assert time.monotonic() - started < 2


def public_of(target: SshTarget) -> str:
    return asyncssh.import_private_key(target.client_key).export_public_key("openssh").decode().strip()


# -- keys ---------------------------------------------------------------------------------


def test_generated_client_key_pair_matches() -> None:
    private, public = generate_client_key()
    assert public.startswith("ssh-ed25519 ") and "\n" not in public
    assert public_of(SshTarget("h", 22, "u", public, private)) == public
    assert generate_client_key()[1] != public


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    _, public = generate_client_key()
    (tmp_path / "k.pub").write_text(public + "\n")
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")], capture_output=True, text=True, check=True).stdout
    assert fingerprint(public) == out.split()[1]
    assert fingerprint(public).startswith("SHA256:")


def test_fingerprint_rejects_garbage() -> None:
    with pytest.raises(ConfigError):
        fingerprint("not a key")


# -- a stalled CVM: a real sshd, SIGSTOPped ------------------------------------------------------


@dataclass
class RealCvm:
    """A real OpenSSH sshd on loopback; ``stall`` freezes it and every sshd process of its
    connections (the CVM stops answering, while the kernel keeps its sockets open)."""

    sshd: LocalSshd
    target: SshTarget
    stopped: list[int] = field(default_factory=list)

    def sshd_processes(self) -> list[int]:
        assert self.sshd._proc is not None
        found, todo = [], [self.sshd._proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
            for child in map(int, children):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/comm").read_text().startswith("sshd"):
                        todo.append(child)
        return found

    def stall(self) -> None:
        for pid in self.sshd_processes():
            with contextlib.suppress(ProcessLookupError):  # a connection's process that just ended
                os.kill(pid, signal.SIGSTOP)
                self.stopped.append(pid)

    def resume(self) -> None:
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.stopped.clear()


@pytest.fixture
def real_cvm(tmp_path: Path) -> Iterator[RealCvm]:
    if not Path(SSHD).exists():
        pytest.skip("needs OpenSSH's sshd")
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    private, public = generate_client_key()
    sshd = LocalSshd(tmp_path / "sshd", free_port(), host_key.export_private_key("openssh").decode(), [public])
    sshd.start()
    pinned = host_key.export_public_key("openssh").decode().strip()
    cvm = RealCvm(sshd, SshTarget("127.0.0.1", sshd.port, getpass.getuser(), pinned, private))
    try:
        yield cvm
    finally:
        cvm.resume()
        sshd.stop()


@pytest.fixture
async def quick_pool() -> AsyncIterator[SshPool]:
    """Step timeouts short enough for a test, so a stalled CVM shows within seconds."""
    p = SshPool(connect_timeout=1.0, channel_timeout=1.0, close_timeout=0.5)
    yield p
    await asyncio.wait_for(p.close(), 5)


async def bounded(coro: Any, limit: float = 20.0) -> Any:
    """Fails the test instead of hanging it (before the fix, a stalled CVM took 120 s)."""
    return await asyncio.wait_for(coro, limit)


async def test_the_margin_covers_every_step(quick_pool: SshPool) -> None:
    assert quick_pool.margin_s == pytest.approx(1.0 + 1.0 + 0.5 * 2)
    assert SshPool().margin_s <= 20


async def test_a_real_sshd_runs_commands(real_cvm: RealCvm, quick_pool: SshPool) -> None:
    result = await quick_pool.run("cvm-1", real_cvm.target, "echo out; echo err >&2; exit 4", timeout=5, output_limit=LIMIT)
    assert (result.exit_status, result.stdout, result.stderr) == (4, b"out\n", b"err\n")


async def test_a_stalled_cvm_fails_the_command_within_its_timeout_plus_the_margin(real_cvm: RealCvm, quick_pool: SshPool) -> None:
    """The pooled connection is open when the CVM stalls: opening the command's channel never
    gets an answer (this took 120 s, the keepalive's limit, with the lock held)."""
    assert (await quick_pool.run("cvm-1", real_cvm.target, "true", timeout=5, output_limit=LIMIT)).exit_status == 0
    real_cvm.stall()
    began = time.monotonic()
    with pytest.raises(SshUnavailable) as info:
        await bounded(quick_pool.run("cvm-1", real_cvm.target, "touch /tmp/x", timeout=2, output_limit=LIMIT))
    elapsed = time.monotonic() - began
    assert elapsed < 2 + quick_pool.margin_s and elapsed < 2.5  # here: the channel timeout alone
    assert info.value.reason == "timeout"
    assert "did not open a channel" in info.value.message and "1 s" in info.value.message

    real_cvm.resume()  # once it answers again, a fresh connection is used
    result = await bounded(quick_pool.run("cvm-1", real_cvm.target, "echo back", timeout=5, output_limit=LIMIT))
    assert result.stdout == b"back\n"


async def test_a_cvm_stalled_during_a_command_ends_it_at_its_timeout_with_an_error(
    real_cvm: RealCvm, quick_pool: SshPool
) -> None:
    """The kill cannot reach a stalled CVM: the pool gives up after its close budget, says the
    command may still run, and drops the connection instead of reporting a clean timeout."""
    task = asyncio.ensure_future(quick_pool.run("cvm-1", real_cvm.target, "sleep 5", timeout=1.5, output_limit=LIMIT))
    await asyncio.sleep(0.7)  # the command runs (its pid marker has arrived)
    real_cvm.stall()
    began = time.monotonic()
    with pytest.raises(SshUnavailable) as info:
        await bounded(task)
    assert time.monotonic() - began < 1.5 + quick_pool.margin_s
    assert info.value.reason == "timeout" and info.value.command_started
    assert "1.5 s" in info.value.message and "may still be running" in info.value.message
    assert "cvm-1" not in quick_pool._conns


async def test_connecting_to_a_stalled_cvm_times_out(real_cvm: RealCvm, quick_pool: SshPool) -> None:
    real_cvm.stall()  # the kernel still accepts the TCP connection; no banner ever comes
    began = time.monotonic()
    with pytest.raises(SshUnavailable) as info:
        await bounded(quick_pool.run("cvm-1", real_cvm.target, "true", timeout=2, output_limit=LIMIT))
    assert time.monotonic() - began < 2
    assert info.value.reason == "timeout"
    with pytest.raises(SshUnavailable):
        await bounded(quick_pool.wait_ready(real_cvm.target, timeout=1.5))
    assert not await bounded(quick_pool.login_refused(real_cvm.target))  # a timeout proves nothing


async def test_drop_and_close_of_a_stalled_connection_are_bounded(real_cvm: RealCvm, quick_pool: SshPool) -> None:
    await quick_pool.run("cvm-1", real_cvm.target, "true", timeout=5, output_limit=LIMIT)
    await quick_pool.run("cvm-2", real_cvm.target, "true", timeout=5, output_limit=LIMIT)
    real_cvm.stall()
    began = time.monotonic()
    await bounded(quick_pool.drop("cvm-1"))
    await bounded(quick_pool.close())
    assert time.monotonic() - began < 2
