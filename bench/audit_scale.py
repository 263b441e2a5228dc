"""Audits at a million entries (issue 13, item 2), and a CVM's state read at 100,000 commands (item 1).

In-process: the ledger is tests/unit/client/synthetic_ledger.py, a lawful ledger whose entries
are made on demand from their seq (100 CVMs, commands round-robin, each command its own owner
request: the most the rules must remember) over a real RFC 9162 tree of their leaf hashes, with
a source answering like a controller (signed heads, pages of 1000, proofs), minus HTTP, JSON and
answer signatures. A real controller cannot be filled with a million entries in a bench run
(about 150 commands a second); `--http N` measures the same audits against one filled with N
commands over HTTPS, signatures checked (N=10000 makes the issue's 20,007-entry CVM).

Measured, against the targets of issue 13:
* full audit of 1,000,000 entries: time (< 60 s) and peak memory (tracemalloc, < 150 MiB);
* incremental audit of 1,000 new entries, in a new process as it were (checkpoint read from disk): < 2 s;
* baseline, in the same run: today's approach (an inclusion proof per entry) on 20,000 entries,
  against the streaming audit of the same ledger; and a CVM of 20,007 entries both ways;
* a CVM's state answer (CvmHistory summary and its JCS, alone and in the whole state document)
  with 10 and with 100,000 commands: ratio <= 1.2 (reported, not failing the run: it is item 1's
  code); with --http, the signed state read itself, 10 commands against N.

Run: .venv/bin/python bench/audit_scale.py [--http N]  (takes about three minutes).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "client"))

from synthetic_ledger import SyntheticLedger, SyntheticSource  # noqa: E402

from duet.client.audit import Auditor, HeadStore  # noqa: E402
from duet.ledger.history import HistoryIndex  # noqa: E402
from duet.ledger.merkle import leaf_hash, verify_inclusion  # noqa: E402
from duet.protocol import lifecycle as lc  # noqa: E402
from duet.protocol.canonical import canonical  # noqa: E402

MILLION = 1_000_000
NEW = 1_000
BASELINE = 20_000
TARGET_FULL_S, TARGET_FULL_MIB, TARGET_INCREMENTAL_S, TARGET_STATE_RATIO = 60.0, 150.0, 2.0, 1.2

missed: list[str] = []
reported: list[str] = []


def verdict(ok: bool, what: str, *, fails: bool = True) -> str:
    """``fails``: a miss makes the run fail (the audit's targets); else it is only reported (the
    state read is item 1's: CvmHistory, measured here as issue 13 asks)."""
    if not ok:
        (missed if fails else reported).append(what)
    return "target met" if ok else "TARGET MISSED"


def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    gc.collect()
    started = time.perf_counter()
    value = run()
    return value, time.perf_counter() - started


def per_entry_audit(source: Any, size: int, cvm: str | None = None) -> int:
    """Today's approach, as ``_check_each_entry`` did it: the entries page by page, and for each
    one an inclusion proof checked against the signed root. Returns the entries proven."""
    head = source.get("/v1/ledger/head")
    root = bytes.fromhex(head["root_hash"])
    position, proven = 0, 0
    while position < size:
        page = source.get("/v1/ledger/entries", start=position, end=size, cvm=cvm)
        for entry in page["entries"]:
            proof = source.get("/v1/ledger/proof/inclusion", index=entry["seq"], tree_size=size)
            path = [bytes.fromhex(h) for h in proof["audit_path"]]
            assert verify_inclusion(leaf_hash(canonical(entry)), entry["seq"], size, path, root)
            proven += 1
        position = page["end"]
    return proven


def audit(source: Any, home: Path, **options: Any) -> Any:
    result = Auditor(source, HeadStore(home), **options).audit()
    assert result.ok, result.findings[:3]
    return result


def million(work: Path) -> None:
    ledger, build_s = timed(lambda: SyntheticLedger(MILLION, cvms=100))
    source = SyntheticSource(ledger)
    _, serve_s = timed(lambda: [source.get("/v1/ledger/entries", start=s, end=MILLION) for s in range(0, MILLION, 1000)])
    print(f"ledger of {MILLION:,} entries built in {build_s:.1f} s; the source alone serves all its pages in {serve_s:.1f} s")

    source.requests.clear()
    result, full_s = timed(lambda: audit(source, work / "full", timeline=1000))
    requests = dict(source.requests)
    print(
        f"full audit of {result.checked:,} entries: {full_s:.1f} s ({full_s / MILLION * 1e6:.1f} µs an entry; "
        f"requests {requests}) vs target {TARGET_FULL_S:.0f} s: {verdict(full_s < TARGET_FULL_S, 'full audit time')}"
    )

    tracemalloc.start()
    try:
        audit(source, work / "traced", timeline=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    peak_mib = peak / 2**20
    print(
        f"full audit peak memory (tracemalloc, a second run): {peak_mib:.1f} MiB vs target {TARGET_FULL_MIB:.0f} MiB: "
        f"{verdict(peak_mib < TARGET_FULL_MIB, 'full audit memory')}"
    )
    checkpoint = next((work / "full" / "audits").glob("*.json"))
    print(f"  the checkpoint kept for the next audit: {checkpoint.stat().st_size / 2**20:.1f} MiB")

    ledger.grow(NEW)
    source.requests.clear()
    result, incremental_s = timed(lambda: audit(source, work / "full"))
    assert result.resumed is not None and result.checked == NEW
    print(
        f"incremental audit of {NEW:,} new entries (checkpoint read from disk, rules state included): "
        f"{incremental_s:.2f} s (requests {dict(source.requests)}) vs target {TARGET_INCREMENTAL_S:.0f} s: "
        f"{verdict(incremental_s < TARGET_INCREMENTAL_S, 'incremental audit time')}"
    )


def baseline(work: Path) -> None:
    ledger = SyntheticLedger(BASELINE, cvms=100)
    source = SyntheticSource(ledger)
    proven, old_s = timed(lambda: per_entry_audit(source, BASELINE))
    _, new_s = timed(lambda: audit(source, work / "baseline"))
    print(
        f"baseline, {BASELINE:,} entries in-process: a proof per entry {old_s:.2f} s ({old_s / proven * 1e6:.0f} µs an entry), "
        f"streaming {new_s:.2f} s ({new_s / BASELINE * 1e6:.0f} µs an entry): {old_s / new_s:.1f}x faster; "
        f"a proof per entry at {MILLION:,} would take about {old_s * MILLION / BASELINE:.0f} s"
    )
    one = SyntheticLedger(20_008, cvms=1)  # the CVM: 10,000 commands and its start
    cvm = one.cvms[0]
    source = SyntheticSource(one)
    proven, old_s = timed(lambda: per_entry_audit(source, one.size, cvm))
    source.requests.clear()
    result, new_s = timed(lambda: audit(source, work / "cvm", cvm=cvm))
    print(
        f"one CVM of {proven:,} entries in-process: a proof per entry {old_s:.2f} s, in batches {new_s:.2f} s "
        f"({old_s / new_s:.1f}x; requests {dict(source.requests)})"
    )
    sparse = SyntheticLedger(200_000, cvms=100)
    source = SyntheticSource(sparse)
    result, sparse_s = timed(lambda: audit(source, work / "sparse", cvm=sparse.cvms[7]))
    print(
        f"one CVM of {result.checked:,} entries among {sparse.size:,} (1 in 100): {sparse_s:.2f} s, a proof each, "
        f"{4} in flight (requests {dict(source.requests)})"
    )


def state_read() -> None:
    """What a state read computes when the ledger has grown (the controller then caches the
    bytes until the next entry): the CVM's history summary and its JCS, alone and inside the
    whole state document (``LifecycleService.state_bytes``: the CVM's record and attestation)."""
    from types import SimpleNamespace

    from duet.controller.service import public_cvm

    cvm = "c1" * 32
    digest = "ab" * 32

    def history(commands: int) -> tuple[HistoryIndex, lc.LifecycleReplay, int]:
        index, replay, seq = HistoryIndex(), lc.LifecycleReplay(), 0

        def add(event: str, **fields: Any) -> dict[str, Any]:
            nonlocal seq
            entry = {"seq": seq, "time": "2026-12-01T10:00:00.000Z", "cvm": cvm, "actor": "controller", "event": event, **fields}
            index.apply(entry)
            replay.apply(entry)
            seq += 1
            return entry

        add(lc.CVM_PROVISIONING, type="snp", provider="local", attestation="required")
        add(
            lc.CVM_ATTESTED,
            ok=True,
            kind="sev-snp",
            simulated=True,
            measurements={"launch": digest * 3},
            tcb={"bootloader": 4, "tee": 0, "snp": 22, "microcode": 213},
            debug=False,
            migration_allowed=False,
            signer=digest,
            evidence_sha256=digest,
            valid_until="2026-12-01T11:00:00.000Z",
        )
        add(lc.CVM_READY, mode=lc.IN_UPDATE)
        add(lc.MODE_CHANGED, previous=lc.IN_UPDATE, mode=lc.IN_SERVICE, final=False)
        add(lc.MODE_CHANGED, previous=lc.IN_SERVICE, mode=lc.IN_UPDATE, final=False)
        for i in range(commands):
            started = add(lc.COMMAND_STARTED, command=f"apt-get install -y package-{i}")
            add(
                lc.COMMAND_FINISHED,
                started_seq=started["seq"],
                exit_status=0,
                duration_ms=5.25,
                timed_out=False,
                stdout_sha256=digest,
                stderr_sha256=digest,
            )
        return index, replay, seq

    machine = SimpleNamespace(host_key="ssh-ed25519 " + "A" * 68)

    def makers(commands: int) -> tuple[Callable[[], bytes], Callable[[], bytes]]:
        index, replay, size = history(commands)
        facts = replay.cvms[cvm]
        return (
            lambda: canonical(index.of(cvm).summary()),
            lambda: canonical({"cvm": public_cvm(facts, machine), "tree_size": size, **index.of(cvm).summary()}),  # type: ignore[arg-type]
        )

    built = {n: makers(n) for n in (10, 20, 100_000)}
    samples: dict[tuple[int, int], list[float]] = {(n, at): [] for n in built for at in (0, 1)}
    for _ in range(15):  # interleaved, so that a busy machine slows every size alike
        for n, pair in built.items():
            for at, make in enumerate(pair):
                started = time.perf_counter()
                for _ in range(200):
                    make()
                samples[n, at].append((time.perf_counter() - started) / 200)
    costs = {n: [value for at in (0, 1) for value in (statistics.median(samples[n, at]), len(built[n][at]()))] for n in built}

    for label, at in (("history summary + JCS", 0), ("whole state document + JCS", 2)):
        (small, small_b), (cap, _), (big, big_b) = ((costs[n][at], costs[n][at + 1]) for n in (10, 20, 100_000))
        ratio = big / small
        print(
            f"state read, {label}: 10 commands {small * 1e6:.0f} µs ({small_b:,} B), 100,000 commands {big * 1e6:.0f} µs "
            f"({big_b:,} B): ratio {ratio:.2f} vs target {TARGET_STATE_RATIO}: {verdict(ratio <= TARGET_STATE_RATIO, label, fails=False)}; "
            f"100,000 against 20 commands (both at the 20 rows shown): {big / cap:.2f}"
        )


def over_http(commands: int, work: Path) -> None:
    from _setup import running_controller
    from duet.attestation.bundle import load_cvm_roots

    with running_controller(tls=True) as bench:
        cvm = bench.start_cvm()
        roots = load_cvm_roots(bench.controller.cvm_roots_file().read_bytes())  # its local CVMs' simulated roots
        _, fill_s = timed(lambda: [bench.client.run(cvm, ["true"] * min(100, commands - i)) for i in range(0, commands, 100)])
        size = bench.client.head()["tree_size"]
        print(f"over HTTPS: a controller with {commands:,} commands ({size:,} entries), filled in {fill_s:.0f} s")
        proven, old_s = timed(lambda: per_entry_audit(bench.client, size, cvm))
        _, new_s = timed(lambda: audit(bench.client, work / "http-cvm", cvm=cvm, cvm_roots=roots))
        print(
            f"  duet audit CVM ({proven:,} entries): a proof per entry {old_s:.1f} s, in batches {new_s:.1f} s ({old_s / new_s:.0f}x)"
        )
        small = bench.start_cvm()
        bench.client.run(small, [f"echo {i}" for i in range(10)])

        def read(cvm_id: str) -> float:
            samples = []
            for _ in range(300):
                started = time.perf_counter()
                bench.client.state(cvm_id)
                samples.append(time.perf_counter() - started)
            return statistics.median(samples)

        small_s, big_s = read(small), read(cvm)
        print(
            f"  state read (GET /v1/cvms/ID, signed, verified): 10 commands {small_s * 1000:.2f} ms, {commands:,} commands "
            f"{big_s * 1000:.2f} ms: ratio {big_s / small_s:.2f}"
        )
        size = bench.client.head()["tree_size"]
        _, whole_s = timed(lambda: audit(bench.client, work / "http-whole", cvm_roots=roots))
        bench.client.run(cvm, ["true"] * 100)
        result, incremental_s = timed(lambda: audit(bench.client, work / "http-whole", cvm_roots=roots))
        print(
            f"  duet audit (whole ledger, {size:,} entries): {whole_s:.1f} s ({whole_s / size * 1e6:.0f} µs an entry); "
            f"then {result.checked} new entries: {incremental_s:.2f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, default=0, metavar="N", help="also measure against a real controller with N commands")
    parser.add_argument("--http-only", action="store_true", help="with --http: skip the in-process measurements")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="duet-audit-bench-") as directory:
        work = Path(directory)
        if not args.http_only:
            state_read()
            baseline(work)
            million(work)
        if args.http:
            over_http(args.http, work)
    print(
        f"total run {time.perf_counter() - started:.0f} s; issue 13 measured today: `duet audit CVM` of 20,007 entries, 42 s and 203 MB"
    )
    if reported:
        print(
            f"reported, not failing this run: {', '.join(reported)} (a CVM with 10 commands shows 10 rows, one with more "
            "shows its last 20: the cost stops growing at 20 commands, see the ratio against 20)"
        )
    if missed:
        raise SystemExit(f"targets missed: {', '.join(missed)}")


if __name__ == "__main__":
    main()
