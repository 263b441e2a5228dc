"""The AMD-specific X.509 extensions of VCEK and VLEK certificates (KDS specification 57230).

A VCEK is derived from one chip's secret *and* one TCB (the firmware security patch levels), so
AMD writes both into its certificate: the SPL extensions and the raw 64-byte hwID (the chip's
CHIP_ID). A VLEK is issued per cloud provider (CSP_ID) and carries no hwID. These values are
what binds a certificate to the report it verifies (:mod:`duet.attestation.snp.verify`).

Each value is DER: an INTEGER, or an IA5String for names, except hwID, which AMD writes as the
64 raw bytes with no ASN.1 header (an OCTET STRING-wrapped form is accepted too).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from duet.attestation.snp.abi import PRODUCTS, Product, TcbVersion
from duet.errors import VerificationError

_ARC = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = x509.ObjectIdentifier(f"{_ARC}.1")
OID_PRODUCT_NAME = x509.ObjectIdentifier(f"{_ARC}.2")
OID_HWID = x509.ObjectIdentifier(f"{_ARC}.4")
OID_CSP_ID = x509.ObjectIdentifier(f"{_ARC}.5")
SPL_OIDS: dict[str, x509.ObjectIdentifier] = {
    "bl_spl": x509.ObjectIdentifier(f"{_ARC}.3.1"),
    "tee_spl": x509.ObjectIdentifier(f"{_ARC}.3.2"),
    "snp_spl": x509.ObjectIdentifier(f"{_ARC}.3.3"),
    "ucode_spl": x509.ObjectIdentifier(f"{_ARC}.3.8"),
    "fmc_spl": x509.ObjectIdentifier(f"{_ARC}.3.9"),  # Turin only
}
RESERVED_SPL_OIDS = tuple(x509.ObjectIdentifier(f"{_ARC}.3.{n}") for n in (4, 5, 6, 7))
HWID_SIZE = 64


class VcekExtensionError(VerificationError):
    code = "bad_vcek_extension"


@dataclass(frozen=True)
class VcekExtensions:
    struct_version: int | None
    product_name: str | None
    """As AMD writes it: ``Milan-B0``, ``Genoa``, ``Milan`` (VLEK)."""
    spl: dict[str, int]
    hwid: bytes | None
    csp_id: str | None

    @property
    def product(self) -> Product | None:
        """The product line, from the name's part before the stepping (``Milan-B0`` → Milan)."""
        name = (self.product_name or "").split("-")[0]
        return next((p for p in PRODUCTS if p == name), None)


def _der_integer(value: bytes, what: str) -> int:
    if len(value) < 3 or value[0] != 0x02 or value[1] != len(value) - 2 or value[1] > 8:
        raise VcekExtensionError(f"the {what} extension is not a small DER INTEGER: {value[:16].hex()}")
    number = int.from_bytes(value[2:], "big", signed=True)
    if number < 0:
        raise VcekExtensionError(f"the {what} extension is negative ({number})")
    return number


def _der_ia5(value: bytes, what: str) -> str:
    if len(value) < 2 or value[0] != 0x16 or value[1] != len(value) - 2 or not value[2:].isascii():
        raise VcekExtensionError(f"the {what} extension is not a short DER IA5String: {value[:16].hex()}")
    return value[2:].decode("ascii")


def _hwid(value: bytes) -> bytes:
    if len(value) == HWID_SIZE:
        return value
    if len(value) == HWID_SIZE + 2 and value[:2] == bytes([0x04, HWID_SIZE]):
        return value[2:]
    raise VcekExtensionError(f"the hwID extension is {len(value)} bytes, not the 64-byte CHIP_ID")


def read_extensions(cert: x509.Certificate) -> VcekExtensions:
    """The AMD extensions a VCEK/VLEK carries (absent ones None, or missing from ``spl``)."""
    raw: dict[x509.ObjectIdentifier, bytes] = {}
    for ext in cert.extensions:
        if isinstance(ext.value, x509.UnrecognizedExtension):
            raw[ext.oid] = ext.value.value
    spl = {name: _der_integer(raw[oid], name) for name, oid in SPL_OIDS.items() if oid in raw}
    return VcekExtensions(
        struct_version=_der_integer(raw[OID_STRUCT_VERSION], "struct version") if OID_STRUCT_VERSION in raw else None,
        product_name=_der_ia5(raw[OID_PRODUCT_NAME], "product name") if OID_PRODUCT_NAME in raw else None,
        spl=spl,
        hwid=_hwid(raw[OID_HWID]) if OID_HWID in raw else None,
        csp_id=_der_ia5(raw[OID_CSP_ID], "CSP_ID") if OID_CSP_ID in raw else None,
    )


def _integer(n: int) -> bytes:
    body = n.to_bytes(n.bit_length() // 8 + 1, "big")  # room for the sign bit, as DER wants
    return bytes([0x02, len(body)]) + body


def _ia5(text: str) -> bytes:
    body = text.encode("ascii")
    return bytes([0x16, len(body)]) + body


def make_extensions(
    product_name: str, tcb: TcbVersion, *, hwid: bytes | None = None, csp_id: str | None = None
) -> list[x509.UnrecognizedExtension]:
    """The extensions as AMD writes them (for simulated certificates): hwID raw, the rest DER."""
    exts = [
        x509.UnrecognizedExtension(OID_STRUCT_VERSION, _integer(0)),
        x509.UnrecognizedExtension(OID_PRODUCT_NAME, _ia5(product_name)),
    ]
    exts += [x509.UnrecognizedExtension(SPL_OIDS[name], _integer(value)) for name, value in tcb.to_dict().items()]
    exts += [x509.UnrecognizedExtension(oid, _integer(0)) for oid in RESERVED_SPL_OIDS]
    if hwid is not None:
        if len(hwid) != HWID_SIZE:
            raise ValueError(f"hwID must be {HWID_SIZE} bytes")
        exts.append(x509.UnrecognizedExtension(OID_HWID, hwid))
    if csp_id is not None:
        exts.append(x509.UnrecognizedExtension(OID_CSP_ID, _ia5(csp_id)))
    return exts
