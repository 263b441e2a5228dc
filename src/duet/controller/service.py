"""The CVM lifecycle rules (design.md §5).

provisioning ──> in-update <──> in-service ──> stopping ──> stopped
      └──> failed                  └── final: never back to in-update, only stop

Every change is announced in the ledger in the same transaction that makes it, and effects
outside the controller (a command on the CVM) happen only after their entry has committed
and its head was sealed: no entry, no effect. A per-CVM lock orders everything that touches
one CVM, so no command can start after an ``in-service`` was acknowledged. Every SSH step has
a time limit (``_ssh_run``), so a stalled CVM holds its lock no longer than the command's
timeout plus ``Settings.ssh_margin_s``.

A stop whose resource deletion failed (``cvm.stop_failed``) leaves the CVM ``stopping``; a new
``stop`` retries it, and so does every start. A recovery step that fails at start is logged
and recorded (``controller.recovery_failed``), never fatal to the start.

What the rules decide from lives in memory: each CVM's mode, final flag and lockdown come
from replaying the ledger (``LifecycleReplay``, fed every committed entry), its machine from
the row verified at start, its key from sealed state. The database is written, never read
back to decide (design.md §1: the host owns the disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from duet.attestation.bundle import CvmRoots
from duet.attestation.cvm_policy import DEFAULT_CVM_POLICY, CvmPolicy
from duet.controller.auth import AuthorizedRequest
from duet.controller.cvm_attestation import Attestation, attest, host_key_fingerprint
from duet.controller.jobs import JobRunner, new_job_id
from duet.controller.sealed_state import SealedState
from duet.controller.settings import Settings
from duet.controller.store import OutputQuotaExceeded, Store
from duet.errors import Conflict, DuetError, Forbidden, InvalidParams, NotFound, UpstreamError
from duet.ledger.history import HistoryIndex
from duet.ledger.log import Ledger
from duet.protocol import lifecycle as lc
from duet.protocol.canonical import canonical, parse_timestamp, sha256_hex, timestamp
from duet.protocol.lifecycle import CONTROLLER_ACTOR, CvmFacts, LifecycleReplay
from duet.protocol.models import AttestParams, MarkParams, RunParams, StartParams, StopParams
from duet.providers.base import LOCKDOWN_MARKER, CvmSpec, Machine, Provider
from duet.remote.ssh import (
    CommandRunner,
    ExecResult,
    HostKeyMismatch,
    SshTarget,
    SshUnavailable,
    fingerprint,
    generate_client_key,
)
from duet.storage import Transaction

log = logging.getLogger("duet.service")

CONTROLLER = CONTROLLER_ACTOR
"""The ledger actor for what the controller does on its own."""

BOOTSTRAP_COMMAND = "uname -a"
MAX_EVIDENCE_OUTPUT = 1024 * 1024
"""What the collection program may print (``attestation.bundle.MAX_BUNDLE_BYTES``)."""


class AttestationFailed(Forbidden):
    """A new CVM's evidence did not pass: it fails, its resources are deleted (the reason is in
    ``cvm.attested`` and ``cvm.failed``)."""

    code = "attestation_failed"

    def __init__(self, attestation: Attestation) -> None:
        failure = attestation.verdict.failure
        assert failure is not None
        super().__init__(f"the CVM's attestation failed at {failure.step} ({failure.code}): {failure.message}")
        self.attestation = attestation


MAX_RECORDED_LOCKDOWN_FAILURES = 5
"""A pending lockdown's failures are recorded when their reason changes, at most this many times."""


MAX_REASON_CHARS = 4000
"""Reasons and other free text the controller writes into entries are cut here, so that every
entry stays within ``ledger.log.MAX_ENTRY_BYTES`` however long an error or an output is."""


def _describe(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, DuetError) else f"{type(exc).__name__}: {exc}"
    return _cut(text)


def _cut(text: str, limit: int = MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more characters]"


def _kept(outcome: ExecResult, keep: int) -> ExecResult:
    """The outcome with at most ``keep`` bytes of output in all: stdout first, stderr cut to what is left."""
    room = max(keep - len(outcome.stdout[:keep]), 0)
    if len(outcome.stdout) <= keep and len(outcome.stderr) <= room:
        return outcome
    return dataclasses.replace(
        outcome,
        stdout=outcome.stdout[:keep],
        stdout_truncated=outcome.stdout_truncated or len(outcome.stdout) > keep,
        stderr=outcome.stderr[:room],
        stderr_truncated=outcome.stderr_truncated or len(outcome.stderr) > room,
    )


def machine_digest(machine: Machine) -> str:
    """What the ledger records of a machine record, so the stored row can be checked at start."""
    return sha256_hex(canonical(machine.to_json()))


def public_cvm(cvm: CvmFacts, machine: Machine | None) -> dict[str, Any]:
    """What anybody may see about a CVM (no key material, no provider internals)."""
    return {
        "cvm_id": cvm.id,
        "type": cvm.type,
        "provider": cvm.provider,
        "mode": cvm.mode,
        "final": cvm.final,
        "lockdown": cvm.lockdown,
        "lockdown_error": cvm.lockdown_error if cvm.lockdown == lc.LOCKDOWN_PENDING else None,
        "created_at": cvm.created_at,
        "updated_at": cvm.updated_at,
        "host_key": machine.host_key if machine and machine.host_key else None,
        "failure": cvm.failure,
        "attestation": attestation_summary(cvm),
    }


