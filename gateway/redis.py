"""The one place that builds Redis clients and names Redis keys.

redis-py's defaults let a stalled server hold a worker for many seconds; every
client here has connect and read timeouts well under a second, a bounded retry
and a bounded pool, so a Redis fault becomes a quick 503 instead of a hang.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

# Errors that mean "Redis is unavailable right now" (as opposed to a bug in a command).
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
)

KEY_PREFIX = "gw"


def create_redis(
    url: str,
    *,
    socket_timeout: float = 0.5,
    connect_timeout: float = 0.5,
    max_connections: int = 200,
    decode_responses: bool = True,
    **extra: Any,
) -> redis.Redis:
    """Build a client from a redis://, rediss:// or unix:// URL with bounded waits.

    One retry with a short backoff rides over a dropped idle connection without
    doubling the wait when Redis is really gone.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=30,
        max_connections=max_connections,
        decode_responses=decode_responses,
        client_name="gateway",
        **extra,
    )


def redis_from_config(config: Any, **extra: Any) -> redis.Redis:
    """A client configured from a Flask config mapping (used by the app, the CLI and jobs)."""
    return create_redis(
        config["REDIS_URL"],
        socket_timeout=config["REDIS_SOCKET_TIMEOUT"],
        connect_timeout=config["REDIS_CONNECT_TIMEOUT"],
        max_connections=config["REDIS_MAX_CONNECTIONS"],
        **extra,
    )


def key(*parts: str | int) -> str:
    """Every Redis key of the gateway: ``gw:<area>:<...>``. Areas are listed in ``KEYS``."""
    return ":".join((KEY_PREFIX, *map(str, parts)))


class KEYS:
    """Named key builders, one per stored thing, so key layouts live in one place."""

    # agents
    @staticmethod
    def agent_session(session_id: str) -> str:
        return key("agents", "session", session_id)

    @staticmethod
    def agent_messages(session_id: str) -> str:
        return key("agents", "messages", session_id)

    @staticmethod
    def agent_sessions_index() -> str:
        return key("agents", "sessions")

    @staticmethod
    def agent_sessions_by_owner(owner: str) -> str:
        return key("agents", "owner", owner)

    # events
    @staticmethod
    def events_stream() -> str:
        return key("events", "stream")

    @staticmethod
    def event_idempotency(idempotency_key_digest: str) -> str:
        return key("events", "idem", idempotency_key_digest)

    # metrics
    @staticmethod
    def metrics_counters() -> str:
        return key("metrics", "counters")
