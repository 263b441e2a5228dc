"""What the CVM's collection program printed (``duet/guest/collect_evidence.py``), read as a
claim and dispatched to the verifier of its kind.

The bundle is the evidence the controller stores (as a blob, by SHA-256) and the ledger names:
an auditor re-verifies it with :func:`verify_bundle` and :func:`~duet.attestation.cvm_evidence.judge`
exactly as the controller did. Everything in it comes from the CVM, or from whoever sits between:
its ``report_data`` and ``source`` only say what the guest *says* it did; the binding is
checked on the signed report data, never on these.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from duet.attestation.cvm import CvmVerdict, EvidenceKind, Platform
from duet.attestation.snp.roots import AmdRoot
from duet.attestation.snp.verify import verify_snp_report
from duet.attestation.steps import StepVerdict
from duet.errors import VerificationError
from duet.keys import PublicKey

FORMAT = "duet-cvm-evidence/v1"
MAX_BUNDLE_BYTES = 1024 * 1024
"""The largest bundle read: an SNP report and its certificates, or a TDX quote, take a few KiB;
an Azure HCL report with its chain about 10 KiB."""
SOURCES = ("configfs-tsm", "azure-vtpm", "simulated")
_TSM_PROVIDERS: dict[str, Platform] = {"sev_guest": "snp", "tdx_guest": "tdx"}
_BINARY_FIELDS = ("outblob", "auxblob", "hcl_report", "td_quote")
_HCL_REPORT_TYPE = slice(1224, 1228)
_HCL_PLATFORMS: dict[int, Platform] = {2: "snp", 4: "tdx"}


class BundleFormatError(VerificationError):
    """What the CVM printed is not an evidence bundle duet can read."""

    code = "bad_evidence_bundle"


@dataclass(frozen=True)
class EvidenceBundle:
    source: str
    report_data: str
    """What the guest says it asked for (hex); informative only."""
    provider: str = ""
    """configfs-tsm's provider: ``sev_guest`` or ``tdx_guest``."""
    blobs: dict[str, bytes] = field(default_factory=dict)
    """``outblob``, ``auxblob`` (configfs-tsm), ``hcl_report``, ``td_quote`` (Azure), decoded."""
    vcek_chain: str | None = None
    """Azure: what the instance metadata service answered for the VCEK chain (JSON or PEM)."""

    @property
    def platform(self) -> Platform:
        if self.source == "azure-vtpm":
            report_type = int.from_bytes(self.blobs.get("hcl_report", b"")[_HCL_REPORT_TYPE], "little")
            return _HCL_PLATFORMS.get(report_type, "snp")
        return _TSM_PROVIDERS[self.provider]

    @property
    def kind(self) -> EvidenceKind:
        if self.source == "azure-vtpm":
            return "azure-tdx" if self.platform == "tdx" else "azure-snp"
        return self.platform

    def to_json(self) -> dict[str, Any]:
        """The bundle as the guest printed it (base64 for the binary fields)."""
        out: dict[str, Any] = {"format": FORMAT, "source": self.source, "report_data": self.report_data}
        if self.provider:
            out["provider"] = self.provider
        out.update({name: base64.b64encode(data).decode("ascii") for name, data in self.blobs.items()})
        if self.vcek_chain is not None:
            out["vcek_chain"] = self.vcek_chain
        return out


