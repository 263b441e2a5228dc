"""``duet verify``, pinning, TLS and the refusal of unverified or changed controllers.

The controllers here serve HTTPS in the simulated SGX TEE, as a real deployment would (only
the root of the evidence differs), and the client trusts the simulated root explicitly.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from duet import keys
from duet.attestation import sgx as dcap
from duet.attestation.sgx import Policy
from duet.client.sdk import DuetClient, NotVerified
from duet.client.trust import TrustStore
from duet.client.verify import verify_attestation, verify_controller
from duet.errors import DuetError, VerificationError
from duet.protocol.canonical import canonical
from duet.protocol.envelope import new_nonce, sign_answer
from duet.tee.simulated import SimulatedSgxTee, simulated_root_pem
from duet.testing.process import ControllerProcess
from support import Owner, make_owner, serving


def duet(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    """Run the CLI with its own user state directory; (exit status, stdout JSON or text, stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "duet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DUET_HOME": str(home), **(env or {})},
    )
    try:
        out: Any = json.loads(result.stdout)
    except ValueError:
        out = result.stdout
    return result.returncode, out, result.stderr


@pytest.fixture
def attested(tmp_path: Path, owner: Owner) -> Iterator[ControllerProcess]:
    with serving(ControllerProcess(tmp_path / "astate", [owner.pub_path], tee="simulated", tls=True)) as process:
        yield process


@pytest.fixture
def sim_root(tmp_path: Path, attested: ControllerProcess) -> Path:
    path = tmp_path / "sim-root.pem"
    path.write_bytes(simulated_root_pem(attested.state_dir))
    return path


def root_key(path: Path) -> keys.PublicKey:
    return dcap.load_trust_root(path.read_bytes(), str(path))


def pinned_client(url: str, home: Path, owner: Owner | None = None) -> DuetClient:
    return DuetClient(url, owner_key=owner.key if owner else None, trust=TrustStore(home))


# --- duet verify, then every other command ------------------------------------------------------


def test_verify_pins_the_controller_and_then_commands_work(
    tmp_path: Path, attested: ControllerProcess, sim_root: Path, owner: Owner
) -> None:
    home = tmp_path / "user"
    rc, out, err = duet(home, "--url", attested.url, "cvm", "list")
    assert rc == 3 and "duet" in err and "verify" in err and "not verified" in err

    rc, out, err = duet(home, "--json", "--url", attested.url, "verify", "--trust-root", str(sim_root))
    assert rc == 0, (out, err)
    assert out["ok"] and out["tee"] == "simulated-sgx" and out["simulated"] and out["attested"]
    assert [c["step"] for c in out["checks"]] == [
        "identity",
        "answer_signature",
        "tls_certificate",
        "evidence",
        "report_data",
        "policy",
        "maa",
    ]
    evidence = next(c for c in out["checks"] if c["step"] == "evidence")
    assert "TCB level: not evaluated" in json.dumps(evidence)  # no collateral given: said, never passed
    measured = {m["check"]: m for m in out["measurements"]}
    assert measured["mrenclave"]["actual"] == SimulatedSgxTee(attested.state_dir).mr_enclave.hex()
    assert out["owners"] == [owner.key_id]
    pin = TrustStore(home).get(attested.url)
    assert pin is not None and pin.controller == out["controller"] and pin.attested and pin.owners == (owner.key_id,)
    assert pin.tls_cert_sha256 == out["tls_cert_sha256"] and pin.tls_cert_pem

    rc, out, err = duet(home, "--json", "--url", attested.url, "cvm", "list")
    assert rc == 0 and out == {"cvms": []}
    assert "SIMULATED" in err  # said on every run, on stderr

    with pinned_client(attested.url, home, owner) as client:
        assert client.head()["tree_size"] >= 1 and client.warnings and "SIMULATED" in client.warnings[0]


