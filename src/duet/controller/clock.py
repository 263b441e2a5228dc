"""The controller's one clock: the host's, never believed backwards (design.md §1: the clock
belongs to the adversary).

One instance per controller. The ledger stamps every entry with it, the authenticator judges
request times by it, proposals expire by it and attestations count as fresh by it; so what is
decided and what is written agree, and entry times never go backwards. Set back, the host's
clock is ignored until it catches up; set forward, it can only make things expire early.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class FloorClock:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._floor = 0.0

    def raise_to(self, floor: float) -> None:
        """Never earlier than ``floor`` from now on (at start: the last entry's time)."""
        self._floor = max(self._floor, floor)

    def __call__(self) -> float:
        self._floor = max(self._floor, self._clock())
        return self._floor
