"""The refusals auth raises, and the one place they become the contract's JSON errors.

auth decides *that* a request is refused and why; core.errors.error_response decides
what an error looks like (JSON body, or the console's HTML page). ``init_app``
connects the two with Flask's own handler registry, so core needs to know nothing
about auth (it may not import it) and no view has to build a 401 or 403 itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from flask import Flask, Response

from core.errors import BEARER_CHALLENGE, error_response

# RFC 6750 section 3: a presented key that is not valid adds the error code, one for
# unknown, revoked, expired and malformed keys alike (nothing to tell them apart by).
INVALID_TOKEN_CHALLENGE = f'{BEARER_CHALLENGE}, error="invalid_token"'

CREDENTIALS_NEEDED = (
    "Authentication is required: send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
)
INVALID_KEY = "The API key presented is not valid: it is unknown, revoked, expired or malformed."


class AuthError(Exception):
    """A request auth refuses: ``status`` and ``reason`` per class, a sentence per refusal."""

    status: ClassVar[int] = 403
    reason: ClassVar[str] = "Forbidden"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.reason)
        self.message = message

    @property
    def headers(self) -> Mapping[str, str]:
        return {}


class Unauthenticated(AuthError):
    """401: no identity. Says whether a key was presented at all (RFC 6750 ``invalid_token``)."""

    status = 401
    reason = "Unauthorized"

    def __init__(self, message: str | None = None, *, key_presented: bool = False) -> None:
        super().__init__(message or (INVALID_KEY if key_presented else CREDENTIALS_NEEDED))
        self.key_presented = key_presented

    @property
    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": INVALID_TOKEN_CHALLENGE if self.key_presented else BEARER_CHALLENGE}


class Forbidden(AuthError):
    """403: an identity without the scope, or a key used from outside its ``allowed_ips``."""


class CrossSiteRefused(Forbidden):
    """403: a cookie-authenticated change from a foreign or unknown origin (auth.origin)."""


def answer(exc: AuthError) -> Response:
    """The contract's error for ``exc``: JSON, or the console's page where people browse."""
    return error_response(exc.status, exc.reason, exc.message, headers=exc.headers)


def init_app(app: Flask) -> None:
    # Flask picks the handler of the closest class in the exception's MRO, so this one
    # answers every AuthError ahead of core's catch-all for Exception.
    app.register_error_handler(AuthError, answer)
