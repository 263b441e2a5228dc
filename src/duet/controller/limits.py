"""Limits on what one client may hold of the controller: bytes and time to send a request head,
connections overall and per client address, and time to finish a TLS handshake.

uvicorn bounds none of these (nor does httptools, whose header buffering is quadratic), so the
controller accepts its connections itself and hands each to ``LimitedHttpProtocol``, uvicorn's
httptools protocol with the limits of the request head and its deadlines added:

- ``Listener`` accepts on its own socket: a connection over the overall or per-address limit is
  answered 503 and closed at once (plain HTTP; over TLS it is closed before any handshake), so a
  flood never takes the file descriptors that others need; the others are started with
  ``loop.connect_accepted_socket(..., ssl_handshake_timeout=...)``. One ``Guard`` counts for every
  listener (HTTPS and the seed's plain HTTP), so they share one budget.
- ``LimitedHttpProtocol`` counts the bytes of each request head before the parser sees them
  (431 past ``max_header_bytes``), the header lines (431) and the request target (414); the head
  must arrive within ``header_timeout_s`` of the connection's start or of its first byte (408),
  and a body may not pause longer than ``idle_timeout_s`` (408).

docs/security.md ("Hostile clients") states the limits and their defaults.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

if TYPE_CHECKING:
    import uvicorn
    from uvicorn.server import ServerState

    from duet.controller.settings import Settings
    from duet.witness import ServeSettings

log = logging.getLogger("duet.controller.limits")

HEAD_END = b"\r\n\r\n"
FD_RESERVE = 256
"""File descriptors kept for everything but client connections (database, SSH to CVMs, logs)."""


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int
    max_header_count: int
    max_request_line_bytes: int
    header_timeout_s: float
    idle_timeout_s: float
    keep_alive_timeout_s: float
    max_connections: int
    max_connections_per_address: int
    tls_handshake_timeout_s: float

    @classmethod
    def of(cls, settings: Settings | ServeSettings) -> Limits:
        """The limits of a controller's or a witness's settings (the same fields in both)."""
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_header_count=settings.max_header_count,
            max_request_line_bytes=settings.max_request_line_bytes,
            header_timeout_s=settings.header_timeout_s,
            idle_timeout_s=settings.idle_timeout_s,
            keep_alive_timeout_s=settings.keep_alive_timeout_s,
            max_connections=settings.max_connections,
            max_connections_per_address=settings.max_connections_per_address,
            tls_handshake_timeout_s=settings.tls_handshake_timeout_s,
        )


def fit_to_file_limit(limits: Limits) -> Limits:
    """Raise the soft limit on open files as far as the connections need (within the hard
    limit); if it cannot hold them, lower ``max_connections`` so that a flood of connections
    is refused by the controller rather than by the kernel (EMFILE, which refuses everyone)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        fitted = max(1, soft - FD_RESERVE)
        log.warning("only %d open files allowed: at most %d client connections (not %d)", soft, fitted, limits.max_connections)
        return _replace(limits, max_connections=fitted)
    return limits


def _replace(limits: Limits, **changes: Any) -> Limits:
    import dataclasses

    return dataclasses.replace(limits, **changes)


REFUSAL_GRACE_S = 1.0
"""How long a refused connection is kept to deliver its answer before it is dropped."""


class Guard:
    """Connections counted overall and per client address, for every listener of the controller;
    refusals are counted and logged at most every 10 s, so a flood does not flood the log."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.total = 0
        self.per_address: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._logged_at = 0.0

    def admit(self, address: str) -> bool:
        if self.total >= self.limits.max_connections:
            self.note("connections (all addresses) over the limit")
            return False
        if self.per_address[address] >= self.limits.max_connections_per_address:
            self.note("connections from one address over the limit")
            return False
        self.total += 1
        self.per_address[address] += 1
        return True

    def release(self, address: str) -> None:
        self.total -= 1
        self.per_address[address] -= 1
        if self.per_address[address] <= 0:
            del self.per_address[address]

    def note(self, reason: str) -> None:
        self.refused[reason] += 1
        now = time.monotonic()
        if now - self._logged_at >= 10.0:
            self._logged_at = now
            log.warning("refused: %s", "; ".join(f"{n} × {why}" for why, n in self.refused.items()))
            self.refused.clear()


class Slot:
    """One admitted connection's place in the guard, given back exactly once."""

    __slots__ = ("guard", "address", "held")

    def __init__(self, guard: Guard, address: str) -> None:
        self.guard = guard
        self.address = address
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.guard.release(self.address)