def test_simulated_evidence_is_refused_without_an_explicit_root(tmp_path: Path, attested: ControllerProcess) -> None:
    verdict = verify_controller(attested.url, policy=Policy())
    assert not verdict.ok and verdict.pin is None
    assert verdict.failure is not None and verdict.failure.code == "simulated_needs_trust_root"
    # A root of another installation does not help either.
    other = SimulatedSgxTee(tmp_path / "other")
    verdict = verify_controller(attested.url, policy=Policy(), trust_roots=[other.root_key()])
    assert verdict.failure is not None and (verdict.failure.step, verdict.failure.code) == ("evidence", "untrusted_root")


def test_policy_violation_is_refused_with_measurements_side_by_side(
    tmp_path: Path, attested: ControllerProcess, sim_root: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(f'mrenclave = ["{"00" * 32}"]\nmin_isv_svn = 2\n')
    rc, out, _ = duet(
        tmp_path / "user", "--json", "--url", attested.url, "verify", "--trust-root", str(sim_root), "--policy", str(policy)
    )
    assert rc == 3 and not out["ok"] and (out["failed_step"], out["code"]) == ("policy", "policy_violation")
    rows = {m["check"]: m for m in out["measurements"]}
    assert rows["mrenclave"]["expected"] == "00" * 32 and not rows["mrenclave"]["ok"]
    assert (rows["min_isv_svn"]["expected"], rows["min_isv_svn"]["actual"], rows["min_isv_svn"]["ok"]) == (">= 2", "1", False)
    assert TrustStore(tmp_path / "user").get(attested.url) is None


def test_insecure_uses_an_unverified_controller_and_says_so_every_run(tmp_path: Path, attested: ControllerProcess) -> None:
    home = tmp_path / "user"
    for _ in range(2):
        rc, out, err = duet(home, "--json", "--insecure", "--url", attested.url, "cvm", "list")
        assert rc == 0 and out == {"cvms": []}  # stdout stays one JSON object
        assert "--insecure" in err and "NOT verified" in err
    rc, out, err = duet(home, "--json", "--url", attested.url, "cvm", "list", env={"DUET_INSECURE": "1"})
    assert rc == 0 and "NOT verified" in err
    assert TrustStore(home).get(attested.url) is None  # insecure use pins nothing


def test_tee_none_is_refused_unless_insecure(tmp_path: Path, owner: Owner) -> None:
    with ControllerProcess(tmp_path / "nstate", [owner.pub_path], tee="none", tls=True) as process:
        verdict = verify_controller(process.url, policy=Policy())
        assert verdict.failure is not None and (verdict.failure.step, verdict.failure.code) == ("evidence", "not_attested")
        verdict = verify_controller(process.url, policy=Policy(), insecure=True)
        assert verdict.ok and verdict.pin is not None and not verdict.pin.attested and not verdict.attested


def test_plain_http_is_refused_unless_insecure(controller: ControllerProcess) -> None:
    assert controller.url.startswith("http://") and "NO TLS" in controller.log()
    verdict = verify_controller(controller.url, policy=Policy())
    assert verdict.failure is not None and verdict.failure.code == "plain_http"


# --- a pinned controller that changed ---------------------------------------------------------


def _verify_and_pin(url: str, home: Path, root: Path) -> None:
    verdict = verify_controller(url, policy=Policy(), trust_roots=[root_key(root)])
    assert verdict.ok and verdict.pin is not None, verdict.failure
    TrustStore(home).put(url, verdict.pin)


def test_pinned_client_refuses_the_controller_after_its_key_was_replaced(
    tmp_path: Path, attested: ControllerProcess, sim_root: Path, owner: Owner
) -> None:
    home = tmp_path / "user"
    _verify_and_pin(attested.url, home, sim_root)
    with pinned_client(attested.url, home) as client:
        old = client.head()["controller"]
    attested.stop()
    (attested.state_dir / "sealed" / "controller-signing.pem").unlink()  # the host swaps the controller key
    with pytest.raises(DuetError, match="exited at start"):
        attested.start()  # ... which sealed state, signed by the old key, refuses
    assert "signing key is missing" in attested.log()
    for name in ("sealed/anchor.json", "duet.sqlite3", "duet.sqlite3-wal", "duet.sqlite3-shm"):
        (attested.state_dir / name).unlink(missing_ok=True)  # so the host installs a new controller in its place
    attested.start()

    with pinned_client(attested.url, home, owner) as client, pytest.raises(VerificationError) as refused:
        client.list_cvms()
    assert refused.value.code == "controller_key_changed"
    assert old[:16] in refused.value.message and "duet" in refused.value.message and "--replace" in refused.value.message
    with pinned_client(attested.url, home, owner) as client, pytest.raises(VerificationError):
        client.start("snp")  # owner requests too: nothing is sent to be signed for another controller

    rc, out, err = duet(home, "--url", attested.url, "cvm", "list")
    assert rc == 3 and "REFUSED CONTROLLER" in err

    # The new controller verifies (same simulated platform), but replacing the pin must be asked for.
    rc, out, _ = duet(home, "--json", "--url", attested.url, "verify", "--trust-root", str(sim_root))
    assert rc == 3 and out["code"] == "controller_changed"
    assert TrustStore(home).get(attested.url).controller == old  # type: ignore[union-attr]
    rc, out, _ = duet(home, "--json", "--url", attested.url, "verify", "--trust-root", str(sim_root), "--replace")
    assert rc == 0 and out["controller"] != old
    with pinned_client(attested.url, home) as client:
        assert client.head()["controller"] == out["controller"]


def test_pinned_client_refuses_another_tls_certificate(tmp_path: Path, attested: ControllerProcess, sim_root: Path) -> None:
    home = tmp_path / "user"
    _verify_and_pin(attested.url, home, sim_root)
    pinned = TrustStore(home).get(attested.url)
    assert pinned is not None
    attested.stop()
    for name in ("controller-tls.key", "controller-tls.pem"):
        (attested.state_dir / "sealed" / name).unlink()  # same signing key, new TLS key and certificate
    attested.start()
    presented = httpx.get(attested.url + "/v1/attestation", verify=False).json()["result"]["identity"]["tls_cert_sha256"]
    assert presented != pinned.tls_cert_sha256

    with pinned_client(attested.url, home) as client, pytest.raises(VerificationError) as refused:
        client.head()
    assert refused.value.code == "tls_pin_mismatch"
    assert presented[:16] in refused.value.message and str(pinned.tls_cert_sha256)[:16] in refused.value.message
    rc, _, err = duet(home, "--url", attested.url, "cvm", "list")
    assert rc == 3 and "tls_pin_mismatch" in err


def test_a_pinned_controller_showing_another_owner_set_is_refused(
    tmp_path: Path, attested: ControllerProcess, sim_root: Path, owner: Owner
) -> None:
    """The controller refuses to start with another owner set than its sealed one, so the change is made
    on the client's side: the pin remembers another set (a stranger's) than the identity now shows."""
    home = tmp_path / "user"
    _verify_and_pin(attested.url, home, sim_root)
    pinned = TrustStore(home).get(attested.url)
    assert pinned is not None and pinned.owners == (owner.key_id,)
    stranger = make_owner(tmp_path, "stranger")
    remembered = dataclasses.replace(pinned, owners=(stranger.key_id,))
    TrustStore(home).put(attested.url, remembered)

    with pinned_client(attested.url, home) as client, pytest.raises(VerificationError) as refused:
        client.check_identity()
    assert refused.value.code == "owners_changed"
    assert owner.key_id[:16] in refused.value.message and stranger.key_id[:16] in refused.value.message

    rc, out, _ = duet(home, "--json", "--url", attested.url, "verify", "--trust-root", str(sim_root))
    assert rc == 3 and (out["failed_step"], out["code"]) == ("pin", "owners_changed")
    assert TrustStore(home).get(attested.url) == remembered
    rc, out, _ = duet(home, "--json", "--url", attested.url, "verify", "--trust-root", str(sim_root), "--replace")
    assert rc == 0 and TrustStore(home).get(attested.url).owners == (owner.key_id,)  # type: ignore[union-attr]
    with pinned_client(attested.url, home) as client:
        assert client.check_identity().owners == (owner.key_id,)


def test_a_stale_tofu_pin_is_not_trusted(tmp_path: Path, attested: ControllerProcess) -> None:
    """Pins written by the older trust-on-first-use client carry no verification: verify again."""
    identity = httpx.get(attested.url + "/v1/attestation", verify=False).json()["result"]["identity"]
    store = TrustStore(tmp_path / "user")
    store.path.parent.mkdir(parents=True)
    store.path.write_text(
        json.dumps({attested.url: {"controller": identity["controller"], "signing_key": identity["signing_key"], "tee": "none"}})
    )
    with pinned_client(attested.url, tmp_path / "user") as client, pytest.raises(NotVerified, match="older duet"):
        client.head()


# --- the report-data binding, checked on answers the controller never sent ----------------------


def _answer(tee: SimulatedSgxTee, key: keys.PrivateKey, document: dict[str, Any], report_data: bytes, nonce: str) -> Any:
    result = {"identity": document, "evidence": tee.quote(report_data)}
    return json.loads(
        sign_answer(canonical(result), controller=document["controller"], signing_key=key, request_digest=None, nonce=nonce)
    )


def test_evidence_about_another_identity_is_refused(tmp_path: Path) -> None:
    tee = SimulatedSgxTee(tmp_path)
    key = keys.generate()
    cert = b"certificate DER"
    document = {
        "controller": keys.key_id(key.public_key()),
        "signing_key": keys.public_pem(key.public_key()).decode(),
        "tls_cert_sha256": hashlib.sha256(cert).hexdigest(),
        "owners": ["ab" * 32],
        "version": "0.1.0",
    }
    nonce = new_nonce()

    def judge(answer: Any) -> Any:
        return verify_attestation(
            "https://c.example", answer, nonce=nonce, tls_cert_der=cert, policy=Policy(), trust_roots=[tee.root_key()]
        )

    good = judge(_answer(tee, key, document, hashlib.sha512(canonical(document)).digest(), nonce))
    assert good.ok, good.failure
    # The host replays evidence of the genuine identity next to a document that names other owners.
    swapped = {**document, "owners": ["cd" * 32]}
    bad = judge(_answer(tee, key, swapped, hashlib.sha512(canonical(document)).digest(), nonce))
    assert bad.failure is not None and (bad.failure.step, bad.failure.code) == ("report_data", "report_data_mismatch")
    # A controller id that is not its key's id.
    forged = {**document, "controller": "ef" * 32}
    bad = judge(_answer(tee, key, forged, hashlib.sha512(canonical(forged)).digest(), nonce))
    assert bad.failure is not None and (bad.failure.step, bad.failure.code) == ("identity", "bad_identity")
    # An old answer (another nonce) is refused as stale.
    bad = judge(_answer(tee, key, document, hashlib.sha512(canonical(document)).digest(), new_nonce()))
    assert bad.failure is not None and (bad.failure.step, bad.failure.code) == ("answer_signature", "stale_answer")
    # The connection's certificate is not the one the identity names.
    bad = verify_attestation(
        "https://c.example",
        _answer(tee, key, document, hashlib.sha512(canonical(document)).digest(), nonce),
        nonce=nonce,
        tls_cert_der=b"another",
        policy=Policy(),
        trust_roots=[tee.root_key()],
    )
    assert bad.failure is not None and (bad.failure.step, bad.failure.code) == ("tls_certificate", "tls_pin_mismatch")


def test_save_keeps_what_was_verified(tmp_path: Path, attested: ControllerProcess, sim_root: Path) -> None:
    saved = tmp_path / "saved"
    rc, out, _ = duet(
        tmp_path / "user", "--json", "--url", attested.url, "verify", "--trust-root", str(sim_root), "--save", str(saved)
    )
    assert rc == 0 and out["saved_in"] == str(saved)
    identity = json.loads((saved / "identity.json").read_text())
    quote = dcap.parse_quote((saved / "quote.bin").read_bytes())
    assert quote.report_body.report_data == hashlib.sha512(canonical(identity)).digest()
    cert_pem = (saved / "tls-certificate.pem").read_text()
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == identity["tls_cert_sha256"]
    assert json.loads((saved / "verdict.json").read_text())["ok"] is True
    assert (
        base64.b64decode(json.loads((saved / "attestation.json").read_text())["result"]["evidence"]["quote"])
        == (saved / "quote.bin").read_bytes()
    )


# --- owner keys pinned in sealed state ----------------------------------------------------------


def test_owner_keys_are_pinned_at_first_start(tmp_path: Path, owner: Owner) -> None:
    process = ControllerProcess(tmp_path / "ostate", [owner.pub_path])
    with process:
        pass
    stranger = make_owner(tmp_path, "stranger")
    swapped = ControllerProcess(tmp_path / "ostate", [stranger.pub_path], port=process.port)
    with pytest.raises(Exception, match="exited at start"):
        swapped.start()
    assert "owner_keys_changed" in swapped.log() and stranger.key_id[:16] in swapped.log()

    # Without --owner-key the pinned owners are used; the refused swap is in the ledger.
    with (
        ControllerProcess(tmp_path / "ostate", [], port=process.port) as again,
        DuetClient(again.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
    ):
        assert client.pin().owners == (owner.key_id,)
        events = [(e["event"], e.get("given")) for e in client.entries()]
        assert ("controller.owners_refused", [stranger.key_id]) in events
        assert client.list_cvms() == []


def test_verify_with_azure_attestation(tmp_path: Path, attested: ControllerProcess, sim_root: Path) -> None:
    from tests.fakes.fake_maa import FakeMaa

    with FakeMaa(trusted_roots=[root_key(sim_root)]) as maa:
        rc, out, err = duet(
            tmp_path / "user",
            "--json",
            "--url",
            attested.url,
            "verify",
            "--trust-root",
            str(sim_root),
            "--maa-url",
            maa.url,
            "--save",
            str(tmp_path / "saved"),
        )
        assert rc == 0, (out, err)
        assert [c["ok"] for c in out["checks"] if c["step"] == "maa"] == [True]
        assert all(m["ok"] for m in out["maa_measurements"]) and (tmp_path / "saved" / "maa-token.jwt").exists()
        maa.misbehave = "debug"
        rc, out, _ = duet(
            tmp_path / "user2", "--json", "--url", attested.url, "verify", "--trust-root", str(sim_root), "--maa-url", maa.url
        )
        assert rc == 3 and (out["failed_step"], out["code"]) == ("maa", "maa_policy_violation")


def test_verify_shows_who_may_act_and_how_many_must_agree(tmp_path: Path) -> None:
    """The approval policy is in the attested identity document: verify shows it and pins it."""
    owners = [make_owner(tmp_path, name) for name in ("a", "b")]
    policy = tmp_path / "approvals.toml"
    policy.write_text('[thresholds]\n"cvm.mark.in-update" = 2\n')
    process = ControllerProcess(
        tmp_path / "pstate",
        [o.pub_path for o in owners],
        tee="simulated",
        tls=True,
        extra_args=("--approval-policy", str(policy)),
    )
    with serving(process):
        root = tmp_path / "root.pem"
        root.write_bytes(simulated_root_pem(process.state_dir))
        rc, out, err = duet(tmp_path / "user", "--url", process.url, "verify", "--trust-root", str(root))
        assert rc == 0, (out, err)
        assert "Approvals: cvm.mark.in-update needs 2 of 2 owners; any other operation, one owner" in " ".join(out.split())
        pin = TrustStore(tmp_path / "user").get(process.url)
        assert pin is not None and pin.approval_policy is not None
        assert pin.approval_policy["thresholds"]["cvm.mark.in-update"] == 2 and pin.policy_seq is not None
