"""Azure Attestation (MAA) tokens about a confidential VM, checked offline and mapped to CvmClaims.

The seed ran Azure's guest-attestation sample on each new CVM and printed the token unchecked.
Here such a token is evidence like any other: the token steps are the SGX path's own
(:func:`duet.attestation.maa.validate_token`: RS256 only, the pinned instance's ``jku`` and
``kid``, the ``x5c`` certificate's key, ``iss``, ``exp``/``nbf`` at an injectable ``now``), then:

* ``claims`` — what the token attests, mapped to :class:`~duet.attestation.cvm.CvmClaims`. Two
  shapes (specs/attestation.md §5.2–5.3, §7.12): a direct ``/attest/SevSnpVm`` or TDX token
  (``x-ms-attestation-type`` ``sevsnpvm`` / ``tdxvm``, the TEE claims at top level), and the guest
  attestation token (``azurevm``), whose TEE claims are nested under ``x-ms-isolation-tee`` beside
  the VM's own (``x-ms-azurevm-vmid``, the client payload's nonce);
* ``compliance`` — ``x-ms-compliance-status`` is ``azure-compliant-cvm``: MAA's own judgement
  that the hardware evidence came from a CVM Azure runs as confidential (its VCEK or PCK chain,
  its TCB); a token without it says MAA checked less;
* ``report_data`` — the 64 bytes duet's binding is checked against: the hardware report data
  (``x-ms-sevsnpvm-reportdata`` / ``tdx_report_data``) of a direct token; for ``azurevm``, the HCL
  runtime data's ``user-data`` (the hardware report data there is only the runtime data's hash).
  A direct token about an *Azure* CVM's HCL report would carry the binding in ``x-ms-runtime``'s
  ``user-data`` too; that shape is not mapped here (no sample of it, and duet's Azure CVMs use
  guest attestation or the HCL report itself).

The claims are built as soon as they map, so a verdict failing a later step still shows them.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from typing import Any, Final

from duet.attestation.cvm import CvmClaims, CvmVerdict, Platform
from duet.attestation.maa import DEFAULT_LEEWAY_S, TOKEN_STEPS, MaaError, instance_url, validate_token
from duet.attestation.steps import StepFailed, step_verdicts
from duet.attestation.tdx.verify import TCB_COMPONENT_NAMES

STEP_CLAIMS = "claims"
STEP_COMPLIANCE = "compliance"
STEP_REPORT_DATA = "report_data"
CVM_TOKEN_STEPS: Final[tuple[str, ...]] = (*TOKEN_STEPS, STEP_CLAIMS, STEP_COMPLIANCE, STEP_REPORT_DATA)

COMPLIANT: Final = "azure-compliant-cvm"
TEE_TYPES: Final[dict[str, Platform]] = {"sevsnpvm": "snp", "tdxvm": "tdx"}
GUEST_ATTESTATION_TYPE: Final = "azurevm"
ISOLATION_TEE: Final = "x-ms-isolation-tee"

SNP_TCB_CLAIMS: Final = {
    "bl_spl": "x-ms-sevsnpvm-bootloader-svn",
    "tee_spl": "x-ms-sevsnpvm-tee-svn",
    "snp_spl": "x-ms-sevsnpvm-snpfw-svn",
    "ucode_spl": "x-ms-sevsnpvm-microcode-svn",
}
"""CvmClaims.tcb names (as the SNP verifier reads REPORTED_TCB) ← MAA's claims."""
TDX_MEASUREMENT_CLAIMS: Final = {name: f"tdx_{name}" for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")}
TDX_TD_ATTRIBUTES_MIGRATABLE: Final = 1 << 29

_HELD = {
    "header": "RS256, signing keys named at the pinned instance",
    "keys": "signed by a key the instance lists, its certificate valid now",
    "signature": "the signature verifies",
    "issuer": "issued by the pinned instance",
    "expiry": "current",
}


def _fail(step: str, code: str, message: str) -> StepFailed:
    return StepFailed(message, code=code, step=step)


def _get(claims: dict[str, Any], name: str, where: str, kind: type | tuple[type, ...], step: str = STEP_CLAIMS) -> Any:
    if name not in claims:
        raise _fail(step, "maa_missing_claim", f"the MAA token has no {where}{name} claim")
    value = claims[name]
    # bool is an int in Python; a claim typed int must not be accepted as true/false, nor the reverse
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(step, "maa_bad_claim", f"the MAA claim {where}{name} is {type(value).__name__}, not {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


def _hex(claims: dict[str, Any], name: str, where: str, size: int, step: str = STEP_CLAIMS) -> bytes:
    value = _get(claims, name, where, str, step)
    if not _HEX.fullmatch(value) or len(value) != 2 * size:
        raise _fail(step, "maa_bad_claim", f"the MAA claim {where}{name} is not {size} bytes of hex")
    return bytes.fromhex(value)


def _uint(claims: dict[str, Any], name: str, where: str) -> int:
    value: int = _get(claims, name, where, int)
    if value < 0:
        raise _fail(STEP_CLAIMS, "maa_bad_claim", f"the MAA claim {where}{name} is negative")
    return value


def _snp(tee: dict[str, Any], where: str) -> dict[str, Any]:
    return {
        "measurements": {"measurement": _hex(tee, "x-ms-sevsnpvm-launchmeasurement", where, 48).hex()},
        "debug": _get(tee, "x-ms-sevsnpvm-is-debuggable", where, bool),
        "migration_allowed": _get(tee, "x-ms-sevsnpvm-migration-allowed", where, bool),
        "tcb": {name: _uint(tee, claim, where) for name, claim in SNP_TCB_CLAIMS.items()},
        "vmpl": _uint(tee, "x-ms-sevsnpvm-vmpl", where),
    }


def _tdx(tee: dict[str, Any], where: str) -> dict[str, Any]:
    attributes = int.from_bytes(_hex(tee, "tdx_td_attributes", where, 8), "little")
    svn = _hex(tee, "tdx_tee_tcb_svn", where, 16)
    return {
        "measurements": {name: _hex(tee, claim, where, 48).hex() for name, claim in TDX_MEASUREMENT_CLAIMS.items()},
        "debug": _get(tee, "tdx_td_attributes_debug", where, bool),
        "migration_allowed": bool(attributes & TDX_TD_ATTRIBUTES_MIGRATABLE),
        "tcb": dict(zip(TCB_COMPONENT_NAMES, svn)),
        "vmpl": None,
    }


def _runtime(holder: dict[str, Any], where: str) -> dict[str, Any]:
    runtime = holder.get("x-ms-runtime", {})
    if not isinstance(runtime, dict):
        raise _fail(STEP_CLAIMS, "maa_bad_claim", f"the MAA claim {where}x-ms-runtime is not an object")
    return runtime


def _vm_configuration(runtime: dict[str, Any], where: str) -> dict[str, Any]:
    config = runtime.get("vm-configuration", {})
    if not isinstance(config, dict):
        raise _fail(STEP_CLAIMS, "maa_bad_claim", f"the MAA claim {where}x-ms-runtime.vm-configuration is not an object")
    return config


def _kids(runtime: dict[str, Any]) -> list[str]:
    keys = runtime.get("keys", [])
    return [str(k["kid"]) for k in keys if isinstance(k, dict) and "kid" in k] if isinstance(keys, list) else []


def _map(claims: dict[str, Any]) -> tuple[CvmClaims, dict[str, Any], str]:
    """The token's claims as CvmClaims (report data still empty), the TEE claims' holder, and
    the path prefix of that holder for messages."""
    attestation_type = claims.get("x-ms-attestation-type")
    fields: dict[str, Any] = {
        "x-ms-attestation-type": attestation_type,
        "iss": claims.get("iss"),
        "jti": claims.get("jti"),
        "x-ms-policy-hash": claims.get("x-ms-policy-hash"),
    }
    for name in ("iat", "exp"):
        value = claims.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                fields[name] = datetime.fromtimestamp(value, UTC).isoformat()
            except (OverflowError, OSError, ValueError):
                fields[name] = value
    if attestation_type == GUEST_ATTESTATION_TYPE:
        where = f"{ISOLATION_TEE}."
        tee = _get(claims, ISOLATION_TEE, "", dict)
        vm_id = _get(claims, "x-ms-azurevm-vmid", "", str)
        payload = _runtime(claims, "").get("client-payload", {})
        if isinstance(payload, dict) and "nonce" in payload:
            fields["nonce"] = payload["nonce"]
        fields.update({k: v for k, v in claims.items() if k.startswith("x-ms-azurevm-") or k == "secureboot"})
    elif isinstance(attestation_type, str) and attestation_type in TEE_TYPES:
        where, tee, vm_id = "", claims, None
        if "nonce" in claims:
            fields["nonce"] = claims["nonce"]
    else:
        raise _fail(STEP_CLAIMS, "maa_not_cvm", f"the MAA token attests {attestation_type!r}, not a confidential VM")
    tee_type = tee.get("x-ms-attestation-type")
    platform = TEE_TYPES.get(tee_type) if isinstance(tee_type, str) else None
    if platform is None:
        raise _fail(
            STEP_CLAIMS, "maa_not_cvm", f"the MAA token's {where}x-ms-attestation-type is {tee_type!r}, not sevsnpvm or tdxvm"
        )
    mapped = _snp(tee, where) if platform == "snp" else _tdx(tee, where)

    runtime = _runtime(tee, where)
    config = _vm_configuration(runtime, where)
    runtime_vm_id = config.get("vmUniqueId")
    if runtime_vm_id is not None and not isinstance(runtime_vm_id, str):
        raise _fail(
            STEP_CLAIMS, "maa_bad_claim", f"the MAA claim {where}x-ms-runtime.vm-configuration.vmUniqueId is not a string"
        )
    if vm_id is not None and runtime_vm_id is not None and vm_id.lower() != runtime_vm_id.lower():
        raise _fail(
            STEP_CLAIMS,
            "maa_bad_claim",
            f"x-ms-azurevm-vmid {vm_id} and the runtime data's vmUniqueId {runtime_vm_id} name different VMs",
        )
    fields.update(
        {
            "tee": tee_type,
            "keys": _kids(runtime),
            "vm-configuration": config,
            **{k: config[k] for k in ("secure-boot", "tpm-enabled", "console-enabled") if k in config},
            **{
                k: v
                for k, v in tee.items()
                if k.startswith(("x-ms-sevsnpvm-", "tdx_")) or k in ("attester_tcb_status", "dbgstat")
            },
        }
    )
    cvm = CvmClaims(
        kind="maa-cvm",
        platform=platform,
        report_data=b"",
        signer="MAA",
        simulated=False,
        vm_id=vm_id if vm_id is not None else runtime_vm_id,
        fields=fields,
        **mapped,
    )
    return cvm, tee, where


def _report_data(claims: dict[str, Any], tee: dict[str, Any], where: str, platform: Platform) -> bytes:
    if claims.get("x-ms-attestation-type") == GUEST_ATTESTATION_TYPE:
        runtime = _runtime(tee, where)
        if "user-data" not in runtime:
            raise _fail(
                STEP_REPORT_DATA,
                "maa_no_user_data",
                f"the MAA token's {where}x-ms-runtime has no user-data: the CVM wrote no report data before attesting",
            )
        return _hex(runtime, "user-data", f"{where}x-ms-runtime.", 64, STEP_REPORT_DATA)
    name = "x-ms-sevsnpvm-reportdata" if platform == "snp" else "tdx_report_data"
    return _hex(tee, name, where, 64, STEP_REPORT_DATA)


def verify_maa_cvm_token(
    token: str, *, instance: str, jwks: Any, now: datetime | None = None, leeway_s: float = DEFAULT_LEEWAY_S
) -> CvmVerdict:
    """Every step of :data:`CVM_TOKEN_STEPS` for one MAA token; never raises for a bad token.

    ``instance`` is the MAA instance the CVM was told to use (pinned: the token must name it as
    issuer and key source); ``jwks`` is that instance's ``/certs`` answer."""
    done: dict[str, tuple[bool | None, str]] = {}
    cvm: CvmClaims | None = None
    try:
        try:
            claims = validate_token(token, instance=instance, jwks=jwks, now=now, leeway_s=leeway_s)
        except MaaError as exc:
            held = TOKEN_STEPS[: TOKEN_STEPS.index(exc.step)] if exc.step in TOKEN_STEPS else ()
            done.update({s: (True, _HELD[s]) for s in held})
            raise
        done.update({s: (True, _HELD[s]) for s in TOKEN_STEPS})
        done["issuer"] = (True, f"issued by {instance_url(instance)}")
        cvm, tee, where = _map(claims)
        if "exp" in cvm.fields:
            done["expiry"] = (True, f"current (expires {cvm.fields['exp']})")
        done[STEP_CLAIMS] = (True, f"{cvm.fields['x-ms-attestation-type']} token about a {cvm.platform.upper()} CVM")
        status = tee.get("x-ms-compliance-status")
        if status != COMPLIANT:
            raise _fail(
                STEP_COMPLIANCE,
                "maa_not_compliant",
                f"the MAA token's {where}x-ms-compliance-status is {status!r}, not {COMPLIANT!r}: "
                "MAA did not find this an Azure-compliant confidential VM",
            )
        done[STEP_COMPLIANCE] = (True, f"MAA found it {COMPLIANT}")
        report_data = _report_data(claims, tee, where, cvm.platform)
        cvm = dataclasses.replace(cvm, report_data=report_data)
        done[STEP_REPORT_DATA] = (True, f"report data {report_data.hex()[:16]}…")
    except StepFailed as exc:
        return CvmVerdict("maa-cvm", step_verdicts(CVM_TOKEN_STEPS, done, exc), cvm)
    return CvmVerdict("maa-cvm", step_verdicts(CVM_TOKEN_STEPS, done), cvm)
