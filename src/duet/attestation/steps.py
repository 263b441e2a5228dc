"""Named verification steps and their verdicts, shared by every kind of evidence.

A verifier runs its steps in a fixed order, each establishing what the next relies on (a key,
then what that key signed). It reports every step: held, failed (with a stable code), not
evaluated (its collateral was not given), or not reached (an earlier step failed). A person
reading a verdict learns which check to look at; a program branches on the code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from duet.errors import VerificationError


@dataclass(frozen=True)
class StepVerdict:
    step: str
    ok: bool | None
    """True held; False failed; None not checked (not reached after a failure, or not asked)."""
    code: str | None = None
    message: str = ""


class StepsVerdict:
    """What a verdict made of steps says as a whole: mixed into the verdicts of every kind of
    evidence, which hold their ``steps`` in order."""

    steps: tuple[StepVerdict, ...]

    @property
    def failure(self) -> StepVerdict | None:
        return next((s for s in self.steps if s.ok is False), None)

    @property
    def ok(self) -> bool:
        """True only if no step failed."""
        return self.failure is None


class StepFailed(VerificationError):
    """A verification step failed; ``step`` names it and ``code`` is stable for programs."""

    def __init__(self, message: str, *, code: str, step: str) -> None:
        super().__init__(message, code=code)
        self.step = step


def step_verdicts(
    order: Sequence[str],
    done: Mapping[str, tuple[bool | None, str]],
    failure: StepFailed | None = None,
) -> tuple[StepVerdict, ...]:
    """Every step of ``order``: those in ``done`` as recorded (``(True, what held)`` or
    ``(None, why not evaluated)``), the failed one, and the rest as not reached after it.

    A step neither done nor failed before the failure is reported as not reached too."""
    verdicts: list[StepVerdict] = []
    stopped = False
    for step in order:
        if failure is not None and step == failure.step:
            verdicts.append(StepVerdict(step, False, failure.code, failure.message))
            stopped = True
        elif not stopped and step in done:
            ok, message = done[step]
            verdicts.append(StepVerdict(step, ok, message=message))
        else:
            verdicts.append(StepVerdict(step, None, message="not reached" if failure is not None else "not asked"))
    return tuple(verdicts)


class PolicyCheck(NamedTuple):
    """One check of a policy: what it expected, what the evidence has, whether that is acceptable."""

    check: str
    expected: str
    actual: str
    ok: bool


class PolicyError(VerificationError):
    """The evidence verified but what it describes is not acceptable under the policy.

    ``code`` names the first failed check (``debug_enclave``, ``measurement_not_allowed``, ...);
    ``checks`` holds every check, so a caller can still show them side by side.
    """

    code = "policy_violation"

    def __init__(self, message: str, *, code: str, checks: Sequence[PolicyCheck] = ()) -> None:
        super().__init__(message, code=code)
        self.checks = tuple(checks)
