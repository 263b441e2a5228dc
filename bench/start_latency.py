"""`cvm start` on the local provider until the CVM is in-update (the seed: 37.9 s).

Through the controller: the signed request, the job, a real sshd started with its own host
key, the SSH wait with the pinned key, the bootstrap command, the ledger entries. Baseline in
the same run: the local provider's own create (sshd up and listening) without the controller.
Target: under 2 s.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from _setup import median_ms, running_controller
from duet.providers.base import CvmSpec
from duet.providers.local import LocalProvider
from duet.remote.ssh import generate_client_key

ROUNDS = 8


async def provider_only(rounds: int) -> list[float]:
    provider = LocalProvider(Path(tempfile.mkdtemp(prefix="duet-bench-local-")))
    samples = []
    for index in range(rounds):
        _, public = generate_client_key()
        started = time.perf_counter()
        machine = await provider.create(CvmSpec(f"{index:064x}", "snp"), public, lambda step: None)
        samples.append(time.perf_counter() - started)
        await provider.delete(machine)
    return samples


def main() -> None:
    with running_controller() as bench:
        through = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            cvm_id = bench.start_cvm()
            through.append(time.perf_counter() - started)
            bench.client.wait_job(bench.client.stop(cvm_id)["job_id"])
    baseline = asyncio.run(provider_only(ROUNDS))
    controller_ms, provider_ms = median_ms(through), median_ms(baseline)
    print(f"cvm start until in-update: median {controller_ms:.0f} ms over {ROUNDS} (target < 2000 ms; seed 37900 ms)")
    print(f"local provider create alone (sshd listening): median {provider_ms:.0f} ms over {ROUNDS}")
    print(f"ratio start/provider-only: {controller_ms / provider_ms:.2f}x; vs the seed: {37900 / controller_ms:.0f}x faster")


if __name__ == "__main__":
    main()
