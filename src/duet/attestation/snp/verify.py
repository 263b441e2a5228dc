"""Whether a genuine AMD processor signed an SEV-SNP attestation report: the chain and signature, step by step.

The steps (:data:`SNP_STEPS`) run in the order each one's key is established by the one before:

* ``parse`` — the 1184 bytes are a report of a known version (:func:`~duet.attestation.snp.abi.parse_report`);
* ``signer`` — the certificate given is of the kind the report's SIGNER_INFO names (VCEK or VLEK);
* ``cert_chain`` — ARK (pinned by key, for the report's product) → ASK (or ASVK) → VCEK (or
  VLEK), every link RSASSA-PSS with SHA-384 and a 48-byte salt, every certificate valid at ``now``,
  the leaf key ECDSA P-384;
* ``report_signature`` — the leaf key signed report[0:0x2A0] (ECDSA P-384, SHA-384, r and s
  little-endian);
* ``tcb_binding`` — the certificate was issued for this report's REPORTED_TCB and, for a VCEK,
  this chip (hwID == CHIP_ID, unless the host masked CHIP_ID).

Each failure names its step and a stable code, because "the report does not verify" cannot be
acted on and "the VCEK is for another TCB" can. Nothing here says which guest is acceptable
(debug, measurement, minimum TCB: the policy) or what the report data must be (the binding);
the claims are returned for those, also when a step failed, for display.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from duet.attestation.cvm import CvmClaims, CvmVerdict
from duet.attestation.snp.abi import (
    CertTable,
    CertTableFormatError,
    Product,
    SignerKind,
    SnpReport,
    SnpReportFormatError,
    parse_cert_table,
    parse_report,
)
from duet.attestation.snp.roots import AmdRoot, amd_roots, cn_is, common_name, key_sha256, load_certificates
from duet.attestation.snp.vcek import VcekExtensionError, VcekExtensions, read_extensions
from duet.attestation.steps import StepFailed, step_verdicts
from duet.errors import VerificationError

STEP_PARSE = "parse"
STEP_SIGNER = "signer"
STEP_CERT_CHAIN = "cert_chain"
STEP_REPORT_SIGNATURE = "report_signature"
STEP_TCB_BINDING = "tcb_binding"
SNP_STEPS: tuple[str, ...] = (STEP_PARSE, STEP_SIGNER, STEP_CERT_CHAIN, STEP_REPORT_SIGNATURE, STEP_TCB_BINDING)

CertInput = Union[bytes, x509.Certificate]
AMD_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_CERT_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.InvalidVersion)
"""What a certificate that parsed as DER but whose fields do not may raise: a bad certificate, not a crash."""


@dataclass
class _Checked:
    """What the steps established so far (the claims use it when a later step failed)."""

    leaf: x509.Certificate | None = None
    extensions: VcekExtensions | None = None
    product: Product | None = None
    root: AmdRoot | None = None
    chain: list[tuple[str, x509.Certificate]] = field(default_factory=list)


def _fail(step: str, code: str, message: str) -> StepFailed:
    return StepFailed(message, code=code, step=step)


def _load(data: CertInput | Sequence[CertInput], what: str, step: str) -> list[x509.Certificate]:
    single = isinstance(data, bytes | bytearray | memoryview | x509.Certificate)
    items = [data] if single else list(data)  # type: ignore[arg-type]
    out: list[x509.Certificate] = []
    for item in items:
        if isinstance(item, x509.Certificate):
            out.append(item)
            continue
        if not isinstance(item, bytes | bytearray | memoryview):
            raise _fail(step, "bad_certificate", f"{what}: expected certificates or bytes, got {type(item).__name__}")
        try:
            out += load_certificates(bytes(item), what)
        except VerificationError as exc:
            raise _fail(step, "bad_certificate", exc.message) from None
    return out


# --- signer ----------------------------------------------------------------------------------


def _kds_hint(rep: SnpReport, kind: SignerKind) -> str:
    if kind == "VLEK":
        return "the VLEK comes from the cloud provider (it is also in the GHCB certificate table the guest reads)"
    if rep.chip_id_masked or rep.product == "Turin":
        return (
            "fetch it from AMD's KDS (https://kdsintf.amd.com/vcek/v1/<product>/<CHIP_ID>?<SPLs>) or the GHCB certificate table"
        )
    t = rep.tcb("reported_tcb")
    return (
        f"fetch it from AMD's KDS: https://kdsintf.amd.com/vcek/v1/{rep.product or '<Milan|Genoa>'}/{rep.chip_id.hex()}"
        f"?blSPL={t.bl_spl}&teeSPL={t.tee_spl}&snpSPL={t.snp_spl}&ucodeSPL={t.ucode_spl}"
    )


def _signer(
    rep: SnpReport, vcek: CertInput | None, table: CertTable | None, checked: _Checked
) -> tuple[str, list[x509.Certificate]]:
    """The leaf certificate of the kind SIGNER_INFO names; also certificates that came with it."""
    step, kind = STEP_SIGNER, rep.signer.kind
    source: CertInput | None = vcek
    where = "given"
    if source is None and table is not None:
        source, where = table.get(kind.lower()), "from the GHCB certificate table"
    if source is None:
        raise _fail(
            step,
            f"{kind.lower()}_missing",
            f"the report is signed by a {kind}, and no {kind} certificate was given (neither directly nor in a "
            f"GHCB certificate table): {_kds_hint(rep, kind)}",
        )
    certs = _load(source, kind, step)
    if not certs:
        raise _fail(step, "bad_certificate", f"the {kind} certificate given is empty")
    leaf = next((c for c in certs if cn_is(c, "SEV-VCEK") or cn_is(c, "SEV-VLEK")), certs[0])
    if not cn_is(leaf, f"SEV-{kind}"):
        other = "VLEK" if kind == "VCEK" else "VCEK"
        said = f"a {other} certificate" if cn_is(leaf, f"SEV-{other}") else "not an AMD signing-key certificate"
        raise _fail(
            step,
            "signer_mismatch",
            f"the report's SIGNER_INFO says a {kind} signed it, but the certificate given (CN {common_name(leaf)!r}) is "
            f"{said}: give the {kind} certificate of the machine that produced the report",
        )
    checked.leaf = leaf
    return f"signed by a {kind}; certificate {common_name(leaf)!r} {where}", [c for c in certs if c is not leaf]


# --- cert_chain ------------------------------------------------------------------------------


def _product(rep: SnpReport, ext: VcekExtensions, kind: str) -> Product | None:
    if rep.product and ext.product and rep.product != ext.product:
        raise _fail(
            STEP_CERT_CHAIN,
            "product_mismatch",
            f"the report's CPUID fields name a {rep.product} processor, but the {kind} is for {ext.product_name!r}",
        )
    return rep.product or ext.product


def _tlv(data: bytes, pos: int) -> tuple[int, int]:
    """Where the DER element at ``pos`` has its contents, and where it ends."""
    length, head = data[pos + 1], 2
    if length & 0x80:
        n = length & 0x7F
        length, head = int.from_bytes(data[pos + 2 : pos + 2 + n], "big"), 2 + n
    return pos + head, pos + head + length


def _outer_algorithm_is_the_signed_one(cert: x509.Certificate) -> bool:
    """RFC 5280 4.1.1.2: the signatureAlgorithm outside tbsCertificate, which the signature does
    not cover, must repeat the one inside it (otherwise a changed copy would still verify)."""
    try:
        der, tbs = cert.public_bytes(serialization.Encoding.DER), cert.tbs_certificate_bytes
        outer_start = _tlv(der, 0)[0] + len(tbs)
        outer = der[outer_start : _tlv(der, outer_start)[1]]
        pos = _tlv(tbs, 0)[0]
        if tbs[pos] == 0xA0:  # [0] version
            pos = _tlv(tbs, pos)[1]
        pos = _tlv(tbs, pos)[1]  # serialNumber
        return tbs[pos : _tlv(tbs, pos)[1]] == outer
    except IndexError:
        return False


def _check_link(child: x509.Certificate, issuer: x509.Certificate, role: str, issuer_role: str) -> None:
    step = STEP_CERT_CHAIN
    if not _outer_algorithm_is_the_signed_one(child):
        raise _fail(
            step,
            "bad_certificate",
            f"the {role} certificate {common_name(child)!r} names another signature algorithm outside its signed part "
            "than inside it (RFC 5280 4.1.1.2): it was altered",
        )
    if child.signature_algorithm_oid != x509.SignatureAlgorithmOID.RSASSA_PSS:
        name = getattr(child.signature_algorithm_oid, "_name", child.signature_algorithm_oid.dotted_string)
        raise _fail(
            step,
            "not_rsa_pss",
            f"the {role} certificate {common_name(child)!r} is signed with {name}, not RSASSA-PSS: AMD signs every "
            "certificate of its chains with RSA-PSS (SHA-384, salt 48), so this one was not made by AMD's process",
        )
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise _fail(step, "bad_certificate", f"the {issuer_role} certificate {common_name(issuer)!r} has no RSA key")
    try:
        key.verify(child.signature, child.tbs_certificate_bytes, AMD_PSS, hashes.SHA384())
    except InvalidSignature:
        by = "its own key" if child is issuer else f"the key of the {issuer_role} {common_name(issuer)!r}"
        raise _fail(
            step,
            f"bad_{role.lower()}_signature",
            f"the signature on the {role} certificate {common_name(child)!r} does not verify with {by} "
            "(RSA-PSS, SHA-384, salt 48): the certificate was altered or was issued by another key",
        ) from None


def _check_validity(cert: x509.Certificate, role: str, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise _fail(
            STEP_CERT_CHAIN,
            "certificate_not_yet_valid",
            f"the {role} certificate {common_name(cert)!r} is valid only from {cert.not_valid_before_utc.isoformat()} "
            f"(checked at {now.isoformat()})",
        )
    if now > cert.not_valid_after_utc:
        raise _fail(
            STEP_CERT_CHAIN,
            "certificate_expired",
            f"the {role} certificate {common_name(cert)!r} expired at {cert.not_valid_after_utc.isoformat()} "
            f"(checked at {now.isoformat()}): fetch a current one",
        )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _choose_root(
    candidates: Sequence[AmdRoot], inter: x509.Certificate, arks: Sequence[x509.Certificate], role: str, product: str
) -> tuple[AmdRoot, x509.Certificate]:
    """The trusted root the intermediate chains to, and the ARK certificate to check (the one given, if any)."""
    step = STEP_CERT_CHAIN
    trusted = ", ".join(f"{r.product} ({r.key_sha256[:16]}…)" for r in candidates)
    if arks:
        ark = next((a for a in arks if a.subject == inter.issuer), None)
        if ark is None:
            raise _fail(
                step,
                "untrusted_root",
                f"the given ARK ({', '.join(repr(common_name(a)) for a in arks)}) did not issue the {role} "
                f"{common_name(inter)!r}: the chain leads to another root",
            )
        root = next((r for r in candidates if r.key_sha256 == key_sha256(ark)), None)
        if root is None:
            raise _fail(
                step,
                "untrusted_root",
                f"the chain ends at {common_name(ark)!r} whose key (SPKI SHA-256 {key_sha256(ark)}) is not a trusted "
                f"{product} root; trusted: {trusted}",
            )
        return root, ark
    named = [r for r in candidates if r.ark.subject == inter.issuer]
    if not named:
        raise _fail(
            step,
            "untrusted_root",
            f"the {role} {common_name(inter)!r} is issued by {inter.issuer.rfc4514_string()!r}, which is not a trusted "
            f"{product} root; trusted: {trusted}",
        )
    root = next((r for r in named if _signs(r.ark, inter)), named[0])
    return root, root.ark


def _signs(issuer: x509.Certificate, child: x509.Certificate) -> bool:
    """Whether ``issuer``'s key made ``child``'s signature (to pick among same-named candidates)."""
    try:
        key = issuer.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            return False
        key.verify(child.signature, child.tbs_certificate_bytes, AMD_PSS, hashes.SHA384())
    except (InvalidSignature, *_CERT_ERRORS):
        return False
    return True


def _cert_chain(
    rep: SnpReport,
    given: list[x509.Certificate],
    roots: Sequence[AmdRoot],
    now: datetime,
    checked: _Checked,
) -> str:
    step, kind = STEP_CERT_CHAIN, rep.signer.kind
    leaf = checked.leaf
    assert leaf is not None
    try:
        ext = read_extensions(leaf)
    except VcekExtensionError as exc:
        raise _fail(step, exc.code, f"the {kind} certificate: {exc.message}") from None
    checked.extensions = ext
    product = checked.product = _product(rep, ext, kind)
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise _fail(step, "bad_vcek_key", f"the {kind} key is not an ECDSA P-384 key, as every {kind} is")

    candidates = [r for r in roots if product is None or r.product == product]
    if not candidates:
        have = ", ".join(sorted({r.product for r in roots})) or "none"
        raise _fail(
            step,
            "untrusted_root",
            f"the report comes from a {product} processor, and no {product} root is trusted (trusted: {have})",
        )
    role = "ASK" if kind == "VCEK" else "ASVK"
    inters = [c for c in given if c.subject != c.issuer]
    arks = [c for c in given if c.subject == c.issuer]
    pool = inters if given else [c for r in candidates for c in r.intermediates]
    named = [c for c in pool if c.subject == leaf.issuer]
    inter = next((c for c in named if _signs(c, leaf)), named[0] if named else None)
    if inter is None:
        raise _fail(
            step,
            f"{role.lower()}_missing",
            f"the {kind} is issued by {leaf.issuer.rfc4514_string()!r}, and no such {role} was "
            + ("given in the chain" if given else "among the trusted roots' intermediates")
            + f": pass the {role} and ARK (AMD KDS cert_chain) or a trusted root that carries them",
        )
    root, ark = _choose_root(candidates, inter, arks, role, product or "AMD")
    product = checked.product = root.product
    inter_cn = f"SEV-{product}" if role == "ASK" else f"SEV-VLEK-{product}"
    for cert, expected, what in ((ark, f"ARK-{product}", "ARK"), (inter, inter_cn, role)):
        if not cn_is(cert, expected):
            raise _fail(step, "chain_mismatch", f"the {what} certificate's CN is {common_name(cert)!r}, expected {expected!r}")
        if not _is_ca(cert):
            raise _fail(step, "not_a_ca", f"the {what} certificate {common_name(cert)!r} is not marked as a CA")
    _check_link(ark, ark, "ARK", "ARK")
    _check_link(inter, ark, role, "ARK")
    _check_link(leaf, inter, kind, role)
    checked.root = root
    checked.chain = [(kind, leaf), (role, inter), ("ARK", ark)]
    for role_name, cert in checked.chain:
        _check_validity(cert, role_name, now)
    origin = "AMD's pinned" if root.is_amd else "a user-trusted (SIMULATED, not AMD)"
    return f"{kind} ← {role} {common_name(inter)!r} ← {origin} {product} ARK (key {root.key_sha256[:16]}…), valid at {now.isoformat()}"


# --- report_signature, tcb_binding -----------------------------------------------------------


def _report_signature(rep: SnpReport, checked: _Checked) -> str:
    assert checked.leaf is not None
    key = checked.leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    r, s = int.from_bytes(rep.signature_r, "little"), int.from_bytes(rep.signature_s, "little")
    try:
        key.verify(encode_dss_signature(r, s), rep.signed_region, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        kind = rep.signer.kind
        raise _fail(
            STEP_REPORT_SIGNATURE,
            "bad_report_signature",
            f"the report's signature does not verify with the {kind} key: the report (MEASUREMENT, REPORT_DATA, "
            f"POLICY, TCB, ...) was altered after signing, or another {kind} signed it",
        ) from None
    return f"report[0:0x2A0] is signed by the {rep.signer.kind} key (ECDSA P-384, SHA-384)"


def _tcb_binding(rep: SnpReport, checked: _Checked) -> str:
    step, kind, ext = STEP_TCB_BINDING, rep.signer.kind, checked.extensions
    assert ext is not None
    tcb = rep.tcb("reported_tcb", checked.product).to_dict()
    missing = [name for name in tcb if name not in ext.spl]
    if missing:
        raise _fail(step, "bad_vcek_extension", f"the {kind} certificate lacks the {', '.join(missing)} extension(s)")
    diffs = [f"{name} report {value}, {kind} {ext.spl[name]}" for name, value in tcb.items() if ext.spl[name] != value]
    if diffs:
        raise _fail(
            step,
            "tcb_mismatch",
            f"the {kind} was issued for another TCB than the report's REPORTED_TCB ({'; '.join(diffs)}): "
            f"use the {kind} for this TCB",
        )
    said = f"{kind} SPLs equal REPORTED_TCB ({', '.join(f'{k} {v}' for k, v in tcb.items())})"
    if kind == "VLEK":
        return said + "; a VLEK names no chip"
    if rep.chip_id_masked:
        return said + "; CHIP_ID is masked, so the hwID is not compared"
    if ext.hwid is None:
        raise _fail(step, "bad_vcek_extension", "the VCEK certificate has no hwID extension")
    if ext.hwid != rep.chip_id:
        raise _fail(
            step,
            "chip_id_mismatch",
            f"the VCEK is for chip {ext.hwid.hex()[:16]}…, but the report's CHIP_ID is {rep.chip_id.hex()[:16]}…: "
            "use the VCEK of the chip that produced the report",
        )
    return said + "; hwID equals CHIP_ID"


# --- the whole check -------------------------------------------------------------------------


def _claims(rep: SnpReport, checked: _Checked) -> CvmClaims:
    fields = rep.to_dict(checked.product)
    for name in ("measurement", "report_data", "vmpl"):
        fields.pop(name)
    try:
        fields["certificates"] = [
            {"role": role, "subject": c.subject.rfc4514_string(), "not_valid_after": c.not_valid_after_utc.isoformat()}
            for role, c in checked.chain
        ]
    except _CERT_ERRORS:  # a name that does not decode: the chain step has said what failed
        fields["certificates"] = []
    return CvmClaims(
        kind="snp",
        platform="snp",
        measurements={"measurement": rep.measurement.hex()},
        report_data=rep.report_data,
        debug=rep.debug,
        migration_allowed=rep.migration_allowed,
        tcb=rep.tcb("reported_tcb", checked.product).to_dict(),
        signer=rep.signer.kind,
        simulated=checked.root is not None and not checked.root.is_amd,
        vmpl=rep.vmpl,
        fields=fields,
    )


def verify_snp_report(
    report: bytes,
    *,
    vcek: CertInput | None,
    chain: CertInput | Sequence[CertInput] | None = None,
    auxblob: bytes | None = None,
    trusted_roots: Sequence[AmdRoot] | None = None,
    now: datetime,
) -> CvmVerdict:
    """Verify an SNP report offline at ``now``, step by step (:data:`SNP_STEPS`).

    ``vcek`` is the VCEK or VLEK certificate (DER, PEM, or a PEM bundle that also holds its chain);
    ``chain`` the ASK/ASVK and ARK (PEM bundle, DER, or certificates; AMD KDS ``cert_chain``);
    ``auxblob`` the GHCB certificate table the guest read with the report, whose certificates are
    used where ``vcek``/``chain`` are not given. Without a chain, the trusted roots' own ASK/ASVK
    are used. ``trusted_roots`` defaults to AMD's shipped roots; pass others (a simulated AMD's) to
    trust them, and their chains are marked simulated.

    Never raises for bad evidence: the verdict has the failed step, and the claims whenever the
    report parsed.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    roots = amd_roots() if trusted_roots is None else tuple(trusted_roots)
    done: dict[str, tuple[bool | None, str]] = {}
    checked = _Checked()
    rep: SnpReport | None = None
    failure: StepFailed | None = None
    step = STEP_PARSE
    try:
        try:
            rep = parse_report(report)
        except SnpReportFormatError as exc:
            raise _fail(step, exc.code, exc.message) from None
        done[step] = (True, f"SEV-SNP report version {rep.version}, signed by a {rep.signer.kind}")
        step = STEP_SIGNER
        try:
            table = parse_cert_table(auxblob) if auxblob is not None else None
        except CertTableFormatError as exc:
            raise _fail(step, exc.code, exc.message) from None
        said, extra = _signer(rep, vcek, table, checked)
        done[step] = (True, said)
        step = STEP_CERT_CHAIN
        if chain is not None:
            given = _load(chain, "the certificate chain", step)
        else:
            blobs = [b for b in (table.get("ask"), table.get("ark")) if b] if table is not None else []
            given = extra + _load(blobs, "the GHCB table's ASK/ARK", step)
        done[step] = (True, _cert_chain(rep, given, roots, now, checked))
        step = STEP_REPORT_SIGNATURE
        done[step] = (True, _report_signature(rep, checked))
        step = STEP_TCB_BINDING
        done[step] = (True, _tcb_binding(rep, checked))
    except StepFailed as exc:
        failure = exc
    except _CERT_ERRORS as exc:
        failure = _fail(step, "bad_certificate", f"a certificate is malformed: {type(exc).__name__}: {exc}")
    claims = _claims(rep, checked) if rep is not None else None
    return CvmVerdict("snp", step_verdicts(SNP_STEPS, done, failure), claims)
