"""AMD's shipped roots (pinned by key, one per product) and the AMD extensions of VCEKs and VLEKs."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from snp_helpers import CHIP_ID, MILAN_REPORT, MILAN_VCEK, SERIAL_ZERO_WARNING, VLEK, load_der

from duet.attestation import snp
from duet.attestation.snp import roots, vcek
from duet.attestation.snp.verify import AMD_PSS
from duet.errors import VerificationError

CERT_SHA256 = {
    "ARK-Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "ARK-Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "ARK-Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}


def test_shipped_roots_hold_the_pinned_keys() -> None:
    shipped = snp.amd_roots()
    assert [r.product for r in shipped] == ["Milan", "Genoa", "Turin"]
    for r in shipped:
        assert r.key_sha256 == snp.AMD_ARK_KEY_SHA256[r.product] and r.is_amd
        assert hashlib.sha256(r.ark.public_bytes(serialization.Encoding.DER)).hexdigest() == CERT_SHA256[f"ARK-{r.product}"]
        expected = {f"SEV-{r.product}"} | ({f"SEV-VLEK-{r.product}"} if r.product != "Turin" else set())
        assert {roots.common_name(c) for c in r.intermediates} == expected


def test_every_shipped_link_is_rsa_pss_sha384() -> None:
    for r in snp.amd_roots():
        for child in (r.ark, *r.intermediates):
            assert child.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS
            r.ark.public_key().verify(child.signature, child.tbs_certificate_bytes, AMD_PSS, hashes.SHA384())  # type: ignore[call-arg, union-attr]


def test_every_shipped_file_is_listed_and_package_data() -> None:
    files = {name for names in snp.AMD_ROOT_FILES.values() for name in names}
    on_disk = {p.name for p in resources.files("duet.attestation").joinpath("roots").iterdir() if p.name.startswith("amd_")}
    assert files == on_disk


def test_load_amd_root_takes_the_product_from_the_ark() -> None:
    milan = snp.amd_roots()[0]
    r = snp.load_amd_root([*milan.intermediates, milan.ark])
    assert r.product == "Milan" and r.is_amd and set(r.intermediates) == set(milan.intermediates)
    with pytest.raises(VerificationError, match="exactly one self-issued ARK") as info:
        snp.load_amd_root(list(milan.intermediates))
    assert info.value.code == "bad_trust_root"
    with pytest.raises(VerificationError, match="not parse") as info:
        snp.load_amd_root(b"not a certificate")
    assert info.value.code == "bad_certificate"


@pytest.mark.filterwarnings(SERIAL_ZERO_WARNING)
def test_real_vcek_and_vlek_extensions() -> None:
    e = snp.read_extensions(load_der(MILAN_VCEK))
    assert (e.struct_version, e.product_name, e.product, e.csp_id) == (0, "Milan-B0", "Milan", None)
    assert e.spl == {"bl_spl": 2, "tee_spl": 0, "snp_spl": 5, "ucode_spl": 68}
    assert e.hwid == snp.parse_report(MILAN_REPORT).chip_id
    e = snp.read_extensions(load_der(VLEK))
    assert (e.product_name, e.product, e.hwid, e.csp_id) == ("Milan", "Milan", None, "CN=cc-us-east-2.amazonaws.com")
    assert e.spl["ucode_spl"] == 217  # DER 02 02 00 d9: a leading zero keeps it positive


def test_made_extensions_are_encoded_as_amd_encodes_them() -> None:
    exts = {e.oid: e.value for e in snp.make_extensions("Milan", snp.TcbVersion(4, 0, 24, 217), hwid=CHIP_ID, csp_id="x")}
    assert exts[vcek.SPL_OIDS["ucode_spl"]] == bytes.fromhex("020200d9")
    assert exts[vcek.SPL_OIDS["bl_spl"]] == bytes.fromhex("020104")
    assert exts[vcek.OID_HWID] == CHIP_ID  # raw, no ASN.1 header
    assert exts[vcek.OID_PRODUCT_NAME] == b"\x16\x05Milan"
    assert vcek.SPL_OIDS["fmc_spl"] not in exts


@pytest.mark.parametrize(
    ("oid", "value", "match"),
    [
        (vcek.SPL_OIDS["bl_spl"], b"\x04\x01\x02", "INTEGER"),
        (vcek.SPL_OIDS["bl_spl"], b"\x02\x01\xff", "negative"),
        (vcek.SPL_OIDS["bl_spl"], b"\x02\x09" + bytes(9), "INTEGER"),
        (vcek.OID_PRODUCT_NAME, b"\x0c\x05Milan", "IA5String"),
        (vcek.OID_HWID, bytes(63), "64-byte"),
    ],
)
def test_malformed_extensions(oid: x509.ObjectIdentifier, value: bytes, match: str) -> None:
    class Cert:
        extensions = x509.Extensions([x509.Extension(oid, False, x509.UnrecognizedExtension(oid, value))])

    with pytest.raises(snp.VcekExtensionError, match=match) as info:
        snp.read_extensions(Cert())  # type: ignore[arg-type]
    assert info.value.code == "bad_vcek_extension"


def test_an_octet_string_wrapped_hwid_is_accepted() -> None:
    class Cert:
        extensions = x509.Extensions(
            [x509.Extension(vcek.OID_HWID, False, x509.UnrecognizedExtension(vcek.OID_HWID, b"\x04\x40" + CHIP_ID))]
        )

    assert snp.read_extensions(Cert()).hwid == CHIP_ID  # type: ignore[arg-type]
