"""What a second signature costs: reopening an in-service CVM approved by 2 of 3 owners, against
the same reopening with a threshold of 1, in the same run.

Two controllers run at once on loopback (HTTPS, the simulated SGX TEE, verified and pinned
clients), identical but for the approval policy: ``"cvm.mark.in-update" = 2`` on one, nothing
on the other (1 for everything). Each has a local CVM (real sshd) in service. One round:

* threshold 1: owner A signs ``mark in-update``: one request, the mode changes;
* 2 of 3: owner A signs ``mark in-update`` (answered 202 with the proposal, ``proposal.created``
  in the ledger), then owner B signs ``proposal.approve`` (``proposal.approved``, then
  ``proposal.executed`` and ``mode.changed`` in one transaction): two requests;

then the CVM is marked in service again (threshold 1, not timed). Rounds alternate between
the two controllers. The first round of each controller (fresh: just started) is reported
apart from the median of the next ones (warmed). The ratio is the price of the second owner's
signature and the proposal's three extra ledger entries.

Run: .venv/bin/python bench/approvals.py [--rounds N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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
class Side:
    name: str
    controller: ControllerProcess
    owners: list[DuetClient]
    cvm_id: str = ""


@contextmanager
def side(workdir: Path, name: str, owner_keys: list[keys.PrivateKey], pubs: list[Path], policy: str | None) -> Iterator[Side]:
    extra: tuple[str, ...] = ()
    if policy is not None:
        path = workdir / f"{name}.toml"
        path.write_text(policy)
        extra = ("--approval-policy", str(path))
    controller = ControllerProcess(workdir / name, pubs, tee="simulated", tls=True, extra_args=extra)
    controller.start(timeout=60)
    trust = TrustStore(workdir / f"{name}-user")
    root = sgx.load_trust_root(simulated_root_pem(controller.state_dir), "simulated root")
    verdict = verify_controller(controller.url, policy=Policy(), trust_roots=[root])
    assert verdict.ok and verdict.pin is not None, verdict
    trust.put(controller.url, verdict.pin)
    owners = [DuetClient(controller.url, owner_key=key, trust=trust) for key in owner_keys]
    try:
        yield Side(name, controller, owners)
    finally:
        for client in owners:
            client.close()
        controller.stop()
        remove_all(controller.state_dir)


def reopen(s: Side, approved: bool) -> tuple[float, float]:
    """One timed reopening: (total seconds, of which the approval)."""
    a, b = s.owners[0], s.owners[1]
    started = time.perf_counter()
    answer = a.mark(s.cvm_id, "in-update")
    approval = 0.0
    if approved:
        assert answer["proposal"]["status"] == "pending", answer
        voted = time.perf_counter()
        done = b.approve(answer["proposal"]["id"])
        approval = time.perf_counter() - voted
        assert done["proposal"]["status"] == "executed", done
    else:
        assert answer["changed"] is True, answer
    total = time.perf_counter() - started
    assert a.mark(s.cvm_id, "in-service")["mode"] == "in-service"
    return total, approval


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="duet-bench-approvals-"))
    owner_keys = [keys.generate() for _ in range(3)]
    pubs = [keys.write_key_pair(workdir / f"owner{i}.pem", key) for i, key in enumerate(owner_keys)]
    try:
        with ExitStack() as stack:
            single = stack.enter_context(side(workdir, "threshold-1", owner_keys, pubs, None))
            double = stack.enter_context(
                side(workdir, "two-of-three", owner_keys, pubs, '[thresholds]\n"cvm.mark.in-update" = 2\n')
            )
            samples: dict[str, list[tuple[float, float]]] = {single.name: [], double.name: []}
            for s in (single, double):
                accepted = s.owners[0].start("snp")
                assert s.owners[0].wait_job(accepted["job_id"])["status"] == "succeeded"
                s.cvm_id = accepted["cvm_id"]
                s.owners[0].mark(s.cvm_id, "in-service")
            for _ in range(args.rounds + 1):
                samples[single.name].append(reopen(single, approved=False))
                samples[double.name].append(reopen(double, approved=True))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"reopening an in-service CVM (mark in-update), {args.rounds} warmed rounds each, HTTPS on loopback, real sshd")
    results = {}
    for name, rounds in samples.items():
        fresh, warmed = rounds[0], rounds[1:]
        totals = sorted(t for t, _ in warmed)
        median = statistics.median(totals)
        p90 = totals[int(0.9 * (len(totals) - 1))]
        results[name] = median
        line = f"  {name:13s} fresh {ms(fresh[0]):>9s}   warmed median {ms(median):>9s}  p90 {ms(p90):>9s}"
        if name == "two-of-three":
            line += f"   (of which the approval: median {ms(statistics.median(a for _, a in warmed))})"
        print(line)
    ratio = results["two-of-three"] / results["threshold-1"]
    print(f"ratio 2-of-3 / threshold 1 (warmed medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
