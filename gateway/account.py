"""/auth/login, /auth/logout and /auth/me (CONTRACT section 3)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, redirect, request
from pydantic import BaseModel, Field

from auth import authenticated, current_identity, public, users
from auth.login import log_in, log_out
from core.errors import APIError
from core.schemas import Schema, endpoint, json_object, validate
from gateway.ratelimit import login_limit

bp = Blueprint("auth", __name__, url_prefix="/auth")
log = logging.getLogger(__name__)


class LoginBody(Schema):
    """JSON ``{"email", "password"}`` or the same two form fields."""

    email: str = Field(min_length=1, max_length=users.MAX_EMAIL_LENGTH)
    password: str = Field(min_length=1, max_length=users.MAX_PASSWORD_LENGTH)
    # Form logins only: a path on this gateway to go to afterwards.
    next: str | None = Field(default=None, max_length=2000)

    error_messages = {
        "email": "email and password are required",
        "password": "email and password are required",
    }


class IdentityView(BaseModel):
    type: str
    id: str
    name: str
    scopes: list[str]


class LogoutView(BaseModel):
    status: str


def _login_body() -> LoginBody:
    if request.is_json:
        return validate(LoginBody, json_object())
    return validate(LoginBody, request.form.to_dict())


def _safe_next(target: str | None) -> str | None:
    # Only a path on this gateway: an absolute or scheme-relative URL would be an open redirect.
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return None


@bp.post("/login")
@public
@login_limit
@endpoint(
    "Log an admin user in (JSON or form); sets the session cookie",
    tags=("auth",),
    body=LoginBody,
    responses={
        200: IdentityView,
        303: "Form login with a `next` path: redirect there",
        401: "Invalid email or password.",
    },
)
def login() -> Any:
    """Check email and password, start a new server-side session."""
    body = _login_body()
    identity = log_in(email=body.email, password=body.password)
    if identity is None:
        log.warning("admin login failed from %s", request.remote_addr)
        raise APIError(401, "Unauthorized", "Invalid email or password.")
    target = None if request.is_json else _safe_next(body.next)
    if target:
        return redirect(target, code=303)
    return jsonify(identity.as_json())


@bp.post("/logout")
@authenticated
@endpoint("End the admin session server-side (no-op for API keys)", tags=("auth",),
          responses={200: LogoutView})  # fmt: skip
def logout() -> Response:
    """Delete the session in Redis, so a copy of the cookie stops working."""
    log_out()
    return jsonify({"status": "logged_out"})


@bp.get("/me")
@authenticated
@endpoint("Who the caller is", tags=("auth",), responses={200: IdentityView})
def me() -> Response:
    """The caller's identity: type, id, name and scopes."""
    identity = current_identity()
    if identity is None:  # enforce_access answers first; kept for safety under -O
        raise APIError(401, "Unauthorized")
    return jsonify(identity.as_json())
