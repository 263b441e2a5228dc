"""SSH from the controller to its CVMs: pinned host keys, one reused connection per CVM,
and command execution with a time limit and an output cap.

Every step has a time limit, so a CVM that stops answering (a frozen guest, a SIGSTOPped
sshd: the kernel still holds its sockets open) never holds a command, and with it the CVM's
lock in the controller, longer than the command's timeout plus ``SshPool.margin_s``:
connecting (TCP, key exchange, authentication: ``connect_timeout``), opening the command's
channel (``channel_timeout``; connecting and opening share one deadline, retry included), and
on timeout the kill (pid marker, kill command: ``close_timeout``) and the channel's close
(``close_timeout``). A CVM that does not confirm the kill is reported as stalled, with its
connection dropped, not as a clean timeout. Closing a connection waits ``close_timeout`` at
most, then aborts it.

The host key is the only thing that tells the controller it talks to the CVM it created
(design.md §1, man-in-the-middle attack), so it is checked against the pinned key alone:
no ``~/.ssh/known_hosts``, no ``~/.ssh/config``, no agent, no default client keys.

A command costs one channel on an already authenticated connection; a new TCP connection
plus key exchange would cost far more than the whole per-command budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Protocol

import asyncssh

from duet.errors import ConfigError, UpstreamError

__all__ = [
    "CommandRunner",
    "ExecResult",
    "HostKeyMismatch",
    "SshPool",
    "SshTarget",
    "SshUnavailable",
    "fingerprint",
    "generate_client_key",
    "host_key_blob",
]

CONNECT_TIMEOUT_S = 10.0
"""TCP connect, key exchange and authentication."""
CHANNEL_TIMEOUT_S = 5.0
"""Opening a command's channel on a connected CVM: one round trip when the CVM is alive."""
CLOSE_TIMEOUT_S = 2.0
"""Each step of ending a timed-out command (the kill, the channel's close) and closing a connection."""
_KEEPALIVE_S = 30.0


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    username: str
    host_key: str
    """Pinned OpenSSH one-line public host key, e.g. ``ssh-ed25519 AAAA...``; empty before the
    CVM's own key is pinned: whatever Ed25519 key the server presents is then a *candidate*,
    reported in :attr:`ExecResult.host_key`, that the caller pins only once attestation
    evidence binds it (design §10). Nothing but attestation may run on such a connection."""
    client_key: str = field(repr=False)
    """OpenSSH or PKCS8 PEM private key text. A secret: kept out of repr, logs and errors."""


@dataclass(frozen=True)
class ExecResult:
    exit_status: int | None
    """None when the command was killed by the timeout or by a signal."""
    stdout: bytes
    stderr: bytes
    duration_s: float
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    host_key: str = ""
    """The host key the server presented on the connection the command ran on (OpenSSH line)."""


class HostKeyMismatch(UpstreamError):
    """The server is not the machine whose host key was pinned: possibly a man in the middle."""

    code = "host_key_mismatch"

    def __init__(self, target: SshTarget, expected: str, presented: str | None) -> None:
        self.expected_fingerprint = expected
        self.presented_fingerprint = presented
        shown = presented or "no host key of the pinned type"
        super().__init__(
            f"SSH host key of {target.host}:{target.port} does not match the pinned key "
            f"(expected {expected}, server presented {shown}); refusing to connect. "
            "If the machine was legitimately rebuilt, re-provision it instead of trusting the new key."
        )


