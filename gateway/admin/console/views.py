"""Console pages. Thin like every view: forms in, ``auth`` services, templates out.

Access: the pages keep the deny-by-default ``admin`` rule of auth.access, so the
one guard decides who gets in; this blueprint only turns the guard's 401 into
a redirect to the login page (people get pages, programs keep their JSON 401)
and asks for a logged-in admin *user* (API keys are for programs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)

from auth import current_identity, public, require_scope
from auth.errors import Unauthenticated
from auth.scopes import ADMIN, ALL_SCOPES
from core.errors import APIError, error_response
from core.schemas import endpoint
from gateway.admin.console import actions
from gateway.admin.console.csrf import (
    check_csrf,
    check_login_csrf,
    clear_login_cookie,
    new_form_id,
    new_login_token,
    set_login_cookie,
    spend_form_id,
)
from gateway.openapi import hide_from_schema
from gateway.ratelimit import login_limit
from gateway.version import __version__

bp = Blueprint("console", __name__, url_prefix="/admin")

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSET_MAX_AGE = 3600  # an asset fetched without ?v=<version> may change with a release
# Pages link assets as ?v=<version>: that URL changes with every release, so it never goes stale.
VERSIONED_ASSET_MAX_AGE = 365 * 24 * 3600
PUBLIC_ENDPOINTS = frozenset({"console.login", "console.login_form", "console.static"})


def _page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    context.setdefault("admin", current_identity())
    context.setdefault("default_limit", current_app.config["RATELIMIT_DEFAULT"])
    return render_template(f"console/{template}", **context), status


@bp.before_request
def _console_guard() -> Response | None:
    """Pages need a logged-in admin user; every POST needs the session's CSRF token."""
    if request.endpoint not in PUBLIC_ENDPOINTS:
        identity = current_identity()
        if identity is None or identity.type != "user":
            return redirect(url_for("console.login_form"), code=303)
    if request.method == "POST" and request.endpoint == "console.login":
        check_login_csrf()  # no session yet: the login form's token is stateless
    elif request.method == "POST":
        check_csrf()
    return None


@bp.errorhandler(Unauthenticated)
def _console_login_needed(exc: Unauthenticated) -> Response:
    """The access guard's 401 becomes the login page."""
    return redirect(url_for("console.login_form"), code=303)


@bp.errorhandler(APIError)
def _console_error(exc: APIError) -> Response:
    """The access guard's 401 becomes the login page; other errors keep the JSON shape."""
    if exc.code == 401:
        return redirect(url_for("console.login_form"), code=303)
    return error_response(exc.code, exc.error, exc.message, headers=exc.extra_headers, **exc.extra)


@bp.get("/static/<path:filename>", endpoint="static")
@public
def asset(filename: str) -> Response:
    """The console's stylesheet and script (public: the login page needs them)."""
    versioned = request.args.get("v") == __version__
    max_age = VERSIONED_ASSET_MAX_AGE if versioned else ASSET_MAX_AGE
    response = send_from_directory(STATIC_DIR, filename, max_age=max_age)
    response.cache_control.immutable = versioned or None
    return response


@bp.get("/login")
@public
@hide_from_schema
def login_form() -> Response | tuple[str, int]:
    """The login page."""
    identity = current_identity()
    if identity is not None and identity.type == "user":
        return redirect(url_for("console.keys"), code=303)
    return _login_page()


def _login_page(status: int = 200, **context: Any) -> Response:
    # Anonymous views store nothing in Redis: the form's CSRF token lives in a cookie and a signature.
    login_token = new_login_token()
    body, status = _page("login.html", status, admin=None, login_csrf=login_token.token, **context)
    return set_login_cookie(current_app.make_response((body, status)), login_token.nonce)


@bp.post("/login")
@public
@hide_from_schema
@login_limit
def login() -> Response | tuple[str, int]:
    """Check the email and password, then start a fresh server-side session."""
    email = request.form.get("email", "").strip()
    if not actions.log_in(email=email, password=request.form.get("password", "")):
        return _login_page(401, email=email, error="Wrong email or password.")
    return clear_login_cookie(redirect(url_for("console.keys"), code=303))


