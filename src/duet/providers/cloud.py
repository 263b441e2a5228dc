"""What the Azure, AWS and GCP providers share, so that each cloud module holds only what
differs: its SDK, its request bodies and its error vocabulary.

Every cloud CVM is found again from its id alone (``base_name`` and the ``duet-cvm`` /
``duet-prefix`` tags), every SDK call blocks and so runs in a worker thread (``in_thread``),
and every cloud error reaches the owner in one form: ``<Cloud>: <step> failed: <cloud code>:
<cloud message> (<hint>)``, with what ``create`` had made already deleted (``Provisioning``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from duet.errors import ConfigError, DuetError, NotFound, UpstreamError
from duet.providers import cloud_init
from duet.providers.base import CvmSpec, Machine, Progress

TAG_CVM = "duet-cvm"
TAG_PREFIX = "duet-prefix"
AUTHORIZED_KEY = "authorized_key"
"""Where a cloud CVM's machine record keeps the controller's login key."""

T = TypeVar("T")


def base_name(cvm_id: str, prefix: str) -> str:
    """Readable (a slug of the id) and unique (a digest of the whole id), and derived from the
    id alone, so that ``delete`` and ``reconcile`` find a CVM's resources after a crash."""
    slug = re.sub(r"[^a-z0-9-]", "-", cvm_id.lower()).strip("-")[:20].strip("-")
    digest = hashlib.sha256(cvm_id.encode()).hexdigest()[:8]
    return f"{prefix}-{slug}-{digest}" if slug else f"{prefix}-{digest}"


def cvm_tags(cvm_id: str, prefix: str) -> dict[str, str]:
    """The prefix tag keeps two controllers sharing a resource group, account or project from
    taking each other's CVMs for orphans."""
    return {TAG_CVM: cvm_id, TAG_PREFIX: prefix}


async def in_thread(fn: Callable[[], T]) -> T:
    """The clouds' SDKs block; a worker thread keeps the controller answering while a VM boots."""
    return await asyncio.to_thread(fn)


@contextmanager
def config_numbers(cloud: str, *, code: str) -> Iterator[None]:
    """A setting that is not a number stops the controller at start, not at its first CVM."""
    try:
        yield
    except ValueError as exc:
        raise ConfigError(f"{cloud} provider: bad number in configuration: {exc}", code=code) from None


def _never(_: object) -> bool:
    return False


@dataclass(frozen=True)
class CloudErrors:
    """How one cloud's SDK reports failure, read into the one form duet reports to the owner."""

    cloud: str
    """As the owner reads it in a message: ``Azure``, ``AWS``, ``GCP``."""
    read: Callable[[BaseException], tuple[str, str]]
    """(the cloud's error code, the cloud's own message) of an SDK exception."""
    hints: Mapping[str, str]
    """What the owner can do about a cloud error code (quota, capacity, permissions, region) or,
    keyed by class name, about an SDK exception (no credentials, endpoint unreachable). The class
    name is looked up first: an authentication failure may carry a cloud code that would
    suggest something else."""
    missing: Callable[[BaseException], bool] = _never
    """Whether the SDK says the resource does not exist."""
    gone_codes: frozenset[str] = frozenset()
    """More cloud codes that, answering a delete, mean the resource is already gone."""
    in_use: Callable[[str], bool] = _never
    """Whether a cloud code, answering a delete, means a reference is still being released."""

    def upstream(self, action: str, exc: BaseException, *, code: str) -> UpstreamError:
        cloud_code, message = self.read(exc)
        hint = self.hints.get(type(exc).__name__) or self.hints.get(cloud_code)
        text = f"{self.cloud}: {action} failed: {cloud_code}: {message}"
        return UpstreamError(f"{text} ({hint})" if hint else text, code=code)

    @contextmanager
    def calling(self, action: str, *, code: str, gone: str = "") -> Iterator[None]:
        """SDK exceptions become an ``UpstreamError`` naming ``action`` (or, given ``gone`` and a
        missing resource, the ``cvm_gone`` ``NotFound`` with that message); duet's own errors
        pass as they are."""
        try:
            yield
        except DuetError:
            raise
        except Exception as exc:
            if gone and self.missing(exc):
                raise NotFound(gone, code="cvm_gone") from None
            raise self.upstream(action, exc, code=code) from None

    async def delete(self, label: str, fn: Callable[[], object], *, patience: float = 0.0) -> None:
        """Deleting what is already gone succeeds, so ``delete`` can run again after a crash. While
        the cloud says the resource is still in use, the call is retried with a back-off bounded by
        ``patience`` seconds: a deleted dependant's reference takes a while to be released, and
        this is the only wait that no cloud operation reports the end of."""
        deadline = time.monotonic() + patience
        delay = 1.0
        while True:
            try:
                await in_thread(fn)
                return
            except Exception as exc:
                cloud_code, _ = self.read(exc)
                if cloud_code in self.gone_codes or self.missing(exc):
                    return
                if not self.in_use(cloud_code) or time.monotonic() + delay > deadline:
                    raise self.upstream(label, exc, code="cloud_delete_failed") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


