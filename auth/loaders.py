"""Flask-Login loaders: API keys from two headers only, admin users from the server-side session."""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, current_app, g, request, session

from auth import keys, users
from auth.cache import KeyCache
from auth.credentials import TicketGrant, presented_key, presented_ticket
from auth.errors import Unauthenticated
from auth.identity import Identity, current_identity, login_manager
from auth.identity import init_app as bind_flask_login
from auth.scopes import ADMIN
from auth.sessions import RedisSessionInterface, session_key, settle_unread_session
from core.extensions import get_redis

CACHE_EXTENSION = "auth.key_cache"
TICKET_ATTR = "auth_ticket_identity"  # flask.g: a ticket is redeemed once per request, at most
INVALID_TICKET = (
    "The stream ticket is not valid: it is unknown, used, expired, for another session, "
    "or its key or login session is no longer valid. Ask POST /agents/stream/ticket for a new one."
)


def identity_from_record(record: dict[str, Any]) -> Identity:
    return Identity(
        type="api_key",
        id=str(record["id"]),
        name=str(record["name"]),
        scopes=frozenset(record["scopes"]),
        rate_limit=record.get("rate_limit") or None,
        quota=record.get("quota") or None,
        token_quota=record.get("token_quota") or None,
        allowed_ips=tuple(record.get("allowed_ips") or ()),
    )


def identity_from_user(record: dict[str, Any], session_id: str | None = None) -> Identity:
    """Admin users hold the ``admin`` scope (CONTRACT section 3)."""
    return Identity(
        type="user",
        id=str(record["id"]),
        name=str(record["email"]),
        scopes=frozenset({ADMIN}),
        session_id=session_id,
    )


def pepper(app: Flask | None = None) -> bytes:
    """The server-side secret keying API-key digests (API_KEY_HMAC_SECRET, else SECRET_KEY)."""
    config = (app or current_app).config
    return (config.get("API_KEY_HMAC_SECRET") or config["SECRET_KEY"]).encode()


def key_cache(app: Flask | None = None) -> KeyCache:
    """This worker's cache of key look-ups (see auth.cache for the TTL choice)."""
    return (app or current_app).extensions[CACHE_EXTENSION]  # type: ignore[no-any-return]


def resolve_key(secret: str) -> Identity | None:
    """The identity of a presented key: from the cache when warm, else one Redis round trip."""
    cache = key_cache()
    # The digest first: a warm hit (the hot path) is one HMAC and a dict read. Only
    # live keys are ever cached, so the offline format check is needed on a miss only.
    key_digest = cache.digest(secret)
    identity = cache.get(key_digest)
    if identity is None:
        if not keys.looks_valid(secret):
            return None
        record = keys.lookup_digest(get_redis(), key_digest)
        if record is None:
            return None  # not cached: unknown, revoked and expired keys all pay the same look-up
        identity = remember_record(cache, key_digest, record)
    if cache.should_touch(identity.id):
        keys.touch(get_redis(), identity.id)
    return identity


def remember_record(cache: KeyCache, key_digest: str, record: dict[str, Any]) -> Identity:
    """Cache a record just read for ``key_digest``; returns its identity."""
    identity = identity_from_record(record)
    cache.put(key_digest, identity, keys.key_expires_ts(record, key_digest), keys.record_version(record))
    return identity


def load_from_request(req: Request) -> Identity | None:
    """Flask-Login's request_loader: the presented key's identity, or None."""
    secret = presented_key(req)
    if secret is not None:
        return resolve_key(secret)
    return load_from_ticket(req)


def load_from_ticket(req: Request) -> Identity | None:
    """The identity a stream ticket was issued to, loaded fresh from its record; else None.

    The ticket is consumed here (single use), so a second ask within the request gets the
    first answer instead of redeeming it again."""
    if TICKET_ATTR in g:
        return g.get(TICKET_ATTR)  # type: ignore[no-any-return]
    presented = presented_ticket(req)
    if presented is None:
        return None
    ticket, redeem = presented
    setattr(g, TICKET_ATTR, None)  # a failure below still counts as this request's one try
    grant = redeem(req, ticket)
    identity = identity_from_grant(grant) if grant is not None else None
    setattr(g, TICKET_ATTR, identity)
    return identity


def identity_from_grant(grant: TicketGrant) -> Identity | None:
    """The grant's identity as its record says now: a revoked or expired key, a disabled
    user, a changed password or an ended login session gives None."""
    kind, _, raw_id = grant.owner.partition(":")
    r = get_redis()
    if kind == "api_key":
        record = keys.get_key(r, raw_id)
        if record is None or keys.key_status(record) != "active":
            return None
        return identity_from_record(record)
    if kind == "user" and grant.login_sid:
        user = users.get_user(r, raw_id)
        if user is None or not users.session_is_current(user, grant.auth_epoch):
            return None
        if not r.exists(session_key(grant.login_sid)):
            return None  # logged out (or the session expired) since the ticket was issued
        return identity_from_user(user, grant.login_sid)
    return None


def refuse_invalid_ticket() -> None:
    """before_request, after the limiter (which counted the request) and before the access
    guard: a ticket that redeems to no identity is a 401 that says so (RFC 6750 invalid_token)."""
    if presented_ticket(request) is not None and current_identity() is None:
        raise Unauthenticated(INVALID_TICKET, key_presented=True)


def load_user(user_id: str) -> Identity | None:
    """Flask-Login's user_loader: the session stores the identity's owner, ``user:<id>``."""
    kind, _, raw_id = user_id.partition(":")
    if kind != "user" or not raw_id:
        return None
    record = users.get_user(get_redis(), raw_id)
    # Disabled, or the session predates a password change or "log out everywhere": refused at once.
    if record is None or not users.session_is_current(record, session.get(users.SESSION_EPOCH)):
        return None
    return identity_from_user(record, getattr(session, "sid", None))


def unauthorized() -> None:
    """Flask-Login's unauthorized handler: the contract's JSON 401, never a redirect to a login page."""
    raise Unauthenticated(key_presented=presented_key(request) is not None)


def init_app(app: Flask) -> None:
    """Server-side sessions, the key cache and Flask-Login with the gateway's loaders."""
    app.session_interface = RedisSessionInterface()
    bind_flask_login(app)
    # Registered after Flask-Login's own after_request hook, so it runs before it
    # (Flask runs them in reverse order): see settle_unread_session for why.
    app.after_request(settle_unread_session)
    app.extensions[CACHE_EXTENSION] = KeyCache(digest=keys.digester(pepper(app)))
    login_manager.request_loader(load_from_request)
    login_manager.user_loader(load_user)
    login_manager.unauthorized_handler(unauthorized)
    app.before_request(refuse_invalid_ticket)
