"""Appends per second with two witnesses and tile publication on, against both off (issue 13).

Two real controllers (plain HTTP, local provider), measured in the same run, interleaved so that
the machine's load falls on both alike: one with ``--witness`` twice (spec-following witnesses in
this process, tests/fakes/fake_witness.py) and ``--publish-tiles DIR``, one with neither. The
appends are ``mark`` flips of a local CVM (one ledger entry each, no command on the CVM), sent
one after the other by a verified client; each round is ``--marks`` flips. Printed: appends per
second for each, the ratio, and how far the witnesses and the tiles lagged at the end (they run in
the background: an append must never wait for them).

    .venv/bin/python bench/transparency_appends.py [--marks 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fakes

from tests.fakes.fake_witness import FakeWitness

from duet import keys
from duet.client.sdk import DuetClient
from duet.client.tiles_source import open_tiles_source
from duet.client.trust import TrustStore
from duet.ledger.checkpoint import controller_origin
from duet.ledger.note import NoteVerifier
from duet.testing.process import ControllerProcess, remove_all


def flips(client: DuetClient, cvm_id: str, count: int) -> float:
    """Appends per second over ``count`` mark flips."""
    modes = ("in-service", "in-update")
    started = time.perf_counter()
    for i in range(count):
        client.mark(cvm_id, modes[i % 2])
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--marks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="duet-bench-transparency-"))
    key = keys.generate()
    pub = keys.write_key_pair(work / "owner.pem", key)
    witnesses = [FakeWitness(f"witness.example/w{i}").start() for i in (1, 2)]
    bucket = work / "bucket"
    on = ControllerProcess(
        work / "on",
        [pub],
        extra_args=("--publish-tiles", str(bucket), *(a for w in witnesses for a in ("--witness", w.option))),
    )
    off = ControllerProcess(work / "off", [pub])
    try:
        on.start(60)
        off.start(60)
        with (
            DuetClient(on.url, owner_key=key, trust=TrustStore(work / "u-on"), insecure=True) as c_on,
            DuetClient(off.url, owner_key=key, trust=TrustStore(work / "u-off"), insecure=True) as c_off,
        ):
            log = NoteVerifier(controller_origin(c_on.pin().controller), c_on.pin().public_key())
            for witness in witnesses:
                witness.trust(log)
            cvms = {}
            for name, client in (("on", c_on), ("off", c_off)):
                accepted = client.start("snp")
                assert client.wait_job(accepted["job_id"])["status"] == "succeeded"
                cvms[name] = accepted["cvm_id"]
            rates: dict[str, list[float]] = {"on": [], "off": []}
            for _ in range(args.rounds):
                rates["off"].append(flips(c_off, cvms["off"], args.marks))
                rates["on"].append(flips(c_on, cvms["on"], args.marks))
            size = c_on.head()["tree_size"]
            time.sleep(2.0)  # let the background catch up, then see how far it got
            with open_tiles_source(str(bucket)) as source:
                published = source.read_checkpoint(log).size
            cosigned = [max((c.size for c in w.cosigned), default=0) for w in witnesses]
        on_rate, off_rate = statistics.median(rates["on"]), statistics.median(rates["off"])
        print(f"appends (mark flips, {args.rounds} rounds of {args.marks}, median):")
        print(f"  two witnesses + tiles: {on_rate:7.1f} /s   rounds {', '.join(f'{r:.1f}' for r in rates['on'])}")
        print(f"  neither (baseline):    {off_rate:7.1f} /s   rounds {', '.join(f'{r:.1f}' for r in rates['off'])}")
        print(f"  ratio on/off: {on_rate / off_rate:.2f}")
        print(f"  2 s after the last append ({size} entries): tiles published to {published}, witnesses cosigned to {cosigned}")
        return 0
    finally:
        for process in (on, off):
            process.stop()
            remove_all(process.state_dir)
        for witness in witnesses:
            witness.stop()


if __name__ == "__main__":
    sys.exit(main())
