"""Events: POST /events appends to a bounded Redis Stream, GET /events pages through it."""

from __future__ import annotations

from gateway.events.routes import bp

__all__ = ["bp"]
