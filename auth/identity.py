"""Who is calling: an API key or an admin user, as one Flask-Login user object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from flask_login import UserMixin, current_user

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


def current_identity() -> Identity | None:
    """The authenticated identity of this request, or None."""
    user = current_user
    if user is not None and getattr(user, "is_authenticated", False):
        return user._get_current_object()  # type: ignore[attr-defined,no-any-return]
    return None
