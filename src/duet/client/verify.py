"""Verify a controller before trusting it: evidence, identity binding, policy, TLS; then pin it.

``duet verify`` runs :func:`verify_controller`; the result is a :class:`ControllerVerdict`
that names every check, what was expected and what was found, and — when everything held —
the :class:`~duet.client.trust.ControllerPin` to store. Nothing here raises for a failed check:
a failure is a verdict (like sigstore-python's), so the CLI can show what held and what did not.

The checks, in order (a failure stops the rest, which are shown as not reached):

1. ``identity``: the identity document is well-formed and its controller id is the key id of
   its signing key (design.md §3);
2. ``answer_signature``: the attestation answer is signed by that key and echoes our nonce, so
   it is fresh and not replayed;
3. ``tls_certificate``: the TLS certificate of *this* connection is the one the identity names;
   over plain HTTP the check cannot hold and is accepted only with ``insecure``;
4. ``evidence``: ``sgx-dcap`` must chain to Intel's pinned root key; ``simulated-sgx`` only to a
   root the user passed explicitly (``duet controller sim-root``); ``none`` is refused unless
   ``insecure``;
5. ``report_data``: the quote's REPORTDATA is SHA-512(JCS(identity document)), so the evidence is
   about this very identity (keys, TLS certificate, owners);
6. ``policy``: measurements against the policy, side by side;
7. ``maa`` (with an MAA URL): Azure Attestation's token about the same quote verifies, names
   the same report data and passes the same policy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from duet import keys
from duet.attestation import sgx
from duet.attestation.sgx import Policy, PolicyCheck
from duet.client.trust import ControllerPin, certificate_pem, peer_certificate, unverified_ssl_context
from duet.errors import DuetError
from duet.keys import PublicKey
from duet.protocol.canonical import canonical, sha256_hex, timestamp
from duet.protocol.envelope import new_nonce, request_target, verify_answer

if TYPE_CHECKING:
    from duet.attestation.maa import MaaSgxClaims

STEPS = ("identity", "answer_signature", "tls_certificate", "evidence", "report_data", "policy", "maa")
EVIDENCE_TYPES = ("sgx-dcap", "simulated-sgx", "none")


@dataclass(frozen=True)
class Check:
    step: str
    ok: bool | None
    """True held; False failed (the verdict fails); None skipped, with ``detail`` saying why."""
    detail: str
    code: str | None = None


@dataclass
class ControllerVerdict:
    url: str
    checks: list[Check] = field(default_factory=list)
    policy: list[PolicyCheck] = field(default_factory=list)
    maa_policy: list[PolicyCheck] = field(default_factory=list)
    identity: dict[str, Any] | None = None
    evidence_type: str | None = None
    answer: Any = None
    tls_cert_der: bytes | None = None
    maa_token: str | None = None
    pin: ControllerPin | None = None
    """Set only when every check held (or was skipped under ``insecure``)."""

    @property
    def failure(self) -> Check | None:
        return next((c for c in self.checks if c.ok is False), None)

    @property
    def ok(self) -> bool:
        return self.failure is None and self.pin is not None

    @property
    def controller(self) -> str | None:
        return self.identity.get("controller") if isinstance(self.identity, dict) else None

    @property
    def owners(self) -> list[str]:
        owners = self.identity.get("owners") if isinstance(self.identity, dict) else None
        return list(owners) if isinstance(owners, list) else []

    @property
    def approval_policy(self) -> dict[str, Any] | None:
        """How many distinct owners each operation needs (None: a controller older than approvals)."""
        policy = self.identity.get("approval_policy") if isinstance(self.identity, dict) else None
        return policy if isinstance(policy, dict) else None

    @property
    def attested(self) -> bool:
        return any(c.step == "evidence" and c.ok for c in self.checks)

    @property
    def simulated(self) -> bool:
        return self.evidence_type == "simulated-sgx"

    def to_dict(self) -> dict[str, Any]:
        failure = self.failure
        return {
            "ok": self.ok,
            "url": self.url,
            "controller": self.controller,
            "tee": self.evidence_type,
            "attested": self.attested,
            "simulated": self.simulated,
            "failed_step": failure.step if failure else None,
            "code": failure.code if failure else None,
            "message": failure.detail if failure else None,
            "checks": [{"step": c.step, "ok": c.ok, "detail": c.detail, "code": c.code} for c in self.checks],
            "measurements": [c._asdict() for c in self.policy],
            "maa_measurements": [c._asdict() for c in self.maa_policy],
            "owners": self.owners,
            "approval_policy": self.approval_policy,
            "tls_cert_sha256": self.identity.get("tls_cert_sha256") if isinstance(self.identity, dict) else None,
            "pinned": self.pin.to_dict() if self.pin else None,
        }


class _Stop(Exception):
    """Internal: a check failed; the verdict already records it."""


MaaCheck = Callable[[bytes], "tuple[str, MaaSgxClaims]"]
"""``quote → (token, claims)``; raises :class:`duet.attestation.maa.MaaError`."""


def verify_attestation(
    url: str,
    answer: Any,
    *,
    nonce: str,
    tls_cert_der: bytes | None,
    policy: Policy,
    trust_roots: Sequence[PublicKey] = (),
    insecure: bool = False,
    now: datetime | None = None,
    maa: MaaCheck | None = None,
    target: str | None = None,
    collateral: sgx.Collateral = sgx.NO_COLLATERAL,
) -> ControllerVerdict:
    """Judge one ``GET /v1/attestation`` answer (offline, apart from ``maa``).

    ``target``: the ``request_target`` the answer must name (:func:`attestation_target` of the
    nonce sent); :func:`verify_controller` always gives it, an answer judged apart from its
    request (a saved one) may go without."""
    now = now or datetime.now(UTC)
    verdict = ControllerVerdict(url=url.rstrip("/"), answer=answer, tls_cert_der=tls_cert_der)

    def ok(step: str, detail: str) -> None:
        verdict.checks.append(Check(step, True, detail))

    def skip(step: str, detail: str) -> None:
        verdict.checks.append(Check(step, None, detail))

    def fail(step: str, code: str, detail: str) -> _Stop:
        verdict.checks.append(Check(step, False, detail, code))
        return _Stop()

    try:
        # 1. identity
        try:
            result = answer["result"]
            document = result["identity"]
            evidence = result["evidence"]
            public_key = keys.load_public_key_bytes(document["signing_key"].encode(), "controller signing key")
            if not isinstance(evidence, dict):
                raise TypeError
        except (KeyError, TypeError, AttributeError, DuetError):
            raise fail("identity", "bad_identity", "the answer is not an identity document with evidence") from None
        verdict.identity = document
        verdict.evidence_type = str(evidence.get("type"))
        controller = keys.key_id(public_key)
        if controller != document.get("controller"):
            raise fail(
                "identity",
                "bad_identity",
                f"the identity names controller {str(document.get('controller'))[:16]}…, "
                f"but its signing key's id is {controller[:16]}…",
            )
        ok("identity", f"controller {controller} is the key id of its signing key")

        # 2. answer signature
        try:
            verify_answer(answer, controller=controller, public_key=public_key, nonce=nonce, request_target=target)
        except DuetError as exc:
            raise fail("answer_signature", exc.code, exc.message) from None
        ok(
            "answer_signature",
            "signed by the controller's key, fresh (echoes our nonce)" + (", answering the request sent" if target else ""),
        )

        # 3. TLS certificate of this connection
        named = document.get("tls_cert_sha256")
        if verdict.url.startswith("https://") and tls_cert_der is None:
            raise fail(
                "tls_certificate",
                "no_tls_certificate",
                "the HTTPS connection's certificate could not be read, so it cannot be compared with the identity",
            )
        if tls_cert_der is not None:
            seen = sha256_hex(tls_cert_der)
            if seen != named:
                raise fail(
                    "tls_certificate",
                    "tls_pin_mismatch",
                    f"this connection presented certificate {seen}, "
                    f"but the identity names {named}: someone may be intercepting the connection",
                )
            ok("tls_certificate", f"the connection's certificate is the one the identity names ({seen})")
        elif not insecure:
            raise fail(
                "tls_certificate",
                "plain_http",
                "plain HTTP: the connection cannot be bound to the identity "
                "(controller started with --no-tls); pass --insecure to accept that",
            )
        else:
            skip("tls_certificate", "plain HTTP: not bound to the identity (accepted because of --insecure)")

        # 4. evidence
        kind = verdict.evidence_type
        expected_rd = hashlib.sha512(canonical(document)).digest()
        if kind == "none":
            if not insecure:
                raise fail(
                    "evidence",
                    "not_attested",
                    "the controller runs without a TEE (evidence type none): "
                    "nothing proves which code it runs; pass --insecure to accept it for development",
                )
            skip("evidence", "TEE none: NOT attested (accepted because of --insecure)")
            skip("report_data", "no evidence")
            skip("policy", "no evidence")
        elif kind in ("sgx-dcap", "simulated-sgx"):
            if kind == "simulated-sgx" and not trust_roots:
                raise fail(
                    "evidence",
                    "simulated_needs_trust_root",
                    "SIMULATED SGX evidence is signed by a locally "
                    "generated root, not Intel; trust it explicitly with --trust-root (the output of "
                    "`duet controller sim-root`), for development only",
                )
            roots = list(trust_roots) if kind == "simulated-sgx" else [sgx.intel_sgx_root_key()]
            try:
                quote_bytes = base64.b64decode(str(evidence.get("quote")), validate=True)
            except (binascii.Error, ValueError):
                raise fail("evidence", "bad_evidence", "the evidence's quote is not base64") from None
            _check_sgx_evidence(
                verdict,
                sgx.verify_evidence(
                    quote_bytes, trusted_root_keys=roots, now=now, report_data=expected_rd, policy=policy, collateral=collateral
                ),
                ok,
                fail,
            )
            if maa is not None:
                _check_maa(verdict, maa, quote_bytes, expected_rd, policy, ok, fail)
        else:
            raise fail("evidence", "unknown_evidence_type", f"unknown evidence type {kind!r}; known: {', '.join(EVIDENCE_TYPES)}")
        if maa is None:
            skip("maa", "not asked (--maa-url)")
        elif kind == "none":
            skip("maa", "no quote to send")
    except _Stop:
        return verdict

    verdict.pin = ControllerPin(
        controller=controller,
        signing_key=document["signing_key"],
        tee=kind,
        tls_cert_sha256=named if tls_cert_der is not None else document.get("tls_cert_sha256"),
        tls_cert_pem=certificate_pem(tls_cert_der) if tls_cert_der is not None else None,
        owners=tuple(document.get("owners") or ()),
        owners_seq=document.get("owners_seq"),
        approval_policy=document.get("approval_policy"),
        policy_seq=document.get("policy_seq"),
        attested=kind != "none",
        verified_at=timestamp(),
    )
    return verdict


def _violations(checks: Sequence[PolicyCheck]) -> str:
    return "; ".join(f"{c.check}: expected {c.expected}, found {c.actual}" for c in checks if not c.ok)


def _check_sgx_evidence(
    verdict: ControllerVerdict,
    evidence: sgx.EvidenceVerdict,
    ok: Callable[[str, str], None],
    fail: Callable[[str, str, str], _Stop],
) -> None:
    """Word the SGX pipeline's steps as this verdict's ``evidence``, ``report_data`` and
    ``policy`` checks: the signature steps are one check here, and a policy failure lists every
    violated measurement (``policy_violation``) rather than the first."""
    failure = evidence.failure
    if failure is not None and failure.step in sgx.SIGNATURE_STEPS:
        raise fail("evidence", failure.code or "bad_quote", f"{failure.step}: {failure.message}")
    label = "SIMULATED root you passed (not Intel)" if verdict.simulated else "Intel SGX Root CA"
    unevaluated = [s.message for s in evidence.steps if s.ok is None and s.step in sgx.SIGNATURE_STEPS and s.message]
    ok("evidence", f"SGX DCAP v3 quote verifies to the {label}" + "".join(f"; {m}" for m in unevaluated))
    if failure is not None and failure.step == sgx.STEP_REPORT_DATA:
        raise fail(
            "report_data",
            "report_data_mismatch",
            "the quote's REPORTDATA is not SHA-512 of this identity document: the evidence is about another identity",
        )
    ok("report_data", "REPORTDATA = SHA-512(JCS(identity document))")
    verdict.policy = list(evidence.policy)
    if failure is not None:
        raise fail("policy", "policy_violation", _violations(verdict.policy))
    ok("policy", "every measurement is acceptable under the policy")


def _check_maa(
    verdict: ControllerVerdict,
    maa: MaaCheck,
    quote: bytes,
    expected_rd: bytes,
    policy: Policy,
    ok: Callable[[str, str], None],
    fail: Callable[[str, str, str], _Stop],
) -> None:
    from duet.attestation.maa import MaaError

    try:
        verdict.maa_token, claims = maa(quote)
    except MaaError as exc:
        raise fail("maa", exc.code, f"{exc.step}: {exc.message}") from None
    if claims.report_data != expected_rd:
        raise fail("maa", "maa_report_data_mismatch", "Azure Attestation's token names other report data than this identity's")
    verdict.maa_policy = policy.check(claims)
    if not all(c.ok for c in verdict.maa_policy):
        raise fail("maa", "maa_policy_violation", _violations(verdict.maa_policy))
    ok("maa", f"Azure Attestation ({claims.issuer}) vouches for the quote; token valid until {claims.expires.isoformat()}")


def fetch_attestation(
    url: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
) -> tuple[Any, str, bytes | None]:
    """``(answer, nonce, certificate DER of the connection)`` of ``GET /v1/attestation?nonce=``.

    The certificate is not judged by a CA here: it is compared with the attested identity.
    """
    nonce = new_nonce()
    https = url.startswith("https://")
    try:
        with httpx.Client(
            base_url=url.rstrip("/"), timeout=timeout, transport=transport, verify=unverified_ssl_context() if https else False
        ) as http:
            response = http.get("/v1/attestation", params={"nonce": nonce})
            cert = peer_certificate(response)
            answer = response.json()
    except httpx.HTTPError as exc:
        from duet.client.sdk import ConnectionFailed

        raise ConnectionFailed(f"cannot reach the controller at {url}: {exc}") from None
    except ValueError:
        answer = None
    return answer, nonce, cert


def attestation_target(nonce: str) -> str:
    """The ``request_target`` of ``GET /v1/attestation?nonce=<nonce>``, which its answer names."""
    return request_target("GET", "/v1/attestation", {"nonce": nonce})


def verify_controller(
    url: str,
    *,
    policy: Policy,
    trust_roots: Sequence[PublicKey] = (),
    insecure: bool = False,
    maa_url: str | None = None,
    now: datetime | None = None,
    transport: httpx.BaseTransport | None = None,
    collateral: sgx.Collateral = sgx.NO_COLLATERAL,
) -> ControllerVerdict:
    """Fetch the controller's attestation over a fresh connection and judge it."""
    answer, nonce, cert = fetch_attestation(url, transport=transport)
    maa: MaaCheck | None = None
    if maa_url:
        from duet.attestation.maa import MaaClient

        def maa(quote: bytes) -> tuple[str, MaaSgxClaims]:
            with MaaClient(maa_url) as client:
                return client.attest_and_verify(quote, now=now)

    return verify_attestation(
        url,
        answer,
        nonce=nonce,
        tls_cert_der=cert,
        policy=policy,
        trust_roots=trust_roots,
        insecure=insecure,
        now=now,
        maa=maa,
        target=attestation_target(nonce),
        collateral=collateral,
    )
