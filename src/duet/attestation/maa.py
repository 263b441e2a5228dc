"""Azure Attestation (MAA) for SGX quotes: the seed's route, done so that a failure refuses.

The seed sent its quote to MAA, printed "Valid SGX controller: False" when that failed, and
carried on. Here the token MAA returns is checked like any other evidence, one named step at a
time (specs/attestation.md §5.3–5.4), and every failure is a :class:`MaaError` with a code:

1. the JWT header: ``alg`` must be RS256 (never ``none``), ``jku`` (if present) must be the
   pinned instance's own ``/certs``, and ``kid`` must name a key of that instance;
2. the signature, with the public key of the ``x5c`` certificate of that key (MAA's JWKs carry
   no ``n``/``e``, so PyJWT's own JWK loading cannot be used), the certificate valid at ``now``;
3. ``iss`` == the instance URL; ``exp``/``nbf`` against an injectable ``now`` (recorded tokens
   expire, and tests must be able to say when "now" is);
4. ``x-ms-attestation-type`` == ``sgx``; the ``x-ms-sgx-*`` claims are returned as
   :class:`MaaSgxClaims`, which the caller judges with the same
   :class:`~duet.attestation.sgx.policy.Policy` as an offline-verified quote.

Why keep MAA next to the offline verifier: MAA also judges the platform's TCB level against
Intel's collateral, which the offline path does not fetch. It is an extra opinion, never a
replacement for the report-data binding, which the caller still checks on the claims.

Steps 1–3 are :func:`validate_token`, shared with the CVM tokens
(:mod:`duet.attestation.azure.maa_cvm`): a token is a token whatever it attests, and one
implementation of "is this really from that instance, and current" cannot drift from another.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
from cryptography import x509

from duet.attestation.steps import StepFailed

API_VERSION = "2020-10-01"
DEFAULT_LEEWAY_S = 60.0


class MaaError(StepFailed):
    """MAA refused the quote, or its token does not hold.

    A :class:`~duet.attestation.steps.StepFailed`, so that a CVM verdict can report the token
    step that failed (:data:`TOKEN_STEPS`) as it reports the steps of any other evidence."""

    code = "maa_failed"


STEP_HEADER = "header"
STEP_KEYS = "keys"
STEP_SIGNATURE = "signature"
STEP_ISSUER = "issuer"
STEP_EXPIRY = "expiry"
TOKEN_STEPS: tuple[str, ...] = (STEP_HEADER, STEP_KEYS, STEP_SIGNATURE, STEP_ISSUER, STEP_EXPIRY)
"""The steps of :func:`validate_token`, in order; a :class:`MaaError` it raises names one of them."""


@dataclass(frozen=True)
class MaaSgxClaims:
    """The SGX claims of a verified MAA token, shaped like a report body for the policy."""

    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool
    report_data: bytes | None
    issuer: str
    expires: datetime
    claims: dict[str, Any] = field(repr=False, compare=False)


def instance_url(url: str) -> str:
    """The instance as MAA names itself in ``iss``: scheme and host, no trailing slash."""
    return url.rstrip("/")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signing_certificates(jwks: Any) -> dict[str, x509.Certificate]:
    """``kid`` → certificate of a JWKS as MAA's ``/certs`` serves it (x5c only)."""
    out: dict[str, x509.Certificate] = {}
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise MaaError('the MAA signing keys are not a JWKS ({"keys": [...]})', code="maa_bad_jwks", step="keys")
    for jwk in keys:
        try:
            out[str(jwk["kid"])] = x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][0]))
        except (KeyError, IndexError, TypeError, ValueError):
            continue  # a key we cannot read cannot be the one that signed
    return out


def _fail(step: str, code: str, message: str) -> MaaError:
    return MaaError(message, code=code, step=step)


def _claim(claims: dict[str, Any], *names: str) -> Any:
    """The first present claim of ``names`` (current names first, then deprecated aliases)."""
    for name in names:
        if name in claims:
            return claims[name]
    raise _fail("claims", "maa_missing_claim", f"the MAA token has no {names[0]} claim")


def _hex(value: Any, name: str, size: int | None = 32) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise _fail("claims", "maa_bad_claim", f"the MAA claim {name} is not hex") from None
    if size is not None and len(raw) != size:
        raise _fail("claims", "maa_bad_claim", f"the MAA claim {name} has {len(raw)} bytes, not {size}")
    return raw


