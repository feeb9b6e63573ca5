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
