"""Whether a genuine TDX platform signed a TD quote (v4 or v5): the chain and signatures, step by step.

A TDX quote is vouched for exactly as an SGX v3 quote is (spec §3.3): the PCK certificate chain
to Intel's root, the quoting enclave's report signed by the PCK key, that report binding the
attestation key, and the attestation key's signature over the quote. Those checks, the CRLs
and the QE identity comparison are :mod:`duet.attestation.sgx.verify`'s, run here as steps of
their own (:data:`TDX_STEPS`); what differs is TDX's: the quoting enclave is Intel's *TD* QE
(ISVPRODID 2), the signed region is header ‖ (body descriptor) ‖ TD report, and the TCB level
is judged by TDX TCB info, which adds the TD report's TEE_TCB_SVN and the TDX module's identity
(MRSIGNERSEAM, SEAMATTRIBUTES) to the PCK's SGX TCB.

A step whose collateral was not given (CRLs, TCB info, a QE identity file) is reported as not
evaluated, never as held. The verdict is a :class:`~duet.attestation.cvm.CvmVerdict` of kind
``tdx`` with the claims of the TD report; nothing here says which TD is acceptable or what the
report data must be (:mod:`duet.attestation.cvm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from duet.attestation.cvm import CvmClaims, CvmVerdict
from duet.attestation.sgx.collateral import (
    INTEL_QE_IDENTITY,
    NO_COLLATERAL,
    SIMULATED_QE_IDENTITY,
    Collateral,
    QeIdentity,
    QeTcbLevel,
    TcbEvaluation,
    TcbInfo,
    TcbLevel,
    TdxModuleIdentity,
)
from duet.attestation.sgx.roots import INTEL_SGX_ROOT_KEY_SHA256, intel_sgx_root_key, spki_sha256
from duet.attestation.sgx.verify import (
    STEP_ATTESTATION_KEY_BINDING,
    STEP_PARSE,
    STEP_PCK_CHAIN,
    STEP_PCK_REVOCATION,
    STEP_QE_IDENTITY,
    STEP_QE_REPORT_SIGNATURE,
    STEP_TCB_LEVEL,
    PlatformTcb,
    anchor_key_id,
    check_attestation_signature,
    check_qe_identity,
    check_revocation,
    check_tcb_info,
    common_name,
    qe_identity_for_root,
    tcb_evaluation,
    verify_quoting_enclave,
)
from duet.attestation.steps import StepFailed, step_verdicts
from duet.attestation.tdx.abi import ParsedTdxQuote, TdReport, TdxQuoteFormatError, parse_tdx_quote
from duet.keys import PublicKey

STEP_QUOTE_SIGNATURE = "quote_signature"
TDX_STEPS: tuple[str, ...] = (
    STEP_PARSE,
    STEP_PCK_CHAIN,
    STEP_QE_REPORT_SIGNATURE,
    STEP_ATTESTATION_KEY_BINDING,
    STEP_PCK_REVOCATION,
    STEP_QE_IDENTITY,
    STEP_QUOTE_SIGNATURE,
    STEP_TCB_LEVEL,
)
"""Every step, in the order each one's key or premise is established by those before it."""

_QUOTING_ENCLAVE_STEPS = (STEP_PCK_CHAIN, STEP_QE_REPORT_SIGNATURE, STEP_ATTESTATION_KEY_BINDING)
_HELD = {
    STEP_PCK_CHAIN: "the PCK certificate chain ends at a trusted root key",
    STEP_QE_REPORT_SIGNATURE: "the PCK key signed the TD quoting enclave's report",
    STEP_ATTESTATION_KEY_BINDING: "the quoting enclave's report binds the attestation key: SHA-256(attestation key ‖ QE auth data)",
    STEP_QUOTE_SIGNATURE: "the attestation key signed the quote header and the TD report",
}

INTEL_TD_QE_MRSIGNER = bytes.fromhex("DC9E2A7C6F948F17474E34A7FC43ED030F7C1563F1BABDDF6340C82E0E54A8C5")

