"""The seed's wire protocol, served beside ``/v1`` when ``--seed-api`` is on (specs/seed-api.md).

Why: clients and scripts written for the seed exist; they should work against duet unchanged.
One set of CVMs, two protocols: every seed operation is mapped onto the same lifecycle
service, store and ledger as protocol v1, so a CVM started here is audited like any other.

What the seed protocol lacks, and duet cannot add without breaking its clients: a signed
request carries no nonce, time or controller, so whoever captures one can replay it at will.
Hence the protocol is off by default, start-up warns when it is on, and every ledger entry
caused by a seed request carries ``"protocol": "seed"`` and the SHA-256 of the signed params
bytes as its ``request_digest`` (replays show up as repeated digests). And the requests whose
replay does harm are single-use: a ``start_cvm`` or a ``mark_cvm in-update`` whose digest the
verified ledger (or this run) shows accepted is refused as a replay, unless the operator opted
in (``Settings.seed_allow_replays``, ledgered at start). ``run_commands`` stays repeatable: it
runs only while the CVM is in-update, which a replay can no longer bring about.

Differences from the seed, all documented in docs/seed-api.md: commands run without a
pseudo-terminal, so a command's output lines are its stdout lines then its stderr lines and end
in ``\\n`` (not ``\\r\\n``); start and stop wait for duet's job to end, as the seed's calls were
synchronous; the state lists the owner's commands (duet's bootstrap is its ``cvm.ready`` entry).

Routes here only read the body and shape answers; the rules stay in the service.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from duet import keys
from duet.controller.api import read_body
from duet.controller.auth import AuthorizedRequest, ParamsT, describe_validation_error, parse_json_object
from duet.controller.startup import SEED_PROTOCOL, single_use_seed_digest
from duet.controller.store import OutputPruned, Store, StoredBlobAltered
from duet.errors import ConfigError, DuetError, Forbidden, NotFound
from duet.protocol import lifecycle as lc
from duet.protocol import seed
from duet.protocol.models import MarkParams, RunParams, StartParams, StopParams

if TYPE_CHECKING:
    from duet.controller.runtime import Controller

log = logging.getLogger("duet.seed_api")

SEED_KEY_FILE = "controller-seed-rsa.pem"
SEED_KEY_BITS = 4096
PROTOCOL = SEED_PROTOCOL

REPLAY_WARNING = (
    "seed protocol enabled (--seed-api): /quote, /start_cvm, /run_commands, /get_cvm_state, /mark_cvm, "
    "/stop_cvm are served beside /v1. This protocol has NO replay protection of its own (no nonce): anyone who "
    "captures a signed seed request can send it again. duet refuses a copy of a start_cvm or mark_cvm in-update "
    "it has accepted; copies of run_commands, mark_cvm in-service and stop_cvm are accepted. Its ledger entries "
    'are marked "protocol": "seed"; prefer protocol v1.'
)
REPLAYS_ALLOWED_WARNING = (
    "seed protocol: replays of captured seed requests are ALLOWED (--seed-allow-replays): a copied signed "
    "start_cvm starts another CVM and a copied mark_cvm in-update reopens a CVM the owner closed, for whoever "
    "copied it. Recorded in the ledger as controller.seed_replays_allowed."
)

PRIVILEGED = {
    "start-cvm": "Starting a new CVM is a privileged operation for the service owner.",
    "run-commands": "Running commands on a CVM is a privileged operation for the service owner.",
    "mark-cvm": "Changing the mode of a CVM is a privileged operation for the service owner.",
    "stop-cvm": "Stopping a CVM is a privileged operation for the service owner.",
}
NO_SUCH_CVM = "No such CVM."
IN_SERVICE = "Running commands not allowed while CVM is in service."
REPLAYED = (
    "refused as a replay: this signed request (digest {digest}…) was accepted before, and the seed protocol has "
    "no nonce to tell the owner's repeat from a copy. To {what} again, sign new params (a field of your own with a "
    'random value, such as "request_id", makes them new; duet seed-client adds one) or use protocol v1 ({v1}).'
)
REPLAY_HINTS = {
    "start-cvm": ("start a CVM", "duet cvm start"),
    "mark-cvm": ("reopen this CVM", "duet cvm mark CVM_ID in-update"),
}

JOB_RECHECK_S = 5.0
"""How often a waiting start/stop re-reads its job even without a ledger entry (a safety net only)."""


class SeedRefusal(DuetError):
    """A refusal in the seed's words; ``message`` is the text after ``"<op>: "``."""

    code = "seed_refusal"


