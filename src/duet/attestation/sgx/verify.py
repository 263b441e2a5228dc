"""Whether a genuine SGX platform signed a DCAP v3 quote: the chain and signatures, step by step.

The steps (:data:`SIGNATURE_STEPS`) run in the order each one's key is established by the one
before: the PCK certificate chain to a pinned root *key*, the QE report signature by the PCK
key, the binding of the attestation key into the QE report, and the ISV enclave report
signature by that attestation key. Each failure names its step and a stable code, because
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
from cryptography.exceptions import InvalidSignature
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
from duet.attestation.sgx.roots import spki_sha256
from duet.errors import VerificationError
from duet.keys import PublicKey


class QuoteVerificationError(VerificationError):
    """A verification step failed; ``step`` names it and ``code`` is stable for programs."""

    def __init__(self, message: str, *, code: str, step: str) -> None:
        super().__init__(message, code=code)
        self.step = step


STEP_PARSE = "parse"
STEP_PCK_CHAIN = "pck_chain"
STEP_QE_REPORT_SIGNATURE = "qe_report_signature"
STEP_ATTESTATION_KEY_BINDING = "attestation_key_binding"
STEP_ENCLAVE_SIGNATURE = "enclave_signature"
SIGNATURE_STEPS: tuple[str, ...] = (
    STEP_PARSE,
    STEP_PCK_CHAIN,
    STEP_QE_REPORT_SIGNATURE,
    STEP_ATTESTATION_KEY_BINDING,
    STEP_ENCLAVE_SIGNATURE,
)

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


def _ecdsa_ok(key: ec.EllipticCurvePublicKey, sig64: bytes, data: bytes) -> bool:
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
    chain = verify_pck_chain(certification_data.certificates(), trusted_root_keys=trusted_root_keys, now=now)

    pck_key = chain[0].public_key()
    assert isinstance(pck_key, ec.EllipticCurvePublicKey)
    if not _ecdsa_ok(pck_key, qe_report_signature, qe_report.raw):
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


def _verify_parsed(q: ParsedQuote, trusted_root_keys: Sequence[PublicKey], now: datetime) -> list[x509.Certificate]:
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
    try:
        att_key = attestation_public_key(sd.attestation_key)
    except ValueError:
        raise _fail(
            STEP_ENCLAVE_SIGNATURE, "bad_attestation_key", "the attestation public key in the quote is not a point on P-256"
        ) from None
    if not _ecdsa_ok(att_key, sd.isv_signature, q.signed_region):
        raise _fail(
            STEP_ENCLAVE_SIGNATURE,
            "bad_enclave_signature",
            "the ISV enclave report signature does not verify with the attestation key: the header or "
            "report body (MRENCLAVE, ATTRIBUTES, REPORTDATA, ...) was altered",
        )
    return chain


def verify_quote(quote: Union[bytes, ParsedQuote], *, trusted_root_keys: Sequence[PublicKey], now: datetime) -> Verdict:
    """Verify a quote's signatures offline, step by step (see :data:`SIGNATURE_STEPS`), at time ``now``.

    Nothing here decides whether the enclave is *acceptable* (use a policy for that), nor checks the
    report data (:func:`duet.attestation.sgx.evidence.verify_evidence` does both). Never raises
    for bad evidence: look at the verdict, or call :meth:`Verdict.raise_for_failure`.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    parsed: ParsedQuote | None = None
    try:
        parsed = quote if isinstance(quote, ParsedQuote) else parse_quote(quote)
        chain = _verify_parsed(parsed, trusted_root_keys, now)
    except QuoteFormatError as exc:
        return Verdict(False, STEP_PARSE, exc.message, None, code=exc.code)
    except QuoteVerificationError as exc:
        return Verdict(False, exc.step, exc.message, parsed, code=exc.code)
    return Verdict(
        True,
        None,
        "quote signatures verify: PCK chain to a trusted root, QE report, attestation key binding, enclave report",
        parsed,
        pck_chain=tuple(c.subject.rfc4514_string() for c in chain),
    )
