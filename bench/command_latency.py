"""One `true` through the whole controller vs. the same command on an open raw SSH connection.

Through the controller: HTTP, the owner's signature, nonce and time checks, both ledger
entries (before and after), the output blobs, SSH on the pooled connection, the signed
answer. Baseline: asyncssh on an already open connection to the same sshd, same run.
Targets: at most 3x the raw figure and under 25 ms (the seed: 3.13 s per command).
"""

from __future__ import annotations

import asyncio
import time

import asyncssh

from _setup import median_ms, running_controller

ROUNDS = 60


async def raw_ssh(port: int, username: str, host_key: str, client_key: str) -> list[float]:
    known = asyncssh.import_known_hosts(f"[127.0.0.1]:{port} {host_key}\n")
    async with asyncssh.connect(
        "127.0.0.1",
        port,
        username=username,
        client_keys=[asyncssh.import_private_key(client_key)],
        known_hosts=known,
        agent_path=None,
        config=(),
    ) as conn:
        await conn.run("true")
        samples = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            await conn.run("true", check=True)
            samples.append(time.perf_counter() - started)
        return samples


def main() -> None:
    with running_controller() as bench:
        cvm_id = bench.start_cvm()
        bench.client.run(cvm_id, ["true"])  # warm the pooled connection
        through = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            result = bench.client.run(cvm_id, ["true"])
            through.append(time.perf_counter() - started)
            assert result["results"][0]["exit_status"] == 0

        machine = bench.controller.cvm_machine(cvm_id)
        client_key = bench.controller.cvm_login_key(cvm_id) or ""
        raw = asyncio.run(raw_ssh(machine["port"], machine["username"], machine["host_key"], client_key))

    controller_ms, raw_ms = median_ms(through), median_ms(raw)
    print(f"command through the controller: median {controller_ms:.2f} ms over {ROUNDS} (target < 25 ms; seed 3130 ms)")
    print(f"same command, raw open asyncssh connection: median {raw_ms:.2f} ms over {ROUNDS}")
    print(f"ratio controller/raw: {controller_ms / raw_ms:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
