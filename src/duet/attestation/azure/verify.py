"""Whether an Azure CVM's HCL report is genuine, step by step, and what it says about the CVM.

The chain of trust runs through one hash. The hardware report (SNP report or TD report) is
signed by AMD's or Intel's keys; its report data is a hash of the runtime data; the runtime data
holds the VM's id and the ``user-data`` that carries duet's binding (design §10). So the steps
are, in order:

1. ``parse`` — the report's layout and length fields (:mod:`duet.attestation.azure.hcl`);
2. ``runtime_data_hash`` — the hardware report data is the hash of the variable data (by
   ``report_data_hash_type``) followed by zeros: otherwise the runtime data is anyone's;
3. the hardware report, by the platform's own verifier, whose steps are reported here with a
   ``snp.`` or ``tdx.`` prefix (so a reader sees the VCEK chain or the PCK chain fail by name):

   * SNP: ``vcek_chain`` (the VCEK and its ASK/ARK as the instance metadata service serves them;
     Azure does not put them in the report), then ``snp.*``
     (:func:`duet.attestation.snp.verify.verify_snp_report`);
   * TDX: ``td_quote`` (the TDREPORT's MAC is checkable only on the CPU that made it, so the
     quote made from it must carry the same TD report body and REPORTDATA), then ``tdx.*``
     (:func:`duet.attestation.tdx.verify.verify_tdx_quote`);

4. ``runtime_data`` — the JSON is well-formed and typed (only now: until its hash was known to
   be signed, interpreting it was pointless);
5. ``user_data`` — 64 bytes of hex: the report data duet's binding is checked against.

Every step is reported; after a failure the rest are "not reached". Nothing here raises for bad
evidence: a hostile report is a failed step. The claims are the hardware verifier's (platform
fields, measurements, TCB, signer) with ``report_data`` = the decoded ``user-data`` and
``vm_id`` = ``vmUniqueId``; whether they bind the host key, name the right VM and satisfy the
policy is :func:`duet.attestation.cvm_evidence.judge`'s.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from duet.attestation.azure.hcl import (
    HASH_TYPE_NAMES,
    TD_QUOTE_BODY_SOURCE,
    HclFormatError,
    HclReport,
    Platform,
    RuntimeData,
    RuntimeDataError,
    decode_user_data,
    parse_hcl_report,
    parse_runtime_data,
    runtime_data_digest,
)
from duet.attestation.cvm import CvmClaims, CvmVerdict, EvidenceKind
from duet.attestation.sgx.collateral import NO_COLLATERAL, Collateral
from duet.attestation.snp.roots import AmdRoot
from duet.attestation.snp.verify import SNP_STEPS, verify_snp_report
from duet.attestation.steps import StepFailed, StepVerdict
from duet.attestation.tdx.abi import TD_REPORT_FIELDS, ParsedTdxQuote, TdxQuoteFormatError, parse_tdx_quote
from duet.attestation.tdx.verify import TDX_STEPS, verify_tdx_quote
from duet.keys import PublicKey

STEP_PARSE = "parse"
STEP_RUNTIME_DATA_HASH = "runtime_data_hash"
STEP_VCEK_CHAIN = "vcek_chain"
STEP_SNP = "snp"
STEP_TD_QUOTE = "td_quote"
STEP_TDX = "tdx"
STEP_RUNTIME_DATA = "runtime_data"
STEP_USER_DATA = "user_data"
STEPS: Final[dict[Platform, tuple[str, ...]]] = {
    "snp": (STEP_PARSE, STEP_RUNTIME_DATA_HASH, STEP_VCEK_CHAIN, STEP_SNP, STEP_RUNTIME_DATA, STEP_USER_DATA),
    "tdx": (STEP_PARSE, STEP_RUNTIME_DATA_HASH, STEP_TD_QUOTE, STEP_TDX, STEP_RUNTIME_DATA, STEP_USER_DATA),
}
"""Each flavour's steps in order; ``snp``/``tdx`` stand for the hardware verifier's own steps,
which appear prefixed (``snp.<step>``) once it ran, and as this one entry when it was not reached."""
KINDS: Final[dict[Platform, EvidenceKind]] = {"snp": "azure-snp", "tdx": "azure-tdx"}
HARDWARE_STEPS: Final[dict[str, tuple[str, ...]]] = {STEP_SNP: SNP_STEPS, STEP_TDX: TDX_STEPS}
"""The hardware verifiers' own steps, listed (prefixed) as not reached when an earlier step failed."""

MAX_VCEK_CHAIN_SIZE: Final = 64 * 1024
MAX_TD_QUOTE_SIZE: Final = 64 * 1024


