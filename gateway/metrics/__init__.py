"""Metrics: the hot-path recorder, its Redis layout, and the /metrics views.

Kept import-light: other areas import ``gateway.metrics.recorder`` from anywhere.
"""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Bind the recorder and the request hook to ``app`` (call after the Redis store)."""
    from gateway.metrics import hooks

    hooks.init_app(app)
