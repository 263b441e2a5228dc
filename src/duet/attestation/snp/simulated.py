"""A simulated AMD: an ARK → ASK → VCEK chain made here, and reports in the real layout it signs.

For development and tests without SEV-SNP hardware. Everything it makes says SIMULATED (every
subject: ``CN=ARK-Milan SIMULATED``, ``O=duet SIMULATED AMD``), and it protects nothing: the
verifier trusts it only when the caller passes :meth:`SimulatedAmd.root` as a trusted root, and
then marks the claims simulated. The chain follows AMD's rules (RSA ARK and ASK, RSA-PSS SHA-384
with a 48-byte salt, an ECDSA P-384 VCEK with AMD's extensions and raw 64-byte hwID) so that the
verifier runs exactly the checks it runs on AMD's chains.

The keys and the ARK/ASK certificates live as PEM files in a directory the caller names, made on
first use, so that a controller and a simulated guest given the same directory share one AMD.
Each file is created at most once (by linking a finished temporary file into place), so two
processes starting together agree on the keys. VCEKs are issued on demand for a chip and a TCB,
as AMD's KDS does, all with the one VCEK key.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from duet.attestation.snp.abi import (
    PRODUCTS,
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    SIGNATURE_COMPONENT_SIZE,
    SIGNED_REGION_END,
    Product,
    SignerInfo,
    TcbVersion,
    pack_cert_table,
    pack_report,
)
from duet.attestation.snp.roots import SIMULATED_MARK, AmdRoot
from duet.attestation.snp.vcek import make_extensions
from duet.attestation.snp.verify import AMD_PSS

ORGANIZATION = "duet SIMULATED AMD (not Advanced Micro Devices)"
VALID_FROM = datetime(2020, 1, 1, tzinfo=UTC)
VALID_TO = datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)
CPUID: dict[Product, tuple[int, int, int]] = {
    "Milan": (0x19, 0x01, 0x01),
    "Genoa": (0x19, 0x11, 0x01),
    "Turin": (0x1A, 0x02, 0x00),
}
"""CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP written into simulated reports (VERSION >= 3)."""
PRODUCT_NAMES: dict[Product, str] = {"Milan": "Milan-B0", "Genoa": "Genoa-B1", "Turin": "Turin-C0"}
DEFAULT_POLICY = 0x30000
"""SMT allowed and the must-be-one bit 17; debug and migration off."""
DEFAULT_TCB = TcbVersion(bl_spl=3, tee_spl=0, snp_spl=8, ucode_spl=115)


def simulated_name(cn: str, tag: str) -> x509.Name:
    """A subject that says SIMULATED twice, and carries ``tag`` (the ARK key's id) so that the
    chains of two simulated AMDs never have the same names."""
    return x509.Name(
        [
            x509.NameAttribute(x509.NameOID.COMMON_NAME, f"{cn} {SIMULATED_MARK}"),
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(x509.NameOID.SERIAL_NUMBER, tag),
        ]
    )


def issue_certificate(
    subject: x509.Name,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool,
    path_length: int | None = None,
    extensions: Sequence[x509.ExtensionType] = (),
    rsa_padding: padding.PSS | padding.PKCS1v15 = AMD_PSS,
    not_valid_after: datetime = VALID_TO,
) -> x509.Certificate:
    """One certificate signed the way AMD signs (RSA-PSS SHA-384, salt 48) unless told otherwise."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(1)
        .not_valid_before(VALID_FROM)
        .not_valid_after(not_valid_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=rsa_padding)


def _create_once(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` unless it exists, never leaving a partial file; the first writer wins."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def _key(path: Path, make: Any) -> Any:
    if not path.exists():
        pem = make().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        _create_once(path, pem, 0o600)
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


class SimulatedAmd:
    """One simulated AMD processor line: its keys and chain in ``directory``."""

    def __init__(self, directory: Path | str, *, product: Product | None = None, rsa_bits: int = 2048) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ark_key: rsa.RSAPrivateKey = _key(self.directory / "ark.key", lambda: rsa.generate_private_key(65537, rsa_bits))
        self.ask_key: rsa.RSAPrivateKey = _key(self.directory / "ask.key", lambda: rsa.generate_private_key(65537, rsa_bits))
        self.vcek_key: ec.EllipticCurvePrivateKey = _key(
            self.directory / "vcek.key", lambda: ec.generate_private_key(ec.SECP384R1())
        )
        if not (
            isinstance(self.ark_key, rsa.RSAPrivateKey)
            and isinstance(self.ask_key, rsa.RSAPrivateKey)
            and isinstance(self.vcek_key, ec.EllipticCurvePrivateKey)
        ):
            raise ValueError(f"{self.directory}: ark.key and ask.key must be RSA keys, vcek.key an EC P-384 key")
        self.tag = hashlib.sha256(
            self.ark_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ).hexdigest()[:16]
        self.product = self._product(product)
        self.ark = self._cert("ark.pem", lambda: self._issue_ark())
        self.ask = self._cert("ask.pem", lambda: self._issue_ask())

    def _product(self, wanted: Product | None) -> Product:
        path = self.directory / "ark.pem"
        if not path.exists():
            return wanted or "Milan"
        cn = x509.load_pem_x509_certificate(path.read_bytes()).subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        stored = next((p for p in PRODUCTS if cn and cn[0].value == f"ARK-{p} {SIMULATED_MARK}"), None)
        if stored is None or (wanted is not None and wanted != stored):
            raise ValueError(f"{self.directory} holds a simulated AMD for {stored}, not {wanted}")
        return stored

    def _cert(self, name: str, make: Any) -> x509.Certificate:
        path = self.directory / name
        if not path.exists():
            _create_once(path, make().public_bytes(serialization.Encoding.PEM))
        return x509.load_pem_x509_certificate(path.read_bytes())

    def _issue_ark(self) -> x509.Certificate:
        name = simulated_name(f"ARK-{self.product}", self.tag)
        return issue_certificate(name, self.ark_key.public_key(), name, self.ark_key, ca=True)

    def _issue_ask(self) -> x509.Certificate:
        return issue_certificate(
            simulated_name(f"SEV-{self.product}", self.tag),
            self.ask_key.public_key(),
            simulated_name(f"ARK-{self.product}", self.tag),
            self.ark_key,
            ca=True,
            path_length=0,
        )

    def root(self) -> AmdRoot:
        """The root to pass as ``trusted_roots`` to trust this simulated AMD (and only then)."""
        return AmdRoot(self.product, self.ark, (self.ask,))

    def chain_pem(self) -> bytes:
        """ASK then ARK, as AMD's KDS ``cert_chain`` serves them."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.ask, self.ark))

    def vcek_certificate(self, chip_id: bytes, tcb: TcbVersion = DEFAULT_TCB, **issue: Any) -> x509.Certificate:
        """The VCEK for one chip at one TCB (``issue``: :func:`issue_certificate` options, for tests)."""
        if self.product == "Turin" and tcb.fmc_spl is None:
            tcb = TcbVersion(tcb.bl_spl, tcb.tee_spl, tcb.snp_spl, tcb.ucode_spl, fmc_spl=0)
        return issue_certificate(
            simulated_name("SEV-VCEK", self.tag),
            self.vcek_key.public_key(),
            self.ask.subject,
            self.ask_key,
            ca=False,
            extensions=make_extensions(PRODUCT_NAMES[self.product], tcb, hwid=chip_id),
            **issue,
        )

    def cert_table(self, chip_id: bytes, tcb: TcbVersion = DEFAULT_TCB) -> bytes:
        """The GHCB certificate table (configfs-tsm ``auxblob``) a simulated guest hands out."""
        der = serialization.Encoding.DER
        return pack_cert_table(
            {
                "vcek": self.vcek_certificate(chip_id, tcb).public_bytes(der),
                "ask": self.ask.public_bytes(der),
                "ark": self.ark.public_bytes(der),
            }
        )

    def sign_report(
        self,
        *,
        chip_id: bytes,
        tcb: TcbVersion = DEFAULT_TCB,
        report_data: bytes = b"",
        measurement: bytes = b"",
        policy: int = DEFAULT_POLICY,
        vmpl: int = 0,
        version: int = 3,
        **fields: Any,
    ) -> bytes:
        """A 1184-byte report in the real layout, signed by the VCEK key. Every TCB field is
        ``tcb``; ``fields`` (by :data:`~duet.attestation.snp.abi.REPORT_FIELDS` attribute) override
        anything, malformed values included."""
        if version < 3 and self.product == "Turin":
            raise ValueError("Turin firmware writes reports of VERSION 3 or later")
        raw_tcb = tcb.encode(self.product)
        family, model, stepping = CPUID[self.product] if version >= 3 else (0, 0, 0)
        values: dict[str, Any] = {
            "version": version,
            "policy": policy,
            "vmpl": vmpl,
            "signature_algo": SIGNATURE_ALGO_ECDSA_P384_SHA384,
            "current_tcb": raw_tcb,
            "reported_tcb": raw_tcb,
            "committed_tcb": raw_tcb,
            "launch_tcb": raw_tcb,
            "platform_info": 0x25,  # SMT_EN, ECC_EN, ALIAS_CHECK_COMPLETE
            "signer_info": SignerInfo(author_key_en=False, mask_chip_key=False, signing_key=0).to_int(),
            "report_data": report_data,
            "measurement": measurement,
            "chip_id": chip_id,
            "report_id": hashlib.sha256(self.tag.encode() + report_data).digest(),
            "report_id_ma": b"\xff" * 32,
            "cpuid_fam_id": family,
            "cpuid_mod_id": model,
            "cpuid_step": stepping,
            "current_major": 1,
            "current_minor": 55,
            "current_build": 21,
            "committed_major": 1,
            "committed_minor": 55,
            "committed_build": 21,
            **fields,
        }
        return self.resign(pack_report(values))

    def resign(self, report: bytes) -> bytes:
        """``report`` with its signature replaced by the VCEK key's over report[0:0x2A0]."""
        body = bytes(report[:SIGNED_REGION_END])
        r, s = decode_dss_signature(self.vcek_key.sign(body, ec.ECDSA(hashes.SHA384())))
        size = SIGNATURE_COMPONENT_SIZE
        tail = report[SIGNED_REGION_END + 2 * size :]
        return body + r.to_bytes(size, "little") + s.to_bytes(size, "little") + tail
