"""Metrics read side: the /metrics JSON summary, from Redis.

It renders what every worker and instance flushed to Redis (see
``gateway.metrics.recorder``), so any worker answers with the deployment's totals.
The Prometheus exposition of the same figures is ``gateway.metrics.prometheus``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from gateway.metrics import store
from gateway.version import __version__


def uptime_seconds(snapshot: store.Snapshot, now: float) -> float:
    """Seconds since the oldest gateway process that is still reporting started.

    So uptime survives rolling restarts of single workers and instances, and goes
    back to zero only when the whole deployment was down.
    """
    starts = [p["started_at"] for p in snapshot.processes]
    return round(max(0.0, now - min(starts)), 3) if starts else 0.0


def summary(snapshot: store.Snapshot, session_stats: dict[str, Any]) -> dict[str, Any]:
    """The FastAPI-era /metrics body (CONTRACT section 7)."""
    now = time.time()
    return {
        "ok": True,
        "backend": "flask",
        "version": __version__,
        "uptime_seconds": uptime_seconds(snapshot, now),
        "active_sessions": int(session_stats.get("active_sessions", 0)),
        "total_messages": int(session_stats.get("total_messages", 0)),
        "total_requests": int(snapshot.value(store.TOTAL_REQUESTS)),
        "total_errors": int(snapshot.value(store.TOTAL_ERRORS)),
        "timestamp": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
    }
