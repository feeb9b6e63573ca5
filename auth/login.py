"""Admin sign-in and sign-out for this request, and who is acting: shared by the
JSON routes (/auth/login, /auth/logout, /admin/keys) and the console pages."""

from __future__ import annotations

from flask import request, session
from flask_login import login_user, logout_user

from auth import audit, users
from auth.audit import Actor
from auth.errors import Unauthenticated
from auth.identity import Identity, current_identity
from auth.loaders import identity_from_user
from core.extensions import get_redis


def request_actor() -> Actor:
    """The caller of this request, as the audit log records it."""
    identity = current_identity()
    if identity is None:  # the access guard answers first; kept for safety under -O
        raise Unauthenticated()
    return Actor(owner=identity.owner, name=identity.name, ip=request.remote_addr)


def log_in(*, email: str, password: str) -> Identity | None:
    """Start a new server-side session for a matching admin user, or None.

    A new session id at login: a session id planted before it (fixation) is worthless.
    """
    record = users.authenticate(get_redis(), email=email, password=password)
    if record is None:
        return None
    session.regenerate()  # type: ignore[attr-defined]  # auth.sessions.ServerSession
    identity = identity_from_user(record)
    login_user(identity)
    session[users.SESSION_EPOCH] = record.get("auth_epoch") or "0"
    audit.record(get_redis(), request_actor(), "auth.login", target=identity.owner)
    return identity


def own_session_id(user_id: str) -> str | None:
    """This request's session id when it is ``user_id``'s own (kept across their password change)."""
    identity = current_identity()
    if identity is None or identity.type != "user" or identity.id != user_id:
        return None
    return getattr(session, "sid", None)


def keep_own_session(epoch: int) -> None:
    """Carry this session into the user's new auth epoch (after changing their own password)."""
    session[users.SESSION_EPOCH] = str(epoch)


def log_out() -> None:
    """End an admin user's session on the server, so a copy of the cookie stops working.

    API keys have no session: for them this does nothing.
    """
    identity = current_identity()
    if identity is None or identity.type != "user":
        return
    actor = request_actor()
    logout_user()
    session.destroy()  # type: ignore[attr-defined]
    audit.record(get_redis(), actor, "auth.logout", target=identity.owner)
