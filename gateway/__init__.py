"""The gateway's app factory: wiring only. Behaviour lives in the modules it binds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from config import load_config
from core.app import Gateway
from gateway import fastpath


def create_app(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Gateway:
    """Build the app from the environment (or ``environ``); ``overrides`` patch parsed values."""
    config = load_config(environ)
    config.update(overrides or {})
    app = _app_class(config)(__name__)
    app.config.from_mapping(config)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # answers keep the contract's field order
    _init_extensions(app)
    _register_blueprints(app)
    _apply_route_limits(app)
    return app


def _app_class(config: Mapping[str, Any]) -> type[Gateway]:
    # The class is picked before the app exists: its response class and hook calls
    # are the fast path's (gateway.fastpath.responses) unless GATEWAY_FASTPATH is off.
    if fastpath.enabled(config):
        from gateway.fastpath.responses import FastGateway

        return FastGateway
    return Gateway


def _init_extensions(app: Flask) -> None:
    # Imported here, not at module level: importing the areas runs their decorators.
    import auth
    from core import bodies, errors, keymigration
    from core.extensions import redis_store
    from gateway import logging, metrics, ratelimit, security, usage

    errors.init_app(app)
    redis_store.init_app(app)
    app.cli.add_command(keymigration.redis_cli)  # flask redis migrate-keys
    metrics.init_app(app)
    usage.init_app(app)  # per-key usage: after_request counting, the tokens_counted listener
    bodies.init_app(app)  # WSGI middleware: bounds how long any body read may take
    # The order a request meets them (DESIGN.md): request id and access log; ProxyFix,
    # https redirect, security headers and CORS; the limiter; Flask-Login identities.
    logging.init_app(app)
    security.init_app(app)
    ratelimit.init_app(app)
    auth.init_app(app)


def _register_blueprints(app: Flask) -> None:
    from gateway import account, agents, events, health, jobs, landing, openapi
    from gateway.admin import api as admin_api
    from gateway.admin import console
    from gateway.metrics.routes import bp as metrics_bp

    for blueprint in (health.bp, landing.bp, account.bp, admin_api.bp, agents.bp, events.bp, metrics_bp):
        app.register_blueprint(blueprint)
    jobs.init_app(app)  # blueprint and the `jobs worker` CLI
    openapi.init_app(app)
    console.init_app(app)


def _apply_route_limits(app: Flask) -> None:
    from gateway import ratelimit

    ratelimit.apply_route_limits(app)  # RATELIMIT_ROUTES: once every view is registered
