"""The armour in front of every route: trusted proxies, https, security headers, CORS, body limits.

Order (DESIGN.md): ProxyFix fixes the scheme and client IP first, so the https
redirect, the limiter's per-IP counting and the logs all see the real client.

Headers: API answers (JSON, SSE, errors, redirects) all get one fixed set,
computed once here: Talisman would re-parse its policy strings on every answer
(about 35 us, a tenth of the secured request's own cost). HTML pages (the admin
console) are handed to Talisman, which owns the nonce-based page policy; the
nonce is made on first use (``csp_nonce()`` in a template) rather than for
every request. Talisman's own redirect and HSTS are not used: both believe a
client's own ``X-Forwarded-Proto`` whatever TRUSTED_PROXY_COUNT says, and its
redirect cannot exempt the health probes without decorating their views. The
gateway redirects on ``request.is_secure`` as ProxyFix leaves it, and sends HSTS
on every answer (browsers ignore it on plain http, so that is harmless).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, redirect, request
from flask_cors import CORS
from flask_talisman import Talisman
from werkzeug.datastructures import Headers
from werkzeug.middleware.proxy_fix import ProxyFix

from config.allowlists import host_allowed
from core.errors import APIError
from gateway.health import HEALTH_ENDPOINTS, HEALTH_PATHS

HSTS_SECONDS = 365 * 24 * 3600
HSTS = f"max-age={HSTS_SECONDS}; includeSubDomains"
JSON_CSP = "default-src 'none'; frame-ancestors 'none'"
# Server-rendered console pages: own resources only, inline code only with the request's nonce.
PAGE_CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
    "object-src": "'none'",
}
NONCE_DIRECTIVES = ["script-src", "style-src"]
NONCE_BYTES = 24
# Every non-HTML answer: the same values, so built once. No Permissions-Policy: it governs
# features of rendered documents, and these answers render nothing (default-src 'none').
API_HEADERS = (
    ("Content-Security-Policy", JSON_CSP),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)

# The complete fixed set of an API answer, appended in one step (see finish_headers).
API_FIXED_HEADERS = (*API_HEADERS, ("Strict-Transport-Security", HSTS), ("Cache-Control", "no-store"))
_API_FIXED_NAMES = frozenset(name.lower() for name, _ in API_FIXED_HEADERS)
Headers(API_FIXED_HEADERS)  # validated once here (Werkzeug checks names and values), not per answer

# What browsers may send and read cross-origin (rate-limit state, request ids).
CORS_ALLOW_HEADERS = ["Authorization", "X-API-Key", "Content-Type", "X-Request-ID", "Idempotency-Key"]
CORS_EXPOSE_HEADERS = [
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "X-Request-ID",
    "WWW-Authenticate",
]
CORS_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CORS_MAX_AGE = 600
log = logging.getLogger(__name__)


def _is_health() -> bool:
    return request.endpoint in HEALTH_ENDPOINTS or request.path in HEALTH_PATHS


def refuse_foreign_host() -> None:
    """before_request: 400 for a Host that is not in ALLOWED_HOSTS (or is malformed); probes exempt.

    Checked here rather than with Flask's TRUSTED_HOSTS: that one fails the request while it
    is routed, so the health probes (whose Host is the platform's, not ours) could not be
    exempted. The https redirect and ``request.host_url`` (the Origin check) come after it.
    """
    if _is_health():
        return
    if not host_allowed(request.host, request.scheme, current_app.config["ALLOWED_HOSTS"]):
        raise APIError(400, "Bad Request", "The Host header names a host this gateway does not serve.")


def redirect_to_https() -> Response | None:
    """before_request (FORCE_HTTPS): plain http goes to https, health probes excepted."""
    if request.is_secure or _is_health():
        return None
    # The target is built from request.host, which refuse_foreign_host (run first) has checked.
    # 308 keeps the method and body, so a POST is not silently turned into a GET.
    return redirect(request.url.replace("http://", "https://", 1), code=308)


def refuse_large_body() -> None:
    """before_request: answer 413 from Content-Length before any view reads the body."""
    if not request.environ.get("CONTENT_LENGTH"):
        return  # no declared body (most API calls): nothing to compare
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise APIError(413, "Payload Too Large", f"The request body must be at most {limit} bytes.")


def csp_nonce() -> str:
    """This request's CSP nonce, made on first use (templates call ``csp_nonce()``)."""
    nonce: str | None = getattr(request, "csp_nonce", None)
    if nonce is None:
        nonce = request.csp_nonce = secrets.token_urlsafe(NONCE_BYTES)  # type: ignore[attr-defined]
    return nonce


def _is_page(response: Response) -> bool:
    # The raw header, not response.mimetype: that parses the header's options on every answer.
    content_type = response.headers.get("Content-Type", "")
    return content_type[:9].lower() == "text/html" and not 300 <= response.status_code < 400


def finish_headers(response: Response) -> Response:
    """after_request: the security headers of every answer; HTML pages get Talisman's page policy."""
    headers = response.headers
    page = _is_page(response)
    # Static console assets keep their own caching; every other answer is per caller.
    static = (request.endpoint or "").endswith("static")
    if not page and not static and not any(name.lower() in _API_FIXED_NAMES for name, _ in headers):
        # The common case, an API answer that set none of them itself: append the whole
        # precomputed set at once. Headers.extend would re-validate the same constants on
        # every answer (they were validated once, at import).
        headers._list.extend(API_FIXED_HEADERS)
        return response
    if page:
        csp_nonce()
        talisman: Talisman = current_app.extensions["talisman"]
        talisman._set_response_headers(response)  # CSP with the nonce, frame, referrer, nosniff
    else:
        present = {name.lower() for name, _ in headers}
        for name, value in API_HEADERS:
            if name.lower() not in present:
                headers.add(name, value)
    headers["Strict-Transport-Security"] = HSTS
    if not static:
        headers["Cache-Control"] = "no-store"
    return response


def _proxy_reason(config: Mapping[str, Any]) -> str:
    if "TRUSTED_PROXY_COUNT" in config.get("SETTINGS_FROM_ENV", ()):
        return "set in the environment"
    if config.get("RENDER"):
        return "the default because RENDER is set: Render's proxy stands in front"
    return "the default because RENDER is not set: X-Forwarded-* headers are ignored"


def _init_proxy_fix(app: Flask) -> None:
    hops = app.config["TRUSTED_PROXY_COUNT"]
    # Which proxies are believed decides the client IP every per-IP limit counts: say it once.
    log.info("trusted proxies: TRUSTED_PROXY_COUNT=%d (%s)", hops, _proxy_reason(app.config))
    if hops:
        # Exactly ``hops`` proxies are believed; anything a client adds before them is ignored.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops
        )


