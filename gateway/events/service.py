"""Events: an append-only Redis Stream of bounded length, with Idempotency-Key dedup.

The stream is trimmed with ``MAXLEN ~`` (approximate trimming lets Redis drop
whole macro nodes, which is much cheaper than exact trimming), so it keeps at
least ``EVENTS_MAX_LENGTH`` entries and a little more. Event ids are the stream
ids: they sort by time, which is what makes ``after=<event_id>`` paging work.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from gateway.redis import KEYS

IDEMPOTENCY_TTL_SECONDS = 24 * 3600

# Check-then-append in one script: two concurrent repeats of one Idempotency-Key
# cannot both append, because Redis runs a script without interleaving others.
_APPEND_ONCE = """
local previous = redis.call('GET', KEYS[1])
if previous then return {0, previous} end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 5))
local first = cjson.encode({id = id, timestamp = ARGV[3], request = ARGV[2]})
redis.call('SET', KEYS[1], first, 'EX', ARGV[4])
return {1, id}
"""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


@dataclass(frozen=True)
class Accepted:
    event_id: str
    timestamp: str
    replayed: bool


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _fields(event_type: str, data: Any, timestamp: str, owner: str) -> dict[str, str]:
    return {
        "event_type": event_type,
        "data": json.dumps(data, separators=(",", ":")),
        "timestamp": timestamp,
        "received_at": now_iso(),
        "posted_by": owner,
    }


def append_event(
    r: redis.Redis,
    *,
    event_type: str,
    data: Any,
    timestamp: str | None,
    owner: str,
    max_length: int,
    idempotency_key: str | None = None,
) -> Accepted:
    """Append one event; with an idempotency key, a repeat returns the first event instead."""
    # The request as the client sent it (its own timestamp or none) identifies a repeat.
    request_digest = _digest(event_type, json.dumps(data, sort_keys=True), timestamp or "")
    timestamp = timestamp or now_iso()
    fields = _fields(event_type, data, timestamp, owner)
    if idempotency_key is None:
        event_id = r.xadd(KEYS.events_stream(), fields, maxlen=max_length, approximate=True)
        return Accepted(_text(event_id), timestamp, replayed=False)
    # Keys are per identity (two clients may pick the same key) and stored only as digests.
    idem_key = KEYS.event_idempotency(_digest(owner, idempotency_key))
    flat = [item for pair in fields.items() for item in pair]
    args = (max_length, request_digest, timestamp, IDEMPOTENCY_TTL_SECONDS, *flat)
    created, value = r.eval(_APPEND_ONCE, 2, idem_key, KEYS.events_stream(), *args)
    if created:
        return Accepted(_text(value), timestamp, replayed=False)
    first = json.loads(_text(value))
    if first["request"] != request_digest:
        raise IdempotencyConflict
    return Accepted(first["id"], first["timestamp"], replayed=True)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _event(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    return {
        "event_id": entry_id,
        "event_type": fields.get("event_type"),
        "data": json.loads(fields.get("data") or "null"),
        "timestamp": fields.get("timestamp"),
        "received_at": fields.get("received_at"),
        "posted_by": fields.get("posted_by"),
    }


def list_events(r: redis.Redis, *, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` events strictly after ``after`` (an event id), oldest first."""
    start = f"({after}" if after else "-"
    try:
        entries = r.xrange(KEYS.events_stream(), min=start, max="+", count=limit)
    except redis.ResponseError as exc:  # an id Redis cannot step past, e.g. beyond 64 bits
        raise ValueError("invalid event id") from exc
    return [_event(_text(entry_id), {_text(k): _text(v) for k, v in f.items()}) for entry_id, f in entries]


def stream_length(r: redis.Redis) -> int:
    return int(r.xlen(KEYS.events_stream()))
