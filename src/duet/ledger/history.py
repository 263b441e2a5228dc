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