def _text(data: dict[str, Any], key: str, required: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BundleFormatError(f"the evidence bundle's {key!r} must be a string")
    return value


def parse_bundle(data: bytes) -> EvidenceBundle:
    """Read a bundle; raises :class:`BundleFormatError` naming what is wrong."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleFormatError(f"the evidence bundle is {len(data)} bytes; at most {MAX_BUNDLE_BYTES} are read")
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BundleFormatError("the CVM's evidence is not JSON: the collection program did not run as expected") from None
    if not isinstance(parsed, dict) or parsed.get("format") != FORMAT:
        raise BundleFormatError(f"the CVM's evidence is not a {FORMAT} bundle")
    source = _text(parsed, "source")
    if source not in SOURCES:
        raise BundleFormatError(f"unknown evidence source {source!r}; known: {', '.join(SOURCES)}")
    blobs: dict[str, bytes] = {}
    for name in _BINARY_FIELDS:
        text = _text(parsed, name, required=False)
        if text:
            try:
                blobs[name] = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise BundleFormatError(f"the evidence bundle's {name!r} is not base64") from None
    bundle = EvidenceBundle(
        source=source,
        report_data=_text(parsed, "report_data", required=False),
        provider=_text(parsed, "provider", required=False),
        blobs=blobs,
        vcek_chain=_text(parsed, "vcek_chain", required=False) or None,
    )
    if source == "azure-vtpm":
        if "hcl_report" not in blobs:
            raise BundleFormatError("an azure-vtpm bundle needs its hcl_report")
    else:
        if bundle.provider not in _TSM_PROVIDERS:
            raise BundleFormatError(f"unknown report provider {bundle.provider!r}; known: {', '.join(_TSM_PROVIDERS)}")
        if "outblob" not in blobs:
            raise BundleFormatError("the evidence bundle has no outblob (the report or quote)")
    return bundle


@dataclass(frozen=True)
class CvmRoots:
    """The roots CVM evidence must chain to: AMD's and Intel's pinned ones by default; others
    (a simulated AMD's or Intel's) only when the user passed them, and their claims say SIMULATED."""

    amd: Sequence[AmdRoot] | None = None
    intel: Sequence[PublicKey] | None = None


def load_cvm_roots(pem: bytes, source: str = "CVM roots") -> CvmRoots:
    """Roots a user trusts besides AMD's and Intel's (e.g. ``duet controller sim-root --cvm``):
    PEM certificates, each AMD chain as ARK and ASK/ASVK (RSA), each Intel-style root a
    self-signed ECDSA P-256 certificate. Returned with the pinned roots, not instead of them."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from duet.attestation.sgx.roots import intel_sgx_root_key
    from duet.attestation.snp.roots import amd_roots, load_amd_root

    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise VerificationError(f"{source}: no PEM certificates", code="bad_roots") from None
    amd = [c for c in certificates if isinstance(c.public_key(), rsa.RSAPublicKey)]
    intel: list[PublicKey] = [
        key for c in certificates if c.subject == c.issuer and isinstance(key := c.public_key(), ec.EllipticCurvePublicKey)
    ]
    arks = [c for c in amd if c.subject == c.issuer]
    extra = [load_amd_root([ark, *(c for c in amd if c.issuer == ark.subject and c is not ark)]) for ark in arks]
    if not extra and not intel:
        raise VerificationError(f"{source}: neither an AMD chain (ARK and ASK) nor a self-signed P-256 root", code="bad_roots")
    return CvmRoots(amd=(*amd_roots(), *extra), intel=(intel_sgx_root_key(), *intel))


def verify_bundle(bundle: EvidenceBundle, *, roots: CvmRoots, now: datetime, expected: Platform | None = None) -> CvmVerdict:
    """Run the verifier of the bundle's kind; ``expected`` is the CVM type the controller created:
    evidence of the other platform fails (a CVM of the wrong kind answered). Never raises for bad
    evidence."""
    if expected is not None and bundle.platform != expected:
        return CvmVerdict(
            bundle.kind,
            (
                StepVerdict(
                    "parse",
                    False,
                    "wrong_platform",
                    f"the CVM was created as {expected} but its evidence is {bundle.platform}: another machine answered",
                ),
            ),
        )
    if bundle.source == "azure-vtpm":
        from duet.attestation.azure.verify import verify_azure_hcl

        return verify_azure_hcl(
            bundle.blobs["hcl_report"],
            vcek_chain=bundle.vcek_chain,
            td_quote=bundle.blobs.get("td_quote"),
            snp_trusted_roots=roots.amd,
            tdx_trusted_root_keys=roots.intel,
            now=now,
            platform=bundle.platform,
        )
    if bundle.platform == "snp":
        return verify_snp_report(
            bundle.blobs["outblob"], vcek=None, auxblob=bundle.blobs.get("auxblob"), trusted_roots=roots.amd, now=now
        )
    from duet.attestation.tdx.verify import verify_tdx_quote

    return verify_tdx_quote(bundle.blobs["outblob"], trusted_root_keys=roots.intel, now=now)
