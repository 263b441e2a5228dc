"""Typed errors shared by every layer.

Each error carries a stable machine-readable ``code`` and a message a person can act on; what
went wrong, never how to say it over HTTP (the API layer alone maps error types to statuses:
``duet.controller.api.HTTP_STATUS``). Secrets never go into a message.
"""

from __future__ import annotations


class DuetError(Exception):
    """Base of every error duet raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(DuetError):
    code = "bad_request"


class Unauthorized(DuetError):
    code = "unauthorized"


class Forbidden(DuetError):
    code = "forbidden"


class NotFound(DuetError):
    code = "not_found"


class Conflict(DuetError):
    code = "conflict"


class PayloadTooLarge(DuetError):
    code = "body_too_large"


class InvalidParams(DuetError):
    code = "invalid_params"


class UpstreamError(DuetError):
    """A CVM, a cloud or another party outside the controller failed."""

    code = "upstream_error"


class ConfigError(DuetError):
    """The controller or client was configured in a way that cannot work."""

    code = "config_error"


class VerificationError(DuetError):
    """A signature, a pin or a piece of evidence did not verify (client side)."""

    code = "verification_failed"


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
