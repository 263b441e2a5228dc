"""``duet demo``: the seed's end-to-end scenario, played for real on a local CVM.

A controller is started on a free port with a temporary state directory and owner key, over
HTTPS in the SIMULATED SGX TEE; the demo verifies it as ``duet verify`` does (its simulated
root trusted explicitly, and labelled so) and pins it before any other call. The local CVM is a
real OpenSSH sshd. Each step says what it expects, and the demo exits 0 only
if every step behaved as expected, so it doubles as a smoke test of a fresh install.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel

from duet import keys
from duet.attestation import sgx as dcap
from duet.attestation.sgx import Policy
from duet.cli.output import visible, visible_markup
from duet.client import ApiError, DuetClient, TrustStore, verify_controller
from duet.tee.simulated import simulated_root_pem
from duet.testing.process import ControllerProcess, remove_all

console = Console()


class DemoFailed(Exception):
    pass


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)
    console.print(f"  [green]✓[/] {visible_markup(what)}")  # ``what`` may quote the controller: shown as text


def _step(number: int, title: str, why: str) -> None:
    console.print(f"\n[bold cyan]{number}. {title}[/]\n  [dim]{why}[/]")


def _show_results(results: list[dict[str, Any]]) -> None:
    for item in results:
        console.print(
            f"  [bold]$ {visible_markup(item['command'], one_line=True)}[/] → exit {visible_markup(item['exit_status'])} "
            f"({item['duration_ms']:.1f} ms)"
        )
        for line in visible(item["stdout"]).splitlines():
            console.print(f"    {line}", markup=False, highlight=False)


def scenario(client: DuetClient) -> None:
    _step(
        1,
        "Start a CVM",
        "The controller creates the CVM with an SSH key only it holds, verifies the CVM's hardware evidence "
        "(here SIMULATED SEV-SNP) bound to the SSH host key the CVM presents, pins that key, and runs a "
        "bootstrap. The CVM ends in-update.",
    )
    accepted = client.start("snp")
    job = client.wait_job(
        accepted["job_id"], on_step=lambda step: console.print(f"  … {visible(step)}", style="dim", markup=False, highlight=False)
    )
    cvm_id = accepted["cvm_id"]
    _expect(job["status"] == "succeeded", f"job {job['job_id']} succeeded")
    cvm = client.state(cvm_id)["cvm"]
    _expect(cvm["mode"] == "in-update", f"CVM {cvm_id[:16]}… is in-update")
    last = cvm["attestation"].get("last") or {}
    _expect(
        last.get("ok") is True and last.get("simulated") is True,
        f"attested (SIMULATED {visible(last.get('kind'))}, measurement {visible(last.get('measurements', {}).get('measurement', ''))[:16]}…), "
        "its host key pinned",
    )

    _step(2, "Run the owner's commands", "Each command is announced in the ledger before it runs, and its outcome after.")
    ran = client.run(cvm_id, ["echo 'installing the service'", "uname -sr", "echo ready > service.txt && cat service.txt"])
    _show_results(ran["results"])
    _expect(all(item["exit_status"] == 0 for item in ran["results"]), "all three commands exited 0")

    _step(3, "Mark the CVM in-service", "From now on the owner cannot touch the CVM.")
    _expect(client.mark(cvm_id, "in-service")["mode"] == "in-service", "the CVM is in-service")

    _step(4, "Try a command while in-service", "The controller must refuse it, whoever signed it.")
    try:
        client.run(cvm_id, ["cat /etc/hostname"])
        refused: ApiError | None = None
    except ApiError as exc:
        refused = exc
    _expect(
        refused is not None and refused.code == "not_in_update" and refused.status == 403,
        f"refused with 403 {refused.code if refused else '—'}: {refused.message if refused else 'it ran!'}",
    )

    _step(
        5,
        "Show the CVM's state with full outputs",
        "Users see every command, its exit status and its output; each output is checked against the hash in the signed ledger.",
    )
    state = client.state(cvm_id)
    for row in state["commands"]:
        output = client.blob(row["stdout_sha256"]).decode(errors="replace").strip()
        console.print(
            f"  seq {row['seq']:>3}  {visible(row['command'], one_line=True):<45} exit {visible(row['exit_status'])}  → "
            + visible(output),
            markup=False,
            highlight=False,
        )
    _expect(
        [row["command"] for row in state["commands"]] == [item["command"] for item in ran["results"]],
        "the history holds the three commands, and nothing of the refused one",
    )
    _expect([row["mode"] for row in state["modes"]] == ["in-service"], "the mode change is in the ledger")

    _step(6, "Mark it in-update again and run a command", "Leaving in-service is recorded, so users learn of it.")
    client.mark(cvm_id, "in-update")
    again = client.run(cvm_id, ["cat service.txt"])
    _show_results(again["results"])
    _expect(again["results"][0]["stdout"].strip() == "ready", "the CVM kept its state and runs commands again")

    _step(7, "Stop the CVM", "Every resource is deleted and the CVM's SSH key destroyed.")
    stopped = client.wait_job(client.stop(cvm_id)["job_id"])
    _expect(stopped["status"] == "succeeded", "the stop job succeeded")
    _expect(client.state(cvm_id)["cvm"]["mode"] == "stopped", "the CVM is stopped")
    head = client.head()
    console.print(f"\n  Ledger: {head['tree_size']} signed entries, root {head['root_hash'][:16]}…")


def verify_step(controller: ControllerProcess, trust: TrustStore) -> None:
    _step(
        0,
        "Verify the controller, then pin it",
        "What `duet verify --trust-root ROOT` does: check the evidence "
        "(here SIMULATED SGX: a DCAP v3 quote signed by a locally generated root, trusted explicitly for this "
        "demo — not Intel, no protection), that it binds this identity, the policy, and the TLS certificate.",
    )
    root = dcap.load_trust_root(simulated_root_pem(controller.state_dir), "simulated root")
    verdict = verify_controller(controller.url, policy=Policy(), trust_roots=[root])
    for check in verdict.checks:
        mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]-[/]"}[check.ok]
        console.print(f"  {mark} {check.step}: {visible_markup(check.detail)}", highlight=False)
    for row in verdict.policy:
        console.print(
            f"      {row.check:<12} expected {visible(row.expected):<20} found {visible(row.actual)}",
            markup=False,
            highlight=False,
        )
    _expect(
        verdict.ok and verdict.pin is not None,
        "the controller verified (SIMULATED SGX) and is pinned, with its "
        "TLS certificate; every later answer and connection is checked against the pin",
    )
    assert verdict.pin is not None
    trust.pin_verified(controller.url, verdict.pin)


def run_demo(*, keep: bool = False, play: Callable[[DuetClient], None] = scenario) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="duet-demo-"))
    console.print(
        Panel.fit(
            "duet demo: a controller on loopback, a local CVM (a real OpenSSH sshd), the owner's signed requests.\n"
            "TEE: SIMULATED SGX — real DCAP v3 evidence, but signed by a local root, not Intel: no protection.",
            title="duet",
            border_style="cyan",
        )
    )
    key = keys.generate()
    key_path = workdir / "owner.pem"
    keys.write_key_pair(key_path, key)
    controller = ControllerProcess(workdir / "state", [key_path.with_name("owner.pem.pub")], tee="simulated", tls=True)
    trust = TrustStore(workdir / "user")
    try:
        with controller:
            verify_step(controller, trust)
            with DuetClient(controller.url, owner_key=key, trust=trust) as client:
                console.print(f"\nController {client.pin().controller[:16]}… listening on {controller.url}")
                play(client)
    except Exception as exc:  # DemoFailed or anything else: reported the same plain way
        console.print(f"\n[bold red]demo failed[/]: {visible_markup(exc)}")
        console.print(f"controller log: {controller.log_path}")
        return 1
    finally:
        remove_all(controller.state_dir)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    console.print("\n[bold green]demo passed[/]: every step behaved as expected.")
    if keep:
        console.print(f"state kept in {workdir}")
    return 0
