"""Typed errors shared by every layer.

Each error carries a stable machine-readable ``code``, the HTTP ``status`` the API answers
with, and a message a person can act on. Secrets never go into a message.
"""

from __future__ import annotations


class DuetError(Exception):
    """Base of every error duet raises on purpose."""

    code: str = "error"
    status: int = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(DuetError):
    code, status = "bad_request", 400


class Unauthorized(DuetError):
    code, status = "unauthorized", 401


class Forbidden(DuetError):
    code, status = "forbidden", 403


class NotFound(DuetError):
    code, status = "not_found", 404


class Conflict(DuetError):
    code, status = "conflict", 409


class PayloadTooLarge(DuetError):
    code, status = "body_too_large", 413


class InvalidParams(DuetError):
    code, status = "invalid_params", 422


class UpstreamError(DuetError):
    """A CVM, a cloud or another party outside the controller failed."""

    code, status = "upstream_error", 502


class ConfigError(DuetError):
    """The controller or client was configured in a way that cannot work."""

    code, status = "config_error", 500


class VerificationError(DuetError):
    """A signature, a pin or a piece of evidence did not verify (client side)."""

    code, status = "verification_failed", 400


# --- trust failures (client side) ---------------------------------------------------------------
#
# A program decides what to do about a failure by its type, not by its code: a ``TrustError``
# means that neither the controller nor anything it said may be used (the CLI exits 3), while a
# plain ``VerificationError`` is a local input that did not verify (a trust root, a saved head).
# ``code`` stays the precise, stable name of what failed.


class TrustError(VerificationError):
    """The controller, or an answer it gave, cannot be trusted: nothing in it was used."""

    code = "untrusted"


class UntrustedAnswer(TrustError):
    """An answer or an output does not verify against the pinned controller: its signature, its
    binding to the request, its nonce or its hash (``bad_answer_signature``, ``wrong_controller``,
    ``answer_not_bound``, ``stale_answer``, ``unsigned_answer``, ``bad_identity``, ``blob_mismatch``)."""

    code = "untrusted_answer"


class ControllerChanged(TrustError):
    """The controller is not the one verified and pinned: another signing key
    (``controller_key_changed``), TLS certificate (``tls_pin_mismatch``), identity
    (``controller_changed``) or owner set (``owners_changed``). Re-verify it to accept the change."""

    code = "controller_changed"


class NotVerified(TrustError):
    """The controller was not verified and pinned (``controller_not_verified``), or is reachable
    only over plain HTTP (``plain_http``), and ``insecure`` was not asked for."""

    code = "controller_not_verified"


class DamagedPin(TrustError):
    """The user's trust store, or a pin in it, is damaged (``bad_pin``): verify the controller again."""

    code = "bad_pin"
