"""CSRF protection for the console's HTML forms: one token per session, checked on every POST.

A small check rather than Flask-WTF: the console has a handful of forms and no
WTForms, and the token only needs to live in the session the gateway already
keeps. Cookie requests from another origin are refused earlier by the origin
check (CONTRACT section 3); the token covers same-site attackers and old browsers.

Single-use form ids make "show the secret once" hold on reload: re-posting the
create or rotate form finds its id spent and shows no secret.
"""

from __future__ import annotations

import hmac
import secrets

from flask import request, session

from gateway.errors import APIError

SESSION_TOKEN = "console_csrf"  # noqa: S105 - a session field name, not a secret
SESSION_FORMS = "console_forms"
FORM_FIELD = "csrf_token"
MAX_OPEN_FORMS = 20  # forms opened in other tabs stay valid, the list stays small


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
