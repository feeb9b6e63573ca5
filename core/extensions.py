"""Extension objects, created bare at import and bound to an app in create_app()."""

from __future__ import annotations

import redis
from flask import Flask, current_app

from core.redis import redis_from_config

EXTENSION_KEY = "gateway.redis"


class RedisStore:
    """Holds the app's one Redis client (built by core.redis) in ``app.extensions``."""

    def init_app(self, app: Flask) -> None:
        # Building the client opens no connection: redis-py connects lazily, so a
        # Redis outage at start-up does not stop the app from serving /healthz.
        app.extensions[EXTENSION_KEY] = redis_from_config(app.config)

    @staticmethod
    def client(app: Flask | None = None) -> redis.Redis:
        return (app or current_app).extensions[EXTENSION_KEY]


redis_store = RedisStore()


def get_redis() -> redis.Redis:
    """The current app's Redis client; views pass it to services as a plain argument."""
    return RedisStore.client()