def load_or_create_seed_key(sealed_dir: Path) -> rsa.RSAPrivateKey:
    """The controller's RSA-4096 key for seed answers: created once in the sealed directory, reused after."""
    path = sealed_dir / SEED_KEY_FILE
    if not path.exists():
        sealed_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys.write_private_key(path, rsa.generate_private_key(public_exponent=65537, key_size=SEED_KEY_BITS))
    key = keys.load_private_key(path)
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != SEED_KEY_BITS:
        raise ConfigError(f"{path} is not an RSA-{SEED_KEY_BITS} private key", code="bad_seed_key")
    return key


def _validate(model: type[BaseModel], params: dict[str, Any], renamed: dict[str, str] | None = None) -> Any:
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        text = describe_validation_error(exc, "params.")
        for duet_name, seed_name in (renamed or {}).items():
            text = text.replace(f"params.{duet_name}", f"params.{seed_name}")
        raise SeedRefusal(f"invalid params: {text}") from None


class SeedGateway:
    """Translates the seed's six operations to the lifecycle service and back."""

    def __init__(self, controller: Controller, key: rsa.RSAPrivateKey) -> None:
        self.controller = controller
        self.key = key
        self.allow_replays = controller.settings.seed_allow_replays
        self._accepted: set[str] = set() if self.allow_replays else set(controller.seed_requests_at_start)
        """Digests of the single-use seed requests accepted: from the verified ledger at start, then
        from each committed entry (``_note``), plus reopens that changed nothing (no entry: this run only)."""
        self._in_flight: set[str] = set()
        """Digests of single-use requests being handled: an identical copy sent meanwhile is a replay too."""
        if not self.allow_replays:
            controller.ledger.subscribe(self._note)
        self.public_pem = keys.public_pem(key.public_key()).decode("ascii")
        self._output_hashes: dict[tuple[str, str], str] = {}
        """The seed's output hash by (stdout SHA-256, stderr SHA-256), computed once."""
        self._quote: str | None = None

    # --- trust ---------------------------------------------------------------------------

    def quote(self) -> dict[str, str]:
        """The seed's ``/quote``: the RSA key's PEM and, with a TEE, a quote binding SHA-256 of it."""
        if self._quote is None:
            tee = self.controller.tee
            if tee.name == "none":
                self._quote = ""
            else:
                report_data = hashlib.sha256(self.public_pem.encode("ascii")).digest() + bytes(32)
                self._quote = str(tee.quote(report_data)["quote"])
        return {"quote": self._quote, "public_key": self.public_pem}

    def _rsa_owners(self) -> list[tuple[str, rsa.RSAPublicKey]]:
        """The owner keys in force that can sign seed requests (RSA only), by key id: the
        authenticator's, read at each request (a governed owners.change takes effect here at
        once), never the database's owners table."""
        owner_keys = self.controller.authenticator.owner_keys
        return [(key_id, key) for key_id, key in owner_keys.items() if isinstance(key, rsa.RSAPublicKey)]

    def authorize(self, op: str, duet_op: str, body: bytes) -> tuple[dict[str, Any], _Admitted]:
        """Admit a privileged seed request: an RSA owner key must have signed its params."""
        raw = parse_json_object(body)
        params = raw.get("params")
        signature = raw.get("signature")
        signer = next(
            (key_id for key_id, key in self._rsa_owners() if isinstance(params, dict) and seed.verify(key, signature, params)),
            None,
        )
        if signer is None or not isinstance(params, dict):
            raise SeedRefusal(PRIVILEGED[op])
        return params, _Admitted(duet_op, signer, seed.digest(params))

    def _note(self, entry: dict[str, Any]) -> None:
        """Each committed entry: a single-use seed request it records is spent, whether or not its
        operation then succeeded (a start whose job failed still provisioned a CVM)."""
        digest = single_use_seed_digest(entry)
        if digest is not None:
            self._accepted.add(digest)

    @contextlib.contextmanager
    def _single_use(self, op: str, admitted: _Admitted) -> Iterator[None]:
        """Refuse a request already accepted (or being handled); remember it once accepted."""
        if self.allow_replays:
            yield
            return
        digest = admitted.digest
        if digest in self._accepted or digest in self._in_flight:
            what, v1 = REPLAY_HINTS[op]
            log.warning("seed %s refused as a replay: request %s was accepted before", op, digest)
            raise SeedRefusal(REPLAYED.format(digest=digest[:16], what=what, v1=v1))
        self._in_flight.add(digest)
        try:
            yield
            self._accepted.add(digest)  # also a reopen of a CVM already in-update, which left no entry
        finally:
            self._in_flight.discard(digest)

    def _one_owner(self, request: AuthorizedRequest[ParamsT], v1_route: str) -> AuthorizedRequest[ParamsT]:
        """The seed speaks for one owner: an operation the approval policy gives a higher threshold
        is refused here (``approvals_required``), naming the v1 route that proposes it."""
        assert self.controller.proposals is not None
        return self.controller.proposals.single_owner(request, v1_route=v1_route)

    def _require_cvm(self, params: dict[str, Any]) -> None:
        """The seed answers ``No such CVM.`` for any id it does not know, well-formed or not."""
        cvm_id = params.get("cvm_id")
        if isinstance(cvm_id, str) and self.controller.service.find_cvm(cvm_id) is None:
            raise SeedRefusal(NO_SUCH_CVM)

    # --- operations ----------------------------------------------------------------------

    async def start(self, body: bytes) -> dict[str, Any]:
        params, authorized = self.authorize("start-cvm", "cvm.start", body)
        model = _validate(StartParams, {"cvm_type": params.get("cvm_type")})
        with self._single_use("start-cvm", authorized):
            accepted = await self.controller.service.start(
                self._one_owner(_with(authorized, model), "POST /v1/cvms, `duet cvm start`")
            )
            job = await self._job_end(accepted["job_id"], accepted["cvm_id"])
        if job["status"] != "succeeded":
            raise SeedRefusal(_job_reason(job))
        return {"success": True, "state": await self._state(accepted["cvm_id"], long=False)}

    async def run(self, body: bytes) -> dict[str, Any]:
        params, authorized = self.authorize("run-commands", "cvm.run", body)
        self._require_cvm(params)
        model = _validate(RunParams, {"cvm_id": params.get("cvm_id"), "commands": params.get("commands")})
        try:
            result = await self.controller.service.run(
                self._one_owner(_with(authorized, model), "POST /v1/cvms/{id}/run, `duet cvm run`")
            )
        except Forbidden as exc:
            if exc.code != "not_in_update":
                raise
            mode = self.controller.service.get_cvm(model.cvm_id).mode
            raise SeedRefusal(
                IN_SERVICE if mode == lc.IN_SERVICE else f"Running commands not allowed while CVM is {mode}."
            ) from None
        output: list[str] = []
        for item in result["results"]:
            output.extend(seed.output_lines(item["stdout"], item["stderr"]))
        return {"success": True, "output": output}

    async def state(self, body: bytes) -> dict[str, Any]:
        """Unsigned, as in the seed: anybody may read a CVM's history."""
        params = parse_json_object(body).get("params")
        if not isinstance(params, dict) or not isinstance(params.get("cvm_id"), str):
            raise SeedRefusal("invalid params: params.cvm_id: a CVM id (string) is required")
        long = params.get("should_be_long", False)
        if not isinstance(long, bool):
            raise SeedRefusal("invalid params: params.should_be_long: must be true or false")
        self._require_cvm(params)
        return {"success": True, "state": await self._state(params["cvm_id"], long=long)}

    async def mark(self, body: bytes) -> dict[str, Any]:
        params, authorized = self.authorize("mark-cvm", "cvm.mark", body)
        self._require_cvm(params)
        model = _validate(MarkParams, {"cvm_id": params.get("cvm_id"), "mode": params.get("cvm_mode")}, {"mode": "cvm_mode"})
        if model.mode != lc.IN_UPDATE:  # closing a CVM again is harmless: in-service replays are accepted
            result = await self.controller.service.mark(self._one_owner(_with(authorized, model), MARK_V1))
        else:
            with self._single_use("mark-cvm", authorized):
                result = await self.controller.service.mark(self._one_owner(_with(authorized, model), MARK_V1))
        return {"success": True, "mode": {"cvm_id": result["cvm_id"], "cvm_mode": result["mode"]}}

    async def stop(self, body: bytes) -> dict[str, Any]:
        params, authorized = self.authorize("stop-cvm", "cvm.stop", body)
        self._require_cvm(params)
        model = _validate(StopParams, {"cvm_id": params.get("cvm_id")})
        accepted = await self.controller.service.stop(
            self._one_owner(_with(authorized, model), "POST /v1/cvms/{id}/stop, `duet cvm stop`")
        )
        job = await self._job_end(accepted["job_id"], accepted["cvm_id"])
        if job["status"] != "succeeded":
            raise SeedRefusal(_job_reason(job))
        return {"success": True, "status": True}

    # --- helpers -------------------------------------------------------------------------

    async def _state(self, cvm_id: str, *, long: bool) -> dict[str, Any]:
        """The seed's state from the ledger: one item per finished command, outputs from the blobs.

        Bounded: the ledger is read on the loop (small entries), the outputs in a worker thread
        through the store's own read connection, chunk by chunk, each checked against its hash.
        The long form holds at most ``seed_state_max_bytes`` of output text (JSON-encoded), then
        a marker line naming the outputs' hashes; the short form's hashes are computed streaming
        and cached by the outputs' hashes (content-addressed, so they never go stale)."""
        finished = [entry for entry in self.controller.ledger.entries(cvm=cvm_id) if entry["event"] == lc.COMMAND_FINISHED]
        if long:
            items = await asyncio.to_thread(
                _long_items, self.controller.store, finished, self.controller.settings.seed_state_max_bytes
            )
            return {"cvm_id": cvm_id, "command_outputs": items}
        hashes = []
        for entry in finished:
            key = (entry["stdout_sha256"], entry["stderr_sha256"])
            if key not in self._output_hashes:
                try:
                    self._output_hashes[key] = await asyncio.to_thread(_streamed_output_hash, self.controller.store, *key)
                except OutputPruned:
                    self._output_hashes[key] = f"pruned: {_PRUNED.format(stdout=key[0], stderr=key[1]).strip()}"
            hashes.append({"command": entry["command"], "output_hash": self._output_hashes[key]})
        return {"cvm_id": cvm_id, "command_output_hashes": hashes}

    async def _job_end(self, job_id: str, cvm_id: str) -> dict[str, Any]:
        """Wait until a start or stop job ends: the seed's calls were synchronous.

        A job ends in the same transaction as a ledger entry of its CVM, so each such entry
        wakes us to re-read the job; nothing is missed because nothing awaits between the
        re-read and the wait.
        """
        changed = asyncio.Event()
        unsubscribe = self.controller.ledger.subscribe(lambda entry: changed.set() if entry.get("cvm") == cvm_id else None)
        try:
            while True:
                changed.clear()
                job = self.controller.service.job(job_id)
                if job["status"] != "running":
                    return job
                try:
                    await asyncio.wait_for(changed.wait(), JOB_RECHECK_S)
                except TimeoutError:
                    pass
        finally:
            unsubscribe()


