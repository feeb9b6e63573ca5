"""The Redis layout of usage: one hash per identity per UTC day, in the identity's slot.

``gw:usage:{k:<key id>}:day:<YYYY-MM-DD>`` (``{u:<user id>}`` for admin users) holds the
fields ``requests``, ``errors``, ``rate_limited`` and ``tokens``. Every hash expires
``RETENTION_DAYS`` after its last write, so what is kept is bounded however long a key lives.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from core.redis import cross_slot_pipeline, owner_tag, tagged

FIELDS = ("requests", "errors", "rate_limited", "tokens")
RETENTION_DAYS = 90
RETENTION_SECONDS = RETENTION_DAYS * 24 * 3600
DAY_SECONDS = 24 * 3600


def tokens_by_key() -> str:
    """Lifetime tokens per identity (a sorted set: Prometheus shows its top few)."""
    return tagged("usage", "usage", "tokens_by_key")


def tokens_total() -> str:
    return tagged("usage", "usage", "tokens_total")


def key_label(owner: str) -> str:
    """The key id of ``api_key:<id>``; an admin user stays ``user:<id>`` (as in the usage JSON)."""
    kind, _, rest = owner.partition(":")
    return rest if kind == "api_key" else owner


def top_tokens(r: Any, count: int) -> tuple[list[tuple[str, int]], int]:
    """The ``count`` identities with the most tokens, and the tokens of all the others."""
    pipe = r.pipeline(transaction=False)
    pipe.zrevrange(tokens_by_key(), 0, max(0, count) - 1, withscores=True)
    pipe.get(tokens_total())
    top, total = pipe.execute()
    top = [] if count <= 0 else [(_text(who), int(score)) for who, score in top]
    return top, max(0, int(total or 0) - sum(n for _, n in top))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def day_key(owner: str, day: str) -> str:
    return tagged("usage", owner_tag(owner), "day", day)


def day_name(day_number: int) -> str:
    """``YYYY-MM-DD`` of a day counted from the epoch (UTC)."""
    return (date(1970, 1, 1) + timedelta(days=day_number)).isoformat()


def write(r: Any, deltas: Mapping[tuple[str, int], Mapping[str, int]]) -> None:
    """Add every (owner, day) delta in one pipeline; each hash's expiry restarts."""
    if not deltas:
        return
    pipe = cross_slot_pipeline(r)
    for (owner, day_number), fields in deltas.items():
        name = day_key(owner, day_name(day_number))
        for field, count in fields.items():
            if count:
                pipe.hincrby(name, field, count)
        pipe.expire(name, RETENTION_SECONDS)
        tokens = fields.get("tokens", 0)
        if tokens:
            pipe.zincrby(tokens_by_key(), tokens, key_label(owner))
            pipe.incrby(tokens_total(), tokens)
    pipe.execute()


def days_until(today: date, count: int) -> list[str]:
    """The ``count`` days ending with ``today``, oldest first."""
    return [(today - timedelta(days=offset)).isoformat() for offset in range(count - 1, -1, -1)]


def read(r: Any, owner: str, count: int, today: date | None = None) -> dict[str, Any]:
    """The last ``count`` days (today included, oldest first, zero-filled) and their totals."""
    today = today or datetime.now(UTC).date()
    names = days_until(today, count)
    pipe = r.pipeline(transaction=False)  # one slot: every key carries the identity's tag
    for day in names:
        pipe.hgetall(day_key(owner, day))
    days = []
    totals = dict.fromkeys(FIELDS, 0)
    for day, stored in zip(names, pipe.execute(), strict=True):
        row: dict[str, Any] = {"date": day}
        for field in FIELDS:
            value = _int(stored, field)
            row[field] = value
            totals[field] += value
        days.append(row)
    return {"days": days, "totals": totals}


def _int(stored: Mapping[Any, Any], field: str) -> int:
    value = stored.get(field)
    if value is None:
        value = stored.get(field.encode())
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
