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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncssh

from duet.providers.base import LOCKDOWN_MARKER, CvmSpec, Machine, Progress
from duet.remote.ssh import ExecResult, SshTarget, SshUnavailable

FAKE_PROVIDER = "fake"


class SimulatedCrash(BaseException):
    """The controller "dies" here: raised from a hook, it escapes every ``except Exception``."""


def _host_key() -> str:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return key.export_public_key("openssh").decode("ascii").strip()


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

    async def create(self, spec: CvmSpec, ssh_public_key: str, progress: Progress) -> Machine:
        progress("creating a fake machine")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_create is not None:
            raise self.fail_create
        machine = Machine(spec.cvm_id, self.name, host="fake.invalid", port=22, username="duet", host_key=_host_key())
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


RunHook = Callable[[str, str], Awaitable[ExecResult | None] | ExecResult | None]


@dataclass
class FakeSsh:
    """Runs nothing: records each command and answers exit 0 (or what ``on_run`` says).

    A lockdown command locks the fake CVM: later logins are refused, as on a real one."""

    ran: list[tuple[str, str]] = field(default_factory=list)
    on_run: RunHook | None = None
    locked: set[str] = field(default_factory=set)
    unreachable: set[str] = field(default_factory=set)

    async def run(self, cvm_id: str, target: SshTarget, command: str, *, timeout: float, output_limit: int) -> ExecResult:
        if cvm_id in self.unreachable or cvm_id in self.locked:
            raise SshUnavailable(f"SSH connection to fake CVM {cvm_id[:16]}… refused", reason="refused")
        self.ran.append((cvm_id, command))
        if self.on_run is not None:
            outcome = self.on_run(cvm_id, command)
            if asyncio.iscoroutine(outcome):
                outcome = await outcome
            if isinstance(outcome, ExecResult):
                return outcome
        if LOCKDOWN_MARKER in command:
            self.locked.add(cvm_id)
            return result(stdout=LOCKDOWN_MARKER + "\n")
        return result(stdout=f"ran: {command}\n")

    async def wait_ready(self, target: SshTarget, *, timeout: float) -> None:
        return None

    async def login_refused(self, target: SshTarget) -> bool:
        return False

    async def drop(self, cvm_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


def result(exit_status: int | None = 0, stdout: str = "", stderr: str = "", *, timed_out: bool = False) -> ExecResult:
    """A command's outcome as the SSH layer reports it."""
    return ExecResult(
        exit_status=exit_status,
        stdout=stdout.encode(),
        stderr=stderr.encode(),
        duration_s=0.001,
        timed_out=timed_out,
        stdout_truncated=False,
        stderr_truncated=False,
    )
