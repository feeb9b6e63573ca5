"""The RQ queue the gateway uses, on ``JOBS_REDIS_URL`` (by default ``REDIS_URL``'s Redis).

RQ has no Cluster support: with a cluster ``REDIS_URL`` the queue needs a standalone or
Sentinel Redis of its own, which config refuses to start without. The gateway's job
index (``gw:jobs:``) lives beside the queue, on the same Redis, so one enqueue's writes
share one server (and one WAIT).

RQ keeps its own key layout (``rq:queue:<name>``, ``rq:job:<id>``, registries);
the gateway only adds its job index under ``gw:jobs:``. Jobs are serialized as
JSON rather than RQ's default pickle, so nothing stored in Redis can make a
worker run arbitrary code when it is loaded.

rq is imported by the functions that need it, not at module level: a web worker
then loads it (about 2 MB of RSS) on its first /jobs request, not at start-up
for every worker whether or not it ever touches a job.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import redis
from flask import Flask, current_app

from core.redis import redis_from_config

if TYPE_CHECKING:
    from rq import Queue
    from rq.serializers import JSONSerializer

QUEUE_NAME = "gateway"  # the shared queue of earlier releases; workers still drain it
OWNER_QUEUE_PREFIX = QUEUE_NAME + ".owner."
EXTENSION_KEY = "gateway.jobs.redis"


def serializer() -> type[JSONSerializer]:
    """How jobs are stored: JSON, never pickle."""
    from rq.serializers import JSONSerializer

    return JSONSerializer


def rq_connection(config: Any) -> redis.Redis:
    """A client for RQ: RQ stores bytes (pickled or compressed data), so no decoding."""
    setting = "JOBS_REDIS_URL" if config.get("JOBS_REDIS_URL") else "REDIS_URL"
    return redis_from_config(config, url_setting=setting, decode_responses=False)


def bind(app: Flask) -> None:
    """Keep one RQ-ready client per app (connections are opened lazily)."""
    app.extensions[EXTENSION_KEY] = rq_connection(app.config)


def app_connection(app: Flask | None = None) -> redis.Redis:
    return (app or current_app).extensions[EXTENSION_KEY]


def owner_queue_name(owner: str) -> str:
    """Each owner's jobs wait in a queue of their own, so workers can take turns between owners.

    Named by a digest: owner ids stay out of RQ's key names and logs, and any id makes a name.
    """
    return OWNER_QUEUE_PREFIX + hashlib.sha256(owner.encode()).hexdigest()[:24]


def get_queue(connection: redis.Redis, owner: str | None = None) -> Queue:
    from rq import Queue

    name = QUEUE_NAME if owner is None else owner_queue_name(owner)
    return Queue(name, connection=connection, serializer=serializer())


def is_gateway_queue(name: str) -> bool:
    return name == QUEUE_NAME or name.startswith(OWNER_QUEUE_PREFIX)


def gateway_queues(connection: redis.Redis) -> list[Queue]:
    """Every queue the gateway enqueues to, as RQ registers them (its ``rq:queues`` set)."""
    from rq import Queue

    queues = Queue.all(connection=connection, serializer=serializer())
    return sorted((q for q in queues if is_gateway_queue(q.name)), key=lambda q: q.name)


def queues_with_work(connection: redis.Redis) -> list[Queue]:
    """The gateway queues holding a waiting job or a retry due later, in one round trip.

    Owners' queues stay in RQ's registry once made; a worker that listened on all of them
    would pop from one queue per owner that ever enqueued, idle ones included.
    """
    queues = gateway_queues(connection)
    pipe = connection.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue.key)
        pipe.zcard(queue.scheduled_job_registry.key)
    counts = pipe.execute() if queues else []
    return [
        q for q, waiting, later in zip(queues, counts[::2], counts[1::2], strict=True) if waiting or later
    ]


def queue_depths(r: redis.Redis) -> dict[str, int]:
    """Jobs waiting, all owners together (one label: owners are unbounded and private)."""
    from rq import Queue

    names = [_text(n) for n in r.smembers(Queue.redis_queues_keys)]
    keys = [n for n in names if is_gateway_queue(n.removeprefix(Queue.redis_queue_namespace_prefix))]
    pipe = r.pipeline(transaction=False)
    for name in keys:
        pipe.llen(name)
    return {QUEUE_NAME: sum(int(n) for n in pipe.execute()) if keys else 0}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