INTEL_TD_QE_IDENTITY = replace(
    INTEL_QE_IDENTITY,
    source="built-in Intel TD QE identity",
    mr_signer=INTEL_TD_QE_MRSIGNER,
    isv_prod_id=2,
    min_isv_svn=4,
    id="TD_QE",
)
"""Intel's TDX quoting enclave as PCS ``tdx/certification/v4/qe/identity`` describes it: the
MRSIGNER every real TDX quote shows, ISVPRODID 2, the SGX QE's attributes and masks (not DEBUG);
the lowest TCB level in every published TD_QE identity (2023–2026) is ISVSVN 4. Without a QE
identity file the QE's TCB status is not evaluated."""

SIMULATED_TD_QE_IDENTITY = replace(
    SIMULATED_QE_IDENTITY,
    source="simulated TD QE identity (the simulated root was trusted explicitly)",
    isv_prod_id=2,
    id="TD_QE",
)
"""The quoting enclave of duet's simulated TDX platform (:mod:`duet.attestation.tdx.simulated`):
the simulated SGX QE's signer with the TD QE's product id. Accepted only for chains ending at a
root the user trusted explicitly, never for chains ending at Intel's root."""

TCB_COMPONENT_NAMES = tuple(f"tee_tcb_svn_{i:02d}" for i in range(16))
"""The names of TEE_TCB_SVN's 16 bytes in :attr:`CvmClaims.tcb`. Intel's TDX TCB info calls
byte 0 the TDX module's SVN, byte 1 its major version and byte 2 the TDX late microcode update's
SVN; the others are reserved (zero)."""


def _fail(step: str, code: str, message: str) -> StepFailed:
    return StepFailed(message, code=code, step=step)


# --------------------------------------------------------------------------------------------
# TCB level (TDX TCB info, spec §3.3; the algorithm of Intel's QVL 4.1.2.4.11 and .17)
# --------------------------------------------------------------------------------------------


def _tdx_module(info: TcbInfo, report: TdReport) -> TdxModuleIdentity:
    """The TDX module the TCB info expects, checked against MRSIGNERSEAM and SEAMATTRIBUTES.

    A module of major version 0 is judged by ``tdxModule``; a later one by the
    ``tdxModuleIdentities`` entry ``TDX_<major version>``, whose TCB levels then apply too."""
    step, major = STEP_TCB_LEVEL, report.tee_tcb_svn[1]
    expected = info.tdx_module
    if major > 0:
        name = f"TDX_{major:02X}"
        expected = next((m for m in info.tdx_module_identities if m.id.upper() == name), None)
        if expected is None:
            raise _fail(
                step,
                "tdx_module_mismatch",
                f"the TD report's TEE_TCB_SVN names TDX module major version {major}, and the TCB info {info.source} "
                f"has no tdxModuleIdentities entry {name}: fetch current TDX TCB info",
            )
    if expected is None:
        raise _fail(step, "tcb_info_mismatch", f"the TCB info {info.source} has no tdxModule: it is not TDX TCB info")
    if report.mr_signer_seam != expected.mr_signer:
        raise _fail(
            step,
            "tdx_module_mismatch",
            f"MRSIGNERSEAM is {report.mr_signer_seam.hex()}, the TCB info {info.source} expects {expected.mr_signer.hex()}: "
            "the TDX module is not the one Intel signed",
        )
    masked = bytes(a & m for a, m in zip(report.seam_attributes, expected.attributes_mask))
    if masked != bytes(a & m for a, m in zip(expected.attributes, expected.attributes_mask)):
        raise _fail(
            step,
            "tdx_module_mismatch",
            f"SEAMATTRIBUTES are {report.seam_attributes.hex()}, the TCB info {info.source} expects "
            f"{expected.attributes.hex()} under mask {expected.attributes_mask.hex()}",
        )
    return expected


def _tdx_components_reach(tee_tcb_svn: bytes, level: TcbLevel) -> bool:
    """TEE_TCB_SVN ≥ the level's tdxtcbcomponents, byte by byte; with a module of major version
    > 0, bytes 0–1 (the module's SVN and version) are judged by the module identity instead."""
    start = 2 if tee_tcb_svn[1] > 0 else 0
    return all(tee_tcb_svn[i] >= level.tdx_comp_svns[i] for i in range(start, len(level.tdx_comp_svns)))


