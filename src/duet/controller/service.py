"""The CVM lifecycle rules (design.md §5).

provisioning ──> in-update <──> in-service ──> stopping ──> stopped
      └──> failed                  └── final: never back to in-update, only stop

Every change is announced in the ledger in the same transaction that makes it, and effects
outside the controller (a command on the CVM) happen only after their entry has committed:
no entry, no effect. A per-CVM lock orders everything that touches one CVM, so no command
can start after an ``in-service`` was acknowledged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from duet.controller.auth import AuthorizedRequest
from duet.controller.jobs import JobRunner, new_job_id
from duet.controller.settings import Settings
from duet.controller.store import ACTIVE_MODES, CvmRecord, Store
from duet.errors import Conflict, DuetError, Forbidden, InvalidParams, UpstreamError
from duet.ledger.history import command_rows, mode_rows
from duet.ledger.log import Ledger
from duet.protocol.canonical import canonical, sha256_hex
from duet.protocol.models import MarkParams, RunParams, StartParams, StopParams
from duet.providers.base import CvmSpec, Machine, Provider
from duet.remote.ssh import ExecResult, HostKeyMismatch, SshPool, SshTarget, fingerprint, generate_client_key

log = logging.getLogger("duet.service")

CONTROLLER = "controller"
"""The ledger actor for what the controller does on its own."""

BOOTSTRAP_COMMAND = "uname -a"


def _describe(exc: BaseException) -> str:
    return exc.message if isinstance(exc, DuetError) else f"{type(exc).__name__}: {exc}"


class LifecycleService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        ledger: Ledger,
        providers: dict[str, Provider],
        ssh: SshPool,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ledger = ledger
        self.providers = providers
        self.default_provider = next(iter(providers))
        self.ssh = ssh
        self.jobs = JobRunner(store)
        self._locks: dict[str, asyncio.Lock] = {}
        self._state_cache: dict[str, tuple[int, bytes, str]] = {}

    @asynccontextmanager
    async def _locked(self, cvm_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(cvm_id, asyncio.Lock())
        async with lock:
            yield

    # --- start -------------------------------------------------------------------------

    async def start(self, request: AuthorizedRequest) -> dict[str, Any]:
        params: StartParams = request.params
        provider = params.provider or self.default_provider
        if provider not in self.providers:
            raise InvalidParams(
                f"provider {provider!r} is not enabled on this controller; it has {', '.join(self.providers)}",
                code="provider_not_enabled",
            )
        private_key, public_key = generate_client_key()
        cvm_id = hashlib.sha256(public_key.encode()).hexdigest()
        job_id = new_job_id()
        with self.store.transaction() as tx:
            self.store.insert_cvm(tx, cvm_id, params.cvm_type, provider, public_key, private_key)
            self.store.insert_job(tx, job_id, "start", cvm_id)
            self.ledger.append(
                tx, cvm=cvm_id, event="cvm.provisioning", actor=request.signer, request_digest=request.digest,
                type=params.cvm_type, provider=provider, job=job_id, **request.ledger_marks(),
            )
        self.jobs.spawn(job_id, lambda: self._provision(job_id, cvm_id, params.cvm_type, public_key, provider))
        return {"job_id": job_id, "cvm_id": cvm_id, "mode": "provisioning", "provider": provider}

    async def _provision(self, job_id: str, cvm_id: str, cvm_type: str, public_key: str, provider: str) -> None:
        progress = self.jobs.progress(job_id)
        machine: Machine | None = None
        async with self._locked(cvm_id):
            try:
                progress(f"creating the CVM with provider {provider}")
                machine = await self.providers[provider].create(CvmSpec(cvm_id, cvm_type), public_key, progress)  # type: ignore[arg-type]
                with self.store.transaction() as tx:
                    self.store.update_cvm(tx, cvm_id, machine=machine.to_json())
                    self.ledger.append(
                        tx, cvm=cvm_id, event="cvm.created", actor=CONTROLLER,
                        host=machine.host, port=machine.port, host_key_fingerprint=fingerprint(machine.host_key),
                    )
                progress("waiting for SSH with the pinned host key")
                target = self._target(cvm_id, machine)
                await self.ssh.wait_ready(target, timeout=self.settings.ssh_ready_timeout_s)
                progress("running the bootstrap")
                result = await self._bootstrap(cvm_id, cvm_type, target)
                with self.store.transaction() as tx:
                    self.store.update_cvm(tx, cvm_id, mode="in-update")
                    self.store.update_job_in(tx, job_id, status="succeeded", step="ready")
                    self.ledger.append(tx, cvm=cvm_id, event="cvm.ready", actor=CONTROLLER, mode="in-update", **result)
            except Exception as exc:
                await self._fail(job_id, cvm_id, machine, exc)

    async def _bootstrap(self, cvm_id: str, cvm_type: str, target: SshTarget) -> dict[str, Any]:
        """Record what the CVM says it is (guest attestation comes with the CVM attestation issue)."""
        outcome = await self.ssh.run(
            cvm_id, target, BOOTSTRAP_COMMAND, timeout=self.settings.command_timeout_s, output_limit=64 * 1024
        )
        if outcome.exit_status != 0:
            raise UpstreamError(
                f"the bootstrap command `{BOOTSTRAP_COMMAND}` failed on the CVM (exit {outcome.exit_status}): "
                f"{outcome.stderr.decode(errors='replace').strip()[:500]}",
                code="bootstrap_failed",
            )
        return {"cvm_type": cvm_type, "uname": outcome.stdout.decode(errors="replace").strip()}

    async def _fail(self, job_id: str, cvm_id: str, machine: Machine | None, exc: BaseException) -> None:
        reason = _describe(exc)
        log.warning("start of CVM %s failed: %s", cvm_id, reason)
        await self.ssh.drop(cvm_id)
        cleanup_error = await self._delete_resources(cvm_id, machine)
        with self.store.transaction() as tx:
            if isinstance(exc, HostKeyMismatch):
                self._record_mismatch(tx, cvm_id, exc)
            self.store.update_cvm(tx, cvm_id, mode="failed", failure=reason)
            self.store.destroy_ssh_key(tx, cvm_id)
            code = exc.code if isinstance(exc, DuetError) else "start_failed"
            self.store.update_job_in(tx, job_id, status="failed", step="failed", error={"code": code, "message": reason})
            self.ledger.append(
                tx, cvm=cvm_id, event="cvm.failed", actor=CONTROLLER, reason=reason, cleanup_error=cleanup_error
            )

    async def _delete_resources(self, cvm_id: str, machine: Machine | None) -> str | None:
        """Delete what the provider made for the CVM; returns the error text if that failed."""
        provider = self.store.get_cvm(cvm_id).provider
        record = machine or Machine(cvm_id=cvm_id, provider=provider)
        try:
            await self._provider(provider).delete(record, lambda step: None)
        except Exception as exc:
            log.error("cleanup of CVM %s failed: %s", cvm_id, _describe(exc))
            return _describe(exc)
        return None

    # --- run ---------------------------------------------------------------------------

    async def run(self, request: AuthorizedRequest) -> dict[str, Any]:
        params: RunParams = request.params
        timeout = params.timeout_s or self.settings.command_timeout_s
        limit = params.output_limit or self.settings.output_limit
        if timeout > self.settings.max_command_timeout_s:
            raise InvalidParams(f"timeout_s may be at most {self.settings.max_command_timeout_s:.0f}", code="invalid_params")
        if limit > self.settings.max_output_limit:
            raise InvalidParams(f"output_limit may be at most {self.settings.max_output_limit} bytes", code="invalid_params")
        async with self._locked(params.cvm_id):
            cvm = self.store.get_cvm(params.cvm_id)
            if cvm.mode != "in-update":
                raise Forbidden(self._refusal(cvm), code="not_in_update")
            target = self._target(cvm.id, Machine.from_json(cvm.machine or {}))
            results = [
                await self._run_one(cvm.id, target, command, request, timeout=timeout, limit=limit)
                for command in params.commands
            ]
        return {"cvm_id": params.cvm_id, "results": results, "tree_size": self.ledger.size}

    @staticmethod
    def _refusal(cvm: CvmRecord) -> str:
        if cvm.mode == "in-service":
            return f"CVM {cvm.id[:16]}… is in-service: commands are refused until the owner marks it in-update"
        return f"CVM {cvm.id[:16]}… is {cvm.mode}: commands run only while it is in-update"

    async def _run_one(
        self, cvm_id: str, target: SshTarget, command: str, request: AuthorizedRequest, *, timeout: float, limit: int
    ) -> dict[str, Any]:
        with self.store.transaction() as tx:
            started = self.ledger.append(
                tx, cvm=cvm_id, event="command.started", actor=request.signer, request_digest=request.digest, command=command,
                **request.ledger_marks(),
            )
            self.store.command_started(tx, started["seq"], cvm_id, command)
        try:
            outcome = await self.ssh.run(cvm_id, target, command, timeout=timeout, output_limit=limit)
        except Exception as exc:
            with self.store.transaction() as tx:
                if isinstance(exc, HostKeyMismatch):
                    self._record_mismatch(tx, cvm_id, exc)
                self.store.command_ended(tx, started["seq"])
                self.ledger.append(
                    tx, cvm=cvm_id, event="command.failed", actor=CONTROLLER, request_digest=request.digest,
                    started_seq=started["seq"], reason=_describe(exc), **request.ledger_marks(),
                )
            raise
        return self._record_result(cvm_id, started["seq"], command, outcome, request.digest, request.ledger_marks())

    def _record_result(
        self, cvm_id: str, started_seq: int, command: str, outcome: ExecResult, digest: str, marks: dict[str, str] | None = None
    ) -> dict[str, Any]:
        stdout_sha, stderr_sha = sha256_hex(outcome.stdout), sha256_hex(outcome.stderr)
        summary = {
            "command": command,
            "exit_status": outcome.exit_status,
            "duration_ms": round(outcome.duration_s * 1000, 3),
            "timed_out": outcome.timed_out,
            "stdout_sha256": stdout_sha,
            "stdout_size": len(outcome.stdout),
            "stdout_truncated": outcome.stdout_truncated,
            "stderr_sha256": stderr_sha,
            "stderr_size": len(outcome.stderr),
            "stderr_truncated": outcome.stderr_truncated,
        }
        with self.store.transaction() as tx:
            self.store.put_blob(tx, stdout_sha, outcome.stdout)
            self.store.put_blob(tx, stderr_sha, outcome.stderr)
            self.store.command_ended(tx, started_seq)
            finished = self.ledger.append(
                tx, cvm=cvm_id, event="command.finished", actor=CONTROLLER, request_digest=digest,
                started_seq=started_seq, **summary, **(marks or {}),
            )
        return {
            **summary,
            "seq": finished["seq"],
            "stdout": outcome.stdout.decode(errors="replace"),
            "stderr": outcome.stderr.decode(errors="replace"),
        }

    def _record_mismatch(self, tx: Any, cvm_id: str, exc: HostKeyMismatch) -> None:
        self.ledger.append(
            tx, cvm=cvm_id, event="hostkey.mismatch", actor=CONTROLLER,
            expected=exc.expected_fingerprint, presented=exc.presented_fingerprint,
        )

    # --- mark --------------------------------------------------------------------------

    async def mark(self, request: AuthorizedRequest) -> dict[str, Any]:
        params: MarkParams = request.params
        if params.final and params.mode != "in-service":
            raise InvalidParams("final applies only to mode in-service", code="invalid_params")
        async with self._locked(params.cvm_id):
            cvm = self.store.get_cvm(params.cvm_id)
            if cvm.mode not in ACTIVE_MODES:
                raise Conflict(f"CVM {cvm.id[:16]}… is {cvm.mode}; only a running CVM can be marked", code="bad_transition")
            if cvm.final and params.mode == "in-update":
                raise Forbidden(
                    f"CVM {cvm.id[:16]}… was marked in-service with --final: it can never return to in-update, only be stopped",
                    code="cvm_final",
                )
            if cvm.mode == params.mode and cvm.final == params.final:
                return {"cvm_id": cvm.id, "mode": cvm.mode, "final": cvm.final, "changed": False, "tree_size": self.ledger.size}
            with self.store.transaction() as tx:
                self.store.update_cvm(tx, cvm.id, mode=params.mode, final=int(cvm.final or params.final))
                self.ledger.append(
                    tx, cvm=cvm.id, event="mode.changed", actor=request.signer, request_digest=request.digest,
                    previous=cvm.mode, mode=params.mode, final=cvm.final or params.final, **request.ledger_marks(),
                )
            if params.final and not cvm.final:
                await self._lock_down(cvm)
        return {"cvm_id": cvm.id, "mode": params.mode, "final": cvm.final or params.final, "changed": True, "tree_size": self.ledger.size}

    async def _lock_down(self, cvm: CvmRecord) -> None:
        """Remove the controller's own key from the CVM and stop SSH there, then forget the key."""
        machine = Machine.from_json(cvm.machine or {})
        error: str | None = None
        try:
            outcome = await self.ssh.run(
                cvm.id, self._target(cvm.id, machine), self._provider(cvm.provider).lockdown_command(machine),
                timeout=60, output_limit=64 * 1024,
            )
            if outcome.exit_status not in (0, None, 255):
                error = f"lockdown command exited {outcome.exit_status}: {outcome.stderr.decode(errors='replace')[:300]}"
        except UpstreamError as exc:
            # sshd stopping under our feet ends the session; that is the expected end.
            if isinstance(exc, HostKeyMismatch):
                error = exc.message
        await self.ssh.drop(cvm.id)
        with self.store.transaction() as tx:
            self.store.destroy_ssh_key(tx, cvm.id)
            self.ledger.append(tx, cvm=cvm.id, event="cvm.locked", actor=CONTROLLER, ok=error is None, error=error)

    # --- stop --------------------------------------------------------------------------

    async def stop(self, request: AuthorizedRequest) -> dict[str, Any]:
        params: StopParams = request.params
        job_id = new_job_id()
        async with self._locked(params.cvm_id):
            cvm = self.store.get_cvm(params.cvm_id)
            if cvm.mode in ("stopping", "stopped"):
                raise Conflict(f"CVM {cvm.id[:16]}… is already {cvm.mode}", code="bad_transition")
            if cvm.mode == "provisioning":
                raise Conflict(
                    f"CVM {cvm.id[:16]}… is still being provisioned; stop it when its start job has ended", code="cvm_busy"
                )
            with self.store.transaction() as tx:
                self.store.update_cvm(tx, cvm.id, mode="stopping")
                self.store.insert_job(tx, job_id, "stop", cvm.id)
                self.ledger.append(
                    tx, cvm=cvm.id, event="cvm.stopping", actor=request.signer, request_digest=request.digest,
                    previous=cvm.mode, job=job_id, **request.ledger_marks(),
                )
        self.jobs.spawn(job_id, lambda: self._teardown(job_id, cvm))
        return {"job_id": job_id, "cvm_id": cvm.id, "mode": "stopping"}

    async def _teardown(self, job_id: str, cvm: CvmRecord) -> None:
        async with self._locked(cvm.id):
            self.jobs.progress(job_id)("deleting the CVM's resources")
            await self.ssh.drop(cvm.id)
            machine = Machine.from_json(cvm.machine) if cvm.machine else None
            error = await self._delete_resources(cvm.id, machine)
            with self.store.transaction() as tx:
                if error is None:
                    self.store.update_cvm(tx, cvm.id, mode="stopped")
                    self.store.destroy_ssh_key(tx, cvm.id)
                    self.store.update_job_in(tx, job_id, status="succeeded", step="stopped")
                    self.ledger.append(tx, cvm=cvm.id, event="cvm.stopped", actor=CONTROLLER)
                else:
                    # Stay "stopping": a later stop or restart retries; nothing is silently orphaned.
                    self.store.update_job_in(
                        tx, job_id, status="failed", step="failed", error={"code": "stop_failed", "message": error}
                    )
                    self.ledger.append(tx, cvm=cvm.id, event="cvm.stop_failed", actor=CONTROLLER, reason=error)

    # --- reads -------------------------------------------------------------------------

    def state_bytes(self, cvm_id: str) -> tuple[bytes, str]:
        """JCS of the CVM's state and its SHA-256, made once per ledger size (design.md §3):
        every change of a CVM comes with a ledger entry, so the size says when it is stale.

        The state is the CVM's record and a summary of its history (commands with their
        output hashes, mode changes), each row naming its ledger entries by seq; the entries
        themselves are served by the ledger routes, with their proofs."""
        size = self.ledger.size
        cached = self._state_cache.get(cvm_id)
        if cached and cached[0] == size:
            return cached[1], cached[2]
        cvm = self.store.get_cvm(cvm_id)
        entries = self.ledger.entries(0, size, cvm=cvm_id)
        data = canonical({
            "cvm": cvm.public(), "tree_size": size, "entry_count": len(entries),
            "commands": command_rows(entries), "modes": mode_rows(entries),
        })
        digest = sha256_hex(data)
        self._state_cache[cvm_id] = (size, data, digest)
        return data, digest

    def list_cvms(self) -> dict[str, Any]:
        return {"cvms": [cvm.public() for cvm in self.store.list_cvms()], "tree_size": self.ledger.size}

    def job(self, job_id: str) -> dict[str, Any]:
        return self.store.get_job(job_id).public()

    # --- plumbing ----------------------------------------------------------------------

    def _provider(self, name: str) -> Provider:
        """The provider a CVM was made with; it must stay enabled while the CVM exists."""
        provider = self.providers.get(name)
        if provider is None:
            raise Conflict(
                f"this CVM was made with provider {name!r}, which is not enabled now; restart the controller with "
                f"--provider {name} to manage it",
                code="provider_not_enabled",
            )
        return provider

    def _target(self, cvm_id: str, machine: Machine) -> SshTarget:
        key = self.store.ssh_private_key(cvm_id)
        if key is None:
            raise Conflict(f"the controller no longer holds a key for CVM {cvm_id[:16]}…", code="no_key")
        return SshTarget(machine.host, machine.port, machine.username, machine.host_key, key)

    # --- recovery after a restart -------------------------------------------------------

    async def recover(self) -> None:
        """Bring the store back to a consistent state after a crash; nothing is lost or orphaned."""
        for seq, cvm_id, command in self.store.interrupted_commands():
            with self.store.transaction() as tx:
                self.store.command_ended(tx, seq)
                self.ledger.append(
                    tx, cvm=cvm_id, event="command.interrupted", actor=CONTROLLER, started_seq=seq, command=command,
                    reason="the controller stopped while the command ran; its outcome is unknown",
                )
        for job in self.store.running_jobs():
            if job.kind == "start":
                cvm = self.store.find_cvm(job.cvm_id)
                machine = Machine.from_json(cvm.machine) if cvm and cvm.machine else None
                await self._fail(job.id, job.cvm_id, machine, UpstreamError(
                    "the controller stopped while the CVM was being provisioned; its resources were deleted",
                    code="interrupted",
                ))
            else:
                cvm = self.store.get_cvm(job.cvm_id)
                await self._teardown(job.id, cvm)
        active = self.store.list_cvms(ACTIVE_MODES)
        for name, provider in self.providers.items():
            await provider.reconcile([Machine.from_json(cvm.machine) for cvm in active if cvm.machine and cvm.provider == name])
        for cvm in active:
            if cvm.final or not cvm.machine:
                continue
            if cvm.provider not in self.providers:
                log.warning("CVM %s was made with provider %s, which is not enabled: it cannot be managed until it is",
                            cvm.id, cvm.provider)
                continue
            machine = await self.providers[cvm.provider].resume(Machine.from_json(cvm.machine))
            if machine.to_json() != cvm.machine:
                with self.store.transaction() as tx:
                    self.store.update_cvm(tx, cvm.id, machine=machine.to_json())
                    self.ledger.append(
                        tx, cvm=cvm.id, event="cvm.resumed", actor=CONTROLLER, host=machine.host, port=machine.port,
                        host_key_fingerprint=fingerprint(machine.host_key),
                    )

    async def close(self) -> None:
        await self.jobs.cancel_all()
        await self.ssh.close()
