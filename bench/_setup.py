"""What every benchmark needs: a real controller on loopback with a local CVM, torn down after.

It runs as users would: HTTPS with the controller's own certificate, the simulated SGX TEE,
and a client that verified the controller (its simulated root trusted explicitly) and pinned
its key and certificate.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from duet import keys
from duet.attestation import sgx
from duet.attestation.sgx import Policy
from duet.client.sdk import DuetClient
from duet.client.trust import TrustStore
from duet.client.verify import verify_controller
from duet.tee.simulated import simulated_root_pem
from duet.testing.process import ControllerProcess, remove_all


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
def running_controller(*, tls: bool = True) -> Iterator[Bench]:
    """A verified, pinned HTTPS controller; ``tls=False`` serves plain HTTP (--no-tls), as the
    seed did, and its client then takes the identity as presented (--insecure)."""
    workdir = Path(tempfile.mkdtemp(prefix="duet-bench-"))
    key = keys.generate()
    key_path = workdir / "owner.pem"
    pub = keys.write_key_pair(key_path, key)
    controller = ControllerProcess(workdir / "state", [pub], tee="simulated", tls=tls)
    controller.start()
    trust = TrustStore(workdir / "user")
    if tls:
        root = sgx.load_trust_root(simulated_root_pem(controller.state_dir), "simulated root")
        verdict = verify_controller(controller.url, policy=Policy(), trust_roots=[root])
        assert verdict.ok and verdict.pin is not None, verdict
        trust.put(controller.url, verdict.pin)
    client = DuetClient(controller.url, owner_key=key, trust=trust, insecure=not tls)
    try:
        yield Bench(workdir, controller, client, key_path)
    finally:
        client.close()
        controller.stop()
        remove_all(workdir / "state")
        shutil.rmtree(workdir, ignore_errors=True)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000
