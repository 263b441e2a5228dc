"""Enclave policy: TOML loading and one failing input per check."""

from __future__ import annotations

from pathlib import Path

import pytest
from sgx_helpers import DEBUG, REAL_QUOTES, RELEASE, REPORT_DATA

from duet.attestation.sgx.abi import ParsedQuote, parse_quote
from duet.attestation.sgx.policy import DEFAULT_POLICY, Policy, PolicyCheck, PolicyError
from duet.errors import ConfigError
from duet.tee.simulated import SimulatedSgxTee

RELEASE_MRENCLAVE = "d37d983a85d63fb49649610e2eba0930ecdbff6d113aca3ff3fc7261696c0134"
AZURE_MRSIGNER = "feb995eb86c349ac98e5afbbb5732ca7376ec9979002702ea17ad476e0853a04"


def _q(path: Path) -> ParsedQuote:
    return parse_quote(path.read_bytes())


def test_default_policy_refuses_the_debug_azure_sample() -> None:
    with pytest.raises(PolicyError) as err:
        DEFAULT_POLICY.enforce(_q(DEBUG))
    assert err.value.code == "debug_enclave"
    assert "debug enclave (ATTRIBUTES.FLAGS DEBUG bit set)" in err.value.message


def test_default_policy_passes_the_release_azure_sample() -> None:
    DEFAULT_POLICY.enforce(_q(RELEASE))
    checks = DEFAULT_POLICY.check(_q(RELEASE))
    assert checks[0] == PolicyCheck("debug", "not a debug enclave", "not debug", True)
    assert all(c.ok for c in checks)


def test_allow_debug_is_explicit() -> None:
    Policy(allow_debug=True).enforce(_q(DEBUG))


def test_full_policy_from_toml_passes_the_release_sample(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        f'mrenclave = ["{"00" * 32}", "{RELEASE_MRENCLAVE.upper()}"]\nmrsigner = "{AZURE_MRSIGNER}"\n'
        "isv_prod_id = 1\nmin_isv_svn = 1\nallow_debug = false\n"
    )
    policy = Policy.load(path)
    assert policy.mrenclave[1].hex() == RELEASE_MRENCLAVE and policy.isv_prod_id == 1
    policy.enforce(_q(RELEASE))


def test_mrenclave_not_in_policy(sim_tee: SimulatedSgxTee) -> None:
    quote = parse_quote(sim_tee.quote_bytes(REPORT_DATA))
    policy = Policy(mrenclave=(bytes.fromhex(RELEASE_MRENCLAVE),))
    with pytest.raises(PolicyError) as err:
        policy.enforce(quote)
    assert err.value.code == "mrenclave_not_allowed"
    assert err.value.message == f"mrenclave: expected {RELEASE_MRENCLAVE}, the quote has {sim_tee.mr_enclave.hex()}"


def test_debug_enclave(sim_tee: SimulatedSgxTee) -> None:
    quote = parse_quote(sim_tee.quote_bytes(REPORT_DATA, flags=0x07))
    with pytest.raises(PolicyError) as err:
        Policy(mrenclave=(sim_tee.mr_enclave,)).enforce(quote)
    assert err.value.code == "debug_enclave" and "allow_debug = true" in err.value.message


def test_isv_svn_below_minimum(sim_tee: SimulatedSgxTee) -> None:
    quote = parse_quote(sim_tee.quote_bytes(REPORT_DATA))
    with pytest.raises(PolicyError) as err:
        Policy(min_isv_svn=2).enforce(quote)
    assert err.value.code == "isv_svn_too_low"
    assert err.value.message == "min_isv_svn: expected >= 2, the quote has 1"


def test_mrsigner_mismatch(sim_tee: SimulatedSgxTee) -> None:
    quote = parse_quote(sim_tee.quote_bytes(REPORT_DATA))
    with pytest.raises(PolicyError) as err:
        Policy(mrsigner=bytes.fromhex(AZURE_MRSIGNER)).enforce(quote)
    assert err.value.code == "mrsigner_mismatch" and sim_tee.mr_signer.hex() in err.value.message


def test_isv_prod_id_mismatch(sim_tee: SimulatedSgxTee) -> None:
    quote = parse_quote(sim_tee.quote_bytes(REPORT_DATA))
    with pytest.raises(PolicyError) as err:
        Policy(isv_prod_id=7).enforce(quote)
    assert err.value.code == "isv_prod_id_mismatch" and err.value.message == "isv_prod_id: expected 7, the quote has 1"


def test_simulated_enclave_passes_a_policy_pinning_it(sim_tee: SimulatedSgxTee) -> None:
    Policy(mrenclave=(sim_tee.mr_enclave,), mrsigner=sim_tee.mr_signer, isv_prod_id=1, min_isv_svn=1).enforce(
        parse_quote(sim_tee.quote_bytes(REPORT_DATA))
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('mrenclave = ["abcd"]', "must be 32 bytes"),
        ('mrsigner = "zz"', "is not hex"),
        ("isv_prod_id = -1", "0..65535"),
        ('allow_debug = "yes"', "true or false"),
        ("mrenclaves = []", "unknown key(s) mrenclaves"),
        ("mrenclave = [", "not valid TOML"),
    ],
)
def test_bad_policy_files_are_config_errors(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        Policy.from_toml(text, "p.toml")
    assert err.value.code == "bad_policy" and words in err.value.message and "p.toml" in err.value.message


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        Policy.load(tmp_path / "nope.toml")
    assert err.value.code == "policy_unreadable"


@pytest.mark.parametrize("path", REAL_QUOTES, ids=lambda p: p.name)
def test_check_reports_every_check(path: Path) -> None:
    assert [c.check for c in DEFAULT_POLICY.check(_q(path))] == ["debug", "mrenclave", "mrsigner", "isv_prod_id", "min_isv_svn"]
