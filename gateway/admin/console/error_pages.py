"""Errors on console pages answered as HTML pages in the console's layout.

People browse the console, so a 404, 429, 403, 500 or 503 there is a page with the
status code, not the raw JSON a program gets. The JSON admin API under the same
/admin/ prefix (/admin/keys, /admin/audit, ...) keeps the contract's JSON shape.
core.errors asks :func:`render_error_page` first for every error it answers.
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask, Response, current_app, render_template, request

from auth.identity import Identity, loaded_identity
from core.errors import ERROR_PAGE_EXTENSION

CONSOLE = "console"
CONSOLE_PREFIX = "/admin/"


def _api_segments() -> set[str]:
    """The first path segments under /admin/ that belong to the JSON admin API."""
    return {
        rule.rule.split("/")[2]
        for rule in current_app.url_map.iter_rules()
        if rule.rule.startswith(CONSOLE_PREFIX) and rule.endpoint.partition(".")[0] != CONSOLE
    }


def is_console_page() -> bool:
    """True for console routes (not their static files) and unmatched paths of the console's
    part of /admin/; False for the JSON admin API and everything else."""
    if request.blueprint == CONSOLE:
        return request.endpoint != f"{CONSOLE}.static"
    if request.url_rule is not None or not request.path.startswith(CONSOLE_PREFIX):
        return False
    return request.path.split("/")[2] not in _api_segments()


def _loaded_admin() -> Identity | None:
    # Only an identity already loaded for this request: an error page never goes to Redis
    # for the session (it may be the reason for the error).
    identity = loaded_identity()
    return identity if identity is not None and identity.type == "user" else None


def render_error_page(status: int, reason: str, message: str, headers: Mapping[str, str]) -> Response | None:
    """The error as a console page, or None where JSON is the answer (or the page cannot render)."""
    if not is_console_page():
        return None
    try:
        html = render_template(
            "console/error.html",
            status=status,
            reason=reason,
            message=message,
            admin=_loaded_admin(),
            retry_after=headers.get("Retry-After") if status in (429, 503) else None,
        )
    except Exception:  # the JSON answer is still there: never let an error page make a 500
        current_app.logger.exception("console error page failed for %s; answering JSON", request.path)
        return None
    response = current_app.response_class(html, status=status, mimetype="text/html")
    for name, value in headers.items():
        response.headers[name] = value
    return response


def init_app(app: Flask) -> None:
    app.extensions[ERROR_PAGE_EXTENSION] = render_error_page