class SshUnavailable(UpstreamError):
    """The CVM cannot be reached or refuses the controller's key.

    ``reason`` lets callers tell the cases apart without parsing the message: "refused",
    "timeout", "auth" (key not accepted), "lost" (connection died) or "error"."""

    code = "ssh_unavailable"

    def __init__(self, message: str, *, reason: str = "error", command_started: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.command_started = command_started
        """For ``lost``: the remote shell had started the command (its pid marker arrived)."""


def generate_client_key() -> tuple[str, str]:
    """A fresh Ed25519 key for one CVM: (OpenSSH private key text, OpenSSH public line)."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    private = key.export_private_key("openssh").decode("ascii")
    public = key.export_public_key("openssh").decode("ascii").strip()
    return private, public


def _import_public(openssh_public_line: str) -> asyncssh.SSHKey:
    try:
        return asyncssh.import_public_key(openssh_public_line.strip())
    except (asyncssh.KeyImportError, ValueError):
        raise ConfigError("not an OpenSSH public key line (expected e.g. 'ssh-ed25519 AAAA...')", code="bad_ssh_key") from None


def fingerprint(openssh_public_line: str) -> str:
    """``SHA256:...`` as printed by ``ssh-keygen -l``, so people can compare it by eye."""
    return _import_public(openssh_public_line).get_fingerprint("sha256")


def _import_private(client_key: str) -> asyncssh.SSHKey:
    try:
        return asyncssh.import_private_key(client_key)
    except (asyncssh.KeyImportError, ValueError):
        # Never echo the text: it is the CVM's login secret.
        raise ConfigError("the CVM's SSH client key is not a readable unencrypted private key", code="bad_ssh_key") from None


class _PinnedClient(asyncssh.SSHClient):
    """Remembers the key the server presented when it is not the pinned one.

    asyncssh calls ``validate_host_public_key`` only for keys outside ``known_hosts``; the
    pinned key is the only entry there, so whatever arrives here is a mismatch. Without a
    pinned key (a candidate connection), ``known_hosts`` is empty and any key is accepted
    and remembered: the caller binds it through attestation before it trusts anything."""

    def __init__(self, candidate: bool) -> None:
        self.candidate = candidate
        self.presented: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.presented = key
        return self.candidate


def _openssh_line(key: asyncssh.SSHKey) -> str:
    return key.export_public_key("openssh").decode("ascii").strip()


def host_key_blob(openssh_public_line: str) -> bytes:
    """The key in SSH wire format (what the attestation binding hashes)."""
    return bytes(_import_public(openssh_public_line).public_data)


async def _connect(target: SshTarget, *, timeout: float = CONNECT_TIMEOUT_S) -> tuple[asyncssh.SSHClientConnection, str]:
    """Open and authenticate one connection, turning every failure into a typed error; returns
    it with the host key the server presented (the pinned one, or a candidate)."""
    candidate = not target.host_key
    pinned = None if candidate else _import_public(target.host_key)
    client_key = _import_private(target.client_key)
    client = _PinnedClient(candidate)
    where = f"{target.username}@{target.host}:{target.port}"
    try:
        conn = await asyncssh.connect(
            target.host,
            target.port,
            username=target.username,
            client_factory=lambda: client,
            known_hosts=([pinned] if pinned else [], [], []),
            # A candidate is one Ed25519 key: the one the CVM's evidence binds (its
            # /etc/ssh/ssh_host_ed25519_key.pub), whatever other host keys it has.
            server_host_key_algs=["ssh-ed25519"] if candidate else (),
            client_keys=[client_key],
            agent_path=None,
            config=None,
            password_auth=False,
            kbdint_auth=False,
            gss_auth=False,
            host_based_auth=False,
            connect_timeout=timeout,
            login_timeout=timeout,
            keepalive_interval=_KEEPALIVE_S,
        )
    except asyncssh.HostKeyNotVerifiable:
        presented = client.presented.get_fingerprint("sha256") if client.presented else None
        raise HostKeyMismatch(target, pinned.get_fingerprint("sha256") if pinned else "none", presented) from None
    except asyncssh.KeyExchangeFailed as exc:
        # Only the pinned key's algorithms are offered; a server without that key type
        # cannot be the pinned machine either.
        if "host key" in exc.reason.lower():
            raise HostKeyMismatch(target, pinned.get_fingerprint("sha256") if pinned else "an Ed25519 key", None) from None
        raise SshUnavailable(f"SSH key exchange with {where} failed: {exc.reason}") from None
    except asyncssh.PermissionDenied:
        raise SshUnavailable(
            f"SSH authentication to {where} failed: the CVM no longer accepts the controller's key "
            "(locked down, or the key was removed)",
            reason="auth",
        ) from None
    except asyncssh.Error as exc:
        raise SshUnavailable(f"SSH connection to {where} failed: {exc.reason}") from None
    except TimeoutError:
        raise SshUnavailable(f"SSH connection to {where} timed out after {timeout:g} s", reason="timeout") from None
    except ConnectionRefusedError:
        raise SshUnavailable(f"SSH connection to {where} refused: nothing listens on that port", reason="refused") from None
    except OSError as exc:
        raise SshUnavailable(f"SSH connection to {where} failed: {exc.strerror or exc}") from None
    if candidate:
        assert client.presented is not None  # asyncssh asked, or the connection would have failed
        return conn, _openssh_line(client.presented)
    return conn, target.host_key


# Every command is preceded by a line that prints its shell's pid to stderr between two
# ASCII record separators; the pool strips it. OpenSSH ignores "signal" requests for root
# logins and for ForceCommand sessions, and closing a channel does not stop a process that
# does not write, so on timeout the pool needs the pid to kill the command's process group
# (sshd makes every session's shell a session and group leader). The newline keeps the
# command's own parsing untouched: the shell runs the prologue before it reads the command.
_PROLOGUE = "printf '\\036duet-pid %d\\036' $$ >&2\n"
_MARK = b"\x1eduet-pid "
_MARK_END = b"\x1e"
_MARK_MAX = 48


class _Collector(asyncssh.SSHClientSession[bytes]):
    """Keeps at most ``limit`` bytes per stream and discards the rest, so a chatty command
    cannot exhaust the controller's memory, yet still runs to its exit status."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.out = bytearray()
        self.err = bytearray()
        self.out_truncated = False
        self.err_truncated = False
        self.remote_pid: int | None = None
        self._head: bytearray | None = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: Exception | None = None

    @property
    def awaiting_pid(self) -> bool:
        """The remote shell's pid marker has not arrived yet (nor turned out to be missing)."""
        return self._head is not None and not self.closed.done()

    def _keep(self, buf: bytearray, data: bytes) -> bool:
        """Append what fits; return whether something was dropped."""
        room = self.limit - len(buf)
        if len(data) > room:
            buf += data[: max(room, 0)]
            return True
        buf += data
        return False

    def _strip_pid(self, data: bytes) -> bytes:
        assert self._head is not None
        self._head += data
        head = bytes(self._head)
        if not (_MARK.startswith(head) or head.startswith(_MARK)):
            self._head = None  # no prologue output (not a POSIX shell?): plain stderr
            return head
        end = head.find(_MARK_END, len(_MARK))
        if end == -1:
            if len(head) <= _MARK_MAX:
                return b""  # wait for the rest of the marker
            self._head = None
            return head
        self._head = None
        try:
            self.remote_pid = int(head[len(_MARK) : end])
        except ValueError:
            return head
        return head[end + 1 :]

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            if self._head is not None:
                data = self._strip_pid(data)
            self.err_truncated |= self._keep(self.err, data)
        else:
            self.out_truncated |= self._keep(self.out, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head:  # an incomplete marker is the command's own stderr after all
            self.err_truncated |= self._keep(self.err, bytes(self._head))
        self._head = None
        self.lost = exc
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class _Entry:
    target: SshTarget
    conn: asyncssh.SSHClientConnection
    host_key: str
    """What the server presented on this connection (the pinned key, or the candidate)."""


def _alive(conn: asyncssh.SSHClientConnection) -> bool:
    # asyncssh has no public "is open" probe; a lost transport is what "dead" means here.
    return not conn.is_closed()


class CommandRunner(Protocol):
    """What the lifecycle needs of SSH (``SshPool`` is the real one; ``duet.testing`` has a fake)."""

    async def run(self, cvm_id: str, target: SshTarget, command: str, *, timeout: float, output_limit: int) -> ExecResult: ...
    async def wait_ready(self, target: SshTarget, *, timeout: float) -> None: ...
    async def login_refused(self, target: SshTarget) -> bool: ...
    async def drop(self, cvm_id: str) -> None: ...
    async def close(self) -> None: ...


class SshPool:
    """Keeps one open connection per CVM and reuses it (NOT a new connection per command)."""

    def __init__(
        self,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        channel_timeout: float = CHANNEL_TIMEOUT_S,
        close_timeout: float = CLOSE_TIMEOUT_S,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._channel_timeout = channel_timeout
        self._close_timeout = close_timeout
        self._conns: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()  # kills of cancelled commands

    async def _connection(self, cvm_id: str, target: SshTarget) -> _Entry:
        entry = self._conns.get(cvm_id)
        if entry is not None and entry.target == target and _alive(entry.conn):
            return entry  # fast path: no lock, no round trip
        lock = self._locks.setdefault(cvm_id, asyncio.Lock())
        async with lock:
            entry = self._conns.get(cvm_id)
            if entry is not None and entry.target == target and _alive(entry.conn):
                return entry
            if entry is not None:
                del self._conns[cvm_id]
                entry.conn.abort()  # dead or for another target: nothing to say to it
            conn, host_key = await _connect(target, timeout=self._connect_timeout)
            entry = self._conns[cvm_id] = _Entry(target, conn, host_key)
            return entry

    @property
    def margin_s(self) -> float:
        """How much longer than its command's timeout ``run`` takes at most, whatever the CVM
        does: connecting and opening the channel, then, on timeout, the kill and the close."""
        return self._connect_timeout + self._channel_timeout + 2 * self._close_timeout

    async def _forget(self, cvm_id: str, conn: asyncssh.SSHClientConnection, *, abort: bool = False) -> None:
        """Stop using ``conn`` for this CVM; ``abort`` for a stalled one (nothing is sent to it)."""
        entry = self._conns.get(cvm_id)
        if entry is not None and entry.conn is conn:
            del self._conns[cvm_id]
        if abort:
            conn.abort()
        else:
            conn.close()

    async def _close(self, conn: asyncssh.SSHClientConnection) -> None:
        """Close cleanly if the CVM answers within ``close_timeout``; abort otherwise."""
        conn.close()
        try:
            await asyncio.wait_for(conn.wait_closed(), self._close_timeout)
        except TimeoutError:
            conn.abort()

    async def _open(
        self, cvm_id: str, target: SshTarget, command: str, limit: int
    ) -> tuple[_Entry, asyncssh.SSHClientChannel[bytes], _Collector]:
        """Open the command's channel, reconnecting once if the cached connection died.

        Retrying is safe: a channel that failed to open never ran the command. A live
        connection that refuses a channel (e.g. sshd's MaxSessions) is kept, because other
        commands may be running on it. Everything here, waiting for another command's connect
        and the retry included, ends within ``connect_timeout + channel_timeout``; a channel
        that does not open in ``channel_timeout`` means a stalled CVM: its connection is dropped."""
        where = f"{target.host}:{target.port}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout + self._channel_timeout
        for attempt in (1, 2):
            budget = max(deadline - loop.time(), 0.0)
            try:
                entry = await asyncio.wait_for(self._connection(cvm_id, target), budget)
            except TimeoutError:
                raise SshUnavailable(
                    f"SSH connection to {where} timed out after {self._connect_timeout:g} s", reason="timeout"
                ) from None
            conn = entry.conn
            limit_s = min(self._channel_timeout, max(deadline - loop.time(), 0.0))
            try:
                chan, session = await asyncio.wait_for(
                    conn.create_session(lambda: _Collector(limit), _PROLOGUE + command, encoding=None), limit_s
                )
                assert isinstance(session, _Collector)
                return entry, chan, session
            except TimeoutError:
                await self._forget(cvm_id, conn, abort=True)
                raise SshUnavailable(
                    f"{where} did not open a channel for the command within {limit_s:g} s: the CVM is stalled or "
                    "overloaded. The connection was dropped; the command did not start, unless the CVM stalled just "
                    "as it received it: check the CVM before retrying",
                    reason="timeout",
                ) from None
            except (asyncssh.Error, OSError) as exc:
                reason = getattr(exc, "reason", None) or type(exc).__name__
                if not conn.is_closed():
                    raise SshUnavailable(f"{where} refused to start a command: {reason}", reason="error") from None
                await self._forget(cvm_id, conn)
                if attempt == 2:
                    raise SshUnavailable(f"cannot start a command on {where}: {reason}", reason="lost") from None
        raise AssertionError("unreachable")

    async def run(self, cvm_id: str, target: SshTarget, command: str, *, timeout: float, output_limit: int) -> ExecResult:
        """Run ``command`` (no PTY) and collect its outputs, at most ``output_limit`` bytes each.

        On timeout the remote process is sent SIGKILL and its channel closed; the result then
        has ``timed_out=True`` and no exit status. A CVM that does not confirm the kill within
        the close budget is stalled: its connection is dropped and SshUnavailable ("timeout")
        raised, since the command may still run there. A connection lost while the command runs
        raises SshUnavailable and is never retried: the command may already have had effects.
        Whatever the CVM does, this ends within ``timeout + margin_s``."""
        start = time.perf_counter()
        entry, chan, session = await self._open(cvm_id, target, command, output_limit)
        conn = entry.conn
        timed_out = stalled = False
        try:
            chan.write_eof()  # commands reading stdin see EOF instead of hanging
            done, _ = await asyncio.wait((session.closed,), timeout=timeout)
            if not done:
                timed_out = True
                stalled = not await _kill(conn, chan, session, self._close_timeout)
        finally:
            if not session.closed.done() and not stalled:  # the caller was cancelled: still kill the command
                task = asyncio.get_running_loop().create_task(self._kill_in_background(cvm_id, conn, chan, session))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        duration = time.perf_counter() - start
        if stalled:
            await self._forget(cvm_id, conn, abort=True)
            raise SshUnavailable(
                f"the command ran past its {timeout:g} s timeout and {target.host}:{target.port} did not confirm it was "
                f"killed within {2 * self._close_timeout:g} s: the CVM is stalled. The connection was dropped and the "
                "command may still be running: check the CVM before retrying",
                reason="timeout",
                command_started=session.remote_pid is not None,
            )
        if not timed_out and session.lost is not None:
            await self._forget(cvm_id, conn)
            raise SshUnavailable(
                f"connection to {target.host}:{target.port} was lost while a command ran; "
                "it may have run partly, check the CVM before retrying",
                reason="lost",
                command_started=session.remote_pid is not None,
            )
        status = None if timed_out else chan.get_exit_status()
        if status == -1:  # asyncssh's stand-in when the command died of a signal
            status = None
        return ExecResult(
            exit_status=status,
            stdout=bytes(session.out),
            stderr=bytes(session.err),
            duration_s=duration,
            timed_out=timed_out,
            stdout_truncated=session.out_truncated,
            stderr_truncated=session.err_truncated,
            host_key=entry.host_key,
        )

    async def _kill_in_background(
        self, cvm_id: str, conn: asyncssh.SSHClientConnection, chan: asyncssh.SSHClientChannel[bytes], session: _Collector
    ) -> None:
        if not await _kill(conn, chan, session, self._close_timeout):
            await self._forget(cvm_id, conn, abort=True)

    async def wait_ready(self, target: SshTarget, *, timeout: float) -> None:
        """Poll until the machine answers SSH and accepts the key, instead of a fixed sleep.

        A host key mismatch is final (it will not fix itself); refused connections and
        refused keys are retried, because a booting machine installs its key late."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        last: SshUnavailable | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (remaining < 0.05 and last is not None):
                reason = last.message if last else "no attempt fitted in the time"
                raise SshUnavailable(f"SSH not ready after {timeout:g} s: {reason}", reason=last.reason if last else "timeout")
            budget = min(remaining, self._connect_timeout)
            try:
                conn, _ = await _connect(target, timeout=budget)
            except SshUnavailable as exc:
                # A timeout of an attempt cut short by the deadline says less than the
                # failure before it (e.g. "key refused"), so that one is reported.
                if not (exc.reason == "timeout" and budget < self._connect_timeout and last is not None):
                    last = exc
                await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
                delay = min(delay * 2, 1.0)
                continue
            await self._close(conn)
            return

    async def login_refused(self, target: SshTarget) -> bool:
        """Whether a fresh connection is turned away (nothing listens, or the key is refused).

        Only a refusal counts: a timeout or a network error says nothing about the CVM, so
        it is no evidence that a lockdown took effect."""
        try:
            conn, _ = await _connect(target, timeout=self._connect_timeout)
        except SshUnavailable as exc:
            return exc.reason in ("refused", "auth")
        await self._close(conn)
        return False

    async def drop(self, cvm_id: str) -> None:
        entry = self._conns.pop(cvm_id, None)
        self._locks.pop(cvm_id, None)
        if entry is not None:
            await self._close(entry.conn)

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for cvm_id in list(self._conns):
            await self.drop(cvm_id)


async def _kill(
    conn: asyncssh.SSHClientConnection, chan: asyncssh.SSHClientChannel[bytes], session: _Collector, budget: float
) -> bool:
    """Kill the timed-out command's process group, then close its channel; returns whether
    the channel closed (False: the CVM does not answer, the command may still run).

    Costs one more round trip, only on timeout. The signal request is sent too, for servers
    that honour it (non-root logins on stock OpenSSH). Takes at most ``2 * budget``: one for
    the pid marker and the kill, one for the channel's close."""
    with contextlib.suppress(OSError, asyncssh.Error):
        chan.send_signal("KILL")
    # Cancelled right after the start, the pid marker may still be in flight: wait for it.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    while session.awaiting_pid and loop.time() < deadline:
        await asyncio.sleep(0.01)
    pid = session.remote_pid
    remaining = deadline - loop.time()
    if pid is not None and not session.closed.done() and remaining > 0:
        with contextlib.suppress(OSError, asyncssh.Error, TimeoutError):
            await asyncio.wait_for(conn.run(f"kill -KILL -- -{pid} {pid} 2>/dev/null", check=False), remaining)
    chan.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(session.closed), budget)
    return session.closed.done()
