"""/admin/keys, /admin/users and /admin/audit: key and admin-user management over HTTP,
mirroring the CLI (admin scope).

The secret appears only in the create and rotate answers; no answer carries a
password or its hash. Every change goes through auth.management, which
validates it and writes the audit entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from auth import audit, keys, management, require_scope, users
from auth.keys import KeyStateError
from auth.loaders import key_cache, pepper
from auth.login import keep_own_session, own_session_id, request_actor
from auth.scopes import ADMIN
from core import idempotency
from core.errors import APIError
from core.extensions import get_redis
from core.schemas import Schema, endpoint, parse_json, parse_query

bp = Blueprint("admin_api", __name__, url_prefix="/admin")
TAGS = ("admin",)
KEY_NOT_FOUND = "Key not found"
USER_NOT_FOUND = "User not found"


def _checked(name: str, value: Any) -> Any:
    """One field through the checks creation and edits share (auth.management)."""
    return management.validate_key_fields({name: value})[name]


class KeyFields(Schema):
    """What a key carries besides its secret; validated by auth.management for every front end."""

    scopes: list[str] = Field(default_factory=list, examples=[["agents:read", "agents:write"]])
    rate_limit: str | None = Field(default=None, examples=["100/minute"])
    quota: str | None = Field(default=None, examples=["10000/day"])
    token_quota: str | None = Field(
        default=None, examples=["100000/day"], description="Tokens of agent replies per period"
    )
    allowed_ips: list[str] | None = Field(
        default=None,
        max_length=management.MAX_ALLOWED_IPS,
        examples=[["203.0.113.0/24", "2001:db8::/32"]],
        description="Client IPs or CIDRs (IPv4 and IPv6) the key works from; empty: any",
    )
    expires_in_days: int | None = Field(default=None, ge=1, le=management.MAX_EXPIRES_IN_DAYS)

    @field_validator("scopes", "rate_limit", "quota", "token_quota", "allowed_ips")
    @classmethod
    def _field(cls, value: Any, info: Any) -> Any:
        return _checked(info.field_name, value)


class KeyCreate(KeyFields):
    """The body of POST /admin/keys (the same checks as ``flask keys create``)."""

    name: str = Field(min_length=1, max_length=management.MAX_NAME_LENGTH)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return management.validate_name(value)


class KeyUpdate(KeyFields):
    """The body of PATCH /admin/keys/<id>: only the fields sent change; ``null`` clears an
    optional one (``[]`` for scopes and allowed_ips). The same checks as at creation."""

    # A misspelt field would otherwise be dropped silently and the edit half done.
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=management.MAX_NAME_LENGTH)
    scopes: list[str] | None = Field(default=None, examples=[["agents:read"]])  # type: ignore[assignment]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("name cannot be cleared")
        return management.validate_name(value)


class KeyRotate(Schema):
    """The optional body of POST /admin/keys/<id>/rotate."""

    grace_seconds: int = Field(default=0, ge=0, le=management.MAX_GRACE_SECONDS)


class AuditQuery(Schema):
    limit: int = Field(default=100, ge=1, le=1000)


class SecretView(BaseModel):
    """A secret that works now: never the secret itself nor its digest."""

    prefix: str
    last4: str
    created_at: str
    expires_at: str | None = Field(description="When it stops working; null: when the key does")


class KeyView(BaseModel):
    id: str
    name: str
    prefix: str
    last4: str
    scopes: list[str]
    rate_limit: str | None
    quota: str | None
    token_quota: str | None
    allowed_ips: list[str]
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    revoked_at: str | None
    rotated_at: str | None
    created_by: str | None
    status: str
    secrets: list[SecretView] = Field(
        description="Live secrets, newest first: the current one and, during a rotation's grace "
        "period, the one it replaced"
    )


class KeySecretView(BaseModel):
    """Shown once: the only answer that carries the secret ``key``."""

    id: str
    name: str
    key: str
    prefix: str
    scopes: list[str]
    rate_limit: str | None
    quota: str | None
    expires_at: str | None
    created_at: str


class KeyList(BaseModel):
    keys: list[KeyView]
    total: int


class AuditEntry(BaseModel):
    at: str
    actor: str
    actor_name: str
    action: str
    key_id: str | None
    target: str | None
    ip: str | None
    details: dict[str, Any]


class AuditList(BaseModel):
    entries: list[AuditEntry]
    total: int


def _found(record: dict[str, Any] | None) -> dict[str, Any]:
    if record is None:
        raise APIError(404, "Not Found", KEY_NOT_FOUND)
    return record


def _rotate_body() -> KeyRotate:
    # The body is optional here: none (or {}) means the defaults.
    raw = request.get_data(cache=True).strip()
    if not raw or (request.is_json and request.get_json(silent=True) == {}):
        return KeyRotate()
    return parse_json(KeyRotate)


@bp.get("/keys")
@require_scope(ADMIN)
@endpoint("List API keys (no secrets)", tags=TAGS, responses={200: KeyList})
def list_keys() -> Response:
    """Every key, oldest first, as people may see it."""
    views = [keys.public_view(record) for record in keys.list_keys(get_redis())]
    return jsonify({"keys": views, "total": len(views)})


@bp.post("/keys")
@require_scope(ADMIN)
@endpoint("Create an API key; the answer holds its secret once", tags=TAGS, body=KeyCreate,
          responses={201: KeySecretView})  # fmt: skip
def create_key() -> tuple[Response, int]:
    """Create a key and return it with its secret (never shown again)."""
    body = parse_json(KeyCreate, empty_ok=True)  # `{}`: "name is required", not "no data"
    actor = request_actor()
    # A retry with the same Idempotency-Key gets the first key back, secret included; the
    # secret is kept only sealed (see core.idempotency.seal and docs/auth.md).
    seal_key = request.headers.get(idempotency.HEADER, "")  # validated by respond()
    owner = actor.owner

    def create() -> idempotency.Answer:
        record, secret = management.create_key(get_redis(), pepper=pepper(), actor=actor, **body.model_dump())
        return idempotency.Answer(keys.secret_view(record, secret), 201)

    return idempotency.respond(
        get_redis(),
        scope="admin-keys",
        owner=owner,
        body=body.model_dump(),
        create=create,
        stored=lambda answer: idempotency.seal(answer.body, "key", pepper(), owner, seal_key),
        replay=lambda stored: idempotency.unseal(stored, "key", pepper(), owner, seal_key),
    )


@bp.get("/keys/<key_id>")
@require_scope(ADMIN)
@endpoint("Show one API key (no secret)", tags=TAGS, responses={200: KeyView})
def show_key(key_id: str) -> Response:
    """One key as people may see it."""
    return jsonify(keys.public_view(_found(keys.get_key(get_redis(), key_id))))


@bp.delete("/keys/<key_id>")
@require_scope(ADMIN)
@endpoint("Revoke an API key (every worker refuses it within one second)", tags=TAGS,
          responses={200: KeyView})  # fmt: skip
def revoke_key(key_id: str) -> Response:
    """Revoke a key; revoking twice is harmless."""
    record = _found(
        management.revoke_key(get_redis(), actor=request_actor(), key_id=key_id, cache=key_cache())
    )
    return jsonify(keys.public_view(record))


@bp.patch("/keys/<key_id>")
@require_scope(ADMIN)
@endpoint("Edit an API key in place (same secret); every worker sees it within one second",
          tags=TAGS, body=KeyUpdate,
          responses={200: KeyView, 409: "The key is revoked (a revoked key stays as it was)"})  # fmt: skip
def update_key(key_id: str) -> Response:
    """Change any of name, scopes, limits, quotas, expiry and allowed IPs; ``null`` clears."""
    changes = parse_json(KeyUpdate, empty_ok=True).model_dump(exclude_unset=True)
    if not changes:
        raise APIError(400, "Nothing to change: send at least one of " + ", ".join(keys.EDITABLE_FIELDS))
    try:
        record = management.update_key(
            get_redis(), actor=request_actor(), key_id=key_id, cache=key_cache(), changes=changes
        )
    except KeyStateError as exc:
        raise APIError(409, "Conflict", str(exc)) from None
    return jsonify(keys.public_view(_found(record)))


@bp.post("/keys/<key_id>/rotate")
@require_scope(ADMIN)
@endpoint("Give an API key a new secret; the answer holds it once", tags=TAGS, body=KeyRotate,
          responses={200: KeySecretView})  # fmt: skip
def rotate_key(key_id: str) -> Response:
    """Rotate a key; the old secret stays valid for ``grace_seconds`` (default 0)."""
    body = _rotate_body()
    try:
        rotated = management.rotate_key(
            get_redis(),
            pepper=pepper(),
            actor=request_actor(),
            key_id=key_id,
            cache=key_cache(),
            grace_seconds=body.grace_seconds,
        )
    except KeyStateError as exc:
        raise APIError(409, "Conflict", str(exc)) from None
    if rotated is None:
        raise APIError(404, "Not Found", KEY_NOT_FOUND)
    record, secret = rotated
    return jsonify(keys.secret_view(record, secret))


@bp.get("/audit")
@require_scope(ADMIN)
@endpoint("The newest audit entries, newest first", tags=TAGS, query=AuditQuery, responses={200: AuditList})
def audit_log() -> Response:
    """Who did what to which key, when and from where."""
    query = parse_query(AuditQuery)
    entries = audit.recent(get_redis(), query.limit)
    return jsonify({"entries": entries, "total": len(entries)})


class PasswordChange(Schema):
    """The body of POST /admin/users/<email>/password (the same checks as ``flask users passwd``)."""

    password: str = Field(min_length=users.MIN_PASSWORD_LENGTH, max_length=users.MAX_PASSWORD_LENGTH)

    error_messages = {
        "password": f"password must be a string of {users.MIN_PASSWORD_LENGTH} to "
        f"{users.MAX_PASSWORD_LENGTH} characters",
    }


class UserView(BaseModel):
    id: str
    email: str
    status: str = Field(description="`enabled` or `disabled`")
    created_at: str | None
    created_by: str | None
    disabled_at: str | None
    password_changed_at: str | None
    active_sessions: int


class UserList(BaseModel):
    users: list[UserView]
    total: int


class UserChangeView(BaseModel):
    """The user after the change, and how many of their sessions it ended."""

    user: UserView
    sessions_ended: int


def _user_change(action: Callable[[], management.UserChange]) -> Response:
    try:
        change = action()
    except users.UnknownUserError:
        raise APIError(404, "Not Found", USER_NOT_FOUND) from None
    except users.LastEnabledUserError as exc:
        raise APIError(409, "Conflict", str(exc)) from None
    return jsonify({"user": change.user, "sessions_ended": change.sessions_ended})


@bp.get("/users")
@require_scope(ADMIN)
@endpoint("List admin users (never a password or its hash)", tags=TAGS, responses={200: UserList})
def list_users() -> Response:
    """Every admin user, oldest first, with status and live sessions."""
    views = management.list_users(get_redis())
    return jsonify({"users": views, "total": len(views)})


@bp.post("/users/<email>/password")
@require_scope(ADMIN)
@endpoint("Set an admin user's password; their other sessions end", tags=TAGS, body=PasswordChange,
          responses={200: UserChangeView})  # fmt: skip
def change_password(email: str) -> Response:
    """New password; every session of the user ends, except the caller's own when it is theirs."""
    body = parse_json(PasswordChange, empty_ok=True)
    r = get_redis()

    def change() -> management.UserChange:
        target = users.get_user_by_email(r, email)
        keep = own_session_id(target["id"])
        done = management.change_password(
            r, actor=request_actor(), email=email, password=body.password, keep_sid=keep
        )
        if keep and done.epoch is not None:
            keep_own_session(done.epoch)
        return done

    return _user_change(change)


@bp.post("/users/<email>/disable")
@require_scope(ADMIN)
@endpoint("Disable an admin user: no login, every session ends at once", tags=TAGS,
          responses={200: UserChangeView, 409: "The last enabled admin user stays enabled."})  # fmt: skip
def disable_user(email: str) -> Response:
    """Disable a user (refused for the last enabled one)."""
    return _user_change(lambda: management.disable_user(get_redis(), actor=request_actor(), email=email))


@bp.post("/users/<email>/enable")
@require_scope(ADMIN)
@endpoint("Enable a disabled admin user", tags=TAGS, responses={200: UserChangeView})
def enable_user(email: str) -> Response:
    """Enable a user again."""
    return _user_change(lambda: management.enable_user(get_redis(), actor=request_actor(), email=email))


@bp.post("/users/<email>/logout-all")
@require_scope(ADMIN)
@endpoint("End every session of an admin user (log out everywhere)", tags=TAGS,
          responses={200: UserChangeView})  # fmt: skip
def logout_all(email: str) -> Response:
    """End every session of the user, the caller's own included when it is theirs."""
    return _user_change(
        lambda: management.log_out_everywhere(get_redis(), actor=request_actor(), email=email)
    )
