"""Proof serving through HTTP at 1,000,000 ledger entries: does a signed proof stay under 5 ms?

Writes a 1M-entry ledger straight into a controller database, starts a real controller process
on it (its tree is rebuilt from disk at start), and times signed inclusion and consistency
proof answers over loopback HTTP, against the signed head answer of the same process as baseline.
Run: .venv/bin/python bench/ledger_http_proofs.py [N]
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import httpx

from duet.controller.store import SCHEMA
from duet.protocol.canonical import canonical
from duet.testing.process import ControllerProcess
from support import make_owner

SAMPLES = 500
BUDGET_MS = 5.0


def fill(db_path: Path, n: int) -> None:
    db = sqlite3.connect(db_path)
    db.executescript(SCHEMA)
    rows = (
        (
            i,
            "bench",
            canonical(
                {
                    "seq": i,
                    "time": "2026-01-01T00:00:00.000Z",
                    "cvm": "bench",
                    "cvm_prev": i - 1 if i else None,
                    "event": "bench.entry",
                    "actor": "bench",
                    "request_digest": None,
                }
            ),
        )
        for i in range(n)
    )
    db.executemany("INSERT INTO ledger (seq, cvm_id, entry) VALUES (?, ?, ?)", rows)
    db.commit()
    db.close()


def timed(http: httpx.Client, path: str, params: list[dict[str, int]]) -> list[float]:
    out = []
    for p in params:
        t0 = time.perf_counter()
        r = http.get(path, params={**p, "nonce": "ab" * 16})
        out.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.text
    return sorted(out)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        owner = make_owner(base)
        state = base / "state"
        state.mkdir()
        t0 = time.perf_counter()
        fill(state / "duet.sqlite3", n)
        print(f"wrote {n:,} entries in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        with ControllerProcess(state, [owner.pub_path]) as controller:
            print(f"controller up (tree rebuilt from disk) in {time.perf_counter() - t0:.1f} s")
            with httpx.Client(base_url=controller.url, timeout=30, verify=False) as http:
                size = http.get("/v1/ledger/head").json()["result"]["tree_size"]
                head = timed(http, "/v1/ledger/head", [{}] * SAMPLES)
                inc = timed(
                    http,
                    "/v1/ledger/proof/inclusion",
                    [{"index": rng.randrange(size), "tree_size": size} for _ in range(SAMPLES)],
                )
                con = timed(
                    http,
                    "/v1/ledger/proof/consistency",
                    [{"first": rng.randint(1, size), "second": size} for _ in range(SAMPLES)],
                )
    ok = True
    for name, times in (("signed head", head), ("inclusion proof", inc), ("consistency proof", con)):
        p50, p99 = statistics.median(times), times[int(len(times) * 0.99) - 1]
        print(
            f"{name:18s} at {size:,} entries: p50 {p50:.2f} ms, p99 {p99:.2f} ms  (ratio to head p50: {p50 / statistics.median(head):.2f})"
        )
        ok &= p50 < BUDGET_MS
    print("PASS" if ok else f"FAIL: a proof's median exceeds {BUDGET_MS} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
