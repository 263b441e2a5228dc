"""The judgement every CVM attestation ends with: binding, VM identity, policy (design §10).

The kinds' own steps (signatures, chains) are tested with real evidence in snp/, tdx/ and
azure/; here the claims are made directly, so that each rule after them fails on its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from duet.attestation.cvm import CvmClaims, CvmVerdict, binding
from duet.attestation.cvm_evidence import Expected, judge
from duet.attestation.cvm_policy import DEFAULT_CVM_POLICY, CvmPolicy
from duet.attestation.steps import StepVerdict
from duet.errors import ConfigError

HOST_KEY = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
OTHER_KEY = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(1, 33))
NONCE = bytes(32)
MEASUREMENT = "ab" * 48


def claims(**changes: object) -> CvmClaims:
    base = CvmClaims(
        kind="snp",
        platform="snp",
        measurements={"measurement": MEASUREMENT},
        report_data=binding(HOST_KEY, NONCE),
        debug=False,
        migration_allowed=False,
        tcb={"bl_spl": 3, "tee_spl": 0, "snp_spl": 8, "ucode_spl": 115},
        signer="VCEK",
        simulated=False,
        vmpl=0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def verified(c: CvmClaims) -> CvmVerdict:
    return CvmVerdict(c.kind, (StepVerdict("report_signature", True, message="held"),), c)


def steps(verdict: CvmVerdict) -> list[tuple[str, bool | None, str | None]]:
    return [(s.step, s.ok, s.code) for s in verdict.steps]


def test_the_binding_is_the_design_formula() -> None:
    expected = hashlib.sha512(b"duet-cvm-attestation/v1\x00" + hashlib.sha256(HOST_KEY).digest() + NONCE).digest()
    assert binding(HOST_KEY, NONCE) == expected and len(expected) == 64
    with pytest.raises(ValueError):
        binding(HOST_KEY, b"short")


def test_evidence_that_binds_this_key_and_nonce_passes() -> None:
    verdict = judge(verified(claims()), Expected(HOST_KEY, NONCE))
    assert verdict.ok
    assert steps(verdict)[1:] == [("binding", True, None), ("vm_identity", None, None), ("policy", True, None)]
    assert {c.check for c in verdict.policy} >= {"debug", "migration", "measurement measurement"}


@pytest.mark.parametrize(
    "report_data, why",
    [
        (binding(OTHER_KEY, NONCE), "another host key: a machine in the middle relayed the real CVM's evidence"),
        (binding(HOST_KEY, os.urandom(32)), "an older nonce: replayed evidence"),
        (bytes(64), "no binding at all"),
    ],
)
def test_evidence_for_another_key_or_nonce_fails_the_binding(report_data: bytes, why: str) -> None:
    verdict = judge(verified(claims(report_data=report_data)), Expected(HOST_KEY, NONCE))
    assert not verdict.ok, why
    assert steps(verdict)[1:] == [("binding", False, "binding_mismatch"), ("vm_identity", None, None), ("policy", None, None)]
    assert "machine in the middle" in verdict.steps[1].message


def test_a_vm_id_other_than_the_created_one_fails() -> None:
    azure = claims(kind="azure-snp", vm_id="6E0BA2B8-5C3D-4C8F-9D55-0F1F3A0C1A11")
    assert judge(
        verified(azure), Expected(HOST_KEY, NONCE, vm_id="6e0ba2b8-5c3d-4c8f-9d55-0f1f3a0c1a11")
    ).ok  # case as the APIs differ
    verdict = judge(verified(azure), Expected(HOST_KEY, NONCE, vm_id="00000000-0000-0000-0000-000000000001"))
    assert steps(verdict)[2:] == [("vm_identity", False, "vm_id_mismatch"), ("policy", None, None)]
    assert "another genuine CVM" in verdict.steps[2].message


def test_a_failed_signature_step_stops_before_the_binding() -> None:
    broken = CvmVerdict("snp", (StepVerdict("report_signature", False, "bad_report_signature", "no"),), claims())
    verdict = judge(broken, Expected(HOST_KEY, NONCE))
    assert steps(verdict) == [
        ("report_signature", False, "bad_report_signature"),
        ("binding", None, None),
        ("vm_identity", None, None),
        ("policy", None, None),
    ]


POLICY = CvmPolicy.from_dict(
    {
        "snp": {
            "measurements": {"measurement": [MEASUREMENT]},
            "min_tcb": {"snp_spl": 8, "ucode_spl": 100},
            "signers": ["VCEK"],
            "vmpl": 0,
        },
        "tdx": {"measurements": {"mrtd": ["cd" * 48]}},
    }
)


@pytest.mark.parametrize(
    "changes, code",
    [
        ({"debug": True}, "debug_allowed"),
        ({"migration_allowed": True}, "migration_allowed"),
        ({"signer": "VLEK"}, "signer_not_allowed"),
        ({"vmpl": 2}, "vmpl_mismatch"),
        ({"measurements": {"measurement": "ef" * 48}}, "measurement_not_allowed"),
        ({"tcb": {"bl_spl": 3, "snp_spl": 7, "ucode_spl": 115}}, "tcb_too_low"),
        ({"tcb": {"snp_spl": 9}}, "tcb_too_low"),  # a component the evidence lacks is not "high enough"
        (
            {"platform": "tdx", "kind": "tdx", "signer": "PCK", "vmpl": None, "measurements": {"mrtd": "ab" * 48}},
            "measurement_not_allowed",
        ),
    ],
)
def test_each_policy_rule_fails_on_its_own(changes: dict[str, object], code: str) -> None:
    assert judge(verified(claims()), Expected(HOST_KEY, NONCE), POLICY).ok
    verdict = judge(verified(claims(**changes)), Expected(HOST_KEY, NONCE), POLICY)
    assert steps(verdict)[-1] == ("policy", False, code)
    assert [c for c in verdict.policy if not c.ok]


def test_debug_and_migration_are_refused_by_default_and_allowed_only_when_said() -> None:
    assert not judge(verified(claims(debug=True)), Expected(HOST_KEY, NONCE), DEFAULT_CVM_POLICY).ok
    lenient = CvmPolicy.from_dict({"allow_debug": True, "allow_migration": True})
    assert judge(verified(claims(debug=True, migration_allowed=True)), Expected(HOST_KEY, NONCE), lenient).ok


def test_the_policy_file_is_checked_and_hashed_canonically(tmp_path: Path) -> None:
    text = f'max_evidence_age_s = 600\n[snp.measurements]\nmeasurement = ["{MEASUREMENT.upper()}"]\n'
    (tmp_path / "a.toml").write_text(text)
    (tmp_path / "b.toml").write_text("# the same policy, laid out otherwise\n" + text.replace(" = ", "="))
    a, b = CvmPolicy.load(tmp_path / "a.toml"), CvmPolicy.load(tmp_path / "b.toml")
    assert a.max_evidence_age_s == 600 and a.platforms["snp"].measurements["measurement"] == (MEASUREMENT,)
    assert a.sha256 == b.sha256 != DEFAULT_CVM_POLICY.sha256


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("allow_debug = 1", "allow_debug must be true or false"),
        ("max_evidence_age_s = 0", "positive number of seconds"),
        ("colour = 'red'", "unknown key(s) colour"),
        ("[snp.measurements]\nmrtd = ['00']", "unknown 'mrtd'"),
        ("[snp.measurements]\nmeasurement = ['abcd']", "must be 48 bytes"),
        ("[snp.measurements]\nmeasurement = ['zz']", "is not hex"),
        ("[snp]\nsigners = ['PCK']", "signers must be a list of VCEK, VLEK"),
        ("[snp]\nvmpl = 4", "vmpl must be 0..3"),
        ("[tdx.min_tcb]\nx = -1", "non-negative integers"),
        ("[snp", "not valid TOML"),
    ],
)
def test_a_bad_policy_file_is_refused_with_what_to_fix(tmp_path: Path, text: str, phrase: str) -> None:
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(ConfigError) as refused:
        CvmPolicy.load(tmp_path / "p.toml")
    assert refused.value.code == "bad_cvm_policy" and phrase in refused.value.message


def test_a_policy_file_that_is_not_text_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError) as refused:
        CvmPolicy.load(tmp_path / "p.toml")
    assert refused.value.code == "bad_cvm_policy" and "not UTF-8" in refused.value.message
