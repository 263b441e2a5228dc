"""Every rule an auditor replays, fed once per entry: the lifecycle's and the approvals'.

``LifecycleReplay`` (modes, transitions, keys, requests) and ``ProposalReplay`` (every vote
recounted under the policy and owner set in force) are kept apart, one module each; an auditor
feeds both the same entries in the same order, and keeps both between runs (its checkpoint).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from duet.protocol.approvals import ApprovalPolicy, ProposalReplay
from duet.protocol.lifecycle import CvmFacts, LifecycleReplay, Violation


@dataclass
class RulesReplay:
    lifecycle: LifecycleReplay = field(default_factory=LifecycleReplay)
    proposals: ProposalReplay = field(default_factory=lambda: ProposalReplay(check_signatures=True))
    """An auditor verifies every vote's signature where the ledger holds the owner's key."""

    @classmethod
    def start(cls, *, owners: Iterable[str] | None = None, policy: ApprovalPolicy | None = None) -> RulesReplay:
        """For entries that do not name the owner set and the policy themselves (one CVM's): the
        attested identity's. A whole ledger names them (``controller.owners``, ``controller.policy``)."""
        owners = tuple(owners) if owners is not None else None
        return cls(
            LifecycleReplay(initial_owners=owners),
            ProposalReplay(initial_owners=owners, initial_policy=policy, check_signatures=True),
        )

    @property
    def cvms(self) -> dict[str, CvmFacts]:
        return self.lifecycle.cvms

    def apply(self, entry: dict[str, Any]) -> list[Violation]:
        return [*self.lifecycle.apply(entry), *self.proposals.apply(entry)]
