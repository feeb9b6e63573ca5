"""Fixtures shared with tests/ratelimit (defined there, in one place)."""

from __future__ import annotations

from tests.ratelimit.conftest import add_probe_routes, make_app, own_redis

__all__ = ["add_probe_routes", "make_app", "own_redis"]
