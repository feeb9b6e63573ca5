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

    The pool *blocks* (up to ``socket_timeout``) when all ``max_connections`` are
    in use, rather than failing at once: under gevent a burst of greenlets (say a
    thousand open streams doing their periodic checks) would otherwise turn a
    momentary pool shortage into 503s, and every extra connection costs memory.
    Each connection's parser preallocates ``socket_read_size`` bytes, and a
    worker that had a burst of streams keeps up to ``max_connections`` of them:
    redis-py's 64 KiB default costs ~71 KB of RSS per connection, 16 KiB ~23 KB,
    4 KiB ~11 KB (measured with hiredis). The gateway's replies are small (a key
    record, a counter, a script's answer); the rare large one (a long history) is
    read in more 4 KiB chunks, which hiredis parses incrementally.
    """
    extra.setdefault("socket_read_size", 4 * 1024)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        timeout=socket_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        # No health_check_interval: redis-py would PING (with its own timeout and retry) before
        # the first command on every new connection, so a stalled Redis held a request ~2 s,
        # not ~1 s. The retry above already replaces a dead pooled connection.
        health_check_interval=0,
        max_connections=max_connections,
        decode_responses=decode_responses,
        client_name="gateway",
        **extra,
    )
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # as Redis.from_url does: closing the client closes the pool
    return client


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

    @staticmethod
    def agent_messages_total() -> str:
        return key("agents", "stats", "messages")

    @staticmethod
    def agent_stream(stream_id: str) -> str:
        return key("agents", "stream", stream_id)

    @staticmethod
    def agent_stream_frames(stream_id: str) -> str:
        return key("agents", "stream", stream_id, "frames")

    @staticmethod
    def agent_stream_slots(owner: str) -> str:
        return key("agents", "streams", owner)

    # events
    @staticmethod
    def events_stream() -> str:
        return key("events", "stream")

    @staticmethod
    def events_by_owner(owner: str) -> str:
        # The ids of one owner's events (the global stream's ids), for its own paging.
        return key("events", "owner", owner)

    @staticmethod
    def event_idempotency(idempotency_key_digest: str) -> str:
        return key("events", "idem", idempotency_key_digest)

    # metrics
    @staticmethod
    def metrics_counters() -> str:
        return key("metrics", "counters")

    @staticmethod
    def metrics_processes() -> str:
        return key("metrics", "processes")

    # jobs
    @staticmethod
    def jobs_index() -> str:
        return key("jobs", "index")

    @staticmethod
    def jobs_by_owner(owner: str) -> str:
        return key("jobs", "owner", owner)

    @staticmethod
    def jobs_unfinished(owner: str) -> str:
        # Jobs of one owner not yet ended, for the JOBS_QUEUED_MAX cap.
        return key("jobs", "unfinished", owner)