class Provisioning:
    """One ``create``. A failure names the step it happened in, and whatever was created is
    deleted before the error is raised, so a failed start leaves nothing billed; if that cleanup
    fails too, the error says so and the next ``reconcile`` retries it.

    ``host_key`` is None for an attested CVM (``spec.attested``): the guest makes its own at first
    boot and the controller pins it once the CVM's evidence binds it. For the owner's opt-out it
    is generated here, for the guest's user-data, so that the controller pins a key it knows
    before the first connection (``cloud_init``)."""

    def __init__(
        self,
        errors: CloudErrors,
        spec: CvmSpec,
        ssh_public_key: str,
        progress: Progress,
        cleanup: Callable[[], Awaitable[None]],
    ) -> None:
        self._errors = errors
        self._cvm_id = spec.cvm_id
        self._ssh_public_key = ssh_public_key
        self._progress = progress
        self._cleanup = cleanup
        self._step = "starting"
        self.host_key: cloud_init.HostKey | None = (
            None if spec.attested else cloud_init.generate_host_key(comment=f"duet-{spec.cvm_id}")
        )

    def user_data(self) -> str:
        """The guest's ``#cloud-config``: with the host key only for the owner's opt-out. Holds the
        host private key then: never log it."""
        return cloud_init.user_data(self.host_key)

    def step(self, label: str, *, report: bool = True) -> None:
        self._step = label
        if report:
            self._progress(label)

    async def __aenter__(self) -> Provisioning:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not isinstance(exc, Exception):
            return  # success; a cancellation is left to the controller's own recovery
        if isinstance(exc, UpstreamError):
            error = exc
        else:
            error = self._errors.upstream(self._step, exc, code="cloud_provisioning_failed")
        self._progress("cleaning up after failure")
        try:
            await self._cleanup()
        except UpstreamError as failed:
            error = UpstreamError(
                f"{error.message}; cleanup also failed, reconcile will retry: {failed.message}", code=error.code
            )
        raise error from None

    def machine(self, provider: str, *, host: str, port: int, username: str, resources: dict[str, Any]) -> Machine:
        """The record also keeps the controller's login key, which the lockdown removes from the guest.
        ``host_key`` is empty for an attested CVM: only its evidence may name the key to pin."""
        return Machine(
            cvm_id=self._cvm_id,
            provider=provider,
            host=host,
            port=port,
            username=username,
            host_key=self.host_key.public if self.host_key is not None else "",
            resources=resources | {AUTHORIZED_KEY: self._ssh_public_key},
        )


def machine_lockdown_command(machine: Machine) -> str:
    """The lockdown of a cloud CVM, from the controller key its machine record keeps."""
    key = machine.resources.get(AUTHORIZED_KEY, "")
    if not key:
        raise ConfigError(f"CVM {machine.cvm_id}: machine record lacks the authorized key", code="machine_incomplete")
    return cloud_init.lockdown_command(key)
