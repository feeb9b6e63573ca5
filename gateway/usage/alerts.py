"""Quota alerts: one ``quota.threshold`` event per window per threshold, owned by admin.

``core.signals.quota_window_used`` arrives from the limiter (requests, on a crossing it
told from the decision's figures) and from token quotas (tokens). A crossing of 80 % or
100 % claims a mark with SET NX that expires with the window, so however many requests,
workers and instances see it, one event is appended (and, with ``WEBHOOK_URL``, one
delivery queued for the job worker). Only a crossing costs Redis writes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from flask import Flask

from core import signals
from core.extensions import RedisStore
from core.redis import REDIS_UNAVAILABLE, owner_tag, tagged
from gateway.events import service as events

THRESHOLDS = (0.8, 1.0)
EVENT_TYPE = "quota.threshold"
ADMIN_OWNER = "admin"  # no tenant's owner: only admin, who reads every event, sees these
log = logging.getLogger(__name__)


def mark_key(key_id: str, kind: str, limit: int, window_seconds: int, threshold: float) -> str:
    owner = key_id if ":" in key_id else f"api_key:{key_id}"
    return tagged("usage", owner_tag(owner), "alert", kind, limit, window_seconds, threshold)


def crossed(before: int, after: int, limit: int) -> list[float]:
    """The thresholds passed going from ``before`` to ``after`` units of ``limit``."""
    return [t for t in THRESHOLDS if limit > 0 and before < math.ceil(t * limit) <= after]


def _listener(app: Flask) -> Any:
    def used(sender: Any, **kw: Any) -> None:
        try:
            limit, window = int(kw["limit"]), int(kw["window_seconds"])
            thresholds = crossed(int(kw["before"]), int(kw["after"]), limit)
        except (KeyError, TypeError, ValueError):
            log.warning("quota_window_used without its figures; ignored")
            return
        for threshold in thresholds:
            try:
                alert(app, str(kw["key_id"]), str(kw.get("kind", "requests")), limit, window,
                      int(kw.get("window_start") or time.time()), threshold)  # fmt: skip
            except REDIS_UNAVAILABLE as exc:  # an alert must never fail the request
                log.warning("quota alert not recorded (%s)", type(exc).__name__)

    return used


def alert(app: Flask, key_id: str, kind: str, limit: int, window: int, start: int, threshold: float) -> bool:
    """Append the event (and queue the webhook) unless another process did for this window."""
    r = RedisStore.client(app)
    remaining = max(1, start + window - int(time.time()))
    if not r.set(mark_key(key_id, kind, limit, window, threshold), "1", nx=True, ex=remaining):
        return False
    data = {"key_id": key_id, "limit": limit, "window_seconds": window, "threshold": threshold}
    accepted = events.append_event(
        r, event_type=EVENT_TYPE, data=data, timestamp=None, owner=ADMIN_OWNER,
        max_length=app.config["EVENTS_MAX_LENGTH"], max_bytes=app.config["EVENTS_MAX_BYTES"],
        retention_days=app.config["EVENTS_RETENTION_DAYS"],
    )  # fmt: skip
    log.info("quota alert: %s", json.dumps({**data, "kind": kind}))
    if app.config.get("WEBHOOK_URL"):
        from gateway.jobs import queue, webhooks

        payload = {"event_id": accepted.event_id, "event_type": EVENT_TYPE, "timestamp": accepted.timestamp,
                   "kind": kind, "data": data}  # fmt: skip
        try:
            webhooks.enqueue(queue.app_connection(app), payload)
        except REDIS_UNAVAILABLE as exc:
            log.warning("quota alert webhook not queued (%s)", type(exc).__name__)
    return True


def init_app(app: Flask) -> None:
    receiver = _listener(app)
    app.extensions["gateway.usage.alerts"] = receiver  # blinker holds receivers weakly
    signals.quota_window_used.connect(receiver, sender=app)
