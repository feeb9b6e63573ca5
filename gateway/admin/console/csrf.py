"""CSRF protection for the console's HTML forms: one token per session, checked on every POST.

A small check rather than Flask-WTF: the console has a handful of forms and no
WTForms, and the token only needs to live in the session the gateway already
keeps. Cookie requests from another origin are refused earlier by the origin
check (CONTRACT section 3); the token covers same-site attackers and old browsers.

Single-use form ids make "show the secret once" hold on reload: re-posting the
create or rotate form finds its id spent and shows no secret.

The login form has no session to keep a token in, and creating one for every
anonymous page view would let anyone fill Redis. It uses a stateless double
submit instead: a random nonce in a short-lived HttpOnly, SameSite=Strict cookie,
and in the form a token signed with SECRET_KEY (itsdangerous, with a timestamp)
over the nonce's digest. A POST passes only with a token this gateway signed in
the last 30 minutes for the nonce of the cookie it carries.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import NamedTuple

from flask import Response, current_app, request, session
from itsdangerous import BadData, URLSafeTimedSerializer

from core.errors import APIError

SESSION_TOKEN = "console_csrf"  # noqa: S105 - a session field name, not a secret
SESSION_FORMS = "console_forms"
FORM_FIELD = "csrf_token"
MAX_OPEN_FORMS = 20  # forms opened in other tabs stay valid, the list stays small

LOGIN_COOKIE = "gw_login_csrf"
LOGIN_MAX_AGE = 30 * 60  # a login form left open longer is reloaded
_LOGIN_SALT = "gateway.console.login-csrf"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)


class LoginToken(NamedTuple):
    """The login form's token and the nonce its cookie carries."""

    token: str
    nonce: str


def csrf_token() -> str:
    """The session's token (created on first use); templates put it in every form."""
    token = session.get(SESSION_TOKEN)
    if not token:
        token = secrets.token_urlsafe(32)
        session[SESSION_TOKEN] = token
    return str(token)


def check_csrf() -> None:
    """Refuse a POST whose form token is missing or not this session's (400)."""
    expected = session.get(SESSION_TOKEN)
    sent = request.form.get(FORM_FIELD, "")
    if not expected or not sent or not hmac.compare_digest(str(expected), sent):
        raise APIError(400, "CSRF token missing or invalid", "Reload the page and submit the form again.")


def new_form_id() -> str:
    """An id for one submission of a form (create, rotate)."""
    form_id = secrets.token_urlsafe(16)
    open_forms = [*session.get(SESSION_FORMS, []), form_id][-MAX_OPEN_FORMS:]
    session[SESSION_FORMS] = open_forms
    return form_id


def spend_form_id(form_id: str | None) -> bool:
    """True the first time ``form_id`` is spent, False for a repeat (reload) or an unknown id."""
    open_forms = list(session.get(SESSION_FORMS, []))
    if not form_id or form_id not in open_forms:
        return False
    open_forms.remove(form_id)
    session[SESSION_FORMS] = open_forms
    return True


def _login_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt=_LOGIN_SALT)  # type: ignore[arg-type]


def _digest(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


def login_cookie_name() -> str:
    """``__Host-`` when cookies are Secure: then no subdomain can plant or widen the cookie."""
    return f"__Host-{LOGIN_COOKIE}" if current_app.config["SESSION_COOKIE_SECURE"] else LOGIN_COOKIE


def _sent_nonce() -> str | None:
    nonce = request.cookies.get(login_cookie_name(), "")
    return nonce if _NONCE.match(nonce) else None


def new_login_token() -> LoginToken:
    """A token for the login form; the visitor's nonce is kept, so forms in other tabs stay valid."""
    nonce = _sent_nonce() or secrets.token_urlsafe(32)
    return LoginToken(str(_login_serializer().dumps(_digest(nonce))), nonce)


def set_login_cookie(response: Response, nonce: str) -> Response:
    response.set_cookie(
        login_cookie_name(),
        nonce,
        max_age=LOGIN_MAX_AGE,
        path="/",
        secure=bool(current_app.config["SESSION_COOKIE_SECURE"]),
        httponly=True,
        samesite="Strict",
    )
    response.vary.add("Cookie")
    return response


def clear_login_cookie(response: Response) -> Response:
    """After a login: the nonce has done its work."""
    secure = bool(current_app.config["SESSION_COOKIE_SECURE"])
    response.delete_cookie(login_cookie_name(), path="/", secure=secure, httponly=True, samesite="Strict")
    return response


def check_login_csrf() -> None:
    """Refuse a login POST without a fresh token signed for its cookie's nonce (400)."""
    nonce, sent = _sent_nonce(), request.form.get(FORM_FIELD, "")
    try:
        signed = _login_serializer().loads(sent, max_age=LOGIN_MAX_AGE) if nonce and sent else None
    except BadData:  # forged, tampered, expired or signed under another SECRET_KEY
        signed = None
    if not isinstance(signed, str) or not hmac.compare_digest(signed, _digest(nonce or "")):
        raise APIError(400, "CSRF token missing or invalid", "Reload the page and submit the form again.")
