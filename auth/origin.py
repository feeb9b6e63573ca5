"""Cross-site request refusal for cookie-authenticated changes (CONTRACT section 3).

A browser attaches the session cookie to requests that other sites trigger, so
a state-changing request that carries the cookie must come from the gateway's
own pages or an allowed CORS origin. Browsers send ``Origin`` on such requests
(``Referer`` as the fallback); a cookie request that carries neither is refused
too, because its source cannot be told. API keys are not sent ambiently by
browsers, so requests presenting one are exempt. The login form is checked
even without a cookie when it names a foreign origin (login CSRF).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, request

from auth.credentials import presented_key
from auth.errors import CrossSiteRefused
from config.allowlists import origin_allowed

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Login forms are checked even without a cookie (the console has its own login form).
LOGIN_ENDPOINTS = frozenset({"auth.login", "console.login"})


def request_source() -> str | None:
    """The origin that sent this request: ``Origin``, else the origin part of ``Referer``."""
    origin = request.headers.get("Origin")
    if origin:
        # As sent: browsers never add a path or slash, and CORS sees the same value.
        return origin.strip()
    referer = request.headers.get("Referer")
    if referer:
        parts = urlsplit(referer)
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}"
        return "invalid"
    return None


def source_allowed(source: str) -> bool:
    """The gateway itself (its Host, checked against ALLOWED_HOSTS), or an allowed CORS origin.

    The one matcher of config/allowlists.py, so this check and the CORS answer agree on every
    origin, the ``https://*.example.com`` form included.
    """
    own = request.host_url.rstrip("/")
    return source.casefold() == own.casefold() or origin_allowed(source, current_app.config["CORS_ORIGINS"])


def check_origin() -> None:
    """before_request: 403 for a cookie-authenticated change from a foreign or unknown source."""
    if request.method not in STATE_CHANGING or request.routing_exception is not None:
        return
    if presented_key(request) is not None:
        return
    has_cookie = current_app.config["SESSION_COOKIE_NAME"] in request.cookies
    source = request_source()
    if source is None:
        if has_cookie:
            raise CrossSiteRefused("Cookie-authenticated changes must carry an Origin header.")
        return
    if not has_cookie and request.endpoint not in LOGIN_ENDPOINTS:
        return
    if not source_allowed(source):
        raise CrossSiteRefused("Cross-site request refused: the Origin is not allowed.")
