"""Whether a genuine SGX platform signed a DCAP v3 quote: the chain and signatures, step by step.

The steps (:data:`SIGNATURE_STEPS`) run in the order each one's key is established by the one
before: the PCK certificate chain to a pinned root *key*, the QE report signature by the PCK
key, the binding of the attestation key into the QE report, the chain's revocation (when CRLs
are given), the quoting enclave's identity (Intel's QE for chains ending at Intel's root; the
simulated QE for a root the user trusted explicitly), the ISV enclave report signature by the
attestation key, and the TCB level the collateral gives (when TCB info or a QE identity file is
given). A step whose collateral is absent is reported as not evaluated, never as held. Each failure names its step and a stable code, because
"the quote does not verify" cannot be acted on and "the PCK leaf expired" can.

Nothing here says *which* enclave is acceptable (:mod:`duet.attestation.sgx.policy`) or what
the report data must be (:mod:`duet.attestation.sgx.evidence`): a verified quote can then be
judged against more than one expectation.

Quote ECDSA signatures and keys are raw big-endian ``r‖s`` and ``X‖Y``; the PCK chain order
is not assumed (Intel's sample quotes and production quotes differ).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from duet.attestation.sgx.abi import (
    CERT_TYPE_PCK_CHAIN,
    CertificationData,
    ParsedQuote,
    QuoteFormatError,
    ReportBody,
    parse_quote,
)
from duet.attestation.sgx.collateral import (
    INTEL_QE_IDENTITY,
    NO_COLLATERAL,
    SIMULATED_QE_IDENTITY,
    Collateral,
    DerError,
    PckSgxExtension,
    QeIdentity,
    TcbEvaluation,
    TcbInfo,
    pck_sgx_extension,
)
from duet.attestation.sgx.roots import INTEL_SGX_ROOT_KEY_SHA256, spki_sha256
from duet.attestation.steps import StepFailed
from duet.keys import PublicKey


class QuoteVerificationError(StepFailed):
    """A verification step failed; ``step`` names it and ``code`` is stable for programs.

    A :class:`~duet.attestation.steps.StepFailed`, so that the TDX verifier, which runs these
    checks as its own steps, reports them like its other failures."""


STEP_PARSE = "parse"
STEP_PCK_CHAIN = "pck_chain"
STEP_QE_REPORT_SIGNATURE = "qe_report_signature"
STEP_ATTESTATION_KEY_BINDING = "attestation_key_binding"
STEP_ENCLAVE_SIGNATURE = "enclave_signature"
STEP_PCK_REVOCATION = "pck_revocation"
STEP_QE_IDENTITY = "qe_identity"
STEP_TCB_LEVEL = "tcb_level"
SIGNATURE_STEPS: tuple[str, ...] = (
    STEP_PARSE,
    STEP_PCK_CHAIN,
    STEP_QE_REPORT_SIGNATURE,
    STEP_ATTESTATION_KEY_BINDING,
    STEP_PCK_REVOCATION,
    STEP_QE_IDENTITY,
    STEP_ENCLAVE_SIGNATURE,
    STEP_TCB_LEVEL,
)
"""Every step of verification, in order: signatures and chain, revocation, QE identity, TCB level."""

PCK_LEAF_CN_PHRASE = "SGX PCK Certificate"  # as Intel's QVL checks it
_MAX_CHAIN = 5


@dataclass(frozen=True)
class Verdict:
    """Outcome of :func:`verify_quote`. ``ok`` is True only if every step passed."""

    ok: bool
    failed_step: str | None
    message: str
    quote: ParsedQuote | None = field(repr=False)
    code: str | None = None
    pck_chain: tuple[str, ...] = ()
    """Subjects of the verified chain, leaf first (for display)."""
    notes: tuple[tuple[str, bool, str], ...] = ()
    """``(step, evaluated, message)`` for the steps that passed: what held, or why a step was
    not evaluated (no collateral given)."""
    tcb: TcbEvaluation | None = None
    """The TCB statuses the collateral gave (None: neither TCB info nor a QE identity file)."""

    def raise_for_failure(self) -> ParsedQuote:
        """Exception form: return the parsed quote, or raise :class:`QuoteVerificationError`."""
        if not self.ok:
            raise QuoteVerificationError(self.message, code=self.code or "verification_failed", step=self.failed_step or "")
        assert self.quote is not None
        return self.quote


def _raw_sig(sig64: bytes) -> bytes:
    """Raw big-endian r‖s (quote encoding) → DER ECDSA-Sig-Value (cryptography's encoding)."""
    return encode_dss_signature(int.from_bytes(sig64[:32], "big"), int.from_bytes(sig64[32:], "big"))


def attestation_public_key(raw64: bytes) -> ec.EllipticCurvePublicKey:
    """The attestation key from its raw X‖Y form (no 0x04 prefix in the quote)."""
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw64)


