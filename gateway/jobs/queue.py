"""The RQ queue the gateway uses, over the same Redis as everything else.

RQ keeps its own key layout (``rq:queue:<name>``, ``rq:job:<id>``, registries);
the gateway only adds its job index under ``gw:jobs:``. Jobs are serialized as
JSON rather than RQ's default pickle, so nothing stored in Redis can make a
worker run arbitrary code when it is loaded.

rq is imported by the functions that need it, not at module level: a web worker
then loads it (about 2 MB of RSS) on its first /jobs request, not at start-up
for every worker whether or not it ever touches a job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
from flask import Flask, current_app

from gateway.redis import redis_from_config

if TYPE_CHECKING:
    from rq import Queue
    from rq.serializers import JSONSerializer

QUEUE_NAME = "gateway"
EXTENSION_KEY = "gateway.jobs.redis"


def serializer() -> type[JSONSerializer]:
    """How jobs are stored: JSON, never pickle."""
    from rq.serializers import JSONSerializer

    return JSONSerializer


def rq_connection(config: Any) -> redis.Redis:
    """A client for RQ: RQ stores bytes (pickled or compressed data), so no decoding."""
    return redis_from_config(config, decode_responses=False)


def bind(app: Flask) -> None:
    """Keep one RQ-ready client per app (connections are opened lazily)."""
    app.extensions[EXTENSION_KEY] = rq_connection(app.config)


def app_connection(app: Flask | None = None) -> redis.Redis:
    return (app or current_app).extensions[EXTENSION_KEY]


def get_queue(connection: redis.Redis) -> Queue:
    from rq import Queue

    return Queue(QUEUE_NAME, connection=connection, serializer=serializer())


def queue_depths(r: redis.Redis) -> dict[str, int]:
    """Jobs waiting per queue (for Prometheus); works with any client, one LLEN."""
    from rq import Queue

    return {QUEUE_NAME: int(r.llen(Queue.redis_queue_namespace_prefix + QUEUE_NAME))}