@dataclasses.dataclass(frozen=True)
class _Admitted:
    """A seed request whose signature an owner's RSA key made; its params are validated next."""

    op: str
    signer: str
    digest: str


MARK_V1 = "POST /v1/cvms/{id}/mark, `duet cvm mark`"


def _with(admitted: _Admitted, params: ParamsT) -> AuthorizedRequest[ParamsT]:
    return AuthorizedRequest(op=admitted.op, params=params, signer=admitted.signer, digest=admitted.digest, protocol=PROTOCOL)


def _job_reason(job: dict[str, Any]) -> str:
    error = job.get("error") or {}
    return f"job {job['job_id']} {job['status']}: {error.get('message', 'no reason given')}"


def _reason(exc: DuetError) -> str:
    if isinstance(exc, NotFound) and exc.code == "unknown_cvm":
        return NO_SUCH_CVM
    return exc.message


# --- the state's outputs, bounded (run in a worker thread) ---------------------------------

_TRUNCATED = (
    "[duet: output truncated here: the seed state's long form holds at most {limit} bytes of output; the whole "
    "outputs are GET /v1/blobs/{stdout} (stdout) and GET /v1/blobs/{stderr} (stderr)]\n"
)
_PRUNED = (
    "[duet: output pruned by the controller's retention policy; its hashes stay in the ledger: stdout {stdout}, "
    "stderr {stderr}]\n"
)


