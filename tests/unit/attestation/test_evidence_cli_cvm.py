"""`duet evidence show|verify` for CVM evidence: every real sample detected and verified, each
failure at its step with its code, unusable input refused with exit 2, hostile input shown
harmlessly."""

from __future__ import annotations

import base64
import copy
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from duet.attestation.bundle import FORMAT
from duet.attestation.cvm import binding
from duet.attestation.snp import SimulatedAmd
from duet.cli.evidence import app
from duet.providers.local_tsm import roots_pem, snp_evidence, tdx_evidence
from duet.remote.ssh import host_key_blob

runner = CliRunner()
WIDE = {"COLUMNS": "250"}
ASSETS = Path(__file__).resolve().parents[2] / "assets"
SNP_REPORT = ASSETS / "snp" / "go-sev-guest_milan_attestation.bin"  # POLICY.DEBUG set
SNP_VCEK = ASSETS / "snp" / "go-sev-guest_milan_vcek.der"
VLEK_REPORT = ASSETS / "snp" / "trustee_milan_vlek_report.bin"
VLEK = ASSETS / "snp" / "trustee_milan_vlek.der"
TDX_SPR = ASSETS / "tdx" / "go-tdx-guest_tdx_prod_quote_SPR_E4_v4.bin"
TDX_COS = ASSETS / "tdx" / "go-tdx-guest_cos-113-tdx-quote_v4.bin"
TDX_V5 = ASSETS / "tdx" / "go-tdx-guest_quote_v5_sample.bin"
TCB_INFO_V5 = ASSETS / "tdx" / "go-tdx-guest_sample_tcbinfo_response_v5.json"
AZ_SNP = ASSETS / "azure" / "trustee_azure_snp_hcl_report.bin"
AZ_SNP_CHAIN = ASSETS / "azure" / "trustee_azure_snp_vcek_chain.pem"
AZ_TDX = ASSETS / "azure" / "trustee_azure_tdx_hcl_report.bin"
AZ_TD_QUOTE = ASSETS / "azure" / "trustee_azure_tdx_td_quote_v4.bin"
AZUREVM_TOKEN = ASSETS / "azure" / "cvm-guest-attestation_azurevm_ClientLibTests_line138.jwt"
SNP_NOW = ["--now", "2025-06-01T00:00:00Z"]  # VCEK 2022-09-24 – 2029-09-24, VLEK 2024-12-10 – 2025-12-10
TDX_NOW = ["--now", "2026-02-15T00:00:00Z"]  # inside every real PCK chain's validity
AZ_SNP_NOW = ["--now", "2024-06-01T00:00:00Z"]  # the Azure VCEK: 2023-05-02 – 2030-05-02
NONCE = bytes(range(32))

REAL: list[tuple[str, list[str], str, str]] = [
    ("snp-vcek", [str(SNP_REPORT), "--vcek", str(SNP_VCEK), *SNP_NOW], "snp", "snp"),
    ("snp-vlek", [str(VLEK_REPORT), "--vcek", str(VLEK), *SNP_NOW], "snp", "snp"),
    ("tdx-v4-spr", [str(TDX_SPR), *TDX_NOW], "tdx", "tdx"),
    ("tdx-v4-cos", [str(TDX_COS), *TDX_NOW], "tdx", "tdx"),
    ("tdx-v5", [str(TDX_V5), *TDX_NOW, "--tcb-info", str(TCB_INFO_V5)], "tdx", "tdx"),
    ("azure-snp", [str(AZ_SNP), "--chain", str(AZ_SNP_CHAIN), *AZ_SNP_NOW], "azure-hcl", "azure-snp"),
    ("azure-tdx", [str(AZ_TDX), "--td-quote", str(AZ_TD_QUOTE), *TDX_NOW], "azure-hcl", "azure-tdx"),
]


def _json(args: list[str]) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.stdout.strip(), result.stderr
    return result.exit_code, json.loads(result.stdout)


def _failed(out: dict[str, Any]) -> tuple[str, str]:
    return out["failed_step"], out["code"]


