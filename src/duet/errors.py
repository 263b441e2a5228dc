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
