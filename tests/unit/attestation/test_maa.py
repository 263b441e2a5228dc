"""Azure Attestation: a recorded real token (known answer), then a local fake of the service."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sgx_helpers import signed_attestation
from tests.fakes.fake_maa import FakeMaa

from duet.attestation.maa import MaaClient, MaaError, verify_token
from duet.attestation.sgx import Policy
from duet.client.verify import verify_attestation
from duet.errors import ConfigError
from duet.tee.simulated import SimulatedSgxTee

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "maa"
TOKEN = (ASSETS / "azure-sdk-cpp_SgxEnclave_Shared_2022-05-31.jwt").read_text().strip()
JWKS = json.loads((ASSETS / "azure-sdk-cpp_sharedwus_2022-05-31_certs.jwks.json").read_text())
INSTANCE = "https://sharedwus.wus.attest.azure.net"
VALID_AT = datetime(2022, 6, 1, 0, 0, tzinfo=UTC)  # between the token's nbf (05-31 22:47Z) and exp (06-01 06:47Z)
MRENCLAVE = "292a1f4b519e46627eb2478a3d9851405653c5b4b0a6925de843834d9216850e"
RD = hashlib.sha512(b"identity").digest()


# --- known answer: a real MAA token and the instance's real signing keys -----------------------


def test_recorded_token_verifies_at_its_time() -> None:
    claims = verify_token(TOKEN, instance=INSTANCE + "/", jwks=JWKS, now=VALID_AT)
    assert claims.mr_enclave.hex() == MRENCLAVE
    assert claims.mr_signer.hex() == "4aea5f9a0ed04b11f889aadfe6a1d376213a29a95a85ce7337ae6f7fece6610c"
    assert (claims.isv_prod_id, claims.isv_svn, claims.debug) == (1, 1, True)
    assert claims.report_data is not None and claims.report_data.hex().startswith("28542e44fe7e73f6")
    assert claims.expires == datetime.fromtimestamp(1654066076, UTC)


def test_recorded_token_is_judged_by_the_same_policy() -> None:
    claims = verify_token(TOKEN, instance=INSTANCE, jwks=JWKS, now=VALID_AT)
    refused = {c.check: c.ok for c in Policy().check(claims)}
    assert refused["debug"] is False  # it is a debug enclave: refused by default
    accepted = Policy.from_dict({"allow_debug": True, "mrenclave": [MRENCLAVE], "isv_prod_id": 1, "min_isv_svn": 1})
    assert all(c.ok for c in accepted.check(claims))


@pytest.mark.parametrize(
    "now, code",
    [
        (datetime(2022, 6, 2, tzinfo=UTC), "maa_expired"),
        (datetime(2022, 5, 30, tzinfo=UTC), "maa_not_yet_valid"),
    ],
)
def test_recorded_token_outside_its_validity(now: datetime, code: str) -> None:
    with pytest.raises(MaaError) as err:
        verify_token(TOKEN, instance=INSTANCE, jwks=JWKS, now=now)
    assert err.value.code == code


def _retamper(token: str, **changes: Any) -> str:
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return ".".join((head, base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode(), signature))


def test_recorded_token_failures() -> None:
    cases = {
        "maa_bad_signature": dict(token=_retamper(TOKEN, **{"x-ms-sgx-is-debuggable": False})),
        "maa_wrong_jku": dict(instance="https://sharedeus.eus.attest.azure.net"),
        "maa_unknown_key": dict(
            jwks={"keys": [k for k in JWKS["keys"] if k["kid"] != "XxRc2vLh1E5FrsNawnRH3PzuFgqg3q7NvCdnjoJHBGE="]}
        ),
        "maa_bad_jwks": dict(jwks=["not", "a", "jwks"]),
        "maa_malformed_token": dict(token="not.a.jwt"),
    }
    for code, change in cases.items():
        args: dict[str, Any] = {"token": TOKEN, "instance": INSTANCE, "jwks": JWKS, "now": VALID_AT, **change}
        with pytest.raises(MaaError) as err:
            verify_token(args.pop("token"), **args)
        assert err.value.code == code, (code, err.value.message)


# --- against a local fake of the service --------------------------------------------------------


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSgxTee:
    return SimulatedSgxTee(tmp_path_factory.mktemp("platform"))


@pytest.fixture
def maa(platform: SimulatedSgxTee) -> Iterator[FakeMaa]:
    with FakeMaa(trusted_roots=[platform.root_key()]) as fake:
        yield fake


def test_fake_round_trip(maa: FakeMaa, platform: SimulatedSgxTee) -> None:
    quote = platform.quote_bytes(RD)
    with MaaClient(maa.url) as client:
        token, claims = client.attest_and_verify(quote)
    assert claims.report_data == RD and claims.mr_enclave == platform.mr_enclave and not claims.debug
    assert ("POST", "/attest/SgxEnclave?api-version=2020-10-01") in maa.requests and ("GET", "/certs") in maa.requests
    assert verify_token(token, instance=maa.url, jwks=maa.jwks()).mr_signer == platform.mr_signer


@pytest.mark.parametrize(
    "how, code",
    [
        ("wrong_kid", "maa_unknown_key"),
        ("expired", "maa_expired"),
        ("alg_none", "maa_bad_algorithm"),
        ("tampered", "maa_bad_signature"),
        ("wrong_issuer", "maa_wrong_issuer"),
        ("other_key", "maa_bad_signature"),
        ("not_sgx", "maa_not_sgx"),
        ("wrong_jku", "maa_wrong_jku"),
    ],
)
def test_fake_bad_tokens_are_refused(maa: FakeMaa, platform: SimulatedSgxTee, how: str, code: str) -> None:
    maa.misbehave = how
    with MaaClient(maa.url) as client, pytest.raises(MaaError) as err:
        client.attest_and_verify(platform.quote_bytes(RD))
    assert err.value.code == code


def test_a_refused_quote_and_an_absent_service(maa: FakeMaa, tmp_path: Path) -> None:
    other = SimulatedSgxTee(tmp_path / "other")  # not trusted by this fake MAA
    with MaaClient(maa.url) as client, pytest.raises(MaaError) as err:
        client.attest_sgx(other.quote_bytes(RD))
    assert err.value.code == "maa_refused" and "untrusted_root" in err.value.message
    with MaaClient("http://127.0.0.1:9") as client, pytest.raises(MaaError) as err:
        client.certs()
    assert err.value.code == "maa_unreachable"


@pytest.mark.parametrize(
    "how, code",
    [
        (None, None),
        ("other_report_data", "maa_report_data_mismatch"),
        ("debug", "maa_policy_violation"),
        ("expired", "maa_expired"),
    ],
)
def test_duet_verify_asks_maa_too(maa: FakeMaa, platform: SimulatedSgxTee, how: str | None, code: str | None) -> None:
    maa.misbehave = how
    answer, nonce, cert = signed_attestation(platform.quote)

    def ask(quote: bytes) -> Any:
        with MaaClient(maa.url) as client:
            return client.attest_and_verify(quote)

    verdict = verify_attestation(
        "https://c.example", answer, nonce=nonce, tls_cert_der=cert, policy=Policy(), trust_roots=[platform.root_key()], maa=ask
    )
    if code is None:
        assert verdict.ok and verdict.maa_token and [c.ok for c in verdict.maa_policy] == [True] * 5
    else:
        assert verdict.failure is not None and (verdict.failure.step, verdict.failure.code) == ("maa", code)
        assert verdict.pin is None


@pytest.mark.parametrize("how", [None, "debug", "other_report_data", "tampered"])
def test_the_controller_refuses_to_serve_unless_maa_vouches_for_it(tmp_path: Path, maa: FakeMaa, how: str | None) -> None:
    from duet.controller.runtime import check_own_evidence, open_controller
    from duet.controller.settings import Settings
    from support import make_owner

    owner = make_owner(tmp_path)
    settings = Settings(state_dir=tmp_path / "state", owner_keys=(owner.pub_path,), tee="simulated")
    controller = open_controller(settings)
    maa.trusted_roots = [SimulatedSgxTee(settings.state_dir).root_key()]
    maa.misbehave = how
    try:
        if how is None:
            check_own_evidence(controller, maa.url)
        else:
            with pytest.raises(ConfigError) as err:
                check_own_evidence(controller, maa.url)
            assert err.value.code == "maa_refused_controller" and "refusing to serve" in err.value.message
    finally:
        controller.store.close()