def _match_levels(
    info: TcbInfo, comp_svns: Sequence[int], pce_svn: int, tee_tcb_svn: bytes
) -> tuple[TcbLevel | None, TcbLevel | None]:
    """The first level the PCK's SGX TCB reaches, and the first that the TD's TEE_TCB_SVN reaches too."""
    sgx_level = None
    for level in info.tcb_levels:
        if pce_svn >= level.pce_svn and all(a >= b for a, b in zip(comp_svns, level.comp_svns)):
            sgx_level = sgx_level or level
            if _tdx_components_reach(tee_tcb_svn, level):
                return sgx_level, level
    return sgx_level, None


def _converge_with_module(level_status: str, module_status: str | None) -> str:
    """The TDX TCB level's status, lowered by the TDX module's (Intel's QVL rule)."""
    if module_status == "Revoked":
        return "Revoked"
    if module_status == "OutOfDate":
        if level_status in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if level_status in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    return level_status


def _module_level(module: TdxModuleIdentity, report: TdReport, source: str) -> QeTcbLevel | None:
    if report.tee_tcb_svn[1] == 0:
        return None  # a major-version-0 module has no module TCB levels: TEE_TCB_SVN is judged by the TCB level alone
    svn = report.tee_tcb_svn[0]
    level = next((lv for lv in module.tcb_levels if svn >= lv.isv_svn), None)
    if level is None:
        raise _fail(
            STEP_TCB_LEVEL,
            "tcb_level_not_found",
            f"the TDX module's SVN {svn} (TEE_TCB_SVN[0]) reaches no TCB level of {module.id} in the TCB info {source}: not supported",
        )
    return level


def _platform_tcb(chain: Sequence[x509.Certificate], report: TdReport, info: TcbInfo, now: datetime) -> PlatformTcb:
    step = STEP_TCB_LEVEL
    if info.id != "TDX":
        raise _fail(
            step,
            "tcb_info_mismatch",
            f"the TCB info {info.source} is for {info.id}, not TDX: fetch https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=…",
        )
    ext = check_tcb_info(chain, info, now)
    module = _tdx_module(info, report)
    sgx_level, tdx_level = _match_levels(info, ext.tcb.comp_svns, ext.tcb.pce_svn, report.tee_tcb_svn)
    if sgx_level is None:
        raise _fail(
            step,
            "tcb_level_not_found",
            f"the platform's SGX TCB (components {list(ext.tcb.comp_svns)}, PCESVN {ext.tcb.pce_svn}) reaches no level "
            f"of the TCB info {info.source}: not supported",
        )
    if tdx_level is None:
        raise _fail(
            step,
            "tcb_level_not_found",
            f"the TD report's TEE_TCB_SVN {report.tee_tcb_svn.hex()} reaches no level of the TCB info {info.source} "
            "that the platform's SGX TCB reaches: not supported",
        )
    module_level = _module_level(module, report, info.source)
    status = _converge_with_module(tdx_level.tcb_status, module_level.tcb_status if module_level else None)
    date = tdx_level.tcb_date
    module_said = (
        f"TDX module {module_level.tcb_status} (ISVSVN {report.tee_tcb_svn[0]}, version {report.tee_tcb_svn[1]})"
        if module_level
        else "TDX module judged by the TCB level (major version 0)"
    )
    return PlatformTcb(
        status,
        date,
        tdx_level.advisory_ids + (module_level.advisory_ids if module_level else ()),
        ext.fmspc,
        f"platform: {status} (FMSPC {ext.fmspc.hex()}, TDX TCB level {tdx_level.tcb_status} of {date.date() if date else '?'}, "
        f"{module_said}; TCB info {info.source}; {info.signature_note})",
    )


def _evaluate_tcb(
    chain: Sequence[x509.Certificate],
    report: TdReport,
    qe_report_isv_svn: int,
    identity: QeIdentity,
    collateral: Collateral,
    now: datetime,
) -> tuple[TcbEvaluation | None, str]:
    info = collateral.tcb_info
    platform = _platform_tcb(chain, report, info, now) if info is not None else None
    return tcb_evaluation(platform, identity, qe_report_isv_svn)


# --------------------------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------------------------


