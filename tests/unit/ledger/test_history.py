"""A CVM's history summary: counts and the last rows, kept entry by entry in bounded memory.

The incremental summary (``CvmHistory``) must show exactly what the whole-history functions
(``command_rows``, ``mode_rows``) show for the same entries, cut to the last rows.
"""

from __future__ import annotations

import json
import random
from typing import Any

from duet.ledger.history import CvmHistory, HistoryIndex, command_rows, mode_rows

CVM = "c" * 64


def history_entries(commands: int, seed: int = 7) -> list[dict[str, Any]]:
    """A CVM's entries: commands with every kind of outcome, some still running, mode changes."""
    rng = random.Random(seed)
    entries: list[dict[str, Any]] = []
    running: list[int] = []

    def add(**fields: Any) -> int:
        entries.append({"seq": len(entries), "cvm": CVM, "time": f"t{len(entries)}", **fields})
        return len(entries) - 1

    add(event="cvm.provisioning")
    for i in range(commands):
        running.append(add(event="command.started", command=f"echo {i}"))
        if rng.random() < 0.8 and running:
            started = running.pop(rng.randrange(len(running)))
            outcome = rng.choice(["command.finished", "command.failed", "command.interrupted"])
            add(event=outcome, started_seq=started, exit_status=rng.randrange(3), duration_ms=1.0, stdout_sha256="ab" * 32)
        if rng.random() < 0.1:
            add(event="mode.changed", mode=rng.choice(["in-service", "in-update"]), final=False)
    return entries


def test_the_summary_shows_the_last_rows_exactly_as_the_whole_history_does() -> None:
    entries = history_entries(200)
    history = CvmHistory(keep=20)
    for entry in entries:
        history.apply(entry)
    summary = history.summary()
    whole = command_rows(entries)
    assert summary["commands"] == whole[-20:]
    assert summary["modes"] == mode_rows(entries)[-20:]
    statuses = [row["status"] for row in whole]
    assert summary["counts"] == {
        "commands": 200,
        "running": statuses.count("running"),
        "finished": statuses.count("finished"),
        "failed": statuses.count("failed"),
        "interrupted": statuses.count("interrupted"),
        "modes": len(mode_rows(entries)),
    }
    assert summary["entry_count"] == len(entries) and summary["history"]["complete"] is False
    assert (summary["history"]["first_seq"], summary["history"]["last_seq"]) == (0, len(entries) - 1)


def test_a_short_history_is_complete() -> None:
    entries = history_entries(5)
    history = CvmHistory(keep=20)
    for entry in entries:
        history.apply(entry)
    assert history.summary()["commands"] == command_rows(entries) and history.summary()["history"]["complete"] is True


def test_the_summary_does_not_grow_with_the_history() -> None:
    sizes = []
    for commands in (100, 10_000):
        index = HistoryIndex(keep=20)
        for entry in history_entries(commands):
            index.apply(entry)
        sizes.append(len(json.dumps(index.of(CVM).summary())))
    assert sizes[1] < sizes[0] * 1.2  # the counts get longer digits, nothing else
