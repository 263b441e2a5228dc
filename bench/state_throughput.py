"""Signed state reads per second for a CVM with 1,000 ledger entries, measured with wrk.

The state answer is canonicalized once per ledger size and only the small signed envelope is
made per request (design.md §3). Baseline in the same run: the controller's smallest signed
answer (the tree head), which shows what the framework and signing cost on their own.
Target: at least 1,500 per second from 8 connections (the seed: 315, RSA-4096 signatures).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

from _setup import running_controller

ENTRIES = 1000
DURATION_S = 5


def wrk(url: str, connections: int) -> float:
    threads = min(connections, 2)
    done = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{DURATION_S}s", url],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    if not match or "Non-2xx" in done.stdout:
        raise SystemExit(f"wrk output not understood or errors seen:\n{done.stdout}")
    return float(match.group(1))


def measure(tls: bool) -> tuple[int, float, dict[tuple[str, int], float]]:
    with running_controller(tls=tls) as bench:
        cvm_id = bench.start_cvm()
        while bench.client.state(cvm_id)["entry_count"] < ENTRIES:
            missing = ENTRIES - bench.client.state(cvm_id)["entry_count"]
            bench.client.run(cvm_id, [f"echo {i}" for i in range(min(100, max(1, missing // 2)))])
        answer = bench.client.state(cvm_id)
        state_url = f"{bench.controller.url}/v1/cvms/{cvm_id}"
        head_url = f"{bench.controller.url}/v1/ledger/head"
        results = {}
        for connections in (1, 8):
            results[("state", connections)] = wrk(state_url, connections)
            results[("head", connections)] = wrk(head_url, connections)
    return answer["entry_count"], len(json.dumps(answer)) / 1024, results


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (Debian package)")
    for tls, label in ((False, "plain HTTP (--no-tls, as the seed was measured)"), (True, "HTTPS (the default)")):
        size, answer_kb, results = measure(tls)
        print(f"{label}: state answer for a CVM with {size} ledger entries, about {answer_kb:.0f} KB")
        for connections in (1, 8):
            state, head = results[("state", connections)], results[("head", connections)]
            print(
                f"  {connections} connection(s): {state:.0f} signed state reads/s; baseline signed head {head:.0f}/s; "
                f"ratio state/head {state / head:.2f}"
            )
        print(
            f"  from 8 connections: {results[('state', 8)]:.0f}/s vs target 1500/s and the seed's 315/s "
            f"({results[('state', 8)] / 315:.1f}x the seed)"
        )


if __name__ == "__main__":
    main()
