"""Flask-Login loaders: API keys from two headers only, admin users from the server-side session."""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, Response, current_app, g, session

from auth import keys, users
from auth.cache import KeyCache
from auth.identity import Identity, login_manager
from auth.scopes import ADMIN
from core.errors import error_response
from core.extensions import get_redis

CACHE_EXTENSION = "auth.key_cache"


def presented_key(req: Request) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``; never the query string or body."""
    # Read from the WSGI environ (what req.headers reads too, through more layers): the
    # session interface, Flask-Login and the origin check all ask on every request.
    environ = req.environ
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return environ.get("HTTP_X_API_KEY", "").strip() or None


def identity_from_record(record: dict[str, Any]) -> Identity:
    return Identity(
        type="api_key",
        id=str(record["id"]),
        name=str(record["name"]),
        scopes=frozenset(record["scopes"]),
        rate_limit=record.get("rate_limit") or None,
        quota=record.get("quota") or None,
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
    return (app or current_app).extensions[CACHE_EXTENSION]


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
        identity = identity_from_record(record)
        cache.put(key_digest, identity, keys.key_expires_ts(record, key_digest))
    if cache.should_touch(identity.id):
        keys.touch(get_redis(), identity.id)
    return identity


def presents_key(req: Request) -> bool:
    """True when the request carries an API key (its identity is then the key's or none)."""
    return presented_key(req) is not None


def load_from_request(req: Request) -> Identity | None:
    secret = presented_key(req)
    if secret is None:
        return None
    g.api_key_presented = True  # the limiter counts failed attempts against the client IP
    return resolve_key(secret)


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


def unauthorized() -> Response:
    """Flask-Login's unauthorized handler: the contract's JSON 401, never a redirect to a login page."""
    return error_response(401)


def init_app(app: Flask) -> None:
    from auth.sessions import RedisSessionInterface

    app.session_interface = RedisSessionInterface()
    app.extensions[CACHE_EXTENSION] = KeyCache(digest=keys.digester(pepper(app)))
    # Session ids are random, regenerated at login and revocable server-side;
    # binding them to IP and user agent would log out mobile users for nothing.
    login_manager.session_protection = None
    login_manager.init_app(app)
    # The gateway offers no remember-me cookie, and Flask-Login's after_request hook for it
    # reads the session on every request that carries a cookie: a Redis round trip even for
    # /healthz and public pages. Without the hook, a session is read only when asked for.
    app.after_request_funcs[None].remove(login_manager._update_remember_cookie)
    login_manager.request_loader(load_from_request)
    login_manager.credentials_presenter(presents_key)
    login_manager.user_loader(load_user)
    login_manager.unauthorized_handler(unauthorized)
