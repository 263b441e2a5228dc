"""``duet audit --tiles URL``: the ledger read from its published C2SP tiles, never from the controller.

The controller publishes its ledger as tiles (``duet.publish``) to a bucket, a container or a
directory that anyone can serve over HTTP. The auditor trusts nothing there but what the key it
pinned proves:

* the checkpoint must verify with the pinned controller key under the controller's origin (and
  meet the auditor's witness policy, if any: :mod:`duet.client.audit_witness`);
* every tile and entry bundle is authenticated against that checkpoint's root before it is used
  (``duet.ledger.tiles.TiledLog``: the right-edge tiles hash to the root, every full tile to its
  hash in the tile above, every entry to its leaf hash); one that does not is named by its path;
* consistency with a head seen before needs no proof from anyone: the root of any smaller tree
  is computed from the authenticated tiles and must be that head's root.

The bucket holds no blobs (outputs, CVM evidence): a tiles audit says how many it could not
check, and does not count them as findings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from duet.client.audit_witness import NoteHead, Witnessed, WitnessPolicy
from duet.client.checkpoints import controller_log_verifier
from duet.client.tiles_source import TilesSource, open_tiles_source
from duet.client.trust import ControllerPin
from duet.ledger.checkpoint import verify_checkpoint
from duet.ledger.tiles import TiledLog, TileError

__all__ = ["TilesLedger", "batches", "decode_entry", "tile_finding"]


class TilesLedger:
    """A controller's published log, read through ``source`` (an http(s) URL, ``azure://``,
    ``s3://`` or a directory: ``duet.client.tiles_source.open_tiles_source``)."""

    def __init__(self, source: TilesSource, *, owned: bool = False) -> None:
        self.source = source
        self._owned = owned

    @classmethod
    def at(cls, url: str, *, timeout: float = 15.0) -> TilesLedger:
        return cls(open_tiles_source(url, timeout=timeout), owned=True)

    @property
    def location(self) -> str:
        return self.source.location

    def read(self, pin: ControllerPin, policy: WitnessPolicy | None) -> Witnessed:
        """The published checkpoint, verified with the pinned key, held to ``policy`` if any.

        Raises ``TilesUnavailable`` when none can be read, a ``NoteError`` when it does not
        verify; too few cosignatures is returned as ``Witnessed.refusal``."""
        note = self.source.checkpoint_note()
        if policy is not None:
            return policy.check(note, pin.controller, pin.public_key())
        checkpoint = verify_checkpoint(note, controller_log_verifier(pin.controller, pin.public_key()))
        return Witnessed(NoteHead.of(note, checkpoint, pin.controller), [])

    def open(self, head: NoteHead) -> TiledLog:
        """The log at ``head``, its right edge checked against the root (raises ``TileError``)."""
        return TiledLog(self.source, head.checkpoint())

    def close(self) -> None:
        if self._owned:
            self.source.close()


def batches(log: TiledLog, start: int, end: int, size: int) -> Iterator[tuple[list[bytes], int]]:
    """The entries ``[start, end)`` of ``log``, each proven, in lists of ``size`` with the
    position after each list."""
    batch: list[bytes] = []
    position = start
    for data in log.entries(start, end):
        batch.append(data)
        position += 1
        if len(batch) >= size:
            yield batch, position
            batch = []
    if batch:
        yield batch, position


def decode_entry(data: bytes) -> Any:
    """An entry's bytes as the controller's API would serve it: its JSON value (the bytes are
    its canonical JSON); bytes that are not JSON are kept as text (not an entry the rules can read)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return data.decode("utf-8", errors="replace")


def tile_finding(exc: TileError) -> tuple[str, str, str, int | None]:
    """(code, message, path, seq) of the finding a tile that failed its check is."""
    index = getattr(exc, "index", None)
    paths = ", ".join(exc.paths) if len(exc.paths) > 1 else exc.path
    return (
        exc.code,
        f"{exc.message} [{paths}]: the published log does not prove what the controller signed there "
        "(the tile was altered, damaged or replaced in the store, or served so)",
        exc.path,
        index if isinstance(index, int) else None,
    )