_ATTESTATION_SHOWN = (
    "ok", "kind", "simulated", "time", "seq", "measurements", "tcb", "debug", "migration_allowed", "signer",
    "vm_id", "step", "code", "reason", "evidence_sha256",
)  # fmt: skip
"""The fields of the last ``cvm.attested`` entry that the state and list answers show."""


def attestation_summary(cvm: CvmFacts) -> dict[str, Any]:
    """What users see of a CVM's attestation: required or not, and its last verdict."""
    last = cvm.attested
    summary: dict[str, Any] = {"required": cvm.attestation == lc.ATTESTATION_REQUIRED, "valid_until": cvm.attested_until}
    if last is not None:
        summary["last"] = {key: last[key] for key in _ATTESTATION_SHOWN if key in last}
    return summary


class LifecycleService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        ledger: Ledger,
        providers: dict[str, Provider],
        ssh: CommandRunner,
        *,
        sealed: SealedState,
        replay: LifecycleReplay,
        machines: dict[str, Machine],
        histories: HistoryIndex | None = None,
        cvm_roots: CvmRoots | None = None,
        cvm_policy: CvmPolicy = DEFAULT_CVM_POLICY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``replay`` holds the state derived from the verified ledger so far; from here on it
        is fed every committed entry. ``machines`` are the verified machine records."""
        self.settings = settings
        self.store = store
        self.ledger = ledger
        self.providers = providers
        self.default_provider = next(iter(providers))
        self.ssh = ssh
        self.sealed = sealed
        self.replay = replay
        self.machines = machines
        self.cvm_roots = cvm_roots or CvmRoots()
        self.cvm_policy = cvm_policy
        self.clock = clock
        self.jobs = JobRunner()
        self._locks: dict[str, asyncio.Lock] = {}
        self._state_cache: dict[str, tuple[int, bytes, str]] = {}
        self._lockdown_wake: dict[str, asyncio.Event] = {}
        self._output_usage: dict[str, list[tuple[float, int]]] = {}
        self._pruning: asyncio.Task[None] | None = None
        """Per CVM, (when, bytes) of each command's recorded outputs: from its ledger entries at
        its first run of this process, then from each result recorded (for the quota)."""
        ledger.subscribe(replay.apply)
        self.histories = histories or HistoryIndex()
        ledger.subscribe(self.histories.apply)

    @asynccontextmanager
    async def _locked(self, cvm_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(cvm_id, asyncio.Lock())
        async with lock:
            yield

    def get_cvm(self, cvm_id: str) -> CvmFacts:
        cvm = self.replay.cvms.get(cvm_id)
        if cvm is None:
            raise NotFound(f"no CVM with id {cvm_id}; `duet cvm list` shows the known ones", code="unknown_cvm")
        return cvm

    def find_cvm(self, cvm_id: str) -> CvmFacts | None:
        return self.replay.cvms.get(cvm_id)

    # --- start -------------------------------------------------------------------------

    def precheck(self, op: str, params: Any) -> dict[str, Any] | None:
        """What the operation would answer right now without acting, decided from memory and
        without waiting: raises the refusal it would meet (a CVM in the wrong mode, ...), returns
        the answer of a mark that changes nothing, None when it would act. A request that needs
        more owners is checked so before it becomes a proposal, so that no proposal is made for
        what would be refused anyway."""
        if op == "cvm.start":
            self._check_start(params)
        elif op == "cvm.run":
            self._check_run(params)
            self._check_runnable(self.get_cvm(params.cvm_id))
        elif op == "cvm.mark":
            return self._check_mark(params)
        elif op == "cvm.stop":
            self._check_stop(self.get_cvm(params.cvm_id))
        return None

    def _check_start(self, params: StartParams) -> str:
        provider = params.provider or self.default_provider
        if provider not in self.providers:
            raise InvalidParams(
                f"provider {provider!r} is not enabled on this controller; it has {', '.join(self.providers)}",
                code="provider_not_enabled",
            )
        return provider

    async def start(self, request: AuthorizedRequest[StartParams]) -> dict[str, Any]:
        params = request.params
        provider = self._check_start(params)
        private_key, public_key = generate_client_key()
        cvm_id = hashlib.sha256(public_key.encode()).hexdigest()
        job_id = new_job_id()
        sealed_key = self.sealed.encrypt_ssh_key(cvm_id, private_key)
        with self.store.transaction() as tx:
            self.store.insert_cvm(tx, cvm_id, params.cvm_type, provider, public_key, sealed_key, timestamp())
            attestation = lc.ATTESTATION_REQUIRED if self.settings.cvm_attestation else lc.ATTESTATION_OFF
            fields = {"type": params.cvm_type, "provider": provider, "job": job_id, "attestation": attestation}
            self._owner_entry(tx, request, cvm=cvm_id, event=lc.CVM_PROVISIONING, **fields)
        self.jobs.spawn(job_id, lambda: self._provision(job_id, cvm_id, params.cvm_type, public_key, provider))
        return {"job_id": job_id, "cvm_id": cvm_id, "mode": lc.PROVISIONING, "provider": provider}

    async def _provision(self, job_id: str, cvm_id: str, cvm_type: str, public_key: str, provider: str) -> None:
        progress = self.jobs.progress(job_id)
        machine: Machine | None = None
        async with self._locked(cvm_id):
            try:
                attested = self.get_cvm(cvm_id).attestation == lc.ATTESTATION_REQUIRED
                progress(f"creating the CVM with provider {provider}")
                spec = CvmSpec(cvm_id, cvm_type, attested=attested)  # type: ignore[arg-type]
                machine = await self.providers[provider].create(spec, public_key, progress)
                if attested:  # whatever the cloud says of the host key, only the evidence will pin one
                    machine = dataclasses.replace(machine, host_key="")
                self._record_machine(cvm_id, machine, lc.CVM_CREATED)
                progress("waiting for SSH" + ("" if attested else " with the pinned host key"))
                target = self._target(cvm_id)
                await self.ssh.wait_ready(target, timeout=self.settings.ssh_ready_timeout_s)
                if attested:
                    progress("attesting the CVM")
                    attestation = await self._attest(cvm_id)
                    if not attestation.ok:
                        raise AttestationFailed(attestation)
                    target = self._target(cvm_id)  # now with the pinned key
                progress("running the bootstrap")
                result = await self._bootstrap(cvm_id, cvm_type, target)
                with self.store.transaction() as tx:
                    self.store.update_cvm(tx, cvm_id, mode=lc.IN_UPDATE, now=timestamp())
                    self.ledger.append(tx, cvm=cvm_id, event=lc.CVM_READY, actor=CONTROLLER, mode=lc.IN_UPDATE, **result)
                progress("ready")
            except Exception as exc:
                await self._fail(job_id, cvm_id, machine, exc)

    def _record_machine(self, cvm_id: str, machine: Machine, event: str) -> None:
        """Store the machine with an entry naming its digest: the row is checked against it at start."""
        with self.store.transaction() as tx:
            self.store.update_cvm(tx, cvm_id, machine=machine.to_json(), now=timestamp())
            self.ledger.append(
                tx,
                cvm=cvm_id,
                event=event,
                actor=CONTROLLER,
                host=machine.host,
                port=machine.port,
                host_key_fingerprint=fingerprint(machine.host_key) if machine.host_key else None,
                machine_sha256=machine_digest(machine),
            )
        self.machines[cvm_id] = machine

    async def _bootstrap(self, cvm_id: str, cvm_type: str, target: SshTarget) -> dict[str, Any]:
        """Record what the CVM says it is (guest attestation comes with the CVM attestation issue)."""
        outcome = await self._ssh_run(
            cvm_id, target, BOOTSTRAP_COMMAND, timeout=self.settings.command_timeout_s, output_limit=64 * 1024
        )
        if outcome.exit_status != 0:
            raise UpstreamError(
                f"the bootstrap command `{BOOTSTRAP_COMMAND}` failed on the CVM (exit {outcome.exit_status}): "
                f"{outcome.stderr.decode(errors='replace').strip()[:500]}",
                code="bootstrap_failed",
            )
        return {"cvm_type": cvm_type, "uname": _cut(outcome.stdout.decode(errors="replace").strip(), 1000)}

    async def _fail(self, job_id: str, cvm_id: str, machine: Machine | None, exc: BaseException) -> None:
        reason = _describe(exc)
        log.warning("start of CVM %s failed: %s", cvm_id, reason)
        self.jobs.progress(job_id)("failed")
        await self.ssh.drop(cvm_id)
        cleanup_error = await self._delete_resources(cvm_id, machine)
        with self.store.transaction() as tx:
            if isinstance(exc, HostKeyMismatch):
                self._record_mismatch(tx, cvm_id, exc)
            self.store.update_cvm(tx, cvm_id, mode=lc.FAILED, failure=reason, now=timestamp())
            self._destroy_key(tx, cvm_id)
            outcome = {"reason": reason, "code": exc.code if isinstance(exc, DuetError) else "start_failed"}
            self.ledger.append(
                tx, cvm=cvm_id, event=lc.CVM_FAILED, actor=CONTROLLER, **outcome, cleanup_error=cleanup_error, key_destroyed=True
            )

    def _destroy_key(self, tx: Transaction, cvm_id: str) -> None:
        """Crypto-shred the CVM's SSH key: its data key leaves sealed state with this commit."""
        self.sealed.destroy_data_key(cvm_id)
        self.store.destroy_ssh_key(tx, cvm_id)

    async def _delete_resources(self, cvm_id: str, machine: Machine | None) -> str | None:
        """Delete what the provider made for the CVM; returns the error text if that failed."""
        provider = self.get_cvm(cvm_id).provider
        record = machine or Machine(cvm_id=cvm_id, provider=provider)
        try:
            await self._provider(provider).delete(record, lambda step: None)
        except Exception as exc:
            log.error("cleanup of CVM %s failed: %s", cvm_id, _describe(exc))
            return _describe(exc)
        return None

    # --- attestation (design §10) ------------------------------------------------------------

    async def _attest(self, cvm_id: str) -> Attestation:
        """Collect and judge the CVM's evidence and record the verdict (``cvm.attested``, the
        evidence as a blob); the first passing one pins the host key it binds. Under the CVM's lock."""
        cvm, machine = self.get_cvm(cvm_id), self.machines.get(cvm_id)
        if machine is None:
            raise Conflict(f"the controller has no machine record for CVM {cvm_id[:16]}…", code="no_machine")
        target = self._target(cvm_id)
        source = self._provider(machine.provider).evidence_source(machine, cvm.type)  # type: ignore[arg-type]

        async def run(command: str) -> ExecResult:
            timeout = self.settings.cvm_attest_timeout_s
            return await self._ssh_run(cvm_id, target, command, timeout=timeout, output_limit=MAX_EVIDENCE_OUTPUT)

        attestation = await attest(
            run,
            source,
            platform=cvm.type,  # type: ignore[arg-type]
            roots=self.cvm_roots,
            policy=self.cvm_policy,
            vm_id=machine.resources.get("vm_id"),
            now=self.clock,
        )
        fields = attestation.entry_fields()
        pin = attestation.ok and not machine.host_key
        with self.store.transaction() as tx:
            if attestation.evidence:
                self.store.put_blob(tx, sha256_hex(attestation.evidence), attestation.evidence)
            if pin:
                machine = dataclasses.replace(machine, host_key=attestation.host_key)
                self.store.update_cvm(tx, cvm_id, machine=machine.to_json(), now=timestamp())
                fields.update(pinned=True, machine_sha256=machine_digest(machine))
            if attestation.ok:
                fields["host_key_fingerprint"] = host_key_fingerprint(attestation)
            self.ledger.append(tx, cvm=cvm_id, event=lc.CVM_ATTESTED, actor=CONTROLLER, **fields)
        if pin:
            self.machines[cvm_id] = machine
        level = logging.INFO if attestation.ok else logging.WARNING
        log.log(level, "attestation of CVM %s: %s", cvm_id, fields.get("reason") or "passed")
        return attestation

    async def attest(self, request: AuthorizedRequest[AttestParams]) -> dict[str, Any]:
        """``duet cvm attest``: an owner asks for a fresh attestation of a running CVM."""
        async with self._locked(request.params.cvm_id):
            cvm = self.get_cvm(request.params.cvm_id)
            if cvm.mode not in lc.ACTIVE_MODES:
                raise Conflict(f"CVM {cvm.id[:16]}… is {cvm.mode}; only a running CVM can be attested", code="bad_transition")
            if cvm.lockdown == lc.LOCKDOWN_DONE:
                raise Conflict(
                    f"CVM {cvm.id[:16]}… is locked down (final): the controller can no longer reach it to attest it",
                    code="cvm_locked",
                )
            attestation = await self._attest(cvm.id)
        steps = [{"step": s.step, "ok": s.ok, "code": s.code, "message": s.message} for s in attestation.verdict.steps]
        return {
            "cvm_id": cvm.id,
            "ok": attestation.ok,
            "steps": steps,
            "attestation": attestation_summary(cvm),
            "tree_size": self.ledger.size,
        }

    async def _attested_for_service(self, cvm: CvmFacts) -> None:
        """The gate of ``mark in-service``: a passing attestation still valid, else a fresh one."""
        if cvm.attestation != lc.ATTESTATION_REQUIRED:
            return
        now = timestamp(datetime.fromtimestamp(self.clock(), UTC))
        if cvm.attested_until is not None and now <= cvm.attested_until:
            return
        attestation = await self._attest(cvm.id)
        if not attestation.ok:
            failure = attestation.verdict.failure
            assert failure is not None
            raise Forbidden(
                f"CVM {cvm.id[:16]}… stays in-update: its attestation failed at {failure.step}: {failure.message}",
                code="attestation_failed",
            )

    # --- run ---------------------------------------------------------------------------

    async def run(self, request: AuthorizedRequest[RunParams]) -> dict[str, Any]:
        """Run the commands in order. Their outputs share the request's budget
        (``request_output_budget``) and the CVM's quota (``cvm_output_quota``): each command
        keeps at most what is left of both, cut and marked truncated beyond it, and a CVM at
        its quota refuses the next command (409 ``output_quota_exceeded``)."""
        params = request.params
        timeout, limit = self._check_run(params)
        async with self._locked(params.cvm_id):
            cvm = self.get_cvm(params.cvm_id)
            self._check_runnable(cvm)
            target = self._target(cvm.id)
            results: list[dict[str, Any]] = []
            budget = self.settings.request_output_budget
            for command in params.commands:
                room = min(budget, self._quota_room(cvm.id, ran=len(results)))
                result = await self._run_one(cvm.id, target, command, request, timeout=timeout, limit=min(limit, room), keep=room)
                budget -= result["stdout_size"] + result["stderr_size"]
                results.append(result)
        return {"cvm_id": params.cvm_id, "results": results, "tree_size": self.ledger.size}

    def _check_run(self, params: RunParams) -> tuple[float, int]:
        """The command timeout and output limit the request asks for, within the controller's maxima."""
        timeout = params.timeout_s or self.settings.command_timeout_s
        limit = params.output_limit or self.settings.output_limit
        if timeout > self.settings.max_command_timeout_s:
            raise InvalidParams(f"timeout_s may be at most {self.settings.max_command_timeout_s:.0f}", code="invalid_params")
        if limit > self.settings.max_output_limit:
            raise InvalidParams(f"output_limit may be at most {self.settings.max_output_limit} bytes", code="invalid_params")
        return timeout, limit

    def _check_runnable(self, cvm: CvmFacts) -> None:
        if cvm.mode not in lc.ALLOWED_IN[lc.COMMAND_STARTED]:
            raise Forbidden(self._refusal(cvm), code="not_in_update")

    def _quota_room(self, cvm_id: str, *, ran: int) -> int:
        """Bytes of output the CVM may still store; refuses when none (before the command's entry)."""
        quota = self.settings.cvm_output_quota
        used = self._outputs_kept(cvm_id)
        if used >= quota:
            done = f" {ran} command(s) of this request ran and are recorded;" if ran else ""
            raise OutputQuotaExceeded(
                f"CVM {cvm_id[:16]}… keeps {used} bytes of command output, its quota of {quota} bytes:{done} no more "
                "commands run on it until older outputs are pruned by the retention policy "
                f"({self._retention_text()}) or the operator raises the quota"
            )
        return quota - used

    def _retention_text(self) -> str:
        days = self.settings.output_retention_days
        return "outputs are kept forever" if days is None else f"outputs are pruned after {days:g} days"

    def _outputs_kept(self, cvm_id: str) -> int:
        """Bytes of output recorded for the CVM within the retention period (what pruning has not freed)."""
        usage = self._output_usage.get(cvm_id)
        if usage is None:
            usage = self._output_usage[cvm_id] = [
                (parse_timestamp(entry["time"]).timestamp(), int(entry.get("stdout_size", 0)) + int(entry.get("stderr_size", 0)))
                for entry in self.ledger.entries(0, self.ledger.size, cvm=cvm_id)
                if entry.get("event") == lc.COMMAND_FINISHED
            ]
        days = self.settings.output_retention_days
        if days is not None:
            cutoff = time.time() - days * 86400
            usage[:] = [(when, size) for when, size in usage if when >= cutoff]
        return sum(size for _, size in usage)

    async def prune_outputs(self) -> int:
        """Delete outputs older than the retention period, in small transactions (the loop stays
        responsive); their hashes stay in the ledger. Returns how many were deleted."""
        days = self.settings.output_retention_days
        if days is None:
            return 0
        cutoff, pruned, batch = time.time() - days * 86400, 0, 64
        while True:
            count = self.store.prune_blobs(cutoff, batch=batch)
            pruned += count
            if count < batch:
                break
            await asyncio.sleep(0)
        if pruned:
            log.info(
                "pruned %d stored output(s) older than %g days (retention policy); their hashes stay in the ledger", pruned, days
            )
        return pruned

    def _schedule_pruning(self) -> None:
        """Prune now (at start), then every ``output_prune_interval_s``."""
        if self.settings.output_retention_days is None:
            return

        async def prune() -> None:
            while True:
                try:
                    await self.prune_outputs()
                except Exception:
                    log.exception("pruning stored outputs failed; retrying at the next interval")
                await asyncio.sleep(self.settings.output_prune_interval_s)

        if self._pruning is None:  # not a job: ``jobs.wait_all`` waits for jobs to end, and this never does
            self._pruning = asyncio.create_task(prune(), name="output-pruning")

    @staticmethod
    def _refusal(cvm: CvmFacts) -> str:
        if cvm.mode == lc.IN_SERVICE:
            return f"CVM {cvm.id[:16]}… is in-service: commands are refused until the owner marks it in-update"
        return f"CVM {cvm.id[:16]}… is {cvm.mode}: commands run only while it is in-update"

    async def _run_one(
        self,
        cvm_id: str,
        target: SshTarget,
        command: str,
        request: AuthorizedRequest[RunParams],
        *,
        timeout: float,
        limit: int,
        keep: int,
    ) -> dict[str, Any]:
        with self.store.transaction() as tx:
            started = self._owner_entry(tx, request, cvm=cvm_id, event=lc.COMMAND_STARTED, command=command)
        try:
            outcome = await self._ssh_run(cvm_id, target, command, timeout=timeout, output_limit=limit)
        except Exception as exc:
            with self.store.transaction() as tx:
                if isinstance(exc, HostKeyMismatch):
                    self._record_mismatch(tx, cvm_id, exc)
                self.ledger.append(
                    tx,
                    cvm=cvm_id,
                    event=lc.COMMAND_FAILED,
                    actor=CONTROLLER,
                    request_digest=request.digest,
                    started_seq=started["seq"],
                    reason=_describe(exc),
                    **request.entry_fields(),
                )
            raise
        return self._record_result(cvm_id, started["seq"], command, _kept(outcome, keep), request.digest, request.entry_fields())

    async def _ssh_run(self, cvm_id: str, target: SshTarget, command: str, *, timeout: float, output_limit: int) -> ExecResult:
        """``ssh.run`` within ``timeout + ssh_margin_s``, whatever the SSH layer does.

        The SSH pool bounds each of its steps itself and reports a stalled CVM in its own words;
        this deadline is the guarantee for the CVM's lock, whatever runner is plugged in. Its
        connection is then dropped (within ``ssh_close_timeout_s``, counted in the margin)."""
        settings = self.settings
        budget = timeout + settings.ssh_margin_s - settings.ssh_close_timeout_s
        try:
            return await asyncio.wait_for(
                self.ssh.run(cvm_id, target, command, timeout=timeout, output_limit=output_limit), budget
            )
        except TimeoutError:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ssh.drop(cvm_id), settings.ssh_close_timeout_s)
            raise SshUnavailable(
                f"the CVM did not answer within the command's {timeout:g} s timeout plus "
                f"{settings.ssh_margin_s - settings.ssh_close_timeout_s:g} s for connecting, opening and ending it: it is "
                "stalled. Its connection was dropped; the command may have run partly: check the CVM before retrying",
                reason="timeout",
            ) from None

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
            recorded: dict[str, Any] = {"request_digest": digest, "started_seq": started_seq, **summary, **(marks or {})}
            finished = self.ledger.append(tx, cvm=cvm_id, event=lc.COMMAND_FINISHED, actor=CONTROLLER, **recorded)
        if cvm_id in self._output_usage:
            self._output_usage[cvm_id].append((time.time(), len(outcome.stdout) + len(outcome.stderr)))
        return {
            **summary,
            "seq": finished["seq"],
            "stdout": outcome.stdout.decode(errors="replace"),
            "stderr": outcome.stderr.decode(errors="replace"),
        }

    def _owner_entry(
        self, tx: Transaction, request: AuthorizedRequest[Any], *, cvm: str, event: str, **fields: Any
    ) -> dict[str, Any]:
        """An entry an owner's signed request caused: its signer as actor, its digest, its protocol
        (after ``proposal.executed``, in the same transaction, when it executes a proposal)."""
        if request.before_first_entry is not None:
            request.before_first_entry(tx, cvm)
        return self.ledger.append(
            tx, cvm=cvm, event=event, actor=request.signer, request_digest=request.digest, **fields, **request.entry_fields()
        )

    def _record_mismatch(self, tx: Transaction, cvm_id: str, exc: HostKeyMismatch) -> None:
        self.ledger.append(
            tx,
            cvm=cvm_id,
            event=lc.HOSTKEY_MISMATCH,
            actor=CONTROLLER,
            expected=exc.expected_fingerprint,
            presented=exc.presented_fingerprint,
        )

    # --- mark --------------------------------------------------------------------------

    async def mark(self, request: AuthorizedRequest[MarkParams]) -> dict[str, Any]:
        params = request.params
        async with self._locked(params.cvm_id):
            unchanged = self._check_mark(params)
            if unchanged is not None:
                return unchanged
            cvm = self.get_cvm(params.cvm_id)
            if params.mode == lc.IN_SERVICE and cvm.mode == lc.IN_UPDATE:
                await self._attested_for_service(cvm)
            previous, was_final = cvm.mode, cvm.final
            with self.store.transaction() as tx:
                # The final flag and the pending lockdown are one commit: a crash after it
                # leaves a lockdown to retry at restart, never a silently unlocked final CVM.
                self.store.update_cvm(tx, cvm.id, mode=params.mode, final=int(was_final or params.final), now=timestamp())
                self._owner_entry(
                    tx,
                    request,
                    cvm=cvm.id,
                    event=lc.MODE_CHANGED,
                    previous=previous,
                    mode=params.mode,
                    final=was_final or params.final,
                )
            if params.final and not was_final and not await self._lock_down(cvm.id, attempt=1):
                self._schedule_lockdown(cvm.id)
        return self._mark_answer(cvm, changed=True)

    def _check_mark(self, params: MarkParams) -> dict[str, Any] | None:
        """Refuse a mark the rules forbid; the answer of one that changes nothing (None: it changes the mode)."""
        if params.final and params.mode != lc.IN_SERVICE:
            raise InvalidParams("final applies only to mode in-service", code="invalid_params")
        cvm = self.get_cvm(params.cvm_id)
        if cvm.mode not in lc.ALLOWED_IN[lc.MODE_CHANGED]:
            raise Conflict(f"CVM {cvm.id[:16]}… is {cvm.mode}; only a running CVM can be marked", code="bad_transition")
        if cvm.final and params.mode == lc.IN_UPDATE:
            raise Forbidden(
                f"CVM {cvm.id[:16]}… was marked in-service with --final: it can never return to in-update, only be stopped",
                code="cvm_final",
            )
        if cvm.mode == params.mode and (cvm.final or not params.final):
            if cvm.lockdown == lc.LOCKDOWN_PENDING:
                self._wake_lockdown(cvm.id)  # asked again: retry the pending lockdown now
            return self._mark_answer(cvm, changed=False)
        return None

    def _mark_answer(self, cvm: CvmFacts, *, changed: bool) -> dict[str, Any]:
        return {
            "cvm_id": cvm.id,
            "mode": cvm.mode,
            "final": cvm.final,
            "lockdown": cvm.lockdown,
            "changed": changed,
            "tree_size": self.ledger.size,
        }

    # --- lockdown (mark --final) ----------------------------------------------------------

    async def _lock_down(self, cvm_id: str, *, attempt: int) -> bool:
        """One attempt to remove the controller's key from the CVM and stop SSH there.

        Only a verified end counts: the command's exit 0 with its marker, or the session lost
        after the command had started and a fresh connection then turned away. Anything else
        (unreachable, timeout, another exit) is recorded as ``ok: false`` and retried; the key
        is destroyed only once the lockdown is verified. Runs under the CVM's lock."""
        machine = self.machines.get(cvm_id)
        error: str | None = None
        try:
            target = self._target(cvm_id)
            if machine is None:
                raise Conflict("the controller has no machine record for this CVM", code="no_machine")
            outcome = await self._ssh_run(
                cvm_id,
                target,
                self._provider(machine.provider).lockdown_command(machine),
                timeout=self.settings.lockdown_timeout_s,
                output_limit=64 * 1024,
            )
            if outcome.exit_status != 0 or LOCKDOWN_MARKER.encode() not in outcome.stdout:
                ended = "timed out" if outcome.timed_out else f"exited {outcome.exit_status}"
                error = f"the lockdown command {ended}: {outcome.stderr.decode(errors='replace').strip()[:300]}"
        except SshUnavailable as exc:
            if exc.reason == "lost" and exc.command_started:
                if not await self.ssh.login_refused(target):
                    error = "the SSH session ended during the lockdown, yet the CVM still accepts the controller's key"
            else:
                error = exc.message
        except DuetError as exc:
            error = exc.message
        await self.ssh.drop(cvm_id)
        cvm = self.get_cvm(cvm_id)
        if error is not None and (error == cvm.lockdown_error or cvm.lockdown_failures >= MAX_RECORDED_LOCKDOWN_FAILURES):
            log.warning("lockdown of CVM %s still pending (attempt %d): %s", cvm_id, attempt, error)
            return False  # logged, not appended to the ledger at every retry: the ledger must not grow without bound
        with self.store.transaction() as tx:
            if error is None:
                self._destroy_key(tx, cvm_id)
            self.ledger.append(
                tx,
                cvm=cvm_id,
                event=lc.CVM_LOCKED,
                actor=CONTROLLER,
                ok=error is None,
                error=error,
                attempt=attempt,
                key_destroyed=error is None,
            )
        if error is not None:
            log.warning("lockdown of CVM %s failed (attempt %d), will retry: %s", cvm_id, attempt, error)
        return error is None

    def _schedule_lockdown(self, cvm_id: str) -> None:
        """Retry a pending lockdown with backoff until it is verified or the CVM is stopped."""
        if cvm_id in self._lockdown_wake:
            return
        wake = self._lockdown_wake[cvm_id] = asyncio.Event()

        async def retry() -> None:
            delay, attempt = self.settings.lockdown_retry_s, 1
            try:
                while True:
                    try:
                        await asyncio.wait_for(wake.wait(), delay)
                    except TimeoutError:
                        pass
                    wake.clear()
                    attempt += 1
                    async with self._locked(cvm_id):
                        cvm = self.get_cvm(cvm_id)
                        if cvm.lockdown != lc.LOCKDOWN_PENDING or cvm.mode != lc.IN_SERVICE:
                            return
                        if await self._lock_down(cvm_id, attempt=attempt):
                            return
                    delay = min(delay * 2, self.settings.lockdown_retry_max_s)
            finally:
                self._lockdown_wake.pop(cvm_id, None)

        self.jobs.spawn(f"lockdown-{cvm_id[:16]}", retry)

    def _wake_lockdown(self, cvm_id: str) -> None:
        """Retry a pending lockdown now (scheduling the retries if none are)."""
        self._schedule_lockdown(cvm_id)
        self._lockdown_wake[cvm_id].set()

    # --- stop --------------------------------------------------------------------------

    async def stop(self, request: AuthorizedRequest[StopParams]) -> dict[str, Any]:
        params = request.params
        job_id = new_job_id()
        async with self._locked(params.cvm_id):
            cvm = self.get_cvm(params.cvm_id)
            self._check_stop(cvm)
            previous = cvm.mode  # stopping: a retry of the stop that failed
            with self.store.transaction() as tx:
                self.store.update_cvm(tx, cvm.id, mode=lc.STOPPING, now=timestamp())
                self._owner_entry(tx, request, cvm=cvm.id, event=lc.CVM_STOPPING, previous=previous, job=job_id)
        self.jobs.spawn(job_id, lambda: self._teardown(job_id, cvm.id))
        return {"job_id": job_id, "cvm_id": cvm.id, "mode": lc.STOPPING}

    @staticmethod
    def _check_stop(cvm: CvmFacts) -> None:
        if cvm.mode == lc.PROVISIONING:
            raise Conflict(
                f"CVM {cvm.id[:16]}… is still being provisioned; stop it when its start job has ended", code="cvm_busy"
            )
        if cvm.mode == lc.STOPPING and not cvm.stop_failed:
            raise Conflict(f"CVM {cvm.id[:16]}… is being stopped; its stop job has not ended yet", code="cvm_busy")
        if not lc.stop_allowed(cvm):
            raise Conflict(f"CVM {cvm.id[:16]}… is already {cvm.mode}", code="bad_transition")

    async def _teardown(self, job_id: str | None, cvm_id: str, *, retry: str | None = None) -> None:
        """Delete the CVM's resources and record the outcome. ``job_id`` None with ``retry``: the
        controller retries a failed stop on its own (at start); its entries say so."""
        progress = self.jobs.progress(job_id) if job_id is not None else (lambda step: None)
        marks = {"retry": retry} if retry is not None else {}
        async with self._locked(cvm_id):
            progress("deleting the CVM's resources")
            await self.ssh.drop(cvm_id)
            error = await self._delete_resources(cvm_id, self.machines.get(cvm_id))
            with self.store.transaction() as tx:
                if error is None:
                    self.store.update_cvm(tx, cvm_id, mode=lc.STOPPED, now=timestamp())
                    self._destroy_key(tx, cvm_id)
                    self.ledger.append(tx, cvm=cvm_id, event=lc.CVM_STOPPED, actor=CONTROLLER, key_destroyed=True, **marks)
                else:
                    # Stay "stopping": a later stop and every restart retry it; nothing is silently orphaned.
                    self.ledger.append(tx, cvm=cvm_id, event=lc.CVM_STOP_FAILED, actor=CONTROLLER, reason=error, **marks)
            progress("stopped" if error is None else "failed")

    # --- reads -------------------------------------------------------------------------

    def state_bytes(self, cvm_id: str) -> tuple[bytes, str]:
        """JCS of the CVM's state and its SHA-256, made once per ledger size (design.md §3):
        every change of a CVM comes with a ledger entry, so the size says when it is stale.

        The state is the CVM's record, its counts and its last commands and mode changes
        (``ledger.history.CvmHistory``), each row naming its ledger entries by seq: its size and
        cost do not grow with the CVM's history. The whole history is the ledger's, served
        page by page by the ledger routes, with their proofs (``duet cvm state --long``)."""
        size = self.ledger.size
        cached = self._state_cache.get(cvm_id)
        if cached and cached[0] == size:
            return cached[1], cached[2]
        cvm = self.get_cvm(cvm_id)
        data = canonical(
            {"cvm": public_cvm(cvm, self.machines.get(cvm_id)), "tree_size": size, **self.histories.of(cvm_id).summary()}
        )
        digest = sha256_hex(data)
        self._state_cache[cvm_id] = (size, data, digest)
        return data, digest

    def list_cvms(self) -> dict[str, Any]:
        cvms = sorted(self.replay.cvms.values(), key=lambda cvm: (cvm.created_at, cvm.id))
        return {"cvms": [public_cvm(cvm, self.machines.get(cvm.id)) for cvm in cvms], "tree_size": self.ledger.size}

    def job(self, job_id: str) -> dict[str, Any]:
        job = self.replay.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id}", code="unknown_job")
        step = self.jobs.step(job_id) or {"succeeded": "ready" if job.kind == "start" else "stopped"}.get(job.status, job.status)
        return {
            "job_id": job.id,
            "kind": job.kind,
            "cvm_id": job.cvm_id,
            "status": job.status,
            "step": step,
            "error": job.error,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
        }

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

    def _target(self, cvm_id: str) -> SshTarget:
        """Where and how to log in: the machine verified at start, the key from sealed state."""
        machine = self.machines.get(cvm_id)
        key = self.sealed.decrypt_ssh_key(cvm_id, self.store.ssh_private_key_ciphertext(cvm_id))
        if key is None:
            raise Conflict(f"the controller no longer holds a key for CVM {cvm_id[:16]}…", code="no_key")
        if machine is None:
            raise Conflict(f"the controller has no machine record for CVM {cvm_id[:16]}…", code="no_machine")
        return SshTarget(machine.host, machine.port, machine.username, machine.host_key, key)

    # --- recovery after a restart -------------------------------------------------------

    def _recovery_failed(self, step: str, provider: str, exc: BaseException, cvm_id: str | None = None) -> None:
        """Log and record a recovery step that failed; the start goes on."""
        reason = _describe(exc)
        log.error("recovery at start: %s with provider %s failed, starting anyway: %s", step, provider, reason)
        with self.store.transaction() as tx:
            self.ledger.append(
                tx, cvm=cvm_id, event=lc.CONTROLLER_RECOVERY_FAILED, actor=CONTROLLER, step=step, provider=provider, reason=reason
            )

    async def recover(self) -> None:
        """Finish what a crash interrupted, from the ledger's own account of it; nothing is lost or orphaned.

        Failed stops are retried too. No failure of the cloud stops the start: a deletion that
        fails is recorded as the stop's or the start's outcome, a reconcile or resume that fails
        as ``controller.recovery_failed``."""
        failed_stops = [cvm.id for cvm in self.replay.cvms.values() if cvm.mode == lc.STOPPING and cvm.stop_failed]
        for cvm in list(self.replay.cvms.values()):
            for seq, command in sorted(cvm.running.items()):
                with self.store.transaction() as tx:
                    self.ledger.append(
                        tx,
                        cvm=cvm.id,
                        event=lc.COMMAND_INTERRUPTED,
                        actor=CONTROLLER,
                        started_seq=seq,
                        command=command,
                        reason="the controller stopped while the command ran; its outcome is unknown",
                    )
        for job in [job for job in self.replay.jobs.values() if job.status == "running"]:
            if job.kind == "start":
                await self._fail(
                    job.id,
                    job.cvm_id,
                    self.machines.get(job.cvm_id),
                    UpstreamError(
                        "the controller stopped while the CVM was being provisioned; its resources were deleted",
                        code="interrupted",
                    ),
                )
            else:
                await self._teardown(job.id, job.cvm_id)
        for cvm_id in failed_stops:
            log.info("retrying the failed stop of CVM %s", cvm_id)
            await self._teardown(None, cvm_id, retry="restart")
        active = [cvm for cvm in self.replay.cvms.values() if cvm.mode in lc.ACTIVE_MODES]
        for name, provider in self.providers.items():
            try:
                await provider.reconcile(
                    [self.machines[cvm.id] for cvm in active if cvm.id in self.machines and cvm.provider == name]
                )
            except Exception as exc:
                self._recovery_failed("reconcile", name, exc)
        for cvm in active:
            if cvm.lockdown == lc.LOCKDOWN_DONE or cvm.id not in self.machines:
                continue
            if cvm.provider not in self.providers:
                log.warning(
                    "CVM %s was made with provider %s, which is not enabled: it cannot be managed until it is",
                    cvm.id,
                    cvm.provider,
                )
                continue
            pinned = self.machines[cvm.id]
            try:
                machine = await self.providers[cvm.provider].resume(pinned)
            except Exception as exc:
                self._recovery_failed("resume", cvm.provider, exc, cvm.id)
                continue
            if machine.host_key != pinned.host_key:
                # The host key is what makes the CVM this CVM: never re-pinned on a resume.
                with self.store.transaction() as tx:
                    self.ledger.append(
                        tx, cvm=cvm.id, event=lc.HOSTKEY_MISMATCH, actor=CONTROLLER,
                        expected=fingerprint(pinned.host_key), presented=fingerprint(machine.host_key),
                    )  # fmt: skip
            elif machine.to_json() != pinned.to_json():
                self._record_machine(cvm.id, machine, lc.CVM_RESUMED)
            if cvm.lockdown == lc.LOCKDOWN_PENDING:
                self._wake_lockdown(cvm.id)  # final, but the lockdown was never verified: retry now
        self._schedule_pruning()

    async def close(self) -> None:
        if self._pruning is not None:
            self._pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruning
        await self.jobs.cancel_all()
        await self.ssh.close()