def _long_items(store: Store, finished: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The long form's items, at most ``limit`` bytes of JSON-encoded output lines in all; past
    it, each item's output ends with (or is only) the truncation marker. Outputs are read only
    up to what still fits, each hashed whole against its address."""
    items: list[dict[str, Any]] = []
    room = limit
    for entry in finished:
        shas = {"stdout": entry["stdout_sha256"], "stderr": entry["stderr_sha256"]}
        marker = _TRUNCATED.format(limit=limit, **shas)
        if room <= 0:
            items.append({"command": entry["command"], "output": [marker]})
            continue
        try:
            texts, cut = [], False
            for sha in shas.values():
                data, size = store.blob_prefix(sha, room)
                cut = cut or size > len(data)
                texts.append(data.decode(errors="replace"))
        except OutputPruned:
            items.append({"command": entry["command"], "output": [_PRUNED.format(**shas)]})
            continue
        lines = []
        for line in seed.output_lines(*texts):
            cost = len(json.dumps(line)) + 2
            if cost > room:
                while line and len(json.dumps(line)) + 2 > room:  # the part of the line that fits
                    line = line[: min(room, len(line) * 3 // 4)]
                if line:
                    lines.append(line)
                cut = True
                break
            room -= cost
            lines.append(line)
        if cut:
            lines.append(marker)
            room = 0
        items.append({"command": entry["command"], "output": lines})
    return items


def _streamed_output_hash(store: Store, stdout_sha256: str, stderr_sha256: str) -> str:
    """``seed.output_hash(seed.output_lines(stdout, stderr))`` without holding either output:
    ``str(lines)`` is written line by line into the hash, each output checked against its address."""
    digest = hashlib.sha256(b"[")
    first = True
    for sha in (stdout_sha256, stderr_sha256):
        where = store.locate_blob(sha)
        check = hashlib.sha256()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        partial: list[str] = []  # the current line's pieces so far (a line may span many chunks)
        size = 0
        for chunk in itertools.chain(store.chunks(where), [None]):
            if chunk is not None:
                check.update(chunk)
                size += len(chunk)
            text = decoder.decode(chunk or b"", final=chunk is None)
            *complete, rest = text.split("\n")
            for piece in complete:
                digest.update((("" if first else ", ") + repr("".join([*partial, piece, "\n"]))).encode("utf-8"))
                partial, first = [], False
            if rest:
                partial.append(rest)
        if partial:
            digest.update((("" if first else ", ") + repr("".join(partial))).encode("utf-8"))
            first = False
        if size != where.size or check.hexdigest() != sha:
            raise StoredBlobAltered(f"the stored output {sha[:16]}… was altered on disk; the controller will not serve it")
    digest.update(b"]")
    return digest.hexdigest()


# --- routes ------------------------------------------------------------------------------

router = APIRouter(tags=["seed protocol (compatibility, no replay protection)"])


def _gateway(request: Request) -> SeedGateway:
    return request.app.state.seed_gateway  # type: ignore[no-any-return]


def _json(body: Any) -> Response:
    return Response(content=json.dumps(body).encode("ascii"), status_code=200, media_type="application/json")


async def _answer(
    request: Request, op: str, handle: Callable[[SeedGateway, bytes], Awaitable[dict[str, Any]] | dict[str, Any]]
) -> Response:
    """Run one seed operation; always HTTP 200 with a signed ``{"result", "signature"}``, errors included."""
    gateway = _gateway(request)
    try:
        body = await read_body(request, gateway.controller.settings.max_body_bytes)
        outcome = handle(gateway, body)
        result = await outcome if asyncio.iscoroutine(outcome) else outcome
    except DuetError as exc:
        result = seed.error_result(op, _reason(exc))
    except Exception:
        log.exception("unexpected error on seed operation %s", op)
        result = seed.error_result(op, "the controller hit an unexpected error; it is in the controller's log")
    # Off the loop: a run's answer holds its outputs (megabytes, JSON-escaped) to serialize and sign.
    return await asyncio.to_thread(lambda: _json(seed.signed_answer(gateway.key, result)))  # type: ignore[arg-type]


@router.get("/quote", summary="Seed protocol: the controller's RSA key and a quote binding it")
async def quote(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        return _json(gateway.quote())
    except DuetError as exc:
        log.error("seed /quote: the TEE could not quote: %s", exc.message)
        return _json({"quote": "", "public_key": gateway.public_pem})


OPERATIONS: tuple[tuple[str, str, Callable[[SeedGateway, bytes], Awaitable[dict[str, Any]] | dict[str, Any]], str], ...] = (
    ("/start_cvm", "start-cvm", SeedGateway.start, "start a CVM (signed params); answers when it is up"),
    ("/run_commands", "run-commands", SeedGateway.run, "run commands on an in-update CVM (signed params)"),
    ("/get_cvm_state", "get-cvm-state", SeedGateway.state, "a CVM's commands with output hashes or outputs"),
    ("/mark_cvm", "mark-cvm", SeedGateway.mark, "mark a CVM in-service or in-update (signed params)"),
    ("/stop_cvm", "stop-cvm", SeedGateway.stop, "stop a CVM (signed params); answers when it is stopped"),
)
"""The seed's operations: path, name in its answers, the gateway's method, what it does."""


def _route(op: str, handle: Callable[[SeedGateway, bytes], Awaitable[dict[str, Any]] | dict[str, Any]]) -> Any:
    async def route(request: Request) -> Response:
        return await _answer(request, op, handle)

    return route


for _path, _op, _handle, _summary in OPERATIONS:
    router.add_api_route(_path, _route(_op, _handle), methods=["POST"], summary=f"Seed protocol: {_summary}")


def install_seed_api(app: FastAPI, controller: Controller) -> None:
    """Serve the seed protocol on ``app``: create or load the RSA key, mount the routes, warn."""
    key = load_or_create_seed_key(controller.tee.sealed_dir())
    app.state.seed_gateway = SeedGateway(controller, key)
    app.include_router(router)
    log.warning(REPLAY_WARNING)
    if controller.settings.seed_allow_replays:
        log.warning(REPLAYS_ALLOWED_WARNING)
