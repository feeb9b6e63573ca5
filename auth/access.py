"""Access rules on views: one decorator per rule, enforced by one guard (deny by default).

A view without a rule is treated as admin-only, so a route added without
thinking about access is closed rather than open.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import current_app, request

from auth.identity import current_identity
from auth.loaders import presented_key
from auth.scopes import ADMIN
from core.errors import INVALID_TOKEN_CHALLENGE, APIError

F = TypeVar("F", bound=Callable[..., Any])
ACCESS_ATTR = "_gateway_access"


@dataclass(frozen=True)
class Access:
    """public: anyone; scope None and not public: any identity; else that scope."""

    public: bool = False
    scope: str | None = None


_DENY_BY_DEFAULT = Access(scope=ADMIN)


def _mark(access: Access) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        setattr(view, ACCESS_ATTR, access)
        return view

    return decorate


public = _mark(Access(public=True))
"""Open to anyone (still rate-limited per IP unless exempted)."""

authenticated = _mark(Access())
"""Any identity, whatever its scopes."""


def require_scope(scope: str) -> Callable[[F], F]:
    """The identity must hold ``scope`` (``admin`` implies every scope)."""
    return _mark(Access(scope=scope))


def access_for(endpoint: str | None) -> Access:
    view = current_app.view_functions.get(endpoint or "")
    return getattr(view, ACCESS_ATTR, _DENY_BY_DEFAULT)


def unauthenticated(key_presented: bool) -> APIError:
    """The 401 for a caller without an identity; it says whether a key was seen at all."""
    if key_presented:
        return APIError(
            401,
            "Unauthorized",
            "The API key presented is not valid: it is unknown, revoked, expired or malformed.",
            headers={"WWW-Authenticate": INVALID_TOKEN_CHALLENGE},
        )
    return APIError(
        401,
        "Unauthorized",
        "Authentication is required: send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
    )


def enforce_access() -> None:
    """before_request guard: 401 without an identity, 403 without the scope."""
    req = request._get_current_object()  # type: ignore[attr-defined]
    if req.routing_exception is not None or req.endpoint is None:
        return  # 404/405 are answered by routing
    if req.method == "OPTIONS":
        return  # CORS preflight and automatic OPTIONS carry no credentials
    access = access_for(req.endpoint)
    if access.public:
        return
    identity = current_identity()
    if identity is None:
        raise unauthenticated(presented_key(req) is not None)
    if access.scope and not identity.has_scope(access.scope):
        raise APIError(403, "Forbidden", f"This request needs the '{access.scope}' scope.")
