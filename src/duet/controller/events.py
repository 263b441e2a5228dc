"""Server-Sent Events of the ledger: one event per committed entry (``GET /v1/events``).

Each event is ``id: <seq>``, ``event: entry`` and ``data:`` the controller's signed answer
whose result is the entry (echoing the subscriber's nonce), so an event can be believed on
its own; auditors still check every entry against signed heads and proofs. A reader resumes
with ``Last-Event-ID`` (or ``?from=``): stored entries are replayed first, then live ones, each
exactly once. The server never blocks on a reader: each has a bounded queue, and one that
falls behind is dropped with ``event: end`` and resumes from its last id.

A stream never ends by itself, and uvicorn's graceful shutdown waits for open responses, so
streams are ended when the server is asked to stop (``Streams.end_all``, from ``app.serve``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from duet.ledger.log import Ledger, Subscription
from duet.protocol.canonical import canonical

HEARTBEAT_S = 15.0
QUEUE_SIZE = 1024

Signer = Callable[[bytes], bytes]
"""Turns a result's canonical bytes into a whole signed answer body."""


class Streams:
    """The open event streams of one controller, ended together when its server is asked to
    stop (``controller.app.serve``): a stream never ends by itself, and uvicorn's graceful
    shutdown waits for open responses."""

    def __init__(self) -> None:
        self._open: set[Subscription] = set()

    def add(self, subscription: Subscription) -> None:
        self._open.add(subscription)

    def discard(self, subscription: Subscription) -> None:
        self._open.discard(subscription)

    def end_all(self) -> None:
        for subscription in list(self._open):
            subscription.end()


def _event(entry: dict[str, Any], sign: Signer) -> bytes:
    return b"id: %d\nevent: entry\ndata: " % entry["seq"] + sign(canonical(entry)) + b"\n\n"


def resume_point(from_seq: int | None, last_event_id: str | None) -> int:
    """Where a stream starts: after ``Last-Event-ID`` if sent, else ``from`` (default: live only)."""
    if last_event_id is not None and last_event_id.strip().isdigit():
        return int(last_event_id.strip()) + 1
    return from_seq if from_seq is not None else -1


async def stream(ledger: Ledger, start: int, sign: Signer, streams: Streams) -> AsyncIterator[bytes]:
    """Entries from ``start`` (``-1``: only those committed from now on), then live ones."""
    subscription = ledger.subscription(QUEUE_SIZE)  # taken before the catch-up: no gap
    streams.add(subscription)
    try:
        position = ledger.size if start < 0 else start
        yield b": duet ledger events from seq %d\nretry: 2000\n\n" % position
        while position < ledger.size:
            page = ledger.page(position, ledger.size)
            for entry in page["entries"]:
                yield _event(entry, sign)
            position = page["end"]
            await asyncio.sleep(0)
        while True:
            try:
                entry = await subscription.get(timeout=HEARTBEAT_S)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if entry is None:
                reason = "too_slow" if subscription.overflowed else "shutting_down"
                yield b"event: end\ndata: " + json.dumps({"reason": reason, "resume_from": position}).encode() + b"\n\n"
                return
            if entry["seq"] >= position:
                position = entry["seq"] + 1
                yield _event(entry, sign)
    finally:
        streams.discard(subscription)
        subscription.close()
