"""Usage per key per UTC day: counted in worker memory, flushed to Redis in batches.

See docs/usage-and-alerts.md. Kept import-light: ``init_app`` binds the hook, the
``tokens_counted`` listener and the routes.
"""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Count every answer to an identity and register /auth/usage and /admin/keys/<id>/usage."""
    from gateway.usage import alerts, hooks, routes

    hooks.init_app(app)
    alerts.init_app(app)
    app.register_blueprint(routes.bp)
