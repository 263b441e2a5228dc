"""Wall time of one `duet cvm state` call from a cold process (the seed: 0.94 s).

Baselines in the same run: a bare `python -c pass` start of the same interpreter, and the
import of the libraries a read command needs (typer, httpx, cryptography, rfc8785; rich only
loads where colour or progress is shown) with nothing of duet's: no CLI on this stack beats it. Target: under 0.4 s;
heavy modules are imported only where they are used.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from _setup import median_ms, running_controller

ROUNDS = 15
STACK = (
    "import sys, types; sys.modules['httpx._main'] = types.ModuleType('httpx._main'); "
    "import typer, httpx, httpcore._sync.connection_pool, ssl, rfc8785, "
    "cryptography.hazmat.primitives.asymmetric.ed25519"
)


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    with running_controller() as bench:
        cvm_id = bench.start_cvm()
        bench.client.run(cvm_id, ["echo warm"])
        env = {**os.environ, "DUET_URL": bench.controller.url, "DUET_HOME": str(bench.workdir / "user")}
        command = [sys.executable, "-m", "duet", "cvm", "state", cvm_id]
        timed(command, env)  # first run: pins the controller, warms the OS file cache
        cli = [timed(command, env) for _ in range(ROUNDS)]
        bare = [timed([sys.executable, "-c", "pass"], env) for _ in range(ROUNDS)]
        stack = [timed([sys.executable, "-c", STACK], env) for _ in range(ROUNDS)]
    cli_ms, bare_ms, stack_ms = median_ms(cli), median_ms(bare), median_ms(stack)
    print(f"duet cvm state, cold process: median {cli_ms:.0f} ms over {ROUNDS} (target < 400 ms; seed 940 ms)")
    print(f"bare python start: median {bare_ms:.0f} ms; importing the client stack alone: median {stack_ms:.0f} ms")
    print(f"ratio cli/bare: {cli_ms / bare_ms:.2f}x; cli/stack: {cli_ms / stack_ms:.2f}x")


if __name__ == "__main__":
    main()
