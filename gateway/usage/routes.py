"""GET /auth/usage (any identity, its own) and GET /admin/keys/<id>/usage (admin)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel, Field

from auth import authenticated, current_identity, keys, require_scope
from auth.identity import Identity
from auth.scopes import ADMIN
from core.errors import APIError
from core.extensions import get_redis
from core.schemas import Schema, endpoint, parse_query
from gateway.usage import hooks, store

bp = Blueprint("usage", __name__)
DEFAULT_DAYS = 30


class UsageQuery(Schema):
    days: int = Field(default=DEFAULT_DAYS, ge=1, le=store.RETENTION_DAYS)


class UsageDay(BaseModel):
    date: str
    requests: int
    errors: int
    rate_limited: int
    tokens: int


class UsageTotals(BaseModel):
    requests: int
    errors: int
    rate_limited: int
    tokens: int


class UsageView(BaseModel):
    key_id: str
    days: list[UsageDay]
    totals: UsageTotals


def usage_key_id(identity: Identity) -> str:
    """An API key's id; an admin user, which has no key, is named by its owner (``user:<id>``)."""
    return identity.id if identity.type == "api_key" else identity.owner


def usage_of(owner: str, key_id: str, days: int) -> dict[str, Any]:
    """``days`` days of ``owner``'s usage, this worker's unflushed counts included."""
    shared = hooks.current(current_app)
    if shared is not None:
        shared.flush()  # this worker's own counts first, so a caller sees its last request
    return {"key_id": key_id, **store.read(get_redis(), owner, days)}


@bp.get("/auth/usage")
@authenticated
@endpoint(
    "The caller's own usage per UTC day, oldest first, days without traffic as zeros",
    tags=("auth",),
    query=UsageQuery,
    responses={200: UsageView},
)
def own_usage() -> Response:
    query = parse_query(UsageQuery)
    identity = current_identity()
    if identity is None:  # enforce_access answers first; kept for safety under -O
        raise APIError(401, "Unauthorized")
    return jsonify(usage_of(identity.owner, usage_key_id(identity), query.days))


@bp.get("/admin/keys/<key_id>/usage")
@require_scope(ADMIN)
@endpoint(
    "One API key's usage per UTC day, oldest first, days without traffic as zeros",
    tags=("admin",),
    query=UsageQuery,
    responses={200: UsageView, 404: "Key not found"},
)
def key_usage(key_id: str) -> Response:
    query = parse_query(UsageQuery)
    if keys.get_key(get_redis(), key_id) is None:
        raise APIError(404, "Not Found", "Key not found")
    return jsonify(usage_of(f"api_key:{key_id}", key_id, query.days))
