"""The admin console: server-rendered pages under /admin/ to log in and manage API keys.

Pages are plain Jinja with one stylesheet and one small script served by the
gateway (no CDN, no inline code: the page CSP from gateway.security allows only
the request's nonce). The JSON API under /admin/keys and /admin/audit is
gateway.admin.api; both call the same services in ``auth``.
"""

from __future__ import annotations

from flask import Flask

from gateway import ratelimit
from gateway.admin.console import error_pages, usage_views  # noqa: F401  # usage_views adds its routes to bp
from gateway.admin.console.csrf import csrf_token
from gateway.admin.console.views import bp

__all__ = ["bp", "init_app"]


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    # Stylesheet and script: cheap, cached, no Redis behind them, so not counted like API calls.
    ratelimit.exempt(app, "console.static")
    error_pages.init_app(app)  # console pages answer errors as pages; the JSON admin API keeps JSON
    # Templates also call csp_nonce(), which Talisman (gateway.security) provides.
    app.add_template_global(csrf_token, "csrf_token")
