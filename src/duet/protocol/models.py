"""Pydantic models of what owners send (server side).

Models are strict: a wrongly typed field is refused rather than coerced (the seed accepted a
command list given as one string and ran each character as a command).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


PARAMS_BY_OP: dict[str, type[_Strict]] = {
    "cvm.start": StartParams,
    "cvm.run": RunParams,
    "cvm.mark": MarkParams,
    "cvm.stop": StopParams,
    "cvm.attest": AttestParams,
}