def _flip(path: Path, offset: int, tmp_path: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    out = tmp_path / f"flipped-{path.name}"
    out.write_bytes(bytes(data))
    return out


def _ssh_key_line() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture(scope="module")
def hardware(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A SIMULATED machine (local CVMs' hardware) and the PEM of its roots (`duet controller sim-root --cvm`)."""
    directory = tmp_path_factory.mktemp("simulated-hardware")
    roots = directory / "roots.pem"
    roots.write_bytes(roots_pem(directory))
    return directory, roots


def _bundle(directory: Path, report_data: bytes, platform: str = "snp") -> bytes:
    made = snp_evidence(directory, report_data) if platform == "snp" else tdx_evidence(directory, report_data)
    return json.dumps({"format": FORMAT, "source": "simulated", "report_data": report_data.hex(), **made}).encode()


# --- every real sample ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "args", "kind", "verdict_kind"), REAL, ids=[r[0] for r in REAL])
def test_real_evidence_is_detected_and_verifies(name: str, args: list[str], kind: str, verdict_kind: str) -> None:
    code, out = _json(["verify", *args])
    assert code == 0, out
    assert (out["ok"], out["type"], out["kind"], out["simulated"]) == (True, kind, verdict_kind, False)
    steps = {s["step"]: s for s in out["steps"]}
    assert steps["binding"]["ok"] is None and steps["policy"]["ok"] is None  # not asked
    result = runner.invoke(app, ["verify", *args], env=WIDE)
    assert result.exit_code == 0 and "evidence verified" in result.stdout and "not judged" in result.stdout


def test_text_verdict_names_every_step_and_the_claims() -> None:
    result = runner.invoke(app, ["verify", str(AZ_SNP), "--chain", str(AZ_SNP_CHAIN), *AZ_SNP_NOW], env=WIDE)
    out = result.stdout
    assert result.exit_code == 0, out
    for held in ("✓ parse", "✓ runtime_data_hash", "✓ vcek_chain", "✓ snp.cert_chain", "✓ snp.report_signature", "✓ user_data"):
        assert held in out, held
    for shown in ("911B0EF8-9DBA-48B0-B275-4E4DF2D39252", "bl_spl 3, tee_spl 0, snp_spl 8, ucode_spl 115", "VCEK", "not allowed"):
        assert shown in out, shown
    tdx = runner.invoke(app, ["verify", str(TDX_SPR), *TDX_NOW], env=WIDE).stdout
    assert "- tcb_level: TCB level: not evaluated" in tdx and "mrtd" in tdx and "rtmr3" in tdx


@pytest.mark.parametrize(
    ("path", "names"),
    [
        (
            SNP_REPORT,
            (
                "MEASUREMENT",
                "REPORT_DATA",
                "REPORTED_TCB",
                "BOOT_LOADER 2, TEE 0, SNP 5, MICROCODE 68",
                "POLICY.DEBUG",
                "CHIP_ID",
            ),
        ),
        (
            TDX_V5,
            (
                "MRTD",
                "RTMR0",
                "TDATTRIBUTES",
                "SEPT_VE_DISABLE",
                "body descriptor body type",
                "QE report MRSIGNER",
                "Intel SGX PCK Certificate",
            ),
        ),
        (
            AZ_SNP,
            (
                "header signature",
                "hw_report MEASUREMENT",
                "runtime_data report_type",
                "vmUniqueId",
                "911B0EF8-9DBA-48B0-B275-4E4DF2D39252",
            ),
        ),
        (AZ_TDX, ("TDREPORT TDINFO_STRUCT.MRTD", "TDREPORT REPORTMACSTRUCT.REPORTDATA", "vmUniqueId", "tpm-persisted")),
        (AZUREVM_TOKEN, ("NOT verified", "x-ms-attestation-type", "x-ms-isolation-tee.x-ms-sevsnpvm-launchmeasurement", "alg")),
    ],
    ids=["snp", "tdx-v5", "azure-snp", "azure-tdx", "maa"],
)
def test_show_prints_named_fields_with_offsets(path: Path, names: tuple[str, ...]) -> None:
    result = runner.invoke(app, ["show", str(path)], env=WIDE)
    assert result.exit_code == 0, result.output
    for name in names:
        assert name in result.stdout, name
    code, out = _json(["show", str(path)])
    assert code == 0 and out["type"] in ("snp", "tdx", "azure-hcl", "maa")


def test_show_json_carries_the_parsed_fields() -> None:
    _, snp = _json(["show", str(SNP_REPORT)])
    assert snp["measurement"].startswith("b07af962") and snp["policy"]["debug"] is True
    _, tdx = _json(["show", str(TDX_V5)])
    assert tdx["body"] == {"body_type": 3, "body_size": 648} and tdx["td_report"]["mr_td"].startswith("7348651a")
    _, hcl = _json(["show", str(AZ_SNP)])
    assert hcl["runtime_data_json"]["vm-configuration"]["vmUniqueId"] == "911B0EF8-9DBA-48B0-B275-4E4DF2D39252"
    assert hcl["hw_report"]["reported_tcb"]["ucode_spl"] == 115
    _, token = _json(["show", str(AZUREVM_TOKEN)])
    assert token["verified"] is False and token["claims"]["x-ms-attestation-type"] == "azurevm"


def test_text_forms_and_stdin_and_type_override() -> None:
    hex_text = SNP_REPORT.read_bytes().hex().encode()
    result = runner.invoke(app, ["verify", "-", "--vcek", str(SNP_VCEK), *SNP_NOW, "--json"], input=hex_text)
    assert result.exit_code == 0 and json.loads(result.stdout)["type"] == "snp"
    code, out = _json(["verify", str(SNP_REPORT), "--type", "tdx", *TDX_NOW])
    assert code == 1 and _failed(out) == ("parse", "bad_quote")


# --- evidence that fails: exit 1 with the failing step's code --------------------------------------


@pytest.mark.parametrize(
    ("args", "step", "code"),
    [
        # MEASUREMENT (0x90) changed: the VCEK's signature no longer covers it
        (
            lambda t: [str(_flip(SNP_REPORT, 0x90, t)), "--vcek", str(SNP_VCEK), *SNP_NOW],
            "report_signature",
            "bad_report_signature",
        ),
        # MRTD (header 48 + 136) changed
        (lambda t: [str(_flip(TDX_SPR, 48 + 136, t)), *TDX_NOW], "quote_signature", "bad_quote_signature"),
        # the runtime data (vmUniqueId's JSON, after offset 1236) changed: its hash is no longer signed
        (
            lambda t: [str(_flip(AZ_SNP, 1300, t)), "--chain", str(AZ_SNP_CHAIN), *AZ_SNP_NOW],
            "runtime_data_hash",
            "hcl_runtime_data_hash_mismatch",
        ),
    ],
    ids=["snp", "tdx", "azure-runtime-data"],
)
def test_a_flipped_bit_fails_at_its_step(args: Callable[[Path], list[str]], step: str, code: str, tmp_path: Path) -> None:
    status, out = _json(["verify", *args(tmp_path)])
    assert status == 1 and out["ok"] is False and _failed(out) == (step, code)
    later = [s for s in out["steps"][[s["step"] for s in out["steps"]].index(step) + 1 :]]
    assert later and all(s["ok"] is None for s in later)
    text = runner.invoke(app, ["verify", *args(tmp_path)], env=WIDE).stdout
    assert f"✗ {step} FAILED" in text and code in text and "NOT verified" in text


def test_certificates_expire() -> None:
    code, out = _json(["verify", str(VLEK_REPORT), "--vcek", str(VLEK), "--now", "2026-01-01T00:00:00Z"])
    assert code == 1 and _failed(out) == ("cert_chain", "certificate_expired")
    code, out = _json(["verify", str(TDX_SPR), "--now", "2034-01-01T00:00:00Z"])
    assert code == 1 and out["failed_step"] == "pck_chain" and "expired" in out["code"]


def test_simulated_evidence_needs_its_roots_and_says_simulated(hardware: tuple[Path, Path], tmp_path: Path) -> None:
    directory, roots = hardware
    for platform in ("snp", "tdx"):
        bundle = tmp_path / f"{platform}.json"
        bundle.write_bytes(_bundle(directory, bytes(64), platform))
        code, out = _json(["verify", str(bundle)])
        assert code == 1 and out["type"] == "bundle"
        assert out["code"] == "untrusted_root", out["steps"]
        assert "sim-root" in runner.invoke(app, ["verify", str(bundle)], env=WIDE).stdout
        code, out = _json(["verify", str(bundle), "--roots", str(roots)])
        assert code == 0 and out["simulated"] is True and out["kind"] == platform
        text = runner.invoke(app, ["verify", str(bundle), "--roots", str(roots)], env=WIDE).stdout
        assert "SIMULATED" in text and "evidence verified (SIMULATED)" in text


def test_a_raw_simulated_snp_report_with_its_vcek(tmp_path: Path) -> None:
    amd = SimulatedAmd(tmp_path / "amd")
    chip = bytes(range(64))
    report, vcek, roots = tmp_path / "report.bin", tmp_path / "vcek.pem", tmp_path / "roots.pem"
    report.write_bytes(amd.sign_report(chip_id=chip, report_data=bytes(64)))
    vcek.write_bytes(amd.vcek_certificate(chip).public_bytes(serialization.Encoding.PEM))
    roots.write_bytes(amd.chain_pem())
    code, out = _json(["verify", str(report), "--vcek", str(vcek)])
    assert code == 1 and _failed(out) == ("cert_chain", "ask_missing")  # AMD's roots have no such ASK
    code, out = _json(["verify", str(report), "--vcek", str(vcek), "--chain", str(roots)])
    assert code == 1 and _failed(out) == ("cert_chain", "untrusted_root")
    code, out = _json(["verify", str(report), "--vcek", str(vcek), "--roots", str(roots)])
    assert code == 0 and out["simulated"] is True and out["claims"]["signer"] == "VCEK"


def test_a_bundle_is_shown_with_the_evidence_inside(hardware: tuple[Path, Path], tmp_path: Path) -> None:
    directory, _ = hardware
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(_bundle(directory, bytes(range(64))))
    result = runner.invoke(app, ["show", str(bundle)], env=WIDE)
    assert result.exit_code == 0, result.output
    for name in (
        "duet-cvm-evidence/v1",
        "sev_guest",
        "MEASUREMENT",
        "REPORT_DATA",
        "GHCB certificate table",
        "CN=SEV-VCEK SIMULATED",
    ):
        assert name in result.stdout, name
    code, out = _json(["show", str(bundle)])
    assert code == 0 and out["type"] == "bundle" and out["evidence"]["outblob"]["report_data"] == bytes(range(64)).hex()
    assert set(out["evidence"]["auxblob"]) == {"vcek", "ask", "ark"}

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": FORMAT, "source": "simulated", "provider": "sev_guest", "outblob": "!!"}))
    assert runner.invoke(app, ["show", str(broken)]).exit_code == 1
    code, out = _json(["verify", str(broken)])
    assert code == 1 and _failed(out) == ("parse", "bad_evidence_bundle") and out["claims"] is None


def test_the_binding_is_checked_when_asked(hardware: tuple[Path, Path], tmp_path: Path) -> None:
    directory, roots = hardware
    line = _ssh_key_line()
    host_key = tmp_path / "ssh_host_ed25519_key.pub"
    host_key.write_text(line + "\n")
    bundle = tmp_path / "bound.json"
    bundle.write_bytes(_bundle(directory, binding(host_key_blob(line), NONCE)))
    base = ["verify", str(bundle), "--roots", str(roots), "--host-key", str(host_key)]

    code, out = _json([*base, "--nonce", NONCE.hex()])
    assert code == 0 and {s["step"]: s["ok"] for s in out["steps"]}["binding"] is True
    assert out["binding"]["expected_report_data"] == out["claims"]["report_data"]
    assert "binds the given host key and nonce" in runner.invoke(app, [*base, "--nonce", NONCE.hex()], env=WIDE).stdout

    other = bytes(32).hex()
    code, out = _json([*base, "--nonce", other])
    assert code == 1 and _failed(out) == ("binding", "binding_mismatch")
    assert [s["ok"] for s in out["steps"] if s["step"] in ("vm_identity", "policy")] == [None, None]
    assert "does NOT bind" in runner.invoke(app, [*base, "--nonce", other], env=WIDE).stdout

    another_key = tmp_path / "other.pub"
    another_key.write_text(_ssh_key_line())
    code, out = _json(["verify", str(bundle), "--roots", str(roots), "--host-key", str(another_key), "--nonce", NONCE.hex()])
    assert code == 1 and out["code"] == "binding_mismatch"


def test_a_cvm_policy_refusing_debug(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("allow_debug = false\n")
    args = ["verify", str(SNP_REPORT), "--vcek", str(SNP_VCEK), *SNP_NOW, "--cvm-policy", str(policy)]
    code, out = _json(args)
    assert code == 1 and _failed(out) == ("policy", "debug_allowed")
    assert out["policy"]["source"] == str(policy) and {c["check"]: c["ok"] for c in out["policy"]["checks"]}["debug"] is False
    text = runner.invoke(app, args, env=WIDE).stdout
    assert "✗ policy FAILED" in text and "debug: expected forbidden, found on" in text
    policy.write_text("allow_debug = true\n")
    code, out = _json(args)
    assert code == 0 and {s["step"]: s["ok"] for s in out["steps"]}["policy"] is True


def test_the_vm_id_is_compared_where_the_evidence_names_one() -> None:
    base = ["verify", str(AZ_TDX), "--td-quote", str(AZ_TD_QUOTE), *TDX_NOW]
    code, out = _json([*base, "--vm-id", "6332533d-5649-4d02-8aa7-8f64b7c3ee21"])
    assert code == 0 and {s["step"]: s["ok"] for s in out["steps"]}["vm_identity"] is True
    code, out = _json([*base, "--vm-id", "00000000-0000-0000-0000-000000000000"])
    assert code == 1 and _failed(out) == ("vm_identity", "vm_id_mismatch")


# --- MAA tokens ----------------------------------------------------------------------------------


class _Maa:
    """A stand-in signing key for an MAA instance (the recorded token's key is Azure's)."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test MAA signer")])
        start = datetime(2020, 1, 1, tzinfo=UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=365 * 20))
            .sign(self.key, hashes.SHA256())
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        self.jwks = {"keys": [{"kid": "k", "kty": "RSA", "x5c": [base64.b64encode(der).decode()]}]}

    def sign(self, claims: dict[str, Any]) -> str:
        headers = {"kid": "k", "jku": self.instance + "/certs"}
        return jwt.api_jws.encode(json.dumps(claims).encode(), self.key, algorithm="RS256", headers=headers)


def _azurevm_claims() -> dict[str, Any]:
    payload = AZUREVM_TOKEN.read_text().strip().split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


@pytest.fixture(scope="module")
def maa() -> _Maa:
    return _Maa(_azurevm_claims()["iss"])


def _token_files(maa: _Maa, claims: dict[str, Any], tmp_path: Path) -> tuple[Path, list[str]]:
    token, jwks = tmp_path / "token.jwt", tmp_path / "jwks.json"
    token.write_text(maa.sign(claims))
    jwks.write_text(json.dumps(maa.jwks))
    when = datetime.fromtimestamp(claims["iat"] + 60, UTC).isoformat()
    return token, ["--maa-instance", maa.instance, "--maa-jwks", str(jwks), "--now", when]


def test_an_maa_token_verifies_and_binds(maa: _Maa, tmp_path: Path) -> None:
    line = _ssh_key_line()
    host_key = tmp_path / "key.pub"
    host_key.write_text(line)
    claims = copy.deepcopy(_azurevm_claims())
    claims["x-ms-isolation-tee"]["x-ms-runtime"]["user-data"] = binding(host_key_blob(line), NONCE).hex()
    token, options = _token_files(maa, claims, tmp_path)
    code, out = _json(["verify", str(token), *options, "--host-key", str(host_key), "--nonce", NONCE.hex()])
    assert code == 0 and out["type"] == "maa" and out["kind"] == "maa-cvm" and out["claims"]["signer"] == "MAA"
    assert out["claims"]["vm_id"] and {s["step"]: s["ok"] for s in out["steps"]}["binding"] is True

    as_recorded, options = _token_files(maa, _azurevm_claims(), tmp_path)  # no user-data
    code, out = _json(["verify", str(as_recorded), *options])
    assert code == 1 and _failed(out) == ("report_data", "maa_no_user_data")
    code, out = _json(["verify", str(token), *options[:4], "--now", "2030-01-01T00:00:00Z"])
    assert code == 1 and _failed(out) == ("expiry", "maa_expired")
    result = runner.invoke(app, ["verify", str(token)])
    assert result.exit_code == 2 and "--maa-instance" in result.stderr


# --- unusable input: exit 2 with a message ----------------------------------------------------------


def test_unusable_input_exits_2_saying_why(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 16)
    bad_toml = tmp_path / "policy.toml"
    bad_toml.write_text("allow_debugs = true\n")
    no_quote = tmp_path / "no-quote.json"
    no_quote.write_text('{"report": "x"}')
    cases: list[tuple[list[str], str]] = [
        (["verify", str(tmp_path / "missing.bin")], "cannot read"),
        (["show", str(tmp_path)], "cannot read"),
        (["verify", str(garbage)], "no known kind of evidence"),
        (["show", str(garbage)], "no known kind of evidence"),
        (["verify", str(SNP_REPORT), "--type", "sev"], "is not one of"),
        (["verify", str(SNP_REPORT), "--vcek", str(SNP_VCEK), "--now", "yesterday"], "ISO 8601"),
        (
            ["verify", str(SNP_REPORT), "--vcek", str(SNP_VCEK), "--host-key", str(SNP_VCEK), "--nonce", "zz"],
            "--nonce is not hex",
        ),
        (["verify", str(SNP_REPORT), "--vcek", str(SNP_VCEK), "--host-key", str(SNP_VCEK), "--nonce", "00"], "32 bytes"),
        (["verify", str(SNP_REPORT), "--vcek", str(SNP_VCEK), "--nonce", NONCE.hex()], "go together"),
        (
            ["verify", str(SNP_REPORT), "--vcek", str(SNP_VCEK), "--host-key", str(SNP_VCEK), "--nonce", NONCE.hex()],
            "bad_ssh_key",
        ),
        (["verify", str(SNP_REPORT), *SNP_NOW], "vcek_missing"),
        (["verify", str(VLEK_REPORT), *SNP_NOW], "vlek_missing"),
        (["verify", str(AZ_SNP), *AZ_SNP_NOW], "hcl_vcek_chain_missing"),
        (["verify", str(AZ_TDX), *TDX_NOW], "hcl_td_quote_missing"),
        (["verify", str(SNP_REPORT), "--vcek", str(tmp_path / "nope.der")], "cannot read --vcek"),
        (["verify", str(SNP_REPORT), "--vcek", str(SNP_VCEK), "--roots", str(garbage)], "bad_roots"),
        (["verify", str(SNP_REPORT), "--vcek", str(SNP_VCEK), "--cvm-policy", str(garbage)], "not UTF-8"),
        (["verify", str(SNP_REPORT), "--vcek", str(SNP_VCEK), "--cvm-policy", str(bad_toml)], "bad_cvm_policy"),
        (["verify", str(SNP_REPORT), "--vcek", str(SNP_VCEK), "--policy", str(garbage)], "use --cvm-policy"),
        (["verify", str(TDX_SPR), "--vcek", str(SNP_VCEK)], "--vcek"),
        (["verify", str(TDX_SPR), "--report-data", "00"], "use --host-key and --nonce"),
        (["verify", str(ASSETS / "sgx" / "trustee_occlum_sgx_quote_v3.bin"), "--cvm-policy", str(garbage)], "--cvm-policy"),
        (["verify", str(no_quote), "--type", "sgx"], "neither a 'quote'"),
        (["verify", str(ASSETS / "sgx" / "trustee_occlum_sgx_quote_v3.bin"), "--policy", str(garbage)], "not UTF-8"),
    ]
    for args, said in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert said in result.stderr, (args, result.stderr)
        assert result.stdout == "", args


def test_the_missing_vcek_names_where_to_get_it() -> None:
    result = runner.invoke(app, ["verify", str(SNP_REPORT), *SNP_NOW, "--json"])
    assert result.exit_code == 2 and "kdsintf.amd.com" in result.stderr and "--vcek FILE" in result.stderr


# --- hostile input -----------------------------------------------------------------------------------


def test_a_10_mb_garbage_file_is_refused_unread(tmp_path: Path) -> None:
    huge = tmp_path / "huge.bin"
    huge.write_bytes(b"\x1b[2J" * (10 * 1024 * 1024 // 4))
    for command in ("show", "verify"):
        result = runner.invoke(app, [command, str(huge)])
        assert result.exit_code == 2 and "1 MiB" in result.stderr
        assert "\x1b" not in result.output


@pytest.mark.parametrize(
    ("path", "size", "code"),
    [(SNP_REPORT, 1000, "bad_snp_report"), (TDX_V5, 700, "bad_quote"), (AZ_SNP, 1500, "hcl_malformed")],
    ids=["snp", "tdx", "azure-hcl"],
)
def test_truncated_evidence_fails_to_parse(path: Path, size: int, code: str, tmp_path: Path) -> None:
    cut = tmp_path / "cut.bin"
    cut.write_bytes(path.read_bytes()[:size])
    result = runner.invoke(app, ["show", str(cut)])
    assert result.exit_code == 1 and code in result.stderr
    status, out = _json(["verify", str(cut), "--vcek", str(SNP_VCEK)] if path == SNP_REPORT else ["verify", str(cut)])
    assert status == 1 and _failed(out) == ("parse", code)


EVIL = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202eEVIL"


def _no_raw_escapes(text: str) -> None:
    for char in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert char not in text, repr(char)


def test_terminal_escapes_in_a_token_claim_are_shown_visibly(maa: _Maa, tmp_path: Path) -> None:
    claims = copy.deepcopy(_azurevm_claims())
    claims["x-ms-azurevm-vmid"] = EVIL
    claims["x-ms-isolation-tee"]["x-ms-runtime"]["vm-configuration"].pop("vmUniqueId", None)
    claims["x-ms-isolation-tee"]["x-ms-runtime"]["user-data"] = bytes(64).hex()
    claims[EVIL] = EVIL
    token, options = _token_files(maa, claims, tmp_path)
    for args in (
        ["show", str(token)],
        ["show", str(token), "--json"],
        ["verify", str(token), *options],
        ["verify", str(token), *options, "--json"],
    ):
        result = runner.invoke(app, args, env=WIDE)
        _no_raw_escapes(result.output)
        assert "EVIL" in result.stdout, args
        if "--json" not in args:
            assert "\\x1b]0;owned\\x07" in result.stdout and "\\x9b" in result.stdout and "\\u202e" in result.stdout
    code, out = _json(["verify", str(token), *options])
    assert code == 0 and out["claims"]["vm_id"] == EVIL  # exact in JSON (escaped by the encoder)


def test_terminal_escapes_in_hcl_runtime_data_are_shown_visibly(hardware: tuple[Path, Path], tmp_path: Path) -> None:
    from duet.attestation.azure import simulated_snp_hcl

    directory, roots = hardware
    made = simulated_snp_hcl(SimulatedAmd(directory / "amd"), user_data=bytes(64), vm_unique_id=EVIL)
    report, chain = tmp_path / "hcl.bin", tmp_path / "imds.json"
    report.write_bytes(made.report)
    assert made.vcek_chain is not None
    chain.write_bytes(made.vcek_chain)
    args = ["verify", str(report), "--chain", str(chain), "--roots", str(roots)]
    for run in (["show", str(report)], ["show", str(report), "--json"], args, [*args, "--json"]):
        result = runner.invoke(app, run, env=WIDE)
        assert result.exit_code == 0, result.output
        _no_raw_escapes(result.output)
        assert "EVIL" in result.stdout
        if "--json" not in run:
            assert "\\x1b]0;owned\\x07" in result.stdout
    code, out = _json(args)
    assert code == 0 and out["claims"]["vm_id"] == EVIL and out["simulated"] is True


@pytest.mark.parametrize(
    "path", [SNP_REPORT, TDX_V5, AZ_SNP, AZ_TDX, AZUREVM_TOKEN], ids=["snp", "tdx", "azure-snp", "azure-tdx", "maa"]
)
def test_damaged_evidence_never_crashes_the_command(path: Path, tmp_path: Path) -> None:
    rnd = random.Random(path.name)
    data = path.read_bytes()
    for _ in range(12):
        damaged = bytearray(data)
        at = rnd.randrange(len(damaged))
        choice = rnd.randrange(3)
        if choice == 0:
            damaged = damaged[:at]
        elif choice == 1:
            damaged[at : at + 4] = b"\x1b[2J"
        else:
            damaged[at] ^= 1 << rnd.randrange(8)
        target = tmp_path / "damaged.bin"
        target.write_bytes(bytes(damaged))
        for args in (["show", str(target)], ["verify", str(target), *TDX_NOW, "--json"]):
            result = runner.invoke(app, args)
            assert result.exit_code in (0, 1, 2) and (result.exception is None or isinstance(result.exception, SystemExit)), (
                args,
                result.exception,
            )
            _no_raw_escapes(result.output)
