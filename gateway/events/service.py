"""Events: an append-only Redis Stream of bounded length and age, with an index per owner.

The global stream holds every event (admin reads it). Each owner also has an index
stream holding only ids, the same ids as the global stream's entries, so a tenant pages
through its own events with ``after=<event_id>`` exactly as admin pages through all, while
each payload is stored once. Both are written by one script, so the ids in an owner's index
always increase and never point at an event the global stream has not written.

Bounds (README "Limits per tenant"):

* the global stream is trimmed with ``MAXLEN ~`` (approximate trimming lets Redis drop whole
  macro nodes, much cheaper than exact) to ``EVENTS_MAX_LENGTH`` entries and a little more,
  and by ``MINID`` to events younger than ``EVENTS_RETENTION_DAYS`` (exact: each append only
  drops what aged out since the last one);
* an owner's index never reaches behind the global stream's oldest entry (trimmed on each
  write and read of it), holds at most about ``EVENTS_MAX_LENGTH`` ids, and expires after
  ``EVENTS_RETENTION_DAYS`` without a write;
* one event (``event_type`` + ``data`` as stored JSON) is at most ``EVENTS_MAX_BYTES``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from core.idempotency import TTL_SECONDS as IDEMPOTENCY_TTL_SECONDS
from core.idempotency import IdempotencyConflict, digest, scoped_digest
from core.redis import KEYS, LuaScript, replicated

DAY_SECONDS = 24 * 3600
# The defaults of EVENTS_MAX_BYTES and EVENTS_RETENTION_DAYS, for callers outside a request.
DEFAULT_MAX_BYTES = 65536
DEFAULT_RETENTION_DAYS = 30

# Check-then-append in one script: two concurrent repeats of one Idempotency-Key cannot
# both append, and the global stream and the owner's index get the same id, in order,
# because Redis runs a script without interleaving others. Redis's own clock (TIME) sets
# the age cut, the clock that also mints the stream ids.
_APPEND = LuaScript(
    """
if KEYS[3] then
  local previous = redis.call('GET', KEYS[3])
  if previous then return {0, previous} end
end
local now = redis.call('TIME')
local cutoff = math.max(0, tonumber(now[1]) * 1000 - tonumber(ARGV[2]))
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 7))
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', cutoff))
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
redis.call('XTRIM', KEYS[2], 'MINID', oldest)
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id, 'e', '')
if type(added) == 'table' and added.err then
  -- The index is ahead of a global stream that was deleted and began again: start it anew.
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[2], id, 'e', '')
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
if KEYS[3] then
  local first = cjson.encode({id = id, timestamp = ARGV[5], request = ARGV[4]})
  redis.call('SET', KEYS[3], first, 'EX', ARGV[6])
end
return {1, id}
"""
)

# One owner's page: its index is first cut to what the global stream still holds, so
# every id left resolves to an event and a page is never short while more events exist.
_OWNER_PAGE = LuaScript(
    """
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
if oldest then redis.call('XTRIM', KEYS[2], 'MINID', oldest[1]) else redis.call('DEL', KEYS[2]) end
local events = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])) do
  local found = redis.call('XRANGE', KEYS[1], entry[1], entry[1])[1]
  if found then events[#events + 1] = found end
end
return events
"""
)


MAX_ID_PART = 2**64 - 1  # each half of a stream id is an unsigned 64-bit integer


class EventTooLarge(ValueError):
    """The event is over EVENTS_MAX_BYTES."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event is {size} bytes, over the {limit}-byte limit")
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class Accepted:
    event_id: str
    timestamp: str
    replayed: bool


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(event_type: str, data: Any, timestamp: str, owner: str) -> dict[str, str]:
    return {
        "event_type": event_type,
        "data": json.dumps(data, separators=(",", ":")),
        "timestamp": timestamp,
        "received_at": now_iso(),
        "posted_by": owner,
    }


def stored_size(fields: dict[str, str]) -> int:
    """What EVENTS_MAX_BYTES bounds: event_type plus data as the JSON stored, in UTF-8 bytes."""
    return len(fields["event_type"].encode()) + len(fields["data"].encode())


def append_event(
    r: redis.Redis,
    *,
    event_type: str,
    data: Any,
    timestamp: str | None,
    owner: str,
    max_length: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    idempotency_key: str | None = None,
) -> Accepted:
    """Append one event owned by ``owner``; with an idempotency key, a repeat returns the first.

    Raises EventTooLarge above ``max_bytes`` and IdempotencyConflict for a reused key.
    """
    # The request as the client sent it (its own timestamp or none) identifies a repeat.
    request_digest = digest(event_type, json.dumps(data, sort_keys=True), timestamp or "")
    timestamp = timestamp or now_iso()
    fields = _fields(event_type, data, timestamp, owner)
    size = stored_size(fields)
    if size > max_bytes:
        raise EventTooLarge(size, max_bytes)
    keys = [KEYS.events_stream(), KEYS.events_by_owner(owner)]
    if idempotency_key is not None:
        # Keys are per identity (two clients may pick the same key) and stored only as digests.
        keys.append(KEYS.event_idempotency(scoped_digest(owner, idempotency_key)))
    flat = [item for pair in fields.items() for item in pair]
    retention = retention_days * DAY_SECONDS
    args = (max_length, retention * 1000, retention, request_digest, timestamp, IDEMPOTENCY_TTL_SECONDS)
    # The script's writes and WAIT share one connection (replicated pins it). A replay
    # waits too: its first answer may not have reached the replicas yet.
    with replicated(r):
        created, value = _APPEND(r, keys, [*args, *flat])
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


def _start(after: str | None) -> str:
    """The XRANGE start strictly after ``after``; ValueError for an id Redis cannot step past."""
    if after is None:
        return "-"
    ms, _, seq = after.partition("-")
    if not (ms.isdigit() and seq.isdigit()) or max(int(ms), int(seq)) > MAX_ID_PART:
        raise ValueError("invalid event id")
    if int(ms) == int(seq) == MAX_ID_PART:
        raise ValueError("no event id comes after the largest one")
    return f"({after}"


def list_events(r: redis.Redis, *, after: str | None, limit: int, owner: str | None) -> list[dict[str, Any]]:
    """Up to ``limit`` events strictly after ``after`` (an event id), oldest first.

    ``owner`` None reads every event (admin); otherwise only that owner's own.
    """
    start = _start(after)
    if owner is None:
        entries = r.xrange(KEYS.events_stream(), min=start, max="+", count=limit)
    else:
        keys = (KEYS.events_stream(), KEYS.events_by_owner(owner))
        entries = [(entry[0], _pairs(entry[1])) for entry in _OWNER_PAGE(r, list(keys), [start, limit])]
    return [_event(_text(entry_id), {_text(k): _text(v) for k, v in f.items()}) for entry_id, f in entries]


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    """A stream entry's fields as a script returns them (a flat list) into a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def stream_length(r: redis.Redis, *, owner: str | None) -> int:
    """Events kept: all of them (``owner`` None), or the owner's own."""
    return int(r.xlen(KEYS.events_stream() if owner is None else KEYS.events_by_owner(owner)))
