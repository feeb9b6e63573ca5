"""Redis stopped: RATELIMIT_FAIL_OPEN=false answers 503, =true falls back per process; never 500."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import redis
from flask import Flask

from auth import keys
from devtools.redis_server import RedisServer
from gateway.ratelimit import RECHECK_SECONDS

PATHS = ("/", "/docs", "/_probe/me", "/nowhere")


def stopped_app(make_app: Callable[..., Flask], own_redis: RedisServer, fail_open: bool) -> Flask:
    app = make_app(
        REDIS_URL=own_redis.url,
        RATELIMIT_FAIL_OPEN=str(fail_open).lower(),
        RATELIMIT_ANONYMOUS="3/minute",
    )
    # Prove the app really used this Redis before it goes away.
    assert app.test_client().get("/").headers["X-RateLimit-Remaining"] == "2"
    own_redis.stop()
    return app


@pytest.mark.parametrize("fail_open", [False, True])
def test_no_500_with_redis_stopped(
    make_app: Callable[..., Flask], own_redis: RedisServer, fail_open: bool
) -> None:
    client = stopped_app(make_app, own_redis, fail_open).test_client()
    key = {"Authorization": f"Bearer {keys.generate_secret()}"}
    for path in PATHS:
        for headers in ({}, key):
            answer = client.get(path, headers=headers)
            assert answer.status_code != 500, (path, answer.get_json())
            assert answer.is_json
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503


def test_fail_closed_answers_503(make_app: Callable[..., Flask], own_redis: RedisServer) -> None:
    client = stopped_app(make_app, own_redis, fail_open=False).test_client()
    answer = client.get("/")
    assert answer.status_code == 503
    body = answer.get_json()
    assert body["status_code"] == 503 and body["path"] == "/"
    assert answer.headers["Retry-After"] == "1"
    assert answer.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_fail_open_falls_back_to_per_process_limits(
    make_app: Callable[..., Flask], own_redis: RedisServer, capfd: pytest.CaptureFixture[str]
) -> None:
    client = stopped_app(make_app, own_redis, fail_open=True).test_client()
    # The per-process counters start empty: 3 allowed, then 429, with the usual headers.
    statuses = [client.get("/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert client.get("/").headers["X-RateLimit-Limit"] == "3"
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    assert any("falling back to per-process limits" in line["message"] for line in lines)


@pytest.mark.parametrize("fail_open", [False, True])
def test_login_limit_stays_closed(
    make_app: Callable[..., Flask], own_redis: RedisServer, fail_open: bool
) -> None:
    client = stopped_app(make_app, own_redis, fail_open).test_client()
    answer = client.post("/_probe/login", json={"email": "a@example.com", "password": "x"})
    assert answer.status_code == 503
    assert answer.get_json()["status_code"] == 503


def test_limits_resume_after_a_redis_restart(make_app: Callable[..., Flask], own_redis: RedisServer) -> None:
    app = make_app(REDIS_URL=own_redis.url, RATELIMIT_ANONYMOUS="3/minute")
    client = app.test_client()
    assert client.get("/").status_code == 200
    own_redis.stop()
    assert client.get("/").status_code == 503
    own_redis.start()
    # The limiter's kept connections are stale; it reconnects and reloads its script.
    answer = client.get("/")
    assert answer.status_code == 200
    assert answer.headers["X-RateLimit-Remaining"] == "2"  # a fresh server: counters start again


def test_fail_open_returns_to_redis_when_it_is_back(
    make_app: Callable[..., Flask], own_redis: RedisServer, capfd: pytest.CaptureFixture[str]
) -> None:
    client = stopped_app(make_app, own_redis, fail_open=True).test_client()
    assert client.get("/").status_code == 200  # per-process fallback
    own_redis.start()
    time.sleep(RECHECK_SECONDS + 0.2)
    assert client.get("/").status_code == 200
    assert redis.Redis.from_url(own_redis.url).keys("gw:ratelimit:*")  # counted in Redis again
    messages = [
        json.loads(line)["message"] for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    assert any("storage is back" in m for m in messages)
