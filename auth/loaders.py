"""Flask-Login loaders: API keys from two headers only, admin users from the session."""

from __future__ import annotations

from flask import Flask, Request, current_app, g

from auth import keys
from auth.identity import Identity
from gateway.extensions import get_redis, login_manager


def presented_key(req: Request) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``; never the query string or body."""
    header = req.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return req.headers.get("X-API-Key", "").strip() or None


def identity_from_record(record: dict[str, object]) -> Identity:
    return Identity(
        type="api_key",
        id=str(record["id"]),
        name=str(record["name"]),
        scopes=frozenset(record["scopes"]),  # type: ignore[arg-type]
        rate_limit=record.get("rate_limit") or None,  # type: ignore[arg-type]
        quota=record.get("quota") or None,  # type: ignore[arg-type]
    )


def pepper(app: Flask | None = None) -> bytes:
    config = (app or current_app).config
    return (config.get("API_KEY_HMAC_SECRET") or config["SECRET_KEY"]).encode()


def load_from_request(req: Request) -> Identity | None:
    secret = presented_key(req)
    if secret is None:
        return None
    g.api_key_presented = True  # the limiter counts failed attempts against the client IP
    if not keys.looks_valid(secret):
        return None
    record = keys.lookup(get_redis(), secret, pepper())
    return identity_from_record(record) if record else None


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    login_manager.request_loader(load_from_request)
