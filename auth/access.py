"""Access rules on views: one decorator per rule, enforced by one guard (deny by default).

A view without a rule is treated as admin-only, so a route added without
thinking about access is closed rather than open.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import current_app, request

from auth.credentials import presented_key
from auth.errors import Forbidden, Unauthenticated
from auth.identity import current_identity
from auth.scopes import ADMIN

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


def enforce_access() -> None:
    """before_request guard: 401 without an identity, 403 without the scope."""
    if request.routing_exception is not None or request.endpoint is None:
        return  # 404/405 are answered by routing
    if request.method == "OPTIONS":
        return  # CORS preflight and automatic OPTIONS carry no credentials
    access = access_for(request.endpoint)
    if access.public:
        return
    identity = current_identity()
    if identity is None:
        raise Unauthenticated(key_presented=presented_key(request) is not None)
    if access.scope and not identity.has_scope(access.scope):
        raise Forbidden(f"This request needs the '{access.scope}' scope.")