def _init_talisman(app: Flask) -> None:
    talisman = Talisman(
        app,
        force_https=False,
        strict_transport_security=False,
        content_security_policy=PAGE_CSP,
        content_security_policy_nonce_in=NONCE_DIRECTIVES,
        frame_options="DENY",
        referrer_policy="no-referrer",
        # Talisman would otherwise overwrite the environment's cookie settings.
        session_cookie_secure=app.config["SESSION_COOKIE_SECURE"],
        session_cookie_samesite=app.config["SESSION_COOKIE_SAMESITE"],
    )
    # Talisman's per-request hooks are replaced (see the module docstring): finish_headers
    # calls it for HTML pages, and csp_nonce() makes the nonce when a page asks for it.
    app.before_request_funcs[None].remove(talisman._force_https)
    app.before_request_funcs[None].remove(talisman._make_nonce)
    app.after_request_funcs[None].remove(talisman._set_response_headers)
    app.jinja_env.globals["csp_nonce"] = csp_nonce
    app.extensions["talisman"] = talisman


def _init_cors(app: Flask) -> None:
    origins = list(app.config["CORS_ORIGINS"])
    if not origins:
        return  # no allow-list: no cross-origin access at all
    CORS(
        app,
        origins=origins,
        supports_credentials=True,  # safe with an explicit allow-list, never with "*"
        allow_headers=CORS_ALLOW_HEADERS,
        expose_headers=CORS_EXPOSE_HEADERS,
        methods=CORS_METHODS,
        max_age=CORS_MAX_AGE,
        vary_header=True,
    )


def init_app(app: Flask) -> None:
    """ProxyFix, Host check, https redirect, body limit, Talisman, CORS; before the limiter and auth."""
    _init_proxy_fix(app)
    app.before_request(refuse_foreign_host)
    if app.config["FORCE_HTTPS"]:
        app.before_request(redirect_to_https)
    app.before_request(refuse_large_body)
    app.after_request(finish_headers)
    _init_talisman(app)
    _init_cors(app)
