"""Which CVMs are acceptable: the CVM policy (``--cvm-policy FILE``, TOML; docs/policy.md).

Verification (each kind's ``verify``) says the evidence is genuine; this says whether what it
describes may serve: allowed measurements, a minimum TCB, debug and migration forbidden, the
VMPL, the signer kinds, and how old evidence may be before ``mark in-service`` re-attests.

    max_evidence_age_s = 3600      # mark in-service re-attests when the last pass is older
    allow_debug = false            # the defaults; true only for development
    allow_migration = false

    [snp]
    signers = ["VCEK", "VLEK"]
    vmpl = 0
    [snp.measurements]
    measurement = ["<96 hex digits>", ...]
    [snp.min_tcb]
    bl_spl = 3
    snp_spl = 8

    [tdx.measurements]
    mrtd = ["<96 hex digits>"]
    rtmr0 = ["..."]

A measurement not listed is not checked; a platform section absent accepts any measurement of
that platform (the verdict then says "any", so every user sees that nothing was pinned). The
policy's SHA-256 (:attr:`CvmPolicy.sha256`, over its canonical JSON, so that formatting and
comments do not change it) goes into every ``cvm.attested`` ledger entry.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duet.attestation.cvm import CvmClaims, Platform
from duet.attestation.steps import PolicyCheck, PolicyError
from duet.errors import ConfigError

DEFAULT_MAX_EVIDENCE_AGE_S = 3600
MEASUREMENT_NAMES: dict[Platform, tuple[str, ...]] = {
    "snp": ("measurement",),
    "tdx": ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"),
}
SIGNERS: dict[Platform, tuple[str, ...]] = {"snp": ("VCEK", "VLEK"), "tdx": ("PCK",)}
_TOP_KEYS = {"max_evidence_age_s", "allow_debug", "allow_migration", "snp", "tdx"}
_PLATFORM_KEYS = {"measurements", "min_tcb", "signers", "vmpl"}
_CODES = {
    "debug": "debug_allowed",
    "migration": "migration_allowed",
    "signer": "signer_not_allowed",
    "vmpl": "vmpl_mismatch",
    "measurement": "measurement_not_allowed",
    "tcb": "tcb_too_low",
}


def _bad(source: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {message}", code="bad_cvm_policy")


@dataclass(frozen=True)
class PlatformRules:
    """The rules for one platform (SNP or TDX)."""

    measurements: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Allowed lowercase-hex values by measurement name; a name absent is not checked."""
    min_tcb: dict[str, int] = field(default_factory=dict)
    """Minimum of each named TCB component (each compared on its own)."""
    signers: tuple[str, ...] = ()
    """Allowed signer kinds; empty: any the platform has."""
    vmpl: int | None = None
    """SNP: the VMPL the report must come from (0: the guest's most privileged level)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "measurements": {name: list(values) for name, values in sorted(self.measurements.items())},
            "min_tcb": dict(sorted(self.min_tcb.items())),
            "signers": list(self.signers),
            "vmpl": self.vmpl,
        }


def _platform_rules(platform: Platform, data: Any, source: str) -> PlatformRules:
    where = f"[{platform}]"
    if not isinstance(data, dict):
        raise _bad(source, f"{where} must be a table")
    unknown = set(data) - _PLATFORM_KEYS
    if unknown:
        raise _bad(source, f"unknown key(s) in {where}: {', '.join(sorted(unknown))}; known: {', '.join(sorted(_PLATFORM_KEYS))}")
    measurements: dict[str, tuple[str, ...]] = {}
    given = data.get("measurements", {})
    if not isinstance(given, dict):
        raise _bad(source, f"{where}.measurements must be a table of lists")
    for name, values in given.items():
        if name not in MEASUREMENT_NAMES[platform]:
            raise _bad(source, f"{where}.measurements: unknown {name!r}; known: {', '.join(MEASUREMENT_NAMES[platform])}")
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not values:
            raise _bad(source, f"{where}.measurements.{name} must be a non-empty list of hex strings")
        measurements[name] = tuple(_hex48(v, f"{where}.measurements.{name}", source) for v in values)
    min_tcb = data.get("min_tcb", {})
    if not isinstance(min_tcb, dict) or not all(_is_uint(v) for v in min_tcb.values()):
        raise _bad(source, f"{where}.min_tcb must be a table of non-negative integers")
    signers = data.get("signers", [])
    if not isinstance(signers, list) or any(s not in SIGNERS[platform] for s in signers):
        raise _bad(source, f"{where}.signers must be a list of {', '.join(SIGNERS[platform])}")
    vmpl = data.get("vmpl")
    if vmpl is not None and (not _is_uint(vmpl) or vmpl > 3):
        raise _bad(source, f"{where}.vmpl must be 0..3")
    return PlatformRules(measurements, dict(min_tcb), tuple(signers), vmpl)


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _hex48(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str):
        raise _bad(source, f"{key} values must be hex strings, got {type(value).__name__}")
    text = value.strip().lower()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise _bad(source, f"{key} value {value!r} is not hex") from None
    if len(raw) != 48:
        raise _bad(source, f"{key} value {value!r} must be 48 bytes (96 hex digits), got {len(raw)}")
    return text


def _violation(check: PolicyCheck) -> str:
    if check.check == "debug":
        return (
            "the CVM allows debugging (its memory can be read and changed by the host): it proves "
            "nothing; set allow_debug = true only for development"
        )
    if check.check == "migration":
        return "the CVM may be migrated by the host (a migration agent could export its memory); the policy forbids it"
    return f"{check.check}: expected {check.expected}, the evidence has {check.actual}"


@dataclass(frozen=True)
class CvmPolicy:
    max_evidence_age_s: int = DEFAULT_MAX_EVIDENCE_AGE_S
    allow_debug: bool = False
    allow_migration: bool = False
    platforms: dict[Platform, PlatformRules] = field(default_factory=dict)
    source: str = "the default CVM policy"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "CVM policy") -> CvmPolicy:
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise _bad(source, f"unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_TOP_KEYS))}")
        age = data.get("max_evidence_age_s", DEFAULT_MAX_EVIDENCE_AGE_S)
        if not _is_uint(age) or age == 0:
            raise _bad(source, "max_evidence_age_s must be a positive number of seconds")
        flags = {key: data.get(key, False) for key in ("allow_debug", "allow_migration")}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise _bad(source, f"{key} must be true or false")
        platforms = {p: _platform_rules(p, data[p], source) for p in MEASUREMENT_NAMES if p in data}
        return cls(age, flags["allow_debug"], flags["allow_migration"], platforms, source)

    @classmethod
    def load(cls, path: Path | str) -> CvmPolicy:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read CVM policy {path}: {exc.strerror}", code="cvm_policy_unreadable") from None
        except UnicodeDecodeError:
            raise ConfigError(f"CVM policy {path} is not UTF-8 text (TOML)", code="bad_cvm_policy") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _bad(str(path), f"not valid TOML: {exc}") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_evidence_age_s": self.max_evidence_age_s,
            "allow_debug": self.allow_debug,
            "allow_migration": self.allow_migration,
            **{name: rules.to_dict() for name, rules in sorted(self.platforms.items())},
        }

    @property
    def sha256(self) -> str:
        """SHA-256 of the policy's canonical JSON (sorted keys, no spaces): what the ledger records."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def check(self, claims: CvmClaims) -> list[PolicyCheck]:
        """Every check with what was expected and found; ``ok`` False marks a violation."""
        rules = self.platforms.get(claims.platform, PlatformRules())
        out = [
            PolicyCheck(
                "debug",
                "allowed" if self.allow_debug else "forbidden",
                "on" if claims.debug else "off",
                self.allow_debug or not claims.debug,
            ),
            PolicyCheck(
                "migration",
                "allowed" if self.allow_migration else "forbidden",
                "allowed" if claims.migration_allowed else "not allowed",
                self.allow_migration or not claims.migration_allowed,
            ),
            PolicyCheck(
                "signer",
                " or ".join(rules.signers) or "any",
                claims.signer,
                not rules.signers or claims.signer in rules.signers,
            ),
        ]
        if rules.vmpl is not None:
            actual = "none" if claims.vmpl is None else str(claims.vmpl)
            out.append(PolicyCheck("vmpl", str(rules.vmpl), actual, claims.vmpl == rules.vmpl))
        for name in MEASUREMENT_NAMES[claims.platform]:
            allowed = rules.measurements.get(name, ())
            actual = claims.measurements.get(name, "")
            out.append(
                PolicyCheck(
                    f"measurement {name}", " or ".join(allowed) or "any", actual or "none", not allowed or actual in allowed
                )
            )
        for name, minimum in sorted(rules.min_tcb.items()):
            actual_tcb = claims.tcb.get(name)
            out.append(
                PolicyCheck(
                    f"tcb {name}",
                    f">= {minimum}",
                    "absent" if actual_tcb is None else str(actual_tcb),
                    actual_tcb is not None and actual_tcb >= minimum,
                )
            )
        return out

    def enforce(self, claims: CvmClaims) -> list[PolicyCheck]:
        """Every check, when all hold; otherwise :class:`PolicyError` coded for the first failure
        (debug first: a debuggable CVM voids every other check)."""
        checks = self.check(claims)
        failed = next((c for c in checks if not c.ok), None)
        if failed is not None:
            raise PolicyError(_violation(failed), code=_CODES[failed.check.split()[0]], checks=checks)
        return checks


DEFAULT_CVM_POLICY = CvmPolicy()
"""Without a policy file: any measurement, never debug or migration, evidence at most an hour old."""
