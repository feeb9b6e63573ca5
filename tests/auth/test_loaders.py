"""Key resolution: two headers only, the warm path without Redis, last_used_at throttled."""

from __future__ import annotations

from collections.abc import Callable

import redis
from flask import Flask

from auth import keys
from auth.loaders import key_cache, pepper, resolve_key


def _evals(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_eval", "cmdstat_evalsha"))


def test_a_warm_lookup_makes_no_redis_round_trip(
    app: Flask, make_key: Callable[..., str], r: redis.Redis
) -> None:
    secret = make_key(scopes=["jobs:read"])
    with app.test_request_context("/"):
        assert resolve_key(secret) is not None  # cold: one look-up
        before = _evals(r), r.info("stats")["total_commands_processed"]
        for _ in range(20):
            assert resolve_key(secret).has_scope("jobs:read")
        after = _evals(r), r.info("stats")["total_commands_processed"]
    assert after[0] == before[0]
    # Only the INFO calls themselves were processed in between.
    assert after[1] - before[1] <= 2


def test_last_used_is_written_at_most_once_a_minute(
    app: Flask, make_key: Callable[..., str], r: redis.Redis
) -> None:
    secret = make_key()
    client = app.test_client()
    record_id = keys.lookup(r, secret, pepper(app))["id"]
    assert client.get("/auth/me", headers={"X-API-Key": secret}).status_code == 200
    assert keys.get_key(r, record_id)["last_used_at"]
    r.hset(keys.record_key(record_id), "last_used_at", "")
    key_cache(app).clear()  # even a fresh look-up does not write again within the minute
    assert client.get("/auth/me", headers={"X-API-Key": secret}).status_code == 200
    assert keys.get_key(r, record_id)["last_used_at"] is None


def test_keys_are_read_from_two_headers_only(app: Flask, make_key: Callable[..., str]) -> None:
    secret = make_key()
    client = app.test_client()
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert client.get("/auth/me", headers={"Authorization": f"bearer {secret}"}).status_code == 200
    assert client.get("/auth/me", headers={"X-API-Key": secret}).status_code == 200
    assert client.get(f"/auth/me?api_key={secret}").status_code == 401
    assert client.post("/auth/logout", json={"api_key": secret}).status_code == 401
    assert client.post("/auth/logout", data={"key": secret}).status_code == 401
    assert client.get("/auth/me", headers={"Authorization": f"Basic {secret}"}).status_code == 401


def test_me_for_a_key_without_scopes(app: Flask, make_key: Callable[..., str]) -> None:
    secret = make_key(scopes=[], name="bare")
    body = app.test_client().get("/auth/me", headers={"X-API-Key": secret}).get_json()
    assert body["type"] == "api_key" and body["name"] == "bare" and body["scopes"] == []
    assert body["id"].startswith("key_")


def test_admin_implies_every_scope(app: Flask, auth_headers: Callable[..., dict[str, str]]) -> None:
    response = app.test_client().get("/jobs", headers=auth_headers("admin"))
    assert response.status_code == 200
