"""The armour in front of every route: trusted proxies, https, security headers, CORS, body limits.

Order (DESIGN.md): ProxyFix fixes the scheme and client IP first, so the https
redirect, the limiter's per-IP counting and the logs all see the real client.

Headers: Talisman, through its public options, owns the headers of every answer
and the page policy: a per-request nonce in ``script-src`` and ``style-src`` (the
console's templates call ``csp_nonce()``), frame, referrer and nosniff headers.
Answers that are not HTML pages (JSON, SSE, errors, redirects) render nothing, so
``finish_headers`` (running after Talisman's hook) gives them the strict API
policy instead and drops the Permissions-Policy, which governs rendered documents.
Talisman's own redirect and HSTS are not used: both believe a client's own
``X-Forwarded-Proto`` whatever TRUSTED_PROXY_COUNT says, and its redirect cannot
exempt the health probes without decorating their views. The gateway redirects
on ``request.is_secure`` as ProxyFix leaves it, and sends HSTS on every answer
(browsers ignore it on plain http, so that is harmless).

With ``GATEWAY_FASTPATH`` on, :mod:`gateway.fastpath.headers` sends the same
headers at a fraction of the cost (see there).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, redirect, request
from flask_cors import CORS
from flask_talisman import Talisman
from werkzeug.middleware.proxy_fix import ProxyFix

from config.allowlists import host_allowed
from core.errors import APIError
from gateway import fastpath
from gateway.health import is_probe

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
# Set by Talisman on every answer; only pages keep it (it governs rendered documents).
PAGE_ONLY_HEADER = "Permissions-Policy"
# What an API answer (not a page) carries, in the order Talisman's hook and
# finish_headers leave them; gateway.fastpath.headers appends them in one step.
API_HEADERS = (
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", JSON_CSP),
    ("Referrer-Policy", "no-referrer"),
    ("Strict-Transport-Security", HSTS),
    ("Cache-Control", "no-store"),
)

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


def refuse_foreign_host() -> None:
    """before_request: 400 for a Host that is not in ALLOWED_HOSTS (or is malformed); probes exempt.

    Checked here rather than with Flask's TRUSTED_HOSTS: that one fails the request while it
    is routed, so the health probes (whose Host is the platform's, not ours) could not be
    exempted. The https redirect and ``request.host_url`` (the Origin check) come after it.
    """
    if is_probe():
        return
    if not host_allowed(request.host, request.scheme, current_app.config["ALLOWED_HOSTS"]):
        raise APIError(400, "Bad Request", "The Host header names a host this gateway does not serve.")


def redirect_to_https() -> Response | None:
    """before_request (FORCE_HTTPS): plain http goes to https, health probes excepted."""
    if request.is_secure or is_probe():
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


def is_page(response: Response) -> bool:
    """True for an HTML page (the console's), which keeps Talisman's page policy."""
    # The raw header, not response.mimetype: that parses the header's options on every answer.
    content_type = response.headers.get("Content-Type", "")
    return content_type[:9].lower() == "text/html" and not 300 <= response.status_code < 400


def is_static() -> bool:
    """True for a static file, which keeps its own caching."""
    return (request.endpoint or "").endswith("static")


def finish_headers(response: Response) -> Response:
    """after_request, after Talisman's: the API policy on answers that are not pages; HSTS; no-store."""
    headers = response.headers
    if not is_page(response):
        headers["Content-Security-Policy"] = JSON_CSP
        headers.remove(PAGE_ONLY_HEADER)
    headers["Strict-Transport-Security"] = HSTS
    if not is_static():
        headers["Cache-Control"] = "no-store"  # every other answer is per caller
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


def _init_talisman(app: Flask) -> Talisman:
    # finish_headers is registered first so that it runs after Talisman's hook
    # (Flask runs after_request functions in reverse order of registration).
    app.after_request(finish_headers)
    return Talisman(
        app,
        force_https=False,  # redirect_to_https instead: it trusts only ProxyFix and spares the probes
        strict_transport_security=False,  # finish_headers sends HSTS on every answer
        content_security_policy=PAGE_CSP,
        content_security_policy_nonce_in=NONCE_DIRECTIVES,
        frame_options="DENY",
        referrer_policy="no-referrer",
        # Talisman would otherwise overwrite the environment's cookie settings.
        session_cookie_secure=app.config["SESSION_COOKIE_SECURE"],
        session_cookie_samesite=app.config["SESSION_COOKIE_SAMESITE"],
    )


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
    talisman = _init_talisman(app)
    if fastpath.enabled(app.config):
        from gateway.fastpath import headers

        headers.install(
            app,
            talisman,
            api_headers=API_HEADERS,
            finish=finish_headers,
            is_page=is_page,
            is_static=is_static,
        )
    _init_cors(app)
