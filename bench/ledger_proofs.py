"""Ledger Merkle proofs at scale: do proofs stay O(log n) as the log reaches 1,000,000 entries?

Builds a 1,000-entry and a 1,000,000-entry tree by appending, then times random inclusion and
consistency proofs (between random historic sizes) and their verification. If the costs are
logarithmic, time(1M) / time(1K) should sit near log2(1M) / log2(1K) = 2.0, not near 1000.
Run: .venv/bin/python bench/ledger_proofs.py  (PYTHONPATH=src if duet is not installed).
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from duet.ledger.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion

SIZES = (1_000, 1_000_000)
SAMPLES = 2_000
BUDGET_MS = 5.0


def build(n: int) -> tuple[MerkleTree, float]:
    """Returns the tree and the mean append time per entry in microseconds."""
    leaves = [leaf_hash(b"entry-%d" % i) for i in range(n)]
    tree = MerkleTree()
    start = time.perf_counter()
    for h in leaves:
        tree.append(h)
    return tree, (time.perf_counter() - start) / n * 1e6


def timings_ms(op: Callable[[], object]) -> list[float]:
    times = []
    for _ in range(SAMPLES):
        t0 = time.perf_counter_ns()
        op()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return sorted(times)


def measure(tree: MerkleTree, rng: random.Random) -> dict[str, list[float]]:
    n = tree.size
    inc = [(i, rng.randint(i + 1, n)) for i in (rng.randrange(n) for _ in range(SAMPLES))]
    con = [tuple(sorted(rng.sample(range(1, n + 1), 2))) for _ in range(SAMPLES)]
    roots = {s: tree.root(s) for pair in inc + con for s in pair if isinstance(s, int) and s > 0}
    leaves = {i: leaf_hash(b"entry-%d" % i) for i, _ in inc}
    inc_proofs = [tree.inclusion_proof(i, s) for i, s in inc]
    con_proofs = [tree.consistency_proof(a, b) for a, b in con]
    for (i, s), p in zip(inc, inc_proofs):
        assert verify_inclusion(leaves[i], i, s, p, roots[s])
    for (a, b), p in zip(con, con_proofs):
        assert verify_consistency(a, b, roots[a], roots[b], p)

    it_inc, it_con, it_inc_p, it_con_p = iter(inc), iter(con), iter(zip(inc, inc_proofs)), iter(zip(con, con_proofs))
    it_root = iter([s for _, s in inc])

    def verify_inc() -> None:
        (i, s), p = next(it_inc_p)
        verify_inclusion(leaves[i], i, s, p, roots[s])

    def verify_con() -> None:
        (a, b), p = next(it_con_p)
        verify_consistency(a, b, roots[a], roots[b], p)

    return {
        "historic root": timings_ms(lambda: tree.root(next(it_root))),
        "inclusion_proof": timings_ms(lambda: tree.inclusion_proof(*next(it_inc))),
        "verify_inclusion": timings_ms(verify_inc),
        "consistency_proof": timings_ms(lambda: tree.consistency_proof(*next(it_con))),
        "verify_consistency": timings_ms(verify_con),
    }


def main() -> None:
    t0 = time.perf_counter()
    rng = random.Random(9162)
    results: dict[int, dict[str, list[float]]] = {}
    for n in SIZES:
        tree, append_us = build(n)
        stored = sum(len(level) for level in tree._levels) / 2**20  # bench peeks at storage size
        print(f"append: {append_us:.2f} us/entry at {n} (built in {append_us * n / 1e6:.2f} s, {stored:.1f} MiB of hashes)")
        results[n] = measure(tree, rng)
        del tree
    small, big = SIZES
    log_ratio = math.log2(big) / math.log2(small)
    worst = 0.0
    for name, times in results[big].items():
        b, s = statistics.median(times), statistics.median(results[small][name])
        p99, slowest = times[int(len(times) * 0.99)], times[-1]
        worst = max(worst, p99)
        print(
            f"{name} median: {b:.3f} ms at {big}, {s:.3f} ms at {small}, "
            f"ratio {b / s:.1f} (log ratio {log_ratio:.1f}); at {big} p99 {p99:.3f} ms, max {slowest:.3f} ms"
        )
    print(f"slowest p99 at {big}: {worst:.3f} ms (budget {BUDGET_MS} ms); total run {time.perf_counter() - t0:.1f} s")
    if worst >= BUDGET_MS:
        raise SystemExit(f"a proof operation's p99 exceeded the {BUDGET_MS} ms budget")


if __name__ == "__main__":
    main()
