"""Usage per key per UTC day: counting, reading, retention, access (docs/usage-and-alerts.md)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Flask

from auth import keys
from auth.loaders import pepper
from core import signals
from gateway import create_app
from gateway.usage import buffer, store


def _key(app: Flask, r: redis.Redis, **fields: Any) -> tuple[str, str]:
    record, secret = keys.create_key(r, pepper=pepper(app), name="u", scopes=["admin"], **fields)
    return record["id"], secret


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def test_requests_errors_and_429s_are_counted_across_two_apps(
    test_env: dict[str, str], r: redis.Redis
) -> None:
    first, second = create_app(test_env), create_app(test_env)
    key_id, secret = _key(first, r, rate_limit="5/minute")
    a, b = first.test_client(), second.test_client()
    for _ in range(2):
        assert a.get("/auth/me", headers=_bearer(secret)).status_code == 200
        assert b.get("/auth/me", headers=_bearer(secret)).status_code == 200
    assert a.get("/admin/keys/nope", headers=_bearer(secret)).status_code == 404
    assert b.get("/auth/me", headers=_bearer(secret)).status_code == 429
    buffer.flush_all()
    body = a.get("/auth/usage?days=1", headers=_bearer(secret))
    assert body.status_code == 429  # the usage call itself is over the limit, and counted
    buffer.flush_all()
    day = store.read(r, f"api_key:{key_id}", 1)["days"][0]
    assert day == {"date": _today(), "requests": 7, "errors": 3, "rate_limited": 2, "tokens": 0}


def test_tokens_come_from_the_signal_and_show_in_own_usage(app: Flask, r: redis.Redis) -> None:
    key_id, secret = _key(app, r)
    signals.tokens_counted.send(
        app, key_id=key_id, owner=f"api_key:{key_id}", usage={"total_tokens": 120}, estimated=False
    )
    signals.tokens_counted.send(
        app, key_id=key_id, owner=f"api_key:{key_id}", usage={"total_tokens": 5}, estimated=True
    )
    answer = app.test_client().get("/auth/usage?days=3", headers=_bearer(secret))
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["key_id"] == key_id
    assert [d["date"] for d in body["days"]] == store.days_until(datetime.now(UTC).date(), 3)
    assert body["days"][0] == {"date": body["days"][0]["date"], "requests": 0, "errors": 0,
                               "rate_limited": 0, "tokens": 0}  # fmt: skip
    assert body["days"][-1]["tokens"] == 125
    assert body["totals"]["tokens"] == 125


def test_days_are_oldest_first_zero_filled_and_bounded(app: Flask, r: redis.Redis) -> None:
    key_id, secret = _key(app, r)
    owner = f"api_key:{key_id}"
    today = datetime.now(UTC).date()
    two_days_ago = store.days_until(today, 3)[0]
    r.hset(store.day_key(owner, two_days_ago), mapping={"requests": 4, "tokens": 9})
    body = app.test_client().get("/auth/usage", headers=_bearer(secret)).get_json()
    assert len(body["days"]) == 30
    assert body["days"][-1]["date"] == today.isoformat()
    assert body["days"][-3] == {
        "date": two_days_ago,
        "requests": 4,
        "errors": 0,
        "rate_limited": 0,
        "tokens": 9,
    }
    assert sum(d["requests"] for d in body["days"][:-3]) == 0
    assert body["totals"]["tokens"] == 9
    for bad in ("0", "91", "x", "-1"):
        answer = app.test_client().get(f"/auth/usage?days={bad}", headers=_bearer(secret))
        assert answer.status_code == 400
        assert "error" in answer.get_json()


def test_retention_ttl_is_set(app: Flask, r: redis.Redis) -> None:
    key_id, secret = _key(app, r)
    app.test_client().get("/auth/me", headers=_bearer(secret))
    buffer.flush_all()
    name = store.day_key(f"api_key:{key_id}", _today())
    assert "{k:" + key_id + "}" in name  # the key's hash tag: one slot on a cluster
    assert 89 * 86400 < r.ttl(name) <= 90 * 86400


def test_admin_reads_any_key_a_key_only_itself(
    app: Flask, r: redis.Redis, make_key: Callable[..., str]
) -> None:
    key_id, admin_secret = _key(app, r)
    plain = make_key(scopes=["events:read"])
    client = app.test_client()
    client.get("/auth/me", headers=_bearer(admin_secret))
    answer = client.get(f"/admin/keys/{key_id}/usage?days=2", headers=_bearer(admin_secret))
    assert answer.status_code == 200
    assert answer.get_json()["days"][-1]["requests"] >= 1
    assert client.get(f"/admin/keys/{key_id}/usage", headers=_bearer(plain)).status_code == 403
    assert client.get("/admin/keys/key_nothere/usage", headers=_bearer(admin_secret)).status_code == 404
    own = client.get("/auth/usage?days=1", headers=_bearer(plain)).get_json()
    assert own["key_id"] != key_id
    assert own["days"][-1]["requests"] == 1  # its own 403 only, flushed by the read
    assert own["days"][-1]["errors"] == 1
    assert client.get("/auth/usage").status_code == 401


def test_admin_user_counts_under_its_owner(app: Flask, r: redis.Redis) -> None:
    from auth import users

    users.create_user(r, email="a@example.com", password="correct horse battery")
    client = app.test_client()
    assert (
        client.post(
            "/auth/login", json={"email": "a@example.com", "password": "correct horse battery"}
        ).status_code
        == 200
    )
    body = client.get("/auth/usage?days=1").get_json()
    assert body["key_id"].startswith("user:")
    assert body["days"][0]["requests"] >= 1


def test_no_redis_command_per_request(app: Flask, r: redis.Redis, make_key: Callable[..., str]) -> None:
    """Counting adds no Redis command to a request: usage commands come only from flushes."""
    secret = make_key(scopes=["events:read"])
    client = app.test_client()
    client.get("/auth/me", headers=_bearer(secret))
    buffer.flush_all()
    r.config_resetstat()
    for _ in range(20):
        assert client.get("/auth/me", headers=_bearer(secret)).status_code == 200
    stats = r.info("commandstats")
    hincrby = stats.get("cmdstat_hincrby", {}).get("calls", 0)
    assert hincrby <= 3  # at most a flush per second, never one per request
    buffer.flush_all()
    assert r.info("commandstats")["cmdstat_hincrby"]["calls"] >= 1


def test_unflushed_counts_survive_a_redis_fault(r: redis.Redis) -> None:
    shared = buffer.UsageBuffer(redis.Redis(port=1, socket_connect_timeout=0.2))
    shared.add("api_key:key_x", "requests")
    assert shared.flush(quiet=True) is False
    shared.redis = r
    assert shared.flush() is True
    assert store.read(r, "api_key:key_x", 1)["days"][0]["requests"] == 1
