"""What a CVM provider is (design.md §8).

A provider creates a machine that accepts SSH login with the controller's per-CVM key, and
tells the controller the host key to pin. It names every resource after the CVM id, so that
``delete`` and ``reconcile`` find them again after a controller restart, even when ``create``
was interrupted before it returned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from duet.attestation.bundle import CvmRoots

from duet.protocol.lifecycle import CVM_TYPES, CvmType

__all__ = [
    "CVM_TYPES",
    "CvmSpec",
    "CvmType",
    "EvidenceSource",
    "Machine",
    "Progress",
    "Provider",
    "LOCKDOWN_MARKER",
    "first_setting",
]

Progress = Callable[[str], None]
"""Called with a short human-readable step description, e.g. ``"creating public IP"``."""


def first_setting(env: Mapping[str, str], *names: str, default: str = "") -> str:
    """The first non-empty of several setting names: duet's own ``DUET_*`` names come first,
    then the names other tools (the seed's ``azure_config.env``, the clouds' CLIs) use."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return default


@dataclass(frozen=True)
class CvmSpec:
    cvm_id: str
    cvm_type: CvmType
    options: dict[str, str] = field(default_factory=dict)
    attested: bool = True
    """The CVM's host key is born in it and pinned once its evidence binds it (design §10): the
    provider sends no host key through the cloud's control plane and returns ``host_key`` empty.
    False (the owner's opt-out): the provider installs a key it made and returns it to pin."""


EvidenceSourceName = Literal["configfs-tsm", "azure-vtpm", "simulated"]


@dataclass(frozen=True)
class EvidenceSource:
    """How the collection program (``duet/guest/collect_evidence.py``) gets evidence on this
    provider's CVMs; the controller runs it over SSH."""

    source: EvidenceSourceName
    host_key_file: str = "/etc/ssh/ssh_host_ed25519_key.pub"
    """The CVM's own Ed25519 host key, the one sshd presents: what the evidence binds."""
    privileged: bool = True
    """Run with ``sudo -n`` (configfs-tsm and the vTPM need root)."""
    simulator: tuple[str, ...] = ()
    """``simulated``: the program playing the CVM's hardware (``duet.providers.local_tsm``)."""


LOCKDOWN_MARKER = "duet-lockdown-complete"
"""Printed by every lockdown command as its last act: with exit status 0, the proof it ran to the end."""


@dataclass
class Machine:
    """Where a CVM is and how to reach it; stored as JSON with the CVM."""

    cvm_id: str
    provider: str
    host: str = ""
    port: int = 22
    username: str = ""
    host_key: str = ""
    """The SSH host public key to pin, in OpenSSH one-line form (``ssh-ed25519 AAAA...``)."""
    resources: dict[str, Any] = field(default_factory=dict)
    """Provider-specific names and ids of what was created."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Machine:
        return cls(**data)


class Provider(Protocol):
    name: str

    async def create(self, spec: CvmSpec, ssh_public_key: str, progress: Progress) -> Machine:
        """Create the CVM; on failure, delete what was created, then raise."""

    async def delete(self, machine: Machine, progress: Progress) -> None:
        """Delete everything created for ``machine.cvm_id``; a partial record is enough."""

    async def reconcile(self, known: list[Machine]) -> list[Machine]:
        """After a restart: delete resources of CVMs not in ``known``; return the live known ones."""

    async def resume(self, machine: Machine) -> Machine:
        """Make a known machine reachable again after a controller restart."""

    def lockdown_command(self, machine: Machine) -> str:
        """Shell command, run over SSH at ``mark in-service --final``, that removes the
        controller's key from the CVM and stops SSH there for good."""

    def evidence_source(self, machine: Machine, cvm_type: CvmType) -> EvidenceSource:
        """Where the CVM's attestation evidence comes from."""


@runtime_checkable
class SimulatedHardware(Protocol):
    """A provider whose CVMs run on SIMULATED hardware (the local one): the roots its evidence
    chains to, trusted by the controller only with ``--trust-simulated-cvm``."""

    def simulated_roots(self) -> CvmRoots: ...
