"""The audit log of admin actions: a capped Redis list, newest first.

Entries record who (owner and name of the identity, or ``cli``), what
(``key.create``...), which key or user, when and from which IP. They never hold
a secret: callers pass ids and public fields only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from auth.keys import now_iso
from core.redis import KEYS

MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Actor:
    """Who performs an admin action: ``owner`` is ``user:<id>``, ``api_key:<id>`` or ``cli``."""

    owner: str
    name: str
    ip: str | None = None


def log_key() -> str:
    return KEYS.audit_log()


def record(
    r: redis.Redis,
    actor: Actor,
    action: str,
    *,
    key_id: str | None = None,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one entry (LPUSH + LTRIM in one transaction) and return it."""
    entry = {
        "at": now_iso(),
        "actor": actor.owner,
        "actor_name": actor.name,
        "action": action,
        "key_id": key_id,
        "target": target,
        "ip": actor.ip,
        "details": details or {},
    }
    pipe = r.pipeline(transaction=True)
    pipe.lpush(log_key(), json.dumps(entry))
    pipe.ltrim(log_key(), 0, MAX_ENTRIES - 1)
    pipe.execute()
    return entry


def recent(r: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` entries, newest first."""
    return [json.loads(raw) for raw in r.lrange(log_key(), 0, max(0, limit - 1))]
