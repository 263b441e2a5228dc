"""Which SGX enclaves are acceptable: the judgement made *after* the evidence verified.

Signature checks (:mod:`duet.attestation.sgx.verify`) only prove that a genuine SGX platform
produced the quote. Whether the enclave is the one you expect is a separate decision, made here,
so that the same verified evidence can be judged against different policies — and so that
evidence learnt another way (an Azure Attestation token's claims) is judged by the very same
rules: the policy reads :class:`EnclaveClaims`, which a quote's report body and MAA's SGX
claims both are.

Policy file format (TOML; every key is optional)::

    # Accept any of these enclave measurements (hex, 32 bytes each). Absent: any MRENCLAVE.
    mrenclave = ["d37d983a85d63fb49649610e2eba0930ecdbff6d113aca3ff3fc7261696c0134"]
    # The enclave signer (hex, 32 bytes). Absent: any signer.
    mrsigner = "feb995eb86c349ac98e5afbbb5732ca7376ec9979002702ea17ad476e0853a04"
    isv_prod_id = 1        # exact product id
    min_isv_svn = 1        # ISVSVN must be >= this
    allow_debug = false    # default false: debug enclaves' memory is readable by the host
    # TCB statuses accepted when collateral evaluated them (default: these two)
    tcb_statuses = ["UpToDate", "SWHardeningNeeded"]

The default policy (no file, :data:`DEFAULT_POLICY`) pins no measurement but still refuses
debug enclaves: a debug enclave gives no confidentiality at all, so accepting one must be an
explicit choice. See also ``docs/policy.md``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Union

from duet.attestation.sgx.abi import ParsedQuote
from duet.attestation.sgx.collateral import TCB_STATUSES, TcbEvaluation
from duet.attestation.steps import PolicyCheck as PolicyCheck  # re-exported: the SGX API keeps its names
from duet.attestation.steps import PolicyError as PolicyError
from duet.errors import ConfigError


class EnclaveClaims(Protocol):
    """What an enclave policy judges, whoever vouches for it: a verified quote's report body
    (:class:`~duet.attestation.sgx.abi.ReportBody`) or a verified MAA token's SGX claims
    (:class:`~duet.attestation.maa.MaaSgxClaims`)."""

    @property
    def mr_enclave(self) -> bytes: ...

    @property
    def mr_signer(self) -> bytes: ...

    @property
    def isv_prod_id(self) -> int: ...

    @property
    def isv_svn(self) -> int: ...

    @property
    def debug(self) -> bool: ...


_KEYS = {"mrenclave", "mrsigner", "isv_prod_id", "min_isv_svn", "allow_debug", "tcb_statuses"}
DEFAULT_TCB_STATUSES: tuple[str, ...] = ("UpToDate", "SWHardeningNeeded")
"""Accepted when evaluated: current, or current but for software mitigations the enclave's
own build decides. Every other status means a known, unmitigated platform weakness."""
_CODES = {
    "debug": "debug_enclave",
    "mrenclave": "mrenclave_not_allowed",
    "mrsigner": "mrsigner_mismatch",
    "isv_prod_id": "isv_prod_id_mismatch",
    "min_isv_svn": "isv_svn_too_low",
    "tcb_status": "tcb_status_not_allowed",
    "qe_tcb_status": "qe_tcb_status_not_allowed",
}


def _statuses(value: Any, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: tcb_statuses must be a list of status names", code="bad_policy")
    for v in value:
        if v not in TCB_STATUSES:
            raise ConfigError(f"{source}: unknown TCB status {v!r}; known: {', '.join(TCB_STATUSES)}", code="bad_policy")
        if v == "Revoked":
            raise ConfigError(f"{source}: a Revoked TCB level cannot be accepted", code="bad_policy")
    return tuple(value)


def _hex32(value: Any, key: str, source: str) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {key} must be a hex string, got {type(value).__name__}", code="bad_policy")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ConfigError(f"{source}: {key} value {value!r} is not hex", code="bad_policy") from None
    if len(raw) != 32:
        raise ConfigError(f"{source}: {key} value {value!r} must be 32 bytes (64 hex digits), got {len(raw)}", code="bad_policy")
    return raw


def _uint(value: Any, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ConfigError(f"{source}: {key} must be an integer in 0..65535, got {value!r}", code="bad_policy")
    return value


def _violation(check: PolicyCheck) -> str:
    if check.check == "debug":
        return (
            "the enclave is a debug enclave (ATTRIBUTES.FLAGS DEBUG bit set): its memory is readable "
            "by the host, so it proves nothing; set allow_debug = true only for development"
        )
    if check.check in ("tcb_status", "qe_tcb_status"):
        what = "the platform's" if check.check == "tcb_status" else "the quoting enclave's"
        return f"{what} TCB status is {check.actual}; the policy accepts {check.expected} (tcb_statuses)"
    return f"{check.check}: expected {check.expected}, the quote has {check.actual}"


@dataclass(frozen=True)
class Policy:
    mrenclave: tuple[bytes, ...] = ()
    """Allowed MRENCLAVE values; empty means any."""
    mrsigner: bytes | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None
    allow_debug: bool = False
    tcb_statuses: tuple[str, ...] = DEFAULT_TCB_STATUSES
    """TCB statuses accepted for the platform and the quoting enclave, when collateral gave them."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "policy") -> Policy:
        unknown = set(data) - _KEYS
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_KEYS))}", code="bad_policy"
            )
        mre = data.get("mrenclave", [])
        if isinstance(mre, str):
            mre = [mre]
        if not isinstance(mre, list):
            raise ConfigError(f"{source}: mrenclave must be a list of hex strings", code="bad_policy")
        allow_debug = data.get("allow_debug", False)
        if not isinstance(allow_debug, bool):
            raise ConfigError(f"{source}: allow_debug must be true or false", code="bad_policy")
        return cls(
            mrenclave=tuple(_hex32(v, "mrenclave", source) for v in mre),
            mrsigner=_hex32(data["mrsigner"], "mrsigner", source) if "mrsigner" in data else None,
            isv_prod_id=_uint(data["isv_prod_id"], "isv_prod_id", source) if "isv_prod_id" in data else None,
            min_isv_svn=_uint(data["min_isv_svn"], "min_isv_svn", source) if "min_isv_svn" in data else None,
            allow_debug=allow_debug,
            tcb_statuses=_statuses(data["tcb_statuses"], source) if "tcb_statuses" in data else DEFAULT_TCB_STATUSES,
        )

    @classmethod
    def from_toml(cls, text: str, source: str = "policy") -> Policy:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source} is not valid TOML: {exc}", code="bad_policy") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: Path | str) -> Policy:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read policy {path}: {exc.strerror}", code="policy_unreadable") from None
        except UnicodeDecodeError:
            raise ConfigError(f"policy {path} is not UTF-8 text (TOML)", code="bad_policy") from None
        return cls.from_toml(text, str(path))

    def check(self, claims: Union[EnclaveClaims, ParsedQuote], tcb: TcbEvaluation | None = None) -> list[PolicyCheck]:
        """Every check with what was expected and found; ``ok`` False marks a violation.

        A parsed quote stands for its ISV enclave report body (not the quoting enclave's). The
        TCB statuses are checked only where ``tcb`` (from the collateral) evaluated them."""
        body: EnclaveClaims = claims.report_body if isinstance(claims, ParsedQuote) else claims
        out = [
            PolicyCheck(
                "debug",
                "debug allowed" if self.allow_debug else "not a debug enclave",
                "debug" if body.debug else "not debug",
                self.allow_debug or not body.debug,
            )
        ]
        out.append(
            PolicyCheck(
                "mrenclave",
                " or ".join(m.hex() for m in self.mrenclave) or "any",
                body.mr_enclave.hex(),
                not self.mrenclave or body.mr_enclave in self.mrenclave,
            )
        )
        out.append(
            PolicyCheck(
                "mrsigner",
                self.mrsigner.hex() if self.mrsigner else "any",
                body.mr_signer.hex(),
                self.mrsigner is None or body.mr_signer == self.mrsigner,
            )
        )
        out.append(
            PolicyCheck(
                "isv_prod_id",
                "any" if self.isv_prod_id is None else str(self.isv_prod_id),
                str(body.isv_prod_id),
                self.isv_prod_id is None or body.isv_prod_id == self.isv_prod_id,
            )
        )
        out.append(
            PolicyCheck(
                "min_isv_svn",
                "any" if self.min_isv_svn is None else f">= {self.min_isv_svn}",
                str(body.isv_svn),
                self.min_isv_svn is None or body.isv_svn >= self.min_isv_svn,
            )
        )
        accepted = " or ".join(self.tcb_statuses)
        if tcb is not None and tcb.platform_status is not None:
            out.append(PolicyCheck("tcb_status", accepted, tcb.platform_status, tcb.platform_status in self.tcb_statuses))
        if tcb is not None and tcb.qe_status is not None:
            out.append(PolicyCheck("qe_tcb_status", accepted, tcb.qe_status, tcb.qe_status in self.tcb_statuses))
        return out

    def enforce(self, claims: Union[EnclaveClaims, ParsedQuote], tcb: TcbEvaluation | None = None) -> list[PolicyCheck]:
        """Every check, when all hold; otherwise :class:`PolicyError` coded for the first failure
        (debug first: a debug enclave voids every other check)."""
        checks = self.check(claims, tcb)
        failed = next((c for c in checks if not c.ok), None)
        if failed is not None:
            raise PolicyError(_violation(failed), code=_CODES[failed.check], checks=checks)
        return checks


DEFAULT_POLICY = Policy()
"""The policy when none is given: any enclave, never a debug one."""
