"""The gateway's app factory: wiring only. Behaviour lives in the modules it binds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from config import load_config


def create_app(environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from the environment (or ``environ``); ``overrides`` patch parsed values."""
    app = Flask(__name__)
    app.config.from_mapping(load_config(environ))
    if overrides:
        app.config.from_mapping(overrides)
    _init_extensions(app)
    _register_blueprints(app)
    return app


def _init_extensions(app: Flask) -> None:
    import auth
    from gateway import errors
    from gateway.extensions import redis_store

    errors.init_app(app)
    redis_store.init_app(app)
    from gateway import metrics

    metrics.init_app(app)
    # Request order (DESIGN.md): logs/request id, ProxyFix + https + Talisman + CORS, limiter, Flask-Login.
    from gateway import logging, ratelimit, security

    logging.init_app(app)
    security.init_app(app)
    ratelimit.init_app(app)
    auth.init_app(app)


def _register_blueprints(app: Flask) -> None:
    from gateway import health, main

    app.register_blueprint(health.bp)
    app.register_blueprint(main.bp)
    from gateway import agents

    app.register_blueprint(agents.bp)
    from gateway import auth_routes
    from gateway.admin import api as admin_api

    app.register_blueprint(auth_routes.bp)
    app.register_blueprint(admin_api.bp)
    from gateway import events, jobs
    from gateway.metrics.routes import bp as metrics_bp

    app.register_blueprint(metrics_bp)
    app.register_blueprint(events.bp)
    jobs.init_app(app)
    from gateway import console, openapi

    openapi.init_app(app)
    console.init_app(app)
