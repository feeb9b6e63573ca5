"""Who the caller is and what it may do: API keys, admin users, scopes, Flask-Login."""

from __future__ import annotations

from flask import Flask

from auth.access import authenticated, enforce_access, public, require_scope
from auth.identity import Identity, current_identity

__all__ = ["Identity", "authenticated", "current_identity", "init_app", "public", "require_scope"]


def init_app(app: Flask) -> None:
    """Bind Flask-Login and the deny-by-default guard to ``app``."""
    from auth import loaders

    loaders.init_app(app)
    app.before_request(enforce_access)
