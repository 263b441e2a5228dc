"""In-memory stand-ins for the controller's edges: a provider and an SSH runner.

With them ``open_controller(settings, providers=..., ssh=...)`` runs the real lifecycle
service, store, ledger and sealed state in-process, in milliseconds, so every rule can be
tested exhaustively; the real sshd and kill -9 tests stay in tests/integration.

A test steers them through hooks: ``FakeProvider.gate`` (an event ``create``/``delete`` wait
on), ``FakeProvider.fail_create``/``fail_delete``/``fail_reconcile``/``fail_resume``, and ``FakeSsh.on_run`` (called with each
command; it may return a result, raise, or wait). Raising a ``BaseException`` that is not an
``Exception`` (see ``SimulatedCrash``) from a hook stops the controller between two steps, as
a ``kill -9`` would: nothing after it runs, nothing catches it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import shlex
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from duet.attestation.bundle import FORMAT, CvmRoots
from duet.attestation.cvm import binding
from duet.providers import local_tsm
from duet.providers.base import LOCKDOWN_MARKER, CvmSpec, CvmType, EvidenceSource, Machine, Progress
from duet.remote.ssh import ExecResult, SshTarget, SshUnavailable, host_key_blob

FAKE_PROVIDER = "fake"


class SimulatedCrash(BaseException):
    """The controller "dies" here: raised from a hook, it escapes every ``except Exception``."""


def _host_key() -> str:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return key.export_public_key("openssh").decode("ascii").strip()


@functools.cache
def shared_hardware() -> Path:
    """One SIMULATED hardware directory per test process: making its keys takes a moment."""
    return Path(tempfile.mkdtemp(prefix="duet-fake-hardware-"))


@dataclass
class FakeProvider:
    """Machines that exist only in this object; what was created and deleted is recorded."""

    name: str = FAKE_PROVIDER
    machines: dict[str, Machine] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    gate: asyncio.Event | None = None
    """When set, ``create`` and ``delete`` wait for it (to hold a CVM in provisioning or stopping)."""
    fail_create: BaseException | None = None
    fail_delete: BaseException | None = None
    fail_reconcile: BaseException | None = None
    fail_resume: BaseException | None = None
    hardware_dir: Path = field(default_factory=shared_hardware)
    """The SIMULATED hardware of the fake CVMs (``duet.providers.local_tsm``)."""

    async def create(self, spec: CvmSpec, ssh_public_key: str, progress: Progress) -> Machine:
        progress("creating a fake machine")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_create is not None:
            raise self.fail_create
        host_key = "" if spec.attested else _host_key()  # attested: the fake CVM's own key is learnt over SSH
        machine = Machine(spec.cvm_id, self.name, host="fake.invalid", port=22, username="duet", host_key=host_key)
        self.machines[spec.cvm_id] = machine
        return machine

    async def delete(self, machine: Machine, progress: Progress) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_delete is not None:
            raise self.fail_delete
        self.machines.pop(machine.cvm_id, None)
        self.deleted.append(machine.cvm_id)

    async def reconcile(self, known: list[Machine]) -> list[Machine]:
        if self.fail_reconcile is not None:
            raise self.fail_reconcile
        return [machine for machine in known if machine.cvm_id in self.machines]

    async def resume(self, machine: Machine) -> Machine:
        if self.fail_resume is not None:
            raise self.fail_resume
        return machine

    def lockdown_command(self, machine: Machine) -> str:
        return f"fake-lockdown {machine.cvm_id}; echo {LOCKDOWN_MARKER}"

    def evidence_source(self, machine: Machine, cvm_type: CvmType) -> EvidenceSource:
        simulator = ("fake-tsm", "--hardware", str(self.hardware_dir), "--platform", cvm_type)
        return EvidenceSource("simulated", host_key_file="/fake/ssh_host_ed25519_key.pub", privileged=False, simulator=simulator)

    def simulated_roots(self) -> CvmRoots:
        return local_tsm.simulated_roots(self.hardware_dir)


RunHook = Callable[[str, str], Awaitable[ExecResult | None] | ExecResult | None]


@dataclass
class FakeSsh:
    """Runs nothing: records each command and answers exit 0 (or what ``on_run`` says).

    A lockdown command locks the fake CVM: later logins are refused, as on a real one. The
    evidence collection program is answered as a CVM on the provider's SIMULATED hardware
    would (``duet.providers.local_tsm``), bound to the fake CVM's own host key; ``presented``
    plays a machine in the middle: the key the controller sees instead of the CVM's."""

    ran: list[tuple[str, str]] = field(default_factory=list)
    on_run: RunHook | None = None
    locked: set[str] = field(default_factory=set)
    unreachable: set[str] = field(default_factory=set)
    host_keys: dict[str, str] = field(default_factory=dict)
    """Each fake CVM's own Ed25519 host key (made at its first connection)."""
    presented: dict[str, str] = field(default_factory=dict)

    async def run(self, cvm_id: str, target: SshTarget, command: str, *, timeout: float, output_limit: int) -> ExecResult:
        if cvm_id in self.unreachable or cvm_id in self.locked:
            raise SshUnavailable(f"SSH connection to fake CVM {cvm_id[:16]}… refused", reason="refused")
        collecting = COLLECT_MARKER in command
        self.ran.append((cvm_id, COLLECT_MARKER if collecting else command))
        own = self.host_keys.setdefault(cvm_id, _host_key())
        presented = self.presented.get(cvm_id) or own
        if self.on_run is not None:
            outcome = self.on_run(cvm_id, command)
            if asyncio.iscoroutine(outcome):
                outcome = await outcome
            if isinstance(outcome, ExecResult):
                return dataclasses.replace(outcome, host_key=presented)
        if collecting:
            return dataclasses.replace(self._evidence(cvm_id, command), host_key=presented)
        if LOCKDOWN_MARKER in command:
            self.locked.add(cvm_id)
            return result(stdout=LOCKDOWN_MARKER + "\n", host_key=presented)
        return result(stdout=f"ran: {command}\n", host_key=presented)

    def _evidence(self, cvm_id: str, command: str) -> ExecResult:
        """What ``collect_evidence.py --source simulated`` prints on the fake CVM."""
        words = shlex.split(command)
        nonce = bytes.fromhex(words[words.index("--nonce") + 1])
        simulator = shlex.split(words[words.index("--simulator") + 1])
        hardware, platform = Path(simulator[simulator.index("--hardware") + 1]), simulator[simulator.index("--platform") + 1]
        report_data = binding(host_key_blob(self.host_keys[cvm_id]), nonce)
        make = local_tsm.snp_evidence if platform == "snp" else local_tsm.tdx_evidence
        bundle = {"format": FORMAT, "source": "simulated", "report_data": report_data.hex(), **make(hardware, report_data)}
        return result(stdout=json.dumps(bundle))

    async def wait_ready(self, target: SshTarget, *, timeout: float) -> None:
        return None

    async def login_refused(self, target: SshTarget) -> bool:
        return False

    async def drop(self, cvm_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


COLLECT_MARKER = "--source simulated"
"""How the fake tells the evidence collection program from an owner's command."""


def result(
    exit_status: int | None = 0, stdout: str = "", stderr: str = "", *, timed_out: bool = False, host_key: str = ""
) -> ExecResult:
    """A command's outcome as the SSH layer reports it."""
    return ExecResult(
        exit_status=exit_status,
        stdout=stdout.encode(),
        stderr=stderr.encode(),
        duration_s=0.001,
        timed_out=timed_out,
        stdout_truncated=False,
        stderr_truncated=False,
        host_key=host_key,
    )