@bp.post("/logout")
@require_scope(ADMIN)
@hide_from_schema
def logout() -> Response:
    """End the session on the server and go back to the login page."""
    actions.log_out()
    flash("You are logged out.", "info")
    return redirect(url_for("console.login_form"), code=303)


@bp.get("/")
@require_scope(ADMIN)
@endpoint(
    "Admin console: the API keys page (HTML)",
    tags=("console",),
    responses={200: "The key list page.", 303: "No admin user logged in: redirect to /admin/login."},
    content_type="text/html",
)
def keys() -> tuple[str, int]:
    """The admin console (HTML): every API key, newest first; anonymous visitors go to the login page."""
    # The rows come from console_keys_listing (usage_views): filtered, searched and paged.
    return _page("keys.html", section="keys")


@bp.get("/console/keys/new")
@require_scope(ADMIN)
@hide_from_schema
def new_key() -> tuple[str, int]:
    """The form to create a key."""
    return _new_key_page(form={"scopes": []})


def _new_key_page(
    form: dict[str, Any], error: str | None = None, form_id: str | None = None
) -> tuple[str, int]:
    return _page(
        "new_key.html",
        400 if error else 200,
        form=form,
        error=error,
        form_id=form_id or new_form_id(),
        all_scopes=ALL_SCOPES,
        section="new",
    )


@bp.post("/console/keys/new")
@require_scope(ADMIN)
@hide_from_schema
def create_key() -> Response | tuple[str, int]:
    """Create the key and show its secret, once."""
    form = _key_form()
    form_id = request.form.get("form_id")
    try:
        new = actions.validate_new_key(form)
    except ValueError as exc:
        return _new_key_page(form, error=str(exc), form_id=form_id)
    if not spend_form_id(form_id):
        return _secret_gone()
    record, secret = actions.create_key(new)
    return _page("secret.html", key=record, secret=secret, heading="Key created", section="new")


def _secret_gone() -> Response:
    # A reload or a second submit of a form already used: the secret was shown once.
    flash("That form was already submitted: a key's secret is shown only once.", "info")
    return redirect(url_for("console.keys"), code=303)


def _key_or_404(key_id: str) -> dict[str, Any]:
    record = actions.get_key(key_id)
    if record is None:
        raise APIError(404, "Key not found")
    return record


def _key_form() -> dict[str, Any]:
    """A key's fields as the new-key and edit forms post them (validated by the caller)."""
    return {
        "name": request.form.get("name", "").strip(),
        "scopes": request.form.getlist("scope"),
        "rate_limit": request.form.get("rate_limit", "").strip() or None,
        "quota": request.form.get("quota", "").strip() or None,
        "token_quota": request.form.get("token_quota", "").strip() or None,
        "allowed_ips": request.form.get("allowed_ips", ""),
        "expires_in_days": request.form.get("expires_in_days", "").strip() or None,
    }


def _edit_form() -> dict[str, Any]:
    return {**_key_form(), "never_expires": bool(request.form.get("never_expires"))}


def _edit_page(key: dict[str, Any], form: dict[str, Any], error: str | None = None) -> tuple[str, int]:
    return _page(
        "edit_key.html", 400 if error else 200, key=key, form=form, error=error, all_scopes=ALL_SCOPES,
        section="keys",
    )  # fmt: skip


@bp.get("/console/keys/<key_id>/edit")
@require_scope(ADMIN)
@hide_from_schema
def edit_key(key_id: str) -> tuple[str, int]:
    """The form to edit a key in place (its secret stays)."""
    key = _key_or_404(key_id)
    form = {**key, "allowed_ips": "\n".join(key["allowed_ips"] or []), "expires_in_days": None}
    return _edit_page(key, form)


@bp.post("/console/keys/<key_id>/edit")
@require_scope(ADMIN)
@hide_from_schema
def edit_key_confirmed(key_id: str) -> Response | tuple[str, int]:
    """Apply the edit; every worker sees it within a second."""
    key = _key_or_404(key_id)
    form = _edit_form()
    try:
        changes = actions.validate_key_edit(form)
        record = actions.update_key(key_id, changes)
    except ValueError as exc:  # a bad value, or a key revoked meanwhile (KeyStateError)
        return _edit_page(key, form, error=str(exc))
    flash(f"Key {record['name']} ({record['prefix']}…{record['last4']}) is updated.", "success")
    return redirect(url_for("console.keys"), code=303)


