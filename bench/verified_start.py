"""The cost of state the host cannot forge: the verified start, and the per-command overhead.

1. Verified start at 100,000 ledger entries (10,000 commands on 100 CVMs): the controller
   reads every entry, rebuilds the tree, checks it against the sealed head, replays the
   lifecycle and compares every CVM row with it (``controller.startup.load_verified_state``).
   Baseline, measured in the same run: what main did before (read every row, hash it into the
   tree, nothing checked). The first run after the database was written is reported apart
   from the median of the next runs (a fresh process vs. a warmed one).
2. Per-command overhead of the authenticated rows: the two ledger commits of one command
   (``command.started``; blobs and ``command.finished``) with the sealed anchor (a MAC per
   entry, the signed head written to sealed state after each commit) against the same commits
   with a no-op anchor (main's path before this change).

Run: .venv/bin/python bench/verified_start.py  (PYTHONPATH=src if duet is not installed).
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from duet import keys
from duet.controller.sealed_state import SealedState
from duet.controller.startup import load_verified_state
from duet.controller.store import Store
from duet.ledger.log import Ledger
from duet.ledger.merkle import EMPTY_ROOT, MerkleTree, leaf_hash
from duet.protocol.canonical import timestamp
from duet.storage import Database

CVMS = 100
COMMANDS = 49_900
"""With 100 CVMs provisioned and ready (200 entries), 100,000 ledger entries in all."""
OWNER = "a" * 64
RUNS = 5
COMMAND_SAMPLES = 2_000


def fill(ledger: Ledger, store: Store) -> None:
    """A realistic ledger: CVMs provisioned and ready, then commands with their outcomes."""
    now = timestamp()
    with store.transaction() as tx:
        for n in range(CVMS):
            cvm = hashlib.sha256(b"cvm %d" % n).hexdigest()
            sealed_key = ledger.anchor.encrypt_ssh_key(cvm, "not a real key")  # type: ignore[attr-defined]
            store.insert_cvm(tx, cvm, "snp", "local", "ssh-ed25519 AAAA", sealed_key, now)
            ledger.append(tx, cvm=cvm, event="cvm.provisioning", actor=OWNER, type="snp", provider="local", job=f"j{n}")
            ledger.append(tx, cvm=cvm, event="cvm.ready", actor="controller", mode="in-update", uname="Linux")
            store.update_cvm(tx, cvm, mode="in-update", now=now)
    for first in range(0, COMMANDS, 1000):
        with store.transaction() as tx:
            for i in range(first, min(first + 1000, COMMANDS)):
                cvm = hashlib.sha256(b"cvm %d" % (i % CVMS)).hexdigest()
                started = ledger.append(
                    tx,
                    cvm=cvm,
                    event="command.started",
                    actor=OWNER,
                    request_digest="d" * 64,
                    command=f"apt-get install -y package-{i}",
                )
                ledger.append(
                    tx,
                    cvm=cvm,
                    event="command.finished",
                    actor="controller",
                    request_digest="d" * 64,
                    started_seq=started["seq"],
                    command=f"apt-get install -y package-{i}",
                    exit_status=0,
                    duration_ms=12.5,
                    timed_out=False,
                    stdout_sha256="e" * 64,
                    stdout_size=100,
                    stdout_truncated=False,
                    stderr_sha256="f" * 64,
                    stderr_size=0,
                    stderr_truncated=False,
                )


def open_anchor(directory: Path, key: keys.PrivateKey, first: bool) -> SealedState:
    return SealedState.open(directory / "sealed", key, first_start=first, owners={OWNER: "pem"})


def baseline_start(db: Path) -> float:
    """Main before this change: read every row and hash it into the tree, nothing checked."""
    started = time.perf_counter()
    database = Database(db)
    tree = MerkleTree(leaf_hash(bytes(row[0])) for row in database.execute("SELECT entry FROM ledger ORDER BY seq"))
    tree.root()
    database.close()
    return time.perf_counter() - started


def verified_start(db: Path, directory: Path, key: keys.PrivateKey, controller: str) -> float:
    started = time.perf_counter()
    store = Store(Database(db))
    state = load_verified_state(store, controller, open_anchor(directory, key, False))
    assert state.ledger.size == CVMS * 2 + COMMANDS * 2 and len(state.replay.cvms) == CVMS
    store.close()
    return time.perf_counter() - started


class NoAnchor:
    """Main's path before this change: no MAC, nothing sealed after a commit."""

    def __init__(self) -> None:
        self.head = type("Head", (), {"tree_size": 0, "root": EMPTY_ROOT})()

    def entry_mac(self, entry_bytes: bytes) -> bytes:
        return b""

    def entry_mac_valid(self, entry_bytes: bytes, mac: bytes | None) -> bool:
        return True

    def seal(self, tree_size: int, root: bytes) -> None:
        pass


