"""Who the caller is and what it may do: API keys, admin users, scopes, Flask-Login."""

from __future__ import annotations

from flask import Flask

from auth.access import authenticated, enforce_access, public, require_scope
from auth.identity import Identity, current_identity

__all__ = ["Identity", "authenticated", "current_identity", "init_app", "public", "require_scope"]


def init_app(app: Flask) -> None:
    """Bind the error mapping, Flask-Login, server-side sessions, the origin check, the
    deny-by-default guard and the CLI."""
    from auth import cli, errors, loaders, origin

    errors.init_app(app)
    loaders.init_app(app)
    # The origin check runs first: a cross-site change is refused before anything else looks at it.
    app.before_request(origin.check_origin)
    app.before_request(enforce_access)
    app.cli.add_command(cli.keys_cli)
    app.cli.add_command(cli.users_cli)