@bp.get("/console/keys/<key_id>/revoke")
@require_scope(ADMIN)
@hide_from_schema
def revoke_key(key_id: str) -> tuple[str, int]:
    """Ask before revoking a key."""
    return _page(
        "confirm.html",
        key=_key_or_404(key_id),
        heading="Revoke this key?",
        explanation="Clients using it are refused within a second. This cannot be undone.",
        button="Revoke key",
        action=url_for("console.revoke_key_confirmed", key_id=key_id),
        form_id=None,
    )


@bp.post("/console/keys/<key_id>/revoke")
@require_scope(ADMIN)
@hide_from_schema
def revoke_key_confirmed(key_id: str) -> Response:
    """Revoke the key."""
    record = _key_or_404(key_id)
    actions.revoke_key(key_id)
    flash(f"Key {record['name']} ({record['prefix']}…{record['last4']}) is revoked.", "success")
    return redirect(url_for("console.keys"), code=303)


@bp.get("/console/keys/<key_id>/rotate")
@require_scope(ADMIN)
@hide_from_schema
def rotate_key(key_id: str) -> tuple[str, int]:
    """Ask before rotating a key."""
    return _page(
        "confirm.html",
        key=_key_or_404(key_id),
        heading="Rotate this key?",
        explanation="A new secret replaces the old one, which stops working at once.",
        button="Rotate key",
        action=url_for("console.rotate_key_confirmed", key_id=key_id),
        form_id=new_form_id(),
    )


@bp.post("/console/keys/<key_id>/rotate")
@require_scope(ADMIN)
@hide_from_schema
def rotate_key_confirmed(key_id: str) -> Response | tuple[str, int]:
    """Rotate the key and show the new secret, once."""
    _key_or_404(key_id)
    if not spend_form_id(request.form.get("form_id")):
        return _secret_gone()
    try:
        record, secret = actions.rotate_key(key_id)
    except ValueError as exc:
        flash(str(exc), "error")
        return redirect(url_for("console.keys"), code=303)
    return _page("secret.html", key=record, secret=secret, heading="Key rotated", section="keys")


@bp.get("/console/audit")
@require_scope(ADMIN)
@hide_from_schema
def audit() -> tuple[str, int]:
    """The audit log, newest first."""
    return _page("audit.html", entries=actions.audit_entries(), section="audit")


@bp.app_template_global()
def console_asset(filename: str) -> str:
    """URL of a console asset, versioned so browsers pick up a new release."""
    return url_for("console.static", filename=filename, v=__version__)


@bp.get("/console/users")
@require_scope(ADMIN)
@hide_from_schema
def users() -> tuple[str, int]:
    """Admin users with their status and live sessions, and the lifecycle actions."""
    return _page("users.html", users=actions.list_users(), section="users")


def _user_action_or_404(email: str, action: str) -> tuple[dict[str, Any], actions.UserAction]:
    user = actions.get_user(email)
    if user is None or action not in actions.USER_ACTIONS:
        raise APIError(404, "Not Found", "User not found")
    return user, actions.USER_ACTIONS[action]


@bp.get("/console/users/<email>/<action>")
@require_scope(ADMIN)
@hide_from_schema
def user_action(email: str, action: str) -> tuple[str, int]:
    """Ask before disabling, enabling or logging a user out everywhere."""
    user, step = _user_action_or_404(email, action)
    return _page(
        "confirm_user.html",
        user=user,
        heading=step.heading,
        explanation=step.explanation,
        button=step.button,
        action=url_for("console.user_action_confirmed", email=user["email"], action=action),
        section="users",
    )


@bp.post("/console/users/<email>/<action>")
@require_scope(ADMIN)
@hide_from_schema
def user_action_confirmed(email: str, action: str) -> Response:
    """Run the confirmed action (refused for the last enabled user)."""
    user, _ = _user_action_or_404(email, action)
    try:
        flash(actions.run_user_action(action, user["email"]), "success")
    except ValueError as exc:  # LastEnabledUserError
        flash(str(exc), "error")
    return redirect(url_for("console.users"), code=303)
