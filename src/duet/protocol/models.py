"""Pydantic models of what owners send (server side).

Models are strict: a wrongly typed field is refused rather than coerced (the seed accepted a
command list given as one string and ran each character as a command).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from duet.errors import ConfigError
from duet.protocol.approvals import MAX_REASON_CHARS, ApprovalPolicy
from duet.protocol.canonical import canonical
from duet.protocol.lifecycle import CvmType, MarkableMode, ProviderName

NONCE_PATTERN = r"^[0-9a-f]{32}$"
HEX64_PATTERN = r"^[0-9a-f]{64}$"

MAX_COMMANDS = 100
MAX_COMMAND_LENGTH = 65536
MAX_COMMAND_BYTES = 60_000
"""A command as its ledger entries hold it (JSON-escaped: a control character takes six bytes)
may take at most this many bytes, so that every entry fits a C2SP tile's entry bundle (each
entry at most 65,535 bytes; ledger/tiles.py). Longer scripts: copy them to the CVM in parts."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SignedRequestBody(_Strict):
    op: str = Field(min_length=1, max_length=64)
    controller: str = Field(pattern=HEX64_PATTERN)
    nonce: str = Field(pattern=NONCE_PATTERN)
    issued_at: str = Field(min_length=1, max_length=64)
    params: dict[str, Any]


class SignedRequest(_Strict):
    request: SignedRequestBody
    signer: str = Field(pattern=HEX64_PATTERN)
    signature: str = Field(min_length=1, max_length=4096)


class StartParams(_Strict):
    cvm_type: CvmType
    provider: ProviderName | None = None
    """None: the controller's default provider."""


class RunParams(_Strict):
    cvm_id: str = Field(pattern=HEX64_PATTERN)
    commands: list[str] = Field(min_length=1, max_length=MAX_COMMANDS)
    timeout_s: float | None = Field(default=None, gt=0)
    output_limit: int | None = Field(default=None, gt=0)

    @field_validator("commands")
    @classmethod
    def _commands_not_blank(cls, commands: list[str]) -> list[str]:
        for index, command in enumerate(commands):
            if not command.strip():
                raise ValueError(f"commands[{index}] is empty")
            if len(command) > MAX_COMMAND_LENGTH:
                raise ValueError(f"commands[{index}] is longer than {MAX_COMMAND_LENGTH} characters")
            encoded = len(canonical(command)) - 2  # without the quotes
            if encoded > MAX_COMMAND_BYTES:
                raise ValueError(
                    f"commands[{index}] takes {encoded} bytes in the ledger (JSON-escaped); at most {MAX_COMMAND_BYTES} fit "
                    "an entry: split it, or copy a long script to the CVM in parts"
                )
        return commands


class MarkParams(_Strict):
    cvm_id: str = Field(pattern=HEX64_PATTERN)
    mode: MarkableMode
    final: bool = False


class StopParams(_Strict):
    cvm_id: str = Field(pattern=HEX64_PATTERN)


class AttestParams(_Strict):
    cvm_id: str = Field(pattern=HEX64_PATTERN)


MAX_OWNER_CHANGES = 16
MAX_OWNER_KEY_CHARS = 4096


class OwnersChangeParams(_Strict):
    """``owners.change``: owner keys to add (public keys, SPKI PEM) and key ids to remove."""

    add: list[str] = Field(default_factory=list, max_length=MAX_OWNER_CHANGES)
    remove: list[str] = Field(default_factory=list, max_length=MAX_OWNER_CHANGES)

    @field_validator("add")
    @classmethod
    def _pems(cls, add: list[str]) -> list[str]:
        for index, pem in enumerate(add):
            if len(pem) > MAX_OWNER_KEY_CHARS or "-----BEGIN PUBLIC KEY-----" not in pem:
                raise ValueError(f"add[{index}] is not an owner public key (SPKI PEM, at most {MAX_OWNER_KEY_CHARS} characters)")
        return add

    @field_validator("remove")
    @classmethod
    def _key_ids(cls, remove: list[str]) -> list[str]:
        for index, key_id in enumerate(remove):
            if not isinstance(key_id, str) or len(key_id) != 64 or any(c not in "0123456789abcdef" for c in key_id):
                raise ValueError(f"remove[{index}] is not an owner key id (64 lowercase hex characters)")
        return remove


class PolicyChangeParams(_Strict):
    """``policy.change``: the new approval policy, the same shape as the policy file."""

    policy: dict[str, Any]

    @field_validator("policy")
    @classmethod
    def _policy(cls, policy: dict[str, Any]) -> dict[str, Any]:
        try:
            ApprovalPolicy.from_dict(policy, "the proposed policy")
        except ConfigError as exc:
            raise ValueError(f"{exc.message} ({exc.code})") from None
        return policy


class VoteParams(_Strict):
    """``proposal.approve`` and ``proposal.withdraw``: signing the id signs the whole proposed request."""

    proposal_id: str = Field(pattern=HEX64_PATTERN)


class RejectParams(_Strict):
    proposal_id: str = Field(pattern=HEX64_PATTERN)
    reason: str | None = Field(default=None, max_length=MAX_REASON_CHARS)


PARAMS_BY_OP: dict[str, type[_Strict]] = {
    "cvm.start": StartParams,
    "cvm.run": RunParams,
    "cvm.mark": MarkParams,
    "cvm.stop": StopParams,
    "cvm.attest": AttestParams,
    "owners.change": OwnersChangeParams,
    "policy.change": PolicyChangeParams,
    "proposal.approve": VoteParams,
    "proposal.reject": RejectParams,
    "proposal.withdraw": VoteParams,
}