def command_commits_us(ledger: Ledger, store: Store) -> list[float]:
    """Microseconds for the two commits that record one command (as service._run_one does)."""
    cvm = "c" * 64
    output = b"x" * 200
    times = []
    for i in range(COMMAND_SAMPLES):
        t0 = time.perf_counter_ns()
        with store.transaction() as tx:
            started = ledger.append(tx, cvm=cvm, event="command.started", actor=OWNER, command=f"echo {i}")
        digest = hashlib.sha256(output + b"%d" % i).hexdigest()
        with store.transaction() as tx:
            store.put_blob(tx, digest, output)
            ledger.append(
                tx,
                cvm=cvm,
                event="command.finished",
                actor="controller",
                started_seq=started["seq"],
                exit_status=0,
                stdout_sha256=digest,
                stdout_size=len(output),
            )
        times.append((time.perf_counter_ns() - t0) / 1000)
    return times


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        key = keys.generate("ed25519")
        controller = keys.key_id(key.public_key())
        db = base / "duet.sqlite3"
        store = Store(Database(db))
        ledger = Ledger(store.db, controller, open_anchor(base, key, True))
        fill(ledger, store)
        size = ledger.size
        store.close()
        print(f"ledger: {size:,} entries ({COMMANDS:,} commands on {CVMS} CVMs), database {db.stat().st_size / 1e6:.1f} MB")

        first_verified = verified_start(db, base, key, controller)
        first_baseline = baseline_start(db)
        verified = sorted(verified_start(db, base, key, controller) for _ in range(RUNS))
        baseline = sorted(baseline_start(db) for _ in range(RUNS))
        print(
            f"verified start, first run:   {first_verified * 1000:8.1f} ms   baseline (main: read + hash) first run: "
            f"{first_baseline * 1000:8.1f} ms   ratio {first_verified / first_baseline:.2f}x"
        )
        print(
            f"verified start, median of {RUNS}: {statistics.median(verified) * 1000:8.1f} ms   baseline median: "
            f"{statistics.median(baseline) * 1000:8.1f} ms   ratio {statistics.median(verified) / statistics.median(baseline):.2f}x"
        )
        print(f"verified start per entry: {statistics.median(verified) / size * 1e6:.2f} µs")

        for name in ("anchored", "no anchor"):
            (base / name).mkdir()
        anchored_store, plain_store = Store(Database(base / "anchored" / "db")), Store(Database(base / "no anchor" / "db"))
        anchored = Ledger(anchored_store.db, controller, open_anchor(base / "anchored", key, True))
        plain = Ledger(plain_store.db, controller, NoAnchor())
        command_commits_us(anchored, anchored_store)  # warm both
        command_commits_us(plain, plain_store)
        with_anchor = statistics.median(command_commits_us(anchored, anchored_store))
        without = statistics.median(command_commits_us(plain, plain_store))
        print(
            f"one command's two ledger commits: {with_anchor:.0f} µs with the sealed anchor (MAC + sealed head per "
            f"commit), {without:.0f} µs without (main before); overhead {with_anchor - without:.0f} µs per command, "
            f"ratio {with_anchor / without:.2f}x"
        )


if __name__ == "__main__":
    main()
