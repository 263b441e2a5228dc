"""A CVM's command history, derived from its ledger entries.

The ledger is the record; this is the summary people read (`duet cvm state`) and that the
state answer carries: one row per command, tied to the ledger by the seq of its entries, so
any row can be proven with an inclusion proof of those entries.
"""

from __future__ import annotations

from typing import Any

from duet.protocol import lifecycle as lc

OUTCOME_EVENTS = lc.COMMAND_OUTCOMES
OUTCOME_FIELDS = ("exit_status", "duration_ms", "timed_out", "stdout_sha256", "stderr_sha256")


def command_rows(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``command.started``: the command, and its outcome once recorded.

    ``status`` is ``running`` until an outcome entry names the start by ``started_seq``,
    then ``finished``, ``failed`` or ``interrupted``."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in entries:
        event = entry.get("event")
        if event == lc.COMMAND_STARTED:
            rows[entry["seq"]] = {"seq": entry["seq"], "command": entry["command"], "status": "running"}
        elif event in OUTCOME_EVENTS and entry.get("started_seq") in rows:
            row = rows[entry["started_seq"]]
            row["status"] = event.split(".", 1)[1]
            row["outcome_seq"] = entry["seq"]
            row.update({name: entry[name] for name in OUTCOME_FIELDS if name in entry})
    return list(rows.values())


def mode_rows(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every mode change, in order: who may reach the CVM, and since which entry."""
    return [
        {"seq": entry["seq"], "time": entry["time"], "mode": entry["mode"], "final": entry.get("final", False)}
        for entry in entries
        if entry.get("event") == lc.MODE_CHANGED
    ]


RECENT_ROWS = 10
"""Commands and mode changes a state answer shows; the rest stay in the ledger routes, paged."""


class CvmHistory:
    """One CVM's counts and its last commands and mode changes, fed entry by entry.

    What the state answer carries, in memory that does not grow with the CVM's history: the
    state of a CVM with 100,000 commands costs what one with 10 costs (issue 13). Rows are the
    ones :func:`command_rows` and :func:`mode_rows` make from the same entries."""

    def __init__(self, keep: int = RECENT_ROWS) -> None:
        self.keep = keep
        self.entries = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.commands: dict[int, dict[str, Any]] = {}
        """The last ``keep`` commands by their start seq (insertion order is seq order)."""
        self.modes: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {"commands": 0, "running": 0, "finished": 0, "failed": 0, "interrupted": 0, "modes": 0}

    def apply(self, entry: dict[str, Any]) -> None:
        seq, event = entry["seq"], entry.get("event")
        self.entries += 1
        self.first_seq = seq if self.first_seq is None else self.first_seq
        self.last_seq = seq
        if event == lc.COMMAND_STARTED:
            self.counts["commands"] += 1
            self.counts["running"] += 1
            self.commands[seq] = {"seq": seq, "command": entry["command"], "status": "running"}
            if len(self.commands) > self.keep:
                del self.commands[next(iter(self.commands))]
        elif event in OUTCOME_EVENTS:
            status = str(event).split(".", 1)[1]
            self.counts["running"] -= 1
            self.counts[status] += 1
            row = self.commands.get(entry.get("started_seq"))  # type: ignore[arg-type]
            if row is not None:
                row.update(status=status, outcome_seq=seq, **{name: entry[name] for name in OUTCOME_FIELDS if name in entry})
        elif event == lc.MODE_CHANGED:
            self.counts["modes"] += 1
            self.modes = [*self.modes, *mode_rows([entry])][-self.keep :]

    def summary(self) -> dict[str, Any]:
        """The counts, the recent rows, and where the whole history is (the ledger, paged)."""
        return {
            "entry_count": self.entries,
            "counts": dict(self.counts),
            "commands": [dict(row) for row in self.commands.values()],
            "modes": list(self.modes),
            "history": {
                "first_seq": self.first_seq,
                "last_seq": self.last_seq,
                "complete": self.counts["commands"] <= self.keep and self.counts["modes"] <= self.keep,
                "entries": "/v1/ledger/entries?cvm=<cvm_id> (paged; with proofs from /v1/ledger/proof/inclusion)",
            },
        }


class HistoryIndex:
    """Every CVM's :class:`CvmHistory`, fed the ledger in order (at start, in the pass that
    verifies it; then each committed entry)."""

    def __init__(self, keep: int = RECENT_ROWS) -> None:
        self.keep = keep
        self.cvms: dict[str, CvmHistory] = {}

    def apply(self, entry: dict[str, Any]) -> None:
        cvm_id = entry.get("cvm")
        if isinstance(cvm_id, str):
            history = self.cvms.get(cvm_id)
            if history is None:
                history = self.cvms[cvm_id] = CvmHistory(self.keep)
            history.apply(entry)

    def of(self, cvm_id: str) -> CvmHistory:
        return self.cvms.get(cvm_id) or CvmHistory(self.keep)
