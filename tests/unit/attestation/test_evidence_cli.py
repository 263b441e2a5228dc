"""`duet evidence show|verify`: exit status, failing step, JSON output."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from sgx_helpers import DEBUG, OCCLUM, RELEASE, REPORT_DATA, flip
from typer.testing import CliRunner

from duet.cli.evidence import app
from duet.tee.simulated import SimulatedSgxTee

runner = CliRunner()
AT = ["--at", "2026-01-01T00:00:00Z"]


def _json(args: list[str]) -> tuple[int, dict]:
    result = runner.invoke(app, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_verify_release_sample_succeeds() -> None:
    held = "7192385c3c0605de55bb9476ce1d90748190ecb32a8eed7f5207b30cf6a1fe89" + "00" * 32
    result = runner.invoke(app, ["verify", str(RELEASE), *AT, "--report-data", held])
    assert result.exit_code == 0, result.stdout
    assert "quote verified" in result.stdout


def test_verify_debug_sample_fails_on_policy() -> None:
    code, out = _json(["verify", str(DEBUG), *AT])
    assert code == 1
    assert (out["ok"], out["failed_step"], out["code"]) == (False, "policy", "debug_enclave")
    assert out["enclave"]["debug"] is True


def test_verify_with_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('mrenclave = ["' + "11" * 32 + '"]\n')
    code, out = _json(["verify", str(RELEASE), *AT, "--policy", str(policy)])
    assert code == 1 and out["code"] == "mrenclave_not_allowed"


def test_verify_reports_expired_chain_at_given_time() -> None:
    code, out = _json(["verify", str(OCCLUM), "--at", "2031-01-01T00:00:00Z"])
    assert code == 1 and (out["failed_step"], out["code"]) == ("pck_chain", "certificate_expired")


def test_simulated_evidence_needs_its_root(tmp_path: Path) -> None:
    tee = SimulatedSgxTee(tmp_path / "state")
    evidence = tmp_path / "evidence.json"
    evidence.write_text(json.dumps(tee.quote(REPORT_DATA)))
    code, out = _json(["verify", str(evidence)])
    assert code == 1 and out["code"] == "untrusted_root"
    root = tmp_path / "sim-root.pem"
    root.write_bytes(tee.root_pem())
    code, out = _json(["verify", str(evidence), "--trust-root", str(root), "--report-data", REPORT_DATA.hex()])
    assert code == 0 and out["ok"] is True and out["enclave"]["mr_enclave"] == tee.mr_enclave.hex()


def test_verify_tampered_base64_input_names_the_step(tmp_path: Path) -> None:
    path = tmp_path / "q.b64"
    path.write_bytes(base64.b64encode(flip(RELEASE.read_bytes(), 306)))
    result = runner.invoke(app, ["verify", str(path), *AT])
    assert result.exit_code == 1
    assert "enclave_signature" in result.stdout and "bad_enclave_signature" in result.stdout


def test_unusable_options_exit_2(tmp_path: Path) -> None:
    assert runner.invoke(app, ["verify", str(RELEASE), "--at", "yesterday"]).exit_code == 2
    assert runner.invoke(app, ["verify", str(RELEASE), "--report-data", "00"]).exit_code == 2
    assert runner.invoke(app, ["verify", str(tmp_path / "missing.bin")]).exit_code == 2
    bad_root = tmp_path / "root.pem"
    bad_root.write_text("not a key")
    assert runner.invoke(app, ["verify", str(RELEASE), "--trust-root", str(bad_root)]).exit_code == 2


def test_show_prints_every_field() -> None:
    result = runner.invoke(app, ["show", str(RELEASE)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stdout
    for name in (
        "MRENCLAVE",
        "MRSIGNER",
        "ISVPRODID",
        "ISVSVN",
        "REPORTDATA",
        "ATTRIBUTES.FLAGS",
        "CPUSVN",
        "qe_vendor_id",
        "QE auth data",
        "certification data type",
        "ECDSA attestation public key",
        "Intel SGX PCK Processor CA",
    ):
        assert name in result.stdout, name
    assert "d37d983a85d63fb49649610e2eba0930ecdbff6d113aca3ff3fc7261696c0134" in result.stdout


def test_show_json_and_bad_quote(tmp_path: Path) -> None:
    code, out = _json(["show", str(DEBUG)])
    assert code == 0 and out["report_body"]["debug"] is True
    bad = tmp_path / "bad.bin"
    bad.write_bytes(RELEASE.read_bytes()[:300])
    result = runner.invoke(app, ["show", str(bad)])
    assert result.exit_code == 1 and "bad_quote" in result.output


def test_verify_says_what_was_not_evaluated_and_judges_given_collateral(tmp_path: Path) -> None:
    from test_sgx_collateral import _tcb_info_json

    code, out = _json(["verify", str(RELEASE), *AT])
    steps = {s["step"]: s for s in out["steps"]}
    assert code == 0 and steps["tcb_level"]["ok"] is None and "not evaluated" in steps["tcb_level"]["message"]
    assert "not evaluated" in runner.invoke(app, ["verify", str(RELEASE), *AT]).stdout

    tcb_info = tmp_path / "tcb.json"
    tcb_info.write_bytes(_tcb_info_json(RELEASE, ("OutOfDate", "OutOfDate")))
    code, out = _json(["verify", str(RELEASE), *AT, "--tcb-info", str(tcb_info)])
    assert code == 1 and (out["failed_step"], out["code"]) == ("policy", "tcb_status_not_allowed")
    assert runner.invoke(app, ["verify", str(RELEASE), *AT, "--tcb-info", str(tmp_path / "missing.json")]).exit_code == 2
