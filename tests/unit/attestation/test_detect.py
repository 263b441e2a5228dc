"""Telling the kind of evidence from its bytes (duet.attestation.detect): every real sample, the
text forms people paste, and what is refused."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest

from duet.attestation.bundle import FORMAT
from duet.attestation.detect import (
    MAX_EVIDENCE_BYTES,
    MalformedToken,
    UndetectedEvidence,
    detect,
    is_jwt,
    jwt_parts,
    unwrap,
)

ASSETS = Path(__file__).resolve().parents[2] / "assets"
REAL = [
    ("sgx", ASSETS / "sgx" / "trustee_occlum_sgx_quote_v3.bin"),
    ("sgx", ASSETS / "sgx" / "azure-samples_intelsdk_enclave.info.release.json"),
    ("snp", ASSETS / "snp" / "go-sev-guest_milan_attestation.bin"),
    ("snp", ASSETS / "snp" / "trustee_milan_vlek_report.bin"),
    ("tdx", ASSETS / "tdx" / "go-tdx-guest_tdx_prod_quote_SPR_E4_v4.bin"),
    ("tdx", ASSETS / "tdx" / "go-tdx-guest_cos-113-tdx-quote_v4.bin"),
    ("tdx", ASSETS / "tdx" / "go-tdx-guest_quote_v5_sample.bin"),
    ("tdx", ASSETS / "azure" / "trustee_azure_tdx_td_quote_v4.bin"),
    ("azure-hcl", ASSETS / "azure" / "trustee_azure_snp_hcl_report.bin"),
    ("azure-hcl", ASSETS / "azure" / "trustee_azure_tdx_hcl_report.bin"),
    ("maa", ASSETS / "azure" / "azure-samples_sevsnpvm_sharedweu-test_2025-04-08.jwt"),
    ("maa", ASSETS / "azure" / "cvm-guest-attestation_azurevm_ClientLibTests_line138.jwt"),
    ("maa", ASSETS / "maa" / "azure-sdk-cpp_SgxEnclave_Shared_2022-05-31.jwt"),
]
SNP = (ASSETS / "snp" / "go-sev-guest_milan_attestation.bin").read_bytes()
TDX_V5 = (ASSETS / "tdx" / "go-tdx-guest_quote_v5_sample.bin").read_bytes()


@pytest.mark.parametrize(("kind", "path"), REAL, ids=[p.name for _, p in REAL])
def test_every_real_sample_is_told_apart(kind: str, path: Path) -> None:
    assert detect(path.read_bytes()).type == kind


@pytest.mark.parametrize(
    "encode",
    [bytes.hex, lambda b: base64.b64encode(b).decode(), lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")],
    ids=["hex", "base64", "base64url"],
)
def test_text_forms_are_decoded_once(encode: object) -> None:
    for raw, kind in ((SNP, "snp"), (TDX_V5, "tdx")):
        text = encode(raw) + "\n"  # type: ignore[operator]
        found = detect(text.encode())
        assert (found.type, found.data) == (kind, raw)
    wrapped = detect(json.dumps({"quote": base64.b64encode(TDX_V5).decode()}).encode())
    assert (wrapped.type, wrapped.data) == ("tdx", TDX_V5)


def test_bundles_and_token_answers_in_json() -> None:
    bundle = json.dumps({"format": FORMAT, "source": "simulated"}).encode()
    assert detect(bundle).type == "bundle" and detect(bundle).data == bundle
    later = json.dumps({"format": "duet-cvm-evidence/v9"}).encode()
    assert detect(later).type == "bundle"  # parse_bundle says which versions it reads
    token = (ASSETS / "azure" / "cvm-guest-attestation_azurevm_ClientLibTests_line138.jwt").read_text().strip()
    found = detect(json.dumps({"token": token}).encode())
    assert (found.type, found.data) == ("maa", token.encode())


def test_truncated_and_padded_reports_keep_their_kind() -> None:
    assert detect(SNP[:600]).type == "snp"  # the parser then names the length
    assert "not 1184" in detect(SNP + b"\0").how
    assert detect(TDX_V5[:100]).type == "tdx"
    assert detect(b"HCLA" + bytes(10)).type == "azure-hcl"


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (bytes(range(256)) * 4, "no known kind"),
        (b"hello world, this is not evidence", "no known kind"),
        (b"{not json", "does not parse"),
        (b"[1, 2]", "no known kind"),
        (b'{"vcekCert": "..."}', "neither"),
        (b'{"quote": "AAAA"}', "does not hold an SGX or TDX quote"),
        (b"00112233" * 10, "hex text of 40 bytes"),
        (struct.pack("<HHI", 4, 2, 0) + bytes(40), "SGX DCAP quote of version 4"),
        (bytes(MAX_EVIDENCE_BYTES + 1), "1 MiB"),
    ],
    ids=["empty", "blank", "binary", "prose", "bad-json", "json-list", "json-other", "json-quote", "hex", "sgx-v4", "huge"],
)
def test_what_is_not_evidence_is_refused_saying_what_was_seen(data: bytes, said: str) -> None:
    with pytest.raises(UndetectedEvidence) as exc:
        detect(data)
    assert said in exc.value.message and exc.value.code == "unknown_evidence_type"


def test_a_named_type_skips_recognition_but_not_decoding() -> None:
    assert unwrap(SNP.hex().encode(), "snp").data == SNP
    assert unwrap(SNP, "tdx").data == SNP  # the TDX parser will say why it is not a TDX quote
    assert unwrap(b"garbage", "bundle").data == b"garbage"
    text = b"  not a token \n"
    assert unwrap(text, "maa").data == b"not a token"
    quote_json = json.dumps({"quote": "x"}).encode()
    assert unwrap(quote_json, "sgx").data == quote_json  # the SGX reader decodes its own forms
    with pytest.raises(UndetectedEvidence):
        unwrap(bytes(MAX_EVIDENCE_BYTES + 1), "snp")


def test_jwt_parts_are_decoded_not_verified() -> None:
    token = (ASSETS / "azure" / "azure-samples_sevsnpvm_sharedweu-test_2025-04-08.jwt").read_text()
    assert is_jwt(token.strip()) and not is_jwt("a.b.c")
    header, claims, signature = jwt_parts(token)
    assert header["alg"] == "RS256" and claims["x-ms-attestation-type"] == "sevsnpvm" and len(signature) == 256
    for bad in ("a.b", "e30.W10.", "!!.e30.e30"):
        with pytest.raises(MalformedToken):
            jwt_parts(bad)
