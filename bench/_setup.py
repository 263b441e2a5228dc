"""What every benchmark needs: a real controller on loopback with a local CVM, torn down after."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from duet import keys
from duet.client.sdk import DuetClient
from duet.client.trust import TrustStore
from duet.controller.process import ControllerProcess
from duet.providers.local import LocalProvider


@dataclass
class Bench:
    workdir: Path
    controller: ControllerProcess
    client: DuetClient
    owner_key_path: Path

    def start_cvm(self) -> str:
        accepted = self.client.start("snp")
        job = self.client.wait_job(accepted["job_id"])
        assert job["status"] == "succeeded", job
        return accepted["cvm_id"]  # type: ignore[no-any-return]


@contextmanager
def running_controller() -> Iterator[Bench]:
    workdir = Path(tempfile.mkdtemp(prefix="duet-bench-"))
    key = keys.generate()
    key_path = workdir / "owner.pem"
    pub = keys.write_key_pair(key_path, key)
    controller = ControllerProcess(workdir / "state", [pub])
    controller.start()
    client = DuetClient(controller.url, owner_key=key, trust=TrustStore(workdir / "user"))
    try:
        yield Bench(workdir, controller, client, key_path)
    finally:
        client.close()
        controller.stop()
        asyncio.run(LocalProvider(workdir / "state" / "local-cvms").reconcile([]))
        shutil.rmtree(workdir, ignore_errors=True)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000