def error_response(status: int, message: str, default_headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    body = message.encode("ascii")
    lines = [STATUS_LINE[status]]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(lines)


SERVICE_UNAVAILABLE = error_response(503, "Too many connections")


class _Refused(Exception):
    pass


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the size, count and time limits of a request head."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        *,
        limits: Limits,
        slot: Slot,
    ) -> None:
        super().__init__(config, server_state, app_state)
        self.limits = limits
        self.slot = slot
        self.timeout_keep_alive = limits.keep_alive_timeout_s  # type: ignore[assignment]  # a float is fine for call_later
        self._made = False
        self._in_body = False  # between the end of a head and the end of its message
        self._head_bytes = 0
        self._tail = b""  # the last bytes of the head so far, to find its end across reads
        self._url_bytes = 0
        self._header_count = 0
        self._refusal: tuple[int, str] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    # --- the connection ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._made = True
        super().connection_made(transport)
        self._arm_head_timer()  # the first request's head: from the connection's start (after TLS)

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.release()
        self._cancel_timers()
        if self._made:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        if self._in_body:
            self._arm_idle_timer()
        else:
            if self._head_timer is None:
                self._arm_head_timer()  # the first byte of a later request's head
            if self._head_bytes + len(data) > self.limits.max_header_bytes and not self._head_ends_in_time(data):
                self._refuse(431, "Request Header Fields Too Large")
                return
            self._head_bytes += len(data)
            self._tail = (self._tail + data[-3:])[-3:]
        super().data_received(data)

    def _head_ends_in_time(self, data: bytes) -> bool:
        """Whether the head ends in ``data`` within ``max_header_bytes`` (the rest is body)."""
        end = (self._tail + data).find(HEAD_END)
        return end >= 0 and self._head_bytes - len(self._tail) + end + len(HEAD_END) <= self.limits.max_header_bytes

    # --- parser callbacks ---

    def on_message_begin(self) -> None:
        self._url_bytes = 0
        self._header_count = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.limits.max_request_line_bytes:
            self._refusal = (414, "URI Too Long")
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_header_count:
            self._refusal = (431, "Request Header Fields Too Large")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_body = True
        self._cancel_head_timer()
        self._arm_idle_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._head_bytes = 0
        self._tail = b""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error, which is also how a refusal in a callback ends."""
        if self._refusal is not None:
            status, message = self._refusal
            self._refusal = None
            self._refuse(status, message)
        else:
            super().send_400_response(msg)

    # --- deadlines ---

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = self.loop.call_later(self.limits.idle_timeout_s, self._idle_timed_out)

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _busy(self) -> bool:
        """An answer to an earlier request is still being made: the connection is ours to wait on."""
        return self.cycle is not None and not self.cycle.response_complete and not self._in_body

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._in_body:
            return
        if self._busy():
            self._arm_head_timer()  # a pipelined head waits for the answer before it
        elif self._head_bytes:
            self._refuse(408, "Request Timeout")
        else:
            self.transport.close()  # nothing was asked: nothing to answer

    def _idle_timed_out(self) -> None:
        self._idle_timer = None
        if self.transport.is_closing() or not self._in_body:
            return
        if self.flow.read_paused:
            self._arm_idle_timer()  # the application is not reading: the silence is ours
        else:
            self._refuse(408, "Request Timeout")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` and close, unless an answer is already under way (then only close)."""
        self._refusal = (status, message)
        self.slot.guard.note(f"{status} {message}")
        self._cancel_timers()
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started or self.cycle.response_complete:
            self.transport.write(error_response(status, message, self.server_state.default_headers))
        self.transport.close()
        # A TLS close waits for the client's close_notify while it reads (and decrypts) whatever
        # the client still sends: a refused client gets a moment to read the answer, no more.
        self.loop.call_later(REFUSAL_GRACE_S, self.transport.abort)


class Listener:
    """Accepts connections on one socket for a uvicorn server, under a shared ``Guard``: over a
    limit a connection is refused at once, else started (TLS within its handshake timeout) with
    ``LimitedHttpProtocol``. ``close`` and ``wait_closed`` stand in for an asyncio Server's."""

    def __init__(
        self,
        sock: socket.socket,
        guard: Guard,
        make_protocol: Callable[[Slot], asyncio.Protocol],
        tls: ssl.SSLContext | None,
    ) -> None:
        self.sock = sock
        self.guard = guard
        self.make_protocol = make_protocol
        self.tls = tls
        self.starting: set[asyncio.Task[None]] = set()
        self.task = asyncio.get_running_loop().create_task(self._accept_forever())

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(self.sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # EMFILE and the like: wait for descriptors to come back
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            self._take(conn, address)
            for _ in range(63):  # the rest of the backlog, without a round trip through the loop
                try:
                    conn, address = self.sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    log.warning("accept failed: %s", exc)
                    break
                self._take(conn, address)

    def _take(self, conn: socket.socket, address: Any) -> None:
        conn.setblocking(False)
        host = str(address[0])
        if not self.guard.admit(host):
            if self.tls is None:
                try:
                    conn.send(SERVICE_UNAVAILABLE)
                except OSError:
                    pass
            conn.close()
            return
        slot = Slot(self.guard, host)
        task = asyncio.get_running_loop().create_task(self._start(conn, slot))
        self.starting.add(task)
        task.add_done_callback(self.starting.discard)

    async def _start(self, conn: socket.socket, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is None:
                await loop.connect_accepted_socket(lambda: self.make_protocol(slot), conn)
            else:
                await loop.connect_accepted_socket(
                    lambda: self.make_protocol(slot),
                    conn,
                    ssl=self.tls,
                    ssl_handshake_timeout=self.guard.limits.tls_handshake_timeout_s,
                    ssl_shutdown_timeout=self.guard.limits.tls_handshake_timeout_s,
                )
        except (Exception, asyncio.CancelledError):  # a failed or timed-out handshake, or shutdown
            slot.release()
            conn.close()

    def close(self) -> None:
        self.task.cancel()
        for task in list(self.starting):
            task.cancel()
        self.sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(self.task, *self.starting, return_exceptions=True)


def bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog)
    sock.setblocking(False)
    return sock