# --------------------------------------------------------------------------------------------
# The boundary to the hardware verifiers
# --------------------------------------------------------------------------------------------


def _verify_snp_hardware(
    report: bytes,
    *,
    vcek: x509.Certificate,
    chain: tuple[x509.Certificate, ...],
    trusted_roots: Sequence[AmdRoot] | None,
    now: datetime,
) -> CvmVerdict:
    """The SNP report's verdict from :func:`duet.attestation.snp.verify.verify_snp_report`."""
    return verify_snp_report(report, vcek=vcek, chain=chain, trusted_roots=trusted_roots, now=now)


def _verify_tdx_hardware(
    quote: ParsedTdxQuote, *, trusted_root_keys: Sequence[PublicKey] | None, collateral: Collateral, now: datetime
) -> CvmVerdict:
    """The TD quote's verdict from :func:`duet.attestation.tdx.verify.verify_tdx_quote`."""
    return verify_tdx_quote(quote, trusted_root_keys=trusted_root_keys, now=now, collateral=collateral)


# --------------------------------------------------------------------------------------------
# Inputs that come from beside the report: the VCEK chain, the TD quote
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VcekChain:
    """The VCEK and the certificates above it, as the instance metadata service serves them."""

    vcek: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    """ASK and ARK (``certificateChain``), in the order given."""


def _fail(step: str, code: str, message: str) -> StepFailed:
    return StepFailed(message, code=code, step=step)


def parse_vcek_chain(data: bytes | str) -> VcekChain:
    """The VCEK chain from IMDS ``/metadata/THIM/amd/certification`` (JSON with ``vcekCert`` and
    ``certificateChain``, both PEM) or the same certificates as one PEM file in any order.

    In a PEM file the VCEK is told apart by its key (EC P-384; the ASK and ARK are RSA), not by
    its place: bundles are assembled by hand, and their order varies."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_VCEK_CHAIN_SIZE:
        raise _fail(
            STEP_VCEK_CHAIN, "hcl_vcek_chain_malformed", f"the VCEK chain is {len(raw)} bytes, over {MAX_VCEK_CHAIN_SIZE}"
        )
    try:
        if raw.lstrip().startswith(b"{"):
            doc = json.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("vcekCert"), str):
                raise ValueError("the IMDS answer has no vcekCert")
            chain_pem = doc.get("certificateChain", "")
            if not isinstance(chain_pem, str):
                raise ValueError("certificateChain is not PEM text")
            vcek = x509.load_pem_x509_certificate(doc["vcekCert"].encode())
            chain = tuple(x509.load_pem_x509_certificates(chain_pem.encode())) if chain_pem.strip() else ()
        else:
            certs = x509.load_pem_x509_certificates(raw)
            leaves = [c for c in certs if isinstance(c.public_key(), ec.EllipticCurvePublicKey)]
            if len(leaves) != 1:
                raise ValueError(f"{len(leaves)} EC certificates where one VCEK was expected")
            vcek = leaves[0]
            chain = tuple(c for c in certs if c is not vcek)
    except (ValueError, TypeError, UnsupportedAlgorithm, RecursionError) as exc:
        raise _fail(STEP_VCEK_CHAIN, "hcl_vcek_chain_malformed", f"the VCEK chain does not parse: {exc}") from None
    return VcekChain(vcek=vcek, chain=chain)


def _check_td_quote(hcl: HclReport, quote: bytes) -> tuple[ParsedTdxQuote, str]:
    """The quote carries this TD report: every field of its TD report body equals the TDREPORT's."""
    assert hcl.td_report is not None
    if len(quote) > MAX_TD_QUOTE_SIZE:
        raise _fail(STEP_TD_QUOTE, "hcl_td_quote_malformed", f"the TD quote is {len(quote)} bytes, over {MAX_TD_QUOTE_SIZE}")
    try:
        parsed = parse_tdx_quote(quote)
    except TdxQuoteFormatError as exc:
        raise _fail(STEP_TD_QUOTE, "hcl_td_quote_malformed", exc.message) from None
    except Exception as exc:  # a bug in the TDX parser: fail closed, as _contained does
        raise _fail(
            STEP_TD_QUOTE, "hcl_tdx_verifier_error", f"the TDX quote parser failed: {type(exc).__name__}: {exc}"
        ) from None
    body = parsed.td_report
    expected = hcl.td_report.quote_body_values()
    table = TD_REPORT_FIELDS[body.body_type]
    actual = {f.attr: body.raw[f.offset : f.offset + f.size] for f in table}
    if actual["report_data"] != expected["report_data"]:
        raise _fail(
            STEP_TD_QUOTE,
            "hcl_td_quote_report_data_mismatch",
            "the TD quote's REPORTDATA is not the TDREPORT's: the quote was made from another TD report",
        )
    differ = [f"{f.name} (TDREPORT {TD_QUOTE_BODY_SOURCE[f.attr]})" for f in table if actual[f.attr] != expected[f.attr]]
    if differ:
        raise _fail(
            STEP_TD_QUOTE,
            "hcl_td_quote_mismatch",
            "the TD quote's body differs from the TDREPORT in " + ", ".join(differ) + ": the quote is of another TD report",
        )
    return parsed, f"the TD quote (v{parsed.version}) carries this TDREPORT's measurements, attributes and REPORTDATA"


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


