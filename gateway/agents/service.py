"""Agent sessions and their messages in Redis, shared by every worker and instance.

Layout (names from ``core.redis.KEYS``):

* ``agent_session(id)``: hash ``id, created_by, created_at, last_activity``.
* ``agent_messages(id)``: list of JSON messages, oldest first, trimmed to the
  last ``HISTORY_LIMIT``.
* ``agent_sessions_index()`` and ``agent_sessions_by_owner(owner)``: sorted sets
  of session ids scored by last activity, for lists and counts.
* ``agent_messages_total()``: count of every message stored (monotonic, like a
  Prometheus counter).

A session expires ``SESSION_TTL_SECONDS`` after its last write: every write
refreshes the TTLs of the hash, the list and the owner's index together, and
the indexes drop members whose score is older than that on read.

An identity keeps at most ``AGENT_SESSIONS_MAX`` live sessions: creating one is a
script that prunes the owner's index, counts and writes, so concurrent creations on
any number of workers cannot pass the cap.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis

from core.redis import KEYS, LuaScript, cross_slot_pipeline

SESSION_TTL_SECONDS = 7 * 24 * 3600
HISTORY_LIMIT = 1000
LIST_LIMIT = 1000  # sessions returned by one list call (newest activity first); total counts all
DEFAULT_SESSIONS_MAX = 1000  # AGENT_SESSIONS_MAX's default, for callers outside a request

# KEYS: the owner's index. ARGV: id, now, cutoff, ttl, max. The cap counted and the place
# taken in one step; the session's own keys (another slot on a cluster) follow.
_TAKE_PLACE = LuaScript(
    """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""
)


class SessionNotFound(LookupError):
    """No such session, expired, or owned by someone else (all look the same to the caller)."""


class SessionLimitReached(Exception):
    """The identity already keeps AGENT_SESSIONS_MAX live sessions."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} sessions kept")
        self.limit = limit


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _touch(pipe: Any, session_id: str, owner: str, now: float) -> None:
    """Queue the writes that mark activity and push the 7-day expiry forward."""
    pipe.hset(KEYS.agent_session(session_id), "last_activity", _now_iso())
    pipe.expire(KEYS.agent_session(session_id), SESSION_TTL_SECONDS)
    pipe.expire(KEYS.agent_messages(session_id), SESSION_TTL_SECONDS)
    pipe.zadd(KEYS.agent_sessions_index(), {session_id: now})
    pipe.zadd(KEYS.agent_sessions_by_owner(owner), {session_id: now})
    pipe.expire(KEYS.agent_sessions_by_owner(owner), SESSION_TTL_SECONDS)


def create_session(r: redis.Redis, *, owner: str, max_sessions: int = DEFAULT_SESSIONS_MAX) -> str:
    """Store a new, empty session owned by ``owner`` and return its id.

    Raises SessionLimitReached when ``owner`` already keeps ``max_sessions`` live sessions.
    """
    session_id = str(uuid.uuid4())
    now = time.time()
    by_owner = KEYS.agent_sessions_by_owner(owner)
    args = [session_id, now, now - SESSION_TTL_SECONDS, SESSION_TTL_SECONDS, max_sessions]
    if not int(_TAKE_PLACE(r, [by_owner], args)):
        raise SessionLimitReached(max_sessions)
    created = _now_iso()
    pipe = cross_slot_pipeline(r)  # the session's slot and the global index's
    pipe.hset(
        KEYS.agent_session(session_id),
        mapping={"id": session_id, "created_by": owner, "created_at": created, "last_activity": created},
    )
    pipe.expire(KEYS.agent_session(session_id), SESSION_TTL_SECONDS)
    pipe.zadd(KEYS.agent_sessions_index(), {session_id: now})
    try:
        pipe.execute()
    except BaseException:
        with contextlib.suppress(Exception):  # give the place back; else it lapses with the cutoff
            r.zrem(by_owner, session_id)
        raise
    return session_id


def get_session(r: redis.Redis, *, session_id: str, owner: str, see_all: bool = False) -> dict[str, str]:
    """The session record, if it exists and ``owner`` may see it (``see_all`` for admins)."""
    record = r.hgetall(KEYS.agent_session(session_id)) if session_id else {}
    if not record or (not see_all and record.get("created_by") != owner):
        raise SessionNotFound(session_id)
    return record


def add_message(
    r: redis.Redis,
    *,
    session: dict[str, str],
    role: str,
    content: str,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Append a message to ``session``'s history (trimming the oldest) and return it. A
    generated reply keeps its ``usage``: a replay shows it again and counts nothing."""
    session_id = session["id"]
    message: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "session_id": session_id,
        "role": role,
        "content": content,
        "timestamp": _now_iso(),
    }
    if usage is not None:
        message["usage"] = usage
    pipe = cross_slot_pipeline(r)  # the session's keys, its owner's index, the global ones
    pipe.rpush(KEYS.agent_messages(session_id), json.dumps(message))
    pipe.ltrim(KEYS.agent_messages(session_id), -HISTORY_LIMIT, -1)
    _touch(pipe, session_id, session["created_by"], time.time())
    pipe.incr(KEYS.agent_messages_total())
    pipe.execute()
    return message


def list_messages(r: redis.Redis, *, session_id: str) -> list[dict[str, Any]]:
    """The session's kept messages, oldest first."""
    return [json.loads(raw) for raw in r.lrange(KEYS.agent_messages(session_id), 0, -1)]


def conversation(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The history as a backend conversation: role and content only."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def list_sessions(r: redis.Redis, *, owner: str, see_all: bool = False) -> tuple[list[dict[str, Any]], int]:
    """(sessions newest activity first, at most LIST_LIMIT; total visible sessions)."""
    index = KEYS.agent_sessions_index() if see_all else KEYS.agent_sessions_by_owner(owner)
    cutoff = time.time() - SESSION_TTL_SECONDS
    pipe = r.pipeline(transaction=False)
    pipe.zremrangebyscore(index, "-inf", f"({cutoff}")
    pipe.zcard(index)
    pipe.zrevrange(index, 0, LIST_LIMIT - 1)
    _, total, ids = pipe.execute()
    pipe = r.pipeline(transaction=False)
    for session_id in ids:
        pipe.hgetall(KEYS.agent_session(session_id))
        pipe.llen(KEYS.agent_messages(session_id))
    results = pipe.execute()
    sessions = [
        _summary(record, count) for record, count in zip(results[::2], results[1::2], strict=True) if record
    ]
    # Records missing under a pruned-late index entry are not counted when the page holds all.
    return sessions, len(sessions) if int(total) <= LIST_LIMIT else int(total)


def _summary(record: dict[str, str], message_count: int) -> dict[str, Any]:
    return {
        "session_id": record["id"],
        "created_by": record.get("created_by"),
        "created_at": record.get("created_at"),
        "last_activity": record.get("last_activity"),
        "message_count": int(message_count),
    }


def session_stats(r: redis.Redis) -> dict[str, int]:
    """Counts for /metrics: sessions active within the expiry window and messages ever stored."""
    cutoff = time.time() - SESSION_TTL_SECONDS
    pipe = r.pipeline(transaction=False)
    pipe.zcount(KEYS.agent_sessions_index(), f"({cutoff}", "+inf")
    pipe.get(KEYS.agent_messages_total())
    active, total = pipe.execute()
    return {"active_sessions": int(active), "total_messages": int(total or 0)}
