"""Quota alerts: one quota.threshold event per window per threshold, owned by admin."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from flask import Flask

from auth import keys
from auth.loaders import pepper
from core import signals
from core.redis import KEYS
from gateway import create_app
from gateway.events import service as events


def _alerts(r: redis.Redis) -> list[dict[str, Any]]:
    found = events.list_events(r, after=None, limit=1000, owner=None)
    return [e for e in found if e["event_type"] == "quota.threshold"]


def test_request_quota_crossings_make_one_event_each_across_two_apps(
    test_env: dict[str, str], r: redis.Redis
) -> None:
    first, second = create_app(test_env), create_app(test_env)
    record, secret = keys.create_key(
        r, pepper=pepper(first), name="q", scopes=["events:read"], quota="10/day"
    )
    headers = {"Authorization": f"Bearer {secret}"}
    clients = [first.test_client(), second.test_client()]
    statuses = [clients[n % 2].get("/auth/me", headers=headers).status_code for n in range(16)]
    assert statuses.count(200) == 10 and statuses.count(429) == 6
    alerts = _alerts(r)
    assert sorted(a["data"]["threshold"] for a in alerts) == [0.8, 1.0]
    assert alerts[0]["data"] == {
        "key_id": record["id"],
        "limit": 10,
        "window_seconds": 86400,
        "threshold": 0.8,
    }
    # Owned by admin: the key's own event list does not show them.
    assert events.list_events(r, after=None, limit=100, owner=f"api_key:{record['id']}") == []
    assert int(r.xlen(KEYS.events_by_owner("admin"))) == 2


def test_token_windows_alert_via_the_signal_once_per_threshold(app: Flask, r: redis.Redis) -> None:
    start = int(time.time())
    figures = {
        "key_id": "key_abc",
        "kind": "tokens",
        "limit": 1000,
        "window_seconds": 3600,
        "window_start": start,
    }
    with app.app_context():
        signals.quota_window_used.send(app, before=0, after=500, **figures)
        assert _alerts(r) == []
        signals.quota_window_used.send(app, before=500, after=1000, **figures)  # both at once
        signals.quota_window_used.send(app, before=700, after=900, **figures)  # 80 % again: deduplicated
    alerts = _alerts(r)
    assert sorted(a["data"]["threshold"] for a in alerts) == [0.8, 1.0]
    assert all(a["data"]["window_seconds"] == 3600 for a in alerts)
    marks = r.keys("gw:usage:{k:key_abc}:alert:*")
    assert len(marks) == 2 and all(0 < r.ttl(m) <= 3600 for m in marks)


def test_redis_fault_during_an_alert_does_not_fail(test_env: dict[str, str], r: redis.Redis) -> None:
    app = create_app({**test_env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    with app.app_context():  # logged, never raised into the request
        signals.quota_window_used.send(
            app, key_id="k", kind="tokens", limit=10, window_seconds=60, window_start=0, before=0, after=10
        )


def test_webhook_payload_is_queued_when_configured(test_env: dict[str, str], r: redis.Redis) -> None:
    app = create_app({**test_env, "WEBHOOK_URL": "http://127.0.0.1:9/hook", "WEBHOOK_SECRET": "s3cret"})
    with app.app_context():
        signals.quota_window_used.send(
            app, key_id="key_w", kind="requests", limit=10, window_seconds=60,
            window_start=int(time.time()), before=7, after=8,
        )  # fmt: skip
    from rq import Queue

    from gateway.jobs.queue import rq_connection, serializer

    queue = Queue("gateway", connection=rq_connection(app.config), serializer=serializer())
    (job,) = queue.jobs
    body = json.loads(job.args[0])
    assert body["data"] == {"key_id": "key_w", "limit": 10, "window_seconds": 60, "threshold": 0.8}
    assert "s3cret" not in job.args[0] and "127.0.0.1:9" not in job.args[0]
    assert job.retries_left == 6