def _check_runtime_data_hash(hcl: HclReport) -> str:
    digest = runtime_data_digest(hcl.runtime.report_data_hash_type, hcl.variable_data)
    report_data = hcl.report_data
    name = HASH_TYPE_NAMES[hcl.runtime.report_data_hash_type]
    if report_data[: len(digest)] != digest:
        raise _fail(
            STEP_RUNTIME_DATA_HASH,
            "hcl_runtime_data_hash_mismatch",
            f"the hardware report data does not start with the {name} of the runtime data: "
            "the runtime data is not the one this hardware report was made for",
        )
    if any(report_data[len(digest) :]):
        raise _fail(
            STEP_RUNTIME_DATA_HASH,
            "hcl_report_data_not_zero",
            f"the hardware report data has non-zero bytes after the {len(digest)}-byte {name}: "
            "it carries something other than the runtime data's hash",
        )
    return f"the hardware report data is the {name} of the {len(hcl.variable_data)}-byte runtime data"


class _Run:
    """Collects the step verdicts as the pipeline goes, nested hardware steps included."""

    def __init__(self, platform: Platform) -> None:
        self.order = STEPS[platform]
        self.steps: list[StepVerdict] = []

    def held(self, step: str, message: str) -> None:
        self.steps.append(StepVerdict(step, True, message=message))

    def nested(self, prefix: str, verdict: CvmVerdict) -> bool:
        self.steps.extend(dataclasses.replace(s, step=f"{prefix}.{s.step}") for s in verdict.steps)
        return verdict.ok

    def finish(self, failure: StepFailed | None) -> tuple[StepVerdict, ...]:
        if failure is not None:
            self.steps.append(StepVerdict(failure.step, False, failure.code, failure.message))
        done = {s.step.split(".", 1)[0] for s in self.steps}
        stopped = failure is not None or any(s.ok is False for s in self.steps)
        why = "not reached" if stopped else "not asked"
        rest = [
            StepVerdict(name, None, message=why)
            for step in self.order
            if step not in done
            for name in ([f"{step}.{s}" for s in HARDWARE_STEPS.get(step, ())] or [step])
        ]
        return (*self.steps, *rest)


def _claims(
    kind: EvidenceKind,
    hardware: CvmClaims | None,
    hcl: HclReport,
    runtime: RuntimeData | None,
    user_data: bytes | None,
) -> CvmClaims | None:
    """The hardware verifier's claims, relabelled as Azure's and completed from the runtime data."""
    if hardware is None:
        return None
    fields: dict[str, Any] = {
        **hardware.fields,
        "hardware_report_data": hcl.report_data.hex(),
        "hcl_version": hcl.header.version,
        "hcl_request_type": hcl.header.request_type,
        "runtime_data_hash_type": HASH_TYPE_NAMES.get(hcl.runtime.report_data_hash_type, hcl.runtime.report_data_hash_type),
    }
    if runtime is not None:
        config = runtime.vm_configuration
        fields.update(
            {
                "secure-boot": config.secure_boot,
                "tpm-enabled": config.tpm_enabled,
                "console-enabled": config.console_enabled,
                "vm-configuration": config.to_dict(),
                "keys": list(runtime.kids),
            }
        )
    return dataclasses.replace(
        hardware,
        kind=kind,
        report_data=user_data if user_data is not None else b"",
        vm_id=runtime.vm_configuration.vm_unique_id if runtime is not None else None,
        fields=fields,
    )


def _contained(step: str, verify: Callable[[], CvmVerdict]) -> CvmVerdict:
    """A hardware verifier's verdict; its unexpected exception a failed step, not ours to raise.

    Deliberately broad: this function's promise is a verdict for any input, and a crash in a
    verifier it calls on hostile bytes must fail closed, with the exception named for its fix."""
    try:
        return verify()
    except Exception as exc:  # see the docstring
        raise _fail(
            step, f"hcl_{step}_verifier_error", f"the {step.upper()} verifier failed: {type(exc).__name__}: {exc}"
        ) from None