def validate_token(
    token: str, *, instance: str, jwks: Any, now: datetime | None = None, leeway_s: float = DEFAULT_LEEWAY_S
) -> dict[str, Any]:
    """The claims of an MAA token that ``instance`` signed and that is current at ``now``
    (module docstring, steps 1–3, whatever the token attests); :class:`MaaError` naming the
    step of :data:`TOKEN_STEPS` that failed otherwise. What the claims say is the caller's."""
    instance = instance_url(instance)
    now = now or datetime.now(UTC)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise _fail("header", "maa_malformed_token", f"the MAA answer is not a JWT: {exc}") from None
    if header.get("alg") != "RS256":
        raise _fail("header", "maa_bad_algorithm", f"the MAA token uses alg {header.get('alg')!r}; only RS256 is accepted")
    jku = header.get("jku")
    if jku is not None and instance_url(str(jku)) != instance + "/certs":
        raise _fail("header", "maa_wrong_jku", f"the MAA token names signing keys at {jku}, not at {instance}/certs")
    certs = signing_certificates(jwks)
    kid = header.get("kid")
    cert = certs.get(str(kid))
    if cert is None:
        raise _fail("keys", "maa_unknown_key", f"the MAA token is signed with key {kid!r}, which {instance}/certs does not list")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise _fail("keys", "maa_signer_expired", f"the certificate of MAA signing key {kid} is not valid at {now.isoformat()}")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=cert.public_key(),  # type: ignore[arg-type]
            algorithms=["RS256"],
            issuer=instance,
            options={
                "require": ["exp", "iat", "nbf", "iss"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise _fail("signature", "maa_bad_signature", "the MAA token's signature does not verify") from None
    except jwt.InvalidIssuerError:
        raise _fail("issuer", "maa_wrong_issuer", f"the MAA token was not issued by {instance}") from None
    except jwt.MissingRequiredClaimError as exc:
        step = STEP_ISSUER if exc.claim == "iss" else STEP_EXPIRY
        raise _fail(step, "maa_missing_claim", f"the MAA token lacks the {exc.claim} claim") from None
    except jwt.PyJWTError as exc:
        raise _fail("signature", "maa_malformed_token", f"the MAA token does not verify: {exc}") from None
    stamp = now.timestamp()
    try:
        exp, nbf = float(claims["exp"]), float(claims["nbf"])
    except (TypeError, ValueError, OverflowError):
        raise _fail(STEP_EXPIRY, "maa_bad_claim", "the MAA token's exp/nbf are not numbers") from None
    if not (math.isfinite(exp) and math.isfinite(nbf)):
        raise _fail(STEP_EXPIRY, "maa_bad_claim", "the MAA token's exp/nbf are not finite numbers")
    if stamp > exp + leeway_s:
        raise _fail(STEP_EXPIRY, "maa_expired", f"the MAA token expired at {_when(exp)}")
    if stamp < nbf - leeway_s:
        raise _fail(STEP_EXPIRY, "maa_not_yet_valid", "the MAA token is not valid yet (check the clocks)")
    return claims


def _when(stamp: float) -> str:
    try:
        return datetime.fromtimestamp(stamp, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return f"{stamp:.0f} (seconds since 1970)"


def verify_token(
    token: str, *, instance: str, jwks: Any, now: datetime | None = None, leeway_s: float = DEFAULT_LEEWAY_S
) -> MaaSgxClaims:
    """Check an MAA SGX token (module docstring, steps 1–4); raise :class:`MaaError` on the first failure."""
    instance = instance_url(instance)
    claims = validate_token(token, instance=instance, jwks=jwks, now=now, leeway_s=leeway_s)
    exp = float(claims["exp"])
    kind = claims.get("x-ms-attestation-type", claims.get("tee"))
    if kind != "sgx":
        raise _fail("claims", "maa_not_sgx", f"the MAA token attests {kind!r}, not an SGX enclave")
    report_data = claims.get("x-ms-sgx-report-data")
    debug = _claim(claims, "x-ms-sgx-is-debuggable", "is-debuggable")
    if not isinstance(debug, bool):
        raise _fail("claims", "maa_bad_claim", "the MAA claim x-ms-sgx-is-debuggable is not a boolean")
    try:
        prod_id, svn = int(_claim(claims, "x-ms-sgx-product-id", "product-id")), int(_claim(claims, "x-ms-sgx-svn", "svn"))
    except (TypeError, ValueError):
        raise _fail("claims", "maa_bad_claim", "the MAA product id or SVN claim is not an integer") from None
    return MaaSgxClaims(
        mr_enclave=_hex(_claim(claims, "x-ms-sgx-mrenclave", "sgx-mrenclave"), "x-ms-sgx-mrenclave"),
        mr_signer=_hex(_claim(claims, "x-ms-sgx-mrsigner", "sgx-mrsigner"), "x-ms-sgx-mrsigner"),
        isv_prod_id=prod_id,
        isv_svn=svn,
        debug=debug,
        report_data=_hex(report_data, "x-ms-sgx-report-data", 64) if report_data is not None else None,
        issuer=instance,
        expires=datetime.fromtimestamp(exp, UTC),
        claims=claims,
    )


class MaaClient:
    """Talks to one MAA instance: ``POST /attest/SgxEnclave`` and ``GET /certs``."""

    def __init__(self, instance: str, *, http: httpx.Client | None = None, timeout: float = 30.0) -> None:
        self.instance = instance_url(instance)
        self._http = http or httpx.Client(timeout=timeout)
        self._own_http = http is None

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> MaaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, method: str, path: str, step: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, self.instance + path, **kwargs)
        except httpx.HTTPError as exc:
            raise _fail(step, "maa_unreachable", f"cannot reach Azure Attestation at {self.instance}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            detail = (
                body.get("error", {}).get("message") if isinstance(body, dict) and isinstance(body.get("error"), dict) else None
            )
            raise _fail(
                step,
                "maa_refused",
                f"Azure Attestation at {self.instance} refused the quote "
                f"(HTTP {response.status_code}{': ' + str(detail) if detail else ''})",
            )
        return body

    def attest_sgx(self, quote: bytes) -> str:
        """The token MAA issues for ``quote`` (no runtime data: duet's report data is SHA-512 of
        its identity, which MAA's SHA-256 runtime-data rule cannot express; the caller compares
        ``x-ms-sgx-report-data`` itself)."""
        body = self._json("POST", f"/attest/SgxEnclave?api-version={API_VERSION}", "attest", json={"quote": b64url(quote)})
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str):
            raise _fail("attest", "maa_malformed_token", "Azure Attestation answered without a token")
        return token

    def certs(self) -> Any:
        return self._json("GET", "/certs", "keys")

    def attest_and_verify(self, quote: bytes, *, now: datetime | None = None) -> tuple[str, MaaSgxClaims]:
        token = self.attest_sgx(quote)
        return token, verify_token(token, instance=self.instance, jwks=self.certs(), now=now)