def raw_signature_ok(key: ec.EllipticCurvePublicKey, sig64: bytes, data: bytes) -> bool:
    """ECDSA-SHA256 over ``data`` with a quote's raw big-endian ``r‖s`` signature."""
    try:
        key.verify(_raw_sig(sig64), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def common_name(name: x509.Name) -> str:
    """The CN of a name (or the whole name when it has none), for messages."""
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def _cn(cert: x509.Certificate) -> str:
    return common_name(cert.subject)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _signed_by_key(cert: x509.Certificate, key: PublicKey) -> bool:
    if not isinstance(key, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
        return False
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


def _fail(step: str, code: str, message: str) -> QuoteVerificationError:
    return QuoteVerificationError(message, code=code, step=step)


def verify_pck_chain(
    certs: Sequence[x509.Certificate], *, trusted_root_keys: Sequence[PublicKey], now: datetime
) -> list[x509.Certificate]:
    """Order the chain leaf→…→root by names, check each link's signature, CA flags and validity at
    ``now``, and require that the top is a pinned root key (or is signed by one).

    Returns the chain leaf first. Raises :class:`QuoteVerificationError` (step ``pck_chain``).
    """
    step = STEP_PCK_CHAIN
    if not certs:
        raise _fail(step, "bad_pck_chain", "the quote carries no PCK certificate chain")
    leaves = [c for c in certs if not _is_ca(c)]
    if len(leaves) != 1:
        raise _fail(
            step, "bad_pck_chain", f"expected exactly one non-CA (PCK leaf) certificate in the chain, found {len(leaves)}"
        )
    leaf = leaves[0]
    if PCK_LEAF_CN_PHRASE not in _cn(leaf):
        raise _fail(step, "bad_pck_chain", f"leaf certificate CN {_cn(leaf)!r} does not contain {PCK_LEAF_CN_PHRASE!r}")
    if not isinstance(leaf.public_key(), ec.EllipticCurvePublicKey) or not isinstance(leaf.public_key().curve, ec.SECP256R1):  # type: ignore[union-attr]
        raise _fail(step, "bad_pck_chain", "the PCK leaf key is not an ECDSA P-256 key")

    chain = [leaf]
    while len(chain) <= _MAX_CHAIN:
        child = chain[-1]
        if child.issuer == child.subject:
            break  # self-signed top
        parents = [c for c in certs if c.subject == child.issuer and c is not child]
        if not parents:
            break  # the issuer is not in the quote: it may still be a pinned key
        parent = parents[0]
        if not _is_ca(parent):
            raise _fail(step, "bad_pck_chain", f"issuer {_cn(parent)!r} of {_cn(child)!r} is not a CA certificate")
        try:
            child.verify_directly_issued_by(parent)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise _fail(
                step,
                "bad_pck_signature",
                f"PCK chain: the signature on {_cn(child)!r} does not verify with the key of its issuer "
                f"{_cn(parent)!r}" + (f" ({exc})" if str(exc) else ""),
            ) from None
        chain.append(parent)
    else:
        raise _fail(step, "bad_pck_chain", f"PCK chain is longer than {_MAX_CHAIN} certificates")

    for cert in chain:
        if now < cert.not_valid_before_utc:
            raise _fail(
                step,
                "certificate_not_yet_valid",
                f"{_cn(cert)!r} is valid only from {cert.not_valid_before_utc.isoformat()} (checked at {now.isoformat()})",
            )
        if now > cert.not_valid_after_utc:
            raise _fail(
                step,
                "certificate_expired",
                f"{_cn(cert)!r} expired at {cert.not_valid_after_utc.isoformat()} (checked at {now.isoformat()})",
            )

    top = chain[-1]
    pinned = {spki_sha256(k): k for k in trusted_root_keys}
    top_key_id = spki_sha256(top.public_key())  # type: ignore[arg-type]
    if top_key_id in pinned:
        return chain
    if any(_signed_by_key(top, k) for k in trusted_root_keys):
        return chain
    raise _fail(
        step,
        "untrusted_root",
        f"PCK chain ends at {_cn(top)!r} whose key (SPKI SHA-256 {top_key_id}) is not a trusted root key "
        f"and is not signed by one; trusted: {', '.join(sorted(pinned)) or 'none'}",
    )


def verify_quoting_enclave(
    certification_data: CertificationData,
    qe_report: ReportBody,
    qe_report_signature: bytes,
    attestation_key: bytes,
    qe_auth_data: bytes,
    *,
    trusted_root_keys: Sequence[PublicKey],
    now: datetime,
) -> list[x509.Certificate]:
    """The platform vouches for the attestation key: steps ``pck_chain``, ``qe_report_signature``
    and ``attestation_key_binding``. TDX v4 quotes carry the same fields (nested one level
    deeper), so the TDX verifier reuses this. Returns the PCK chain, leaf first."""
    if certification_data.type != CERT_TYPE_PCK_CHAIN:
        raise _fail(
            STEP_PCK_CHAIN,
            "bad_pck_chain",
            f"certification data type is {certification_data.type}; only type 5 (PCK certificate chain) can be verified offline",
        )
    try:
        chain = verify_pck_chain(certification_data.certificates(), trusted_root_keys=trusted_root_keys, now=now)
        pck_key = chain[0].public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.InvalidVersion) as exc:
        # A certificate that parsed as DER but whose fields do not (found by fuzzing): a bad chain, not a crash.
        raise _fail(
            STEP_PCK_CHAIN, "bad_pck_certificate", f"a PCK certificate is malformed: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(pck_key, ec.EllipticCurvePublicKey):
        raise _fail(STEP_PCK_CHAIN, "bad_pck_certificate", "the PCK certificate's key is not an ECDSA key")
    if not raw_signature_ok(pck_key, qe_report_signature, qe_report.raw):
        raise _fail(
            STEP_QE_REPORT_SIGNATURE,
            "bad_qe_report_signature",
            "the QE report signature does not verify with the PCK leaf key: the quoting enclave's report "
            "was altered or was not signed by this platform's PCK key",
        )

    expected = hashlib.sha256(attestation_key + qe_auth_data).digest() + bytes(32)
    actual = qe_report.report_data
    if actual[:32] != expected[:32]:
        raise _fail(
            STEP_ATTESTATION_KEY_BINDING,
            "attestation_key_not_bound",
            "QE report REPORTDATA[0:32] is not SHA-256(attestation key ‖ QE auth data): "
            f"expected {expected[:32].hex()}, found {actual[:32].hex()}",
        )
    if actual[32:] != expected[32:]:
        raise _fail(
            STEP_ATTESTATION_KEY_BINDING,
            "attestation_key_not_bound",
            f"QE report REPORTDATA[32:64] must be zero, found {actual[32:].hex()}",
        )
    return chain


def check_attestation_signature(
    attestation_key: bytes, signature: bytes, signed_region: bytes, *, step: str, code: str, altered: str
) -> None:
    """The quote's attestation key (raw X‖Y) signed its signed region (raw ``r‖s``): the last
    signature of an SGX or a TDX quote. Raises ``step`` with code ``bad_attestation_key``, or
    ``code`` and the message ``altered`` when the signature does not verify."""
    try:
        key = attestation_public_key(attestation_key)
    except ValueError:
        raise _fail(step, "bad_attestation_key", "the attestation public key in the quote is not a point on P-256") from None
    if not raw_signature_ok(key, signature, signed_region):
        raise _fail(step, code, altered)


def anchor_key_id(chain: Sequence[x509.Certificate], trusted_root_keys: Sequence[PublicKey]) -> str:
    """SPKI SHA-256 of the trusted root key a verified chain ends at (its top's key, or the key
    that signed its top)."""
    top = chain[-1]
    top_id = spki_sha256(top.public_key())  # type: ignore[arg-type]
    if any(spki_sha256(k) == top_id for k in trusted_root_keys):
        return top_id
    return next(spki_sha256(k) for k in trusted_root_keys if _signed_by_key(top, k))


def qe_identity_for_root(
    root_key_id: str,
    collateral: Collateral = NO_COLLATERAL,
    *,
    intel: QeIdentity = INTEL_QE_IDENTITY,
    simulated: QeIdentity = SIMULATED_QE_IDENTITY,
) -> QeIdentity:
    """The quoting enclave a chain ending at this root must show: Intel's (the QE identity file's,
    or the built-in one) for Intel's root; for a root the user trusted explicitly (the simulated
    TEE's), the simulated QE — trusting that root is trusting everything it signs.

    ``intel`` and ``simulated`` are the built-in identities: SGX's QE by default; the TDX
    verifier passes the TD quoting enclave's."""
    if root_key_id == INTEL_SGX_ROOT_KEY_SHA256:
        return collateral.qe_identity or intel
    return simulated


def _crl_fresh(crl: x509.CertificateRevocationList, what: str, now: datetime) -> None:
    if crl.next_update_utc is not None and now > crl.next_update_utc:
        raise _fail(
            STEP_PCK_REVOCATION,
            "collateral_expired",
            f"the {what} expired at {crl.next_update_utc.isoformat()} (checked at {now.isoformat()}): fetch a current one",
        )
    if now < crl.last_update_utc:
        raise _fail(STEP_PCK_REVOCATION, "bad_crl", f"the {what} is issued only at {crl.last_update_utc.isoformat()}")


def check_revocation(
    chain: Sequence[x509.Certificate], trusted_root_keys: Sequence[PublicKey], collateral: Collateral, now: datetime
) -> tuple[bool, str]:
    """Neither the PCK leaf (PCK CRL, by its issuing CA) nor an intermediate (root CA CRL) is revoked.

    Returns whether any CRL was evaluated and what held; raises step ``pck_revocation``."""
    step = STEP_PCK_REVOCATION
    said = []
    if collateral.pck_crl is None:
        said.append("PCK CRL: not evaluated (no PCK CRL given)")
    else:
        crl, leaf = collateral.pck_crl, chain[0]
        issuer = next((c for c in chain[1:] if c.subject == leaf.issuer), None)
        if issuer is None or crl.issuer != leaf.issuer:
            raise _fail(step, "bad_crl", f"the PCK CRL is issued by {common_name(crl.issuer)!r}, not by the PCK leaf's issuer")
        if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise _fail(step, "bad_crl", f"the PCK CRL's signature does not verify with the key of {_cn(issuer)!r}")
        _crl_fresh(crl, "PCK CRL", now)
        if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
            raise _fail(step, "certificate_revoked", f"the PCK certificate (serial {leaf.serial_number:x}) is revoked")
        said.append("PCK CRL: the PCK certificate is not revoked")
    if collateral.root_crl is None:
        said.append("root CA CRL: not evaluated (no root CA CRL given)")
    else:
        crl = collateral.root_crl
        if not any(crl.is_signature_valid(k) for k in trusted_root_keys):
            raise _fail(step, "bad_crl", "the root CA CRL is not signed by a trusted root key")
        _crl_fresh(crl, "root CA CRL", now)
        for cert in chain[1:]:
            if cert.issuer == crl.issuer and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise _fail(step, "certificate_revoked", f"{_cn(cert)!r} (serial {cert.serial_number:x}) is revoked")
        said.append("root CA CRL: no CA of the chain is revoked")
    return collateral.pck_crl is not None or collateral.root_crl is not None, "; ".join(said)


def check_qe_identity(qe_report: ReportBody, identity: QeIdentity, now: datetime) -> str:
    """The quoting enclave's report matches ``identity`` (and the identity is current); returns
    what held, raises step ``qe_identity``."""
    step = STEP_QE_IDENTITY
    if identity.next_update is not None and now > identity.next_update:
        raise _fail(
            step,
            "collateral_expired",
            f"the QE identity {identity.source} expired at {identity.next_update.isoformat()} "
            f"(checked at {now.isoformat()}): fetch a current one",
        )
    problems = identity.mismatches(qe_report)
    if identity.tcb_levels and not problems and identity.tcb_level(qe_report.isv_svn) is None:
        problems.append(f"ISVSVN {qe_report.isv_svn} reaches no TCB level of the QE identity")
    if problems:
        raise _fail(
            step,
            "qe_identity_mismatch",
            f"the quoting enclave is not the one {identity.source} describes: " + "; ".join(problems),
        )
    note = f"; {identity.signature_note}" if identity.signature_note else ""
    return f"the quoting enclave matches the {identity.source}{note}"


def check_tcb_info(chain: Sequence[x509.Certificate], info: TcbInfo, now: datetime) -> PckSgxExtension:
    """The TCB info is for the PCK certificate's platform (the FMSPC and PCEID of its SGX
    extension) and is still current. Returns the extension, whose TCB the info's levels judge;
    raises step ``tcb_level``. TDX TCB info is matched the same way, so the TDX verifier calls this."""
    step = STEP_TCB_LEVEL
    try:
        ext = pck_sgx_extension(chain[0])
    except DerError as exc:
        raise _fail(step, "bad_pck_extension", f"cannot read the PCK certificate's SGX extension: {exc}") from None
    if (ext.fmspc, ext.pce_id) != (info.fmspc, info.pce_id):
        raise _fail(
            step,
            "tcb_info_mismatch",
            f"the TCB info {info.source} is for FMSPC {info.fmspc.hex()} PCEID {info.pce_id.hex()}; "
            f"the PCK certificate has FMSPC {ext.fmspc.hex()} PCEID {ext.pce_id.hex()}",
        )
    if now > info.next_update:
        raise _fail(
            step,
            "collateral_expired",
            f"the TCB info {info.source} expired at {info.next_update.isoformat()} (checked at {now.isoformat()}): fetch a current one",
        )
    return ext


@dataclass(frozen=True)
class PlatformTcb:
    """The platform's TCB level as the TCB info judged it, and how to say so."""

    status: str
    date: datetime | None
    advisory_ids: tuple[str, ...]
    fmspc: bytes
    said: str
    """``platform: <status> (...)``: the FMSPC, the level, the TCB info that judged it."""


def tcb_evaluation(platform: PlatformTcb | None, identity: QeIdentity, qe_isv_svn: int) -> tuple[TcbEvaluation | None, str]:
    """The platform's TCB (None: no TCB info was given) and the quoting enclave's (by the QE
    identity's levels; none: no QE identity file was given) as one evaluation and its message,
    or None when neither was evaluated."""
    said = [platform.said if platform else "platform: not evaluated (no TCB info given)"]
    advisories = platform.advisory_ids if platform else ()
    qe_status = None
    if not identity.tcb_levels:
        said.append("quoting enclave: not evaluated (no QE identity given)")
    else:
        qe_level = identity.tcb_level(qe_isv_svn)
        assert qe_level is not None  # the qe_identity step required one
        qe_status = qe_level.tcb_status
        advisories += qe_level.advisory_ids
        said.append(f"quoting enclave: {qe_status} (ISVSVN {qe_isv_svn})")
    if platform is None and qe_status is None:
        return None, "TCB level: not evaluated (no TCB info given); quoting enclave TCB: not evaluated (no QE identity given)"
    status, date, fmspc = (platform.status, platform.date, platform.fmspc) if platform else (None, None, None)
    return TcbEvaluation(status, qe_status, date, advisories, fmspc), "TCB level: " + "; ".join(said)


def _platform_tcb(chain: Sequence[x509.Certificate], info: TcbInfo, now: datetime) -> PlatformTcb:
    ext = check_tcb_info(chain, info, now)
    level = info.tcb_level(ext.tcb.comp_svns, ext.tcb.pce_svn)
    if level is None:
        raise _fail(
            STEP_TCB_LEVEL,
            "tcb_level_not_found",
            f"the platform's TCB (components {list(ext.tcb.comp_svns)}, PCESVN {ext.tcb.pce_svn}) reaches no "
            f"level of the TCB info {info.source}: not supported",
        )
    date = level.tcb_date
    return PlatformTcb(
        level.tcb_status,
        date,
        level.advisory_ids,
        ext.fmspc,
        f"platform: {level.tcb_status} (FMSPC {ext.fmspc.hex()}, TCB date {date.date() if date else '?'}, "
        f"TCB info {info.source}; {info.signature_note})",
    )


def _evaluate_tcb(
    chain: Sequence[x509.Certificate], qe_report: ReportBody, identity: QeIdentity, collateral: Collateral, now: datetime
) -> tuple[TcbEvaluation | None, str]:
    info = collateral.tcb_info
    platform = _platform_tcb(chain, info, now) if info is not None else None
    return tcb_evaluation(platform, identity, qe_report.isv_svn)


@dataclass
class _Checked:
    chain: list[x509.Certificate]
    notes: list[tuple[str, bool, str]]
    tcb: TcbEvaluation | None = None


def _verify_parsed(q: ParsedQuote, trusted_root_keys: Sequence[PublicKey], now: datetime, collateral: Collateral) -> _Checked:
    sd = q.signature_data
    chain = verify_quoting_enclave(
        sd.certification_data,
        sd.qe_report,
        sd.qe_report_signature,
        sd.attestation_key,
        sd.qe_auth_data,
        trusted_root_keys=trusted_root_keys,
        now=now,
    )
    evaluated, message = check_revocation(chain, trusted_root_keys, collateral, now)
    notes = [(STEP_PCK_REVOCATION, evaluated, message)]
    identity = qe_identity_for_root(anchor_key_id(chain, trusted_root_keys), collateral)
    notes.append((STEP_QE_IDENTITY, True, check_qe_identity(sd.qe_report, identity, now)))
    check_attestation_signature(
        sd.attestation_key,
        sd.isv_signature,
        q.signed_region,
        step=STEP_ENCLAVE_SIGNATURE,
        code="bad_enclave_signature",
        altered="the ISV enclave report signature does not verify with the attestation key: the header or "
        "report body (MRENCLAVE, ATTRIBUTES, REPORTDATA, ...) was altered",
    )
    tcb, message = _evaluate_tcb(chain, sd.qe_report, identity, collateral, now)
    notes.append((STEP_TCB_LEVEL, tcb is not None, message))
    return _Checked(chain, notes, tcb)


def verify_quote(
    quote: Union[bytes, ParsedQuote],
    *,
    trusted_root_keys: Sequence[PublicKey],
    now: datetime,
    collateral: Collateral = NO_COLLATERAL,
) -> Verdict:
    """Verify a quote offline, step by step (see :data:`SIGNATURE_STEPS`), at time ``now``, with
    whatever Intel ``collateral`` is given (absent parts are reported as not evaluated).

    Nothing here decides whether the enclave or its TCB status is *acceptable* (use a policy for
    that), nor checks the report data (:func:`duet.attestation.sgx.evidence.verify_evidence` does
    both). Never raises for bad evidence: look at the verdict, or call :meth:`Verdict.raise_for_failure`.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    parsed: ParsedQuote | None = None
    try:
        parsed = quote if isinstance(quote, ParsedQuote) else parse_quote(quote)
        checked = _verify_parsed(parsed, trusted_root_keys, now, collateral)
    except QuoteFormatError as exc:
        return Verdict(False, STEP_PARSE, exc.message, None, code=exc.code)
    except QuoteVerificationError as exc:
        return Verdict(False, exc.step, exc.message, parsed, code=exc.code)
    return Verdict(
        True,
        None,
        "quote verifies: PCK chain to a trusted root, QE report, attestation key binding, QE identity, enclave report",
        parsed,
        pck_chain=tuple(c.subject.rfc4514_string() for c in checked.chain),
        notes=tuple(checked.notes),
        tcb=checked.tcb,
    )