def _quoting_enclave_identity(anchor: str, collateral: Collateral) -> QeIdentity:
    identity = qe_identity_for_root(anchor, collateral, intel=INTEL_TD_QE_IDENTITY, simulated=SIMULATED_TD_QE_IDENTITY)
    if identity.id != "TD_QE":
        raise _fail(
            STEP_QE_IDENTITY,
            "qe_identity_mismatch",
            f"the QE identity {identity.source} describes {identity.id!r}, not Intel's TDX quoting enclave: give the "
            "TD_QE identity (https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity)",
        )
    return identity


def _verify(
    q: ParsedTdxQuote,
    roots: Sequence[PublicKey],
    now: datetime,
    collateral: Collateral,
    done: dict[str, tuple[bool | None, str]],
) -> tuple[list[x509.Certificate], TcbEvaluation | None]:
    """Run every step after parsing, recording in ``done`` what held; raises the first failure."""
    sd, qe = q.signature_data, q.signature_data.qe_report_certification_data
    try:
        chain = verify_quoting_enclave(
            qe.certification_data,
            qe.qe_report,
            qe.qe_report_signature,
            sd.attestation_key,
            qe.qe_auth_data,
            trusted_root_keys=roots,
            now=now,
        )
    except StepFailed as exc:
        # verify_quoting_enclave runs its three steps in order: those before the failed one held.
        if exc.step in _QUOTING_ENCLAVE_STEPS:
            for step in _QUOTING_ENCLAVE_STEPS[: _QUOTING_ENCLAVE_STEPS.index(exc.step)]:
                done[step] = (True, _HELD[step])
        raise
    anchor = anchor_key_id(chain, roots)
    by = "Intel's pinned root key" if anchor == INTEL_SGX_ROOT_KEY_SHA256 else f"the trusted root key {anchor} (not Intel's)"
    done[STEP_PCK_CHAIN] = (True, f"the PCK chain {' → '.join(common_name(c.subject) for c in chain)} verifies to {by}")
    done[STEP_QE_REPORT_SIGNATURE] = (True, _HELD[STEP_QE_REPORT_SIGNATURE])
    done[STEP_ATTESTATION_KEY_BINDING] = (True, _HELD[STEP_ATTESTATION_KEY_BINDING])

    evaluated, message = check_revocation(chain, roots, collateral, now)
    done[STEP_PCK_REVOCATION] = (True if evaluated else None, message)

    identity = _quoting_enclave_identity(anchor, collateral)
    done[STEP_QE_IDENTITY] = (True, check_qe_identity(qe.qe_report, identity, now))

    check_attestation_signature(
        sd.attestation_key,
        sd.quote_signature,
        q.signed_region,
        step=STEP_QUOTE_SIGNATURE,
        code="bad_quote_signature",
        altered="the quote signature does not verify with the attestation key: the header or the TD report "
        "(MRTD, RTMRs, TDATTRIBUTES, REPORTDATA, ...) was altered",
    )
    done[STEP_QUOTE_SIGNATURE] = (True, _HELD[STEP_QUOTE_SIGNATURE])

    tcb, message = _evaluate_tcb(chain, q.td_report, qe.qe_report.isv_svn, identity, collateral, now)
    done[STEP_TCB_LEVEL] = (True if tcb is not None else None, message)
    return chain, tcb


def _chain_has_intel_root(q: ParsedTdxQuote) -> bool:
    """For a quote whose chain did not verify: whether it carries Intel's root key (display only;
    a verified chain is judged by the root it verified to)."""
    try:
        certs = q.signature_data.qe_report_certification_data.certification_data.certificates()
        return any(spki_sha256(c.public_key()) == INTEL_SGX_ROOT_KEY_SHA256 for c in certs)  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.InvalidVersion):
        return False


