"""The one SGX evidence pipeline: its steps and their order, and both front ends reporting it alike."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sgx_helpers import REPORT_DATA, flip, signed_attestation
from typer.testing import CliRunner

from duet.attestation import sgx
from duet.cli.evidence import app
from duet.client.verify import verify_attestation
from duet.tee.simulated import SimulatedSgxTee

DEBUG_FLAGS = 0x07


def _judge(sim_tee: SimulatedSgxTee, quote: bytes, **kwargs: Any) -> sgx.EvidenceVerdict:
    return sgx.verify_evidence(quote, trusted_root_keys=[sim_tee.root_key()], now=datetime.now(UTC), **kwargs)


def _outcomes(verdict: sgx.EvidenceVerdict) -> list[tuple[str, bool | None]]:
    return [(s.step, s.ok) for s in verdict.steps]


def test_every_step_holds_in_order(sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    verdict = _judge(sim_tee, sim_quote, report_data=REPORT_DATA)
    assert verdict.ok and verdict.failure is None
    not_evaluated = {sgx.STEP_PCK_REVOCATION, sgx.STEP_TCB_LEVEL}  # no collateral given
    assert _outcomes(verdict) == [(step, None if step in not_evaluated else True) for step in sgx.EVIDENCE_STEPS]
    assert [c.check for c in verdict.policy] == ["debug", "mrenclave", "mrsigner", "isv_prod_id", "min_isv_svn"]
    assert verdict.quote is not None and verdict.quote.report_body.report_data == REPORT_DATA


def test_report_data_not_asked_is_not_a_failure(sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    verdict = _judge(sim_tee, sim_quote)
    assert verdict.ok
    step = next(s for s in verdict.steps if s.step == sgx.STEP_REPORT_DATA)
    assert (step.ok, step.message) == (None, "not asked")


def test_a_signature_failure_stops_the_rest(sim_tee: SimulatedSgxTee, sim_quote: bytes) -> None:
    verdict = _judge(sim_tee, flip(sim_quote, 306), report_data=REPORT_DATA)  # ISVSVN
    assert not verdict.ok and verdict.failure is not None
    assert (verdict.failure.step, verdict.failure.code) == ("enclave_signature", "bad_enclave_signature")
    assert _outcomes(verdict)[-4:] == [
        ("enclave_signature", False),
        ("tcb_level", None),
        ("report_data", None),
        ("policy", None),
    ]
    assert verdict.policy == ()


def test_report_data_is_checked_before_the_policy(sim_tee: SimulatedSgxTee) -> None:
    debug_quote = sim_tee.quote_bytes(REPORT_DATA, flags=DEBUG_FLAGS)
    verdict = _judge(sim_tee, debug_quote, report_data=flip(REPORT_DATA, 0))
    assert verdict.failure is not None and (verdict.failure.step, verdict.failure.code) == ("report_data", "report_data_mismatch")
    assert _outcomes(verdict)[-2:] == [("report_data", False), ("policy", None)]

    verdict = _judge(sim_tee, debug_quote, report_data=REPORT_DATA)
    assert verdict.failure is not None and (verdict.failure.step, verdict.failure.code) == ("policy", "debug_enclave")
    assert "allow_debug = true" in verdict.failure.message
    assert [c.check for c in verdict.policy if not c.ok] == ["debug"]
    assert _judge(sim_tee, debug_quote, report_data=REPORT_DATA, policy=sgx.Policy(allow_debug=True)).ok


def test_the_default_policy_refuses_debug_enclaves(sim_tee: SimulatedSgxTee) -> None:
    verdict = _judge(sim_tee, sim_tee.quote_bytes(REPORT_DATA, flags=DEBUG_FLAGS))
    assert verdict.failure is not None and verdict.failure.code == "debug_enclave"


# --- duet verify and duet evidence verify report the same steps ----------------------------------


def _debug_quote_answer(sim_tee: SimulatedSgxTee, *, bound: bool) -> tuple[Any, str, bytes, bytes, bytes]:
    """A signed attestation answer carrying a debug enclave's quote, made for this identity's report
    data (``bound``) or another's; also the quote and the report data the identity asks for."""
    made: dict[str, bytes] = {}

    def evidence(expected: bytes) -> dict[str, Any]:
        made["expected"] = expected
        made["quote"] = sim_tee.quote_bytes(expected if bound else flip(expected, 0), flags=DEBUG_FLAGS)
        return {"type": "simulated-sgx", "quote": base64.b64encode(made["quote"]).decode()}

    answer, nonce, cert = signed_attestation(evidence)
    return answer, nonce, cert, made["quote"], made["expected"]


@pytest.mark.parametrize(
    ("bound", "step", "cli_code"), [(False, "report_data", "report_data_mismatch"), (True, "policy", "debug_enclave")]
)
def test_both_front_ends_stop_at_the_same_step(
    sim_tee: SimulatedSgxTee, tmp_path: Path, bound: bool, step: str, cli_code: str
) -> None:
    """A debug enclave's quote, about another identity or about this one: ``duet verify`` and
    ``duet evidence verify`` name the same failed step (``duet verify`` words a policy failure as
    ``policy_violation`` with every violated measurement)."""
    answer, nonce, cert, quote, expected = _debug_quote_answer(sim_tee, bound=bound)
    client = verify_attestation(
        "https://c.example", answer, nonce=nonce, tls_cert_der=cert, policy=sgx.Policy(), trust_roots=[sim_tee.root_key()]
    )
    assert client.failure is not None and client.failure.step == step
    assert client.failure.code == ("policy_violation" if step == "policy" else cli_code)

    (tmp_path / "quote.bin").write_bytes(quote)
    (tmp_path / "root.pem").write_bytes(sim_tee.root_pem())
    args = ["verify", str(tmp_path / "quote.bin"), "--trust-root", str(tmp_path / "root.pem"), "--report-data", expected.hex()]
    result = CliRunner().invoke(app, [*args, "--json"])
    out = json.loads(result.stdout)
    assert result.exit_code == 1 and (out["failed_step"], out["code"]) == (step, cli_code)