def verify_azure_hcl(
    report: bytes,
    *,
    vcek_chain: bytes | str | None = None,
    td_quote: bytes | None = None,
    snp_trusted_roots: Sequence[AmdRoot] | None = None,
    tdx_trusted_root_keys: Sequence[PublicKey] | None = None,
    tdx_collateral: Collateral = NO_COLLATERAL,
    now: datetime | None = None,
    platform: Platform | None = None,
) -> CvmVerdict:
    """Every step of the module docstring for one HCL report; never raises for bad evidence.

    ``vcek_chain`` (SNP): IMDS's JSON or the PEM certificates. ``td_quote`` (TDX): the v4 quote
    IMDS ``/acc/tdquote`` made from this report's TDREPORT. The trusted roots and collateral go
    to the hardware verifier as they are (None: its pinned defaults). ``platform``: the CVM type
    the caller created; a report of the other one fails ``parse``, and it names the verdict's
    kind when the report is too broken to say (otherwise ``azure-snp``)."""
    if now is not None and now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    now = now or datetime.now(UTC)
    run = _Run(platform or "snp")
    kind: EvidenceKind = KINDS[platform or "snp"]
    hardware: CvmVerdict | None = None
    hcl: HclReport | None = None
    runtime: RuntimeData | None = None
    user_data: bytes | None = None
    failure: StepFailed | None = None
    try:
        try:
            hcl = parsed = parse_hcl_report(report)
        except HclFormatError as exc:
            raise _fail(STEP_PARSE, exc.code, exc.message) from None
        if platform is not None and hcl.platform != platform:
            raise _fail(
                STEP_PARSE,
                "hcl_unexpected_report_type",
                f"the HCL report is of a {hcl.platform.upper()} CVM, not of the {platform.upper()} CVM expected",
            )
        run = _Run(hcl.platform)
        kind = KINDS[hcl.platform]
        run.held(STEP_PARSE, f"an HCL report (version {hcl.header.version}) of a {hcl.platform.upper()} CVM")

        try:
            run.held(STEP_RUNTIME_DATA_HASH, _check_runtime_data_hash(hcl))
        except HclFormatError as exc:
            raise _fail(STEP_RUNTIME_DATA_HASH, exc.code, exc.message) from None

        if hcl.platform == "snp":
            if vcek_chain is None:
                raise _fail(
                    STEP_VCEK_CHAIN,
                    "hcl_vcek_chain_missing",
                    "no VCEK chain was given: Azure serves it from the instance metadata service, not in the report",
                )
            certs = parse_vcek_chain(vcek_chain)
            run.held(STEP_VCEK_CHAIN, f"the VCEK and {len(certs.chain)} certificates above it")
            hardware = _contained(
                STEP_SNP,
                lambda: _verify_snp_hardware(
                    parsed.hardware_report, vcek=certs.vcek, chain=certs.chain, trusted_roots=snp_trusted_roots, now=now
                ),
            )
            if not run.nested(STEP_SNP, hardware):
                return CvmVerdict(kind, run.finish(None), _claims(kind, hardware.claims, hcl, None, None))
        else:
            if td_quote is None:
                raise _fail(
                    STEP_TD_QUOTE,
                    "hcl_td_quote_missing",
                    "no TD quote was given: a TDREPORT is checkable only through the quote made from it (IMDS /acc/tdquote)",
                )
            quote, matched = _check_td_quote(parsed, bytes(td_quote))
            run.held(STEP_TD_QUOTE, matched)
            hardware = _contained(
                STEP_TDX,
                lambda: _verify_tdx_hardware(quote, trusted_root_keys=tdx_trusted_root_keys, collateral=tdx_collateral, now=now),
            )
            if not run.nested(STEP_TDX, hardware):
                return CvmVerdict(kind, run.finish(None), _claims(kind, hardware.claims, hcl, None, None))

        try:
            runtime = parse_runtime_data(hcl.variable_data)
            run.held(
                STEP_RUNTIME_DATA,
                f"VM {runtime.vm_configuration.vm_unique_id}, keys {', '.join(runtime.kids) or 'none'}",
            )
            user_data = decode_user_data(runtime)
        except RuntimeDataError as exc:
            step = STEP_USER_DATA if runtime is not None else STEP_RUNTIME_DATA
            raise _fail(step, exc.code, exc.message) from None
        run.held(STEP_USER_DATA, f"user-data holds {len(user_data)} bytes ({user_data.hex()[:16]}…)")
    except StepFailed as exc:
        failure = exc
    claims = _claims(kind, hardware.claims if hardware is not None else None, hcl, runtime, user_data) if hcl else None
    return CvmVerdict(kind, run.finish(failure), claims)