def tdx_claims(q: ParsedTdxQuote, *, simulated: bool, tcb: TcbEvaluation | None = None) -> CvmClaims:
    """What the TD report says, in the words every kind of CVM evidence uses.

    Measurements are MRTD and RTMR0–3 (what the TD's firmware and kernel extended); the TDX
    module's and the owner's fields go to ``fields``. ``tcb`` holds TEE_TCB_SVN byte by byte
    (:data:`TCB_COMPONENT_NAMES`)."""
    r = q.td_report
    qe = q.signature_data.qe_report_certification_data
    fields: dict[str, Any] = {
        "quote_version": q.version,
        "body_type": r.body_type,
        "tee_tcb_svn": r.tee_tcb_svn.hex(),
        "mrseam": r.mr_seam.hex(),
        "mrsignerseam": r.mr_signer_seam.hex(),
        "seamattributes": r.seam_attributes.hex(),
        "tdattributes": r.raw[120:128].hex(),
        "td_attributes": list(r.td_attribute_names),
        "xfam": r.raw[128:136].hex(),
        "mrconfigid": r.mr_config_id.hex(),
        "mrowner": r.mr_owner.hex(),
        "mrownerconfig": r.mr_owner_config.hex(),
        "qe": {
            "mrenclave": qe.qe_report.mr_enclave.hex(),
            "mrsigner": qe.qe_report.mr_signer.hex(),
            "isvprodid": qe.qe_report.isv_prod_id,
            "isvsvn": qe.qe_report.isv_svn,
        },
        "trailing_bytes": q.trailing_bytes,
    }
    if r.tee_tcb_svn2 is not None and r.mr_service_td is not None:
        fields.update(tee_tcb_svn2=r.tee_tcb_svn2.hex(), mrservicetd=r.mr_service_td.hex())
    if tcb is not None:
        fields.update(
            tcb_status=tcb.platform_status,
            qe_tcb_status=tcb.qe_status,
            tcb_date=tcb.platform_tcb_date.isoformat() if tcb.platform_tcb_date else None,
            advisory_ids=list(tcb.advisory_ids),
            fmspc=tcb.fmspc.hex() if tcb.fmspc else None,
        )
    return CvmClaims(
        kind="tdx",
        platform="tdx",
        measurements={"mrtd": r.mr_td.hex(), **{f"rtmr{i}": m.hex() for i, m in enumerate(r.rtmrs)}},
        report_data=r.report_data,
        debug=r.debug,
        migration_allowed=r.migratable,
        tcb=dict(zip(TCB_COMPONENT_NAMES, r.tee_tcb_svn)),
        signer="PCK",
        simulated=simulated,
        fields=fields,
    )


def verify_tdx_quote(
    quote: Union[bytes, ParsedTdxQuote],
    *,
    trusted_root_keys: Sequence[PublicKey] | None = None,
    now: datetime,
    collateral: Collateral = NO_COLLATERAL,
) -> CvmVerdict:
    """Verify a TDX v4/v5 quote offline at time ``now``, step by step (:data:`TDX_STEPS`).

    ``trusted_root_keys`` defaults to Intel's pinned SGX root key (TDX quotes chain to it); pass
    another root (the simulated platform's) only when the user trusted it explicitly: the claims
    then say ``simulated``. ``collateral`` is Intel's TD_QE identity, TDX TCB info and CRLs
    (``sgx.load_collateral(..., tee="TDX")``); what it lacks is reported as not evaluated.

    Never raises for bad evidence: look at the verdict (claims are present whenever the quote parsed)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    roots = tuple(trusted_root_keys) if trusted_root_keys is not None else (intel_sgx_root_key(),)
    done: dict[str, tuple[bool | None, str]] = {}
    parsed: ParsedTdxQuote | None = None
    failure: StepFailed | None = None
    chain: list[x509.Certificate] | None = None
    tcb: TcbEvaluation | None = None
    try:
        parsed = quote if isinstance(quote, ParsedTdxQuote) else parse_tdx_quote(quote)
        done[STEP_PARSE] = (
            True,
            f"a well-formed TDX v{parsed.version} quote with a TD report 1.{0 if parsed.td_report.body_type == 2 else 5}",
        )
        chain, tcb = _verify(parsed, roots, now, collateral, done)
    except TdxQuoteFormatError as exc:
        failure = StepFailed(exc.message, code=exc.code, step=STEP_PARSE)
    except StepFailed as exc:
        failure = exc
    claims = None
    if parsed is not None:
        simulated = anchor_key_id(chain, roots) != INTEL_SGX_ROOT_KEY_SHA256 if chain else not _chain_has_intel_root(parsed)
        claims = tdx_claims(parsed, simulated=simulated, tcb=tcb)
    return CvmVerdict("tdx", step_verdicts(TDX_STEPS, done, failure), claims)
