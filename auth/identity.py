"""Who is calling: an API key or an admin user, as one Flask-Login user object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from flask import Request, current_app, g, has_request_context, request
from flask_login import LoginManager, UserMixin

from auth.scopes import grants

IdentityType = Literal["api_key", "user"]


@dataclass(frozen=True)
class Identity(UserMixin):
    """The caller of the current request. ``owner`` is what stored records point at."""

    type: IdentityType
    id: str
    name: str
    scopes: frozenset[str]
    rate_limit: str | None = None
    quota: str | None = None
    # Server-side session id for users (None for API keys); lets logout delete it.
    session_id: str | None = field(default=None, compare=False)

    def has_scope(self, scope: str) -> bool:
        return grants(self.scopes, scope)

    @property
    def owner(self) -> str:
        return f"{self.type}:{self.id}"

    def get_id(self) -> str:
        return self.owner

    def as_json(self) -> dict[str, object]:
        return {"type": self.type, "id": self.id, "name": self.name, "scopes": sorted(self.scopes)}


class IdentityLoginManager(LoginManager):  # type: ignore[misc]
    """Flask-Login's manager with one rule added: a request that presents its own
    credentials (an API key) is decided by the request loader alone.

    Such a request has no session (auth.sessions detaches it) and the gateway
    issues no remember cookie, so Flask-Login's general path (session protection
    digest, session and cookie reads) could only ever end at the request loader;
    going there directly saves most of the per-request cost of loading the
    identity on the API's hot path. Requests without a key take the general path.
    """

    def __init__(self) -> None:
        super().__init__()
        self._presents_credentials: Callable[[Request], bool] | None = None

    def credentials_presenter(self, callback: Callable[[Request], bool]) -> Callable[[Request], bool]:
        """Register the test telling whether a request carries its own credentials."""
        self._presents_credentials = callback
        return callback

    def _load_user(self) -> None:
        req = request._get_current_object()  # type: ignore[attr-defined]
        if self._presents_credentials is not None and self._presents_credentials(req):
            return self._update_request_context_with_user(  # type: ignore[no-any-return]
                self._load_user_from_request(req)
            )
        return super()._load_user()  # type: ignore[no-any-return]


def current_identity() -> Identity | None:
    """The authenticated identity of this request, or None."""
    if not has_request_context():
        return None
    # Flask-Login keeps the loaded user in ``g._login_user``: read it there once it is
    # loaded (several layers ask on every request), else let Flask-Login load it.
    ctx = g._get_current_object()  # type: ignore[attr-defined]
    user = getattr(ctx, "_login_user", None)
    if user is None:
        # What current_user does on first use, without its proxy and helper layers.
        current_app.login_manager._load_user()  # type: ignore[attr-defined]
        user = getattr(ctx, "_login_user", None)
    return user if getattr(user, "is_authenticated", False) else None


login_manager = IdentityLoginManager()  # bound to the app by auth.loaders.init_app
