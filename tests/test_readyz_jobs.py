"""/readyz probes the jobs Redis when JOBS_REDIS_URL names another server than REDIS_URL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from devtools.redis_server import RedisServer


def test_readyz_is_unready_while_the_jobs_redis_is_down(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    jobs = RedisServer(tmp_path / "jobs").start()
    try:
        client = make_app(JOBS_REDIS_URL=jobs.url).test_client()
        up = client.get("/readyz")
        assert up.status_code == 200 and up.get_json()["checks"]["jobs_redis"]["status"] == "ok"
    finally:
        jobs.stop()
    down = client.get("/readyz")
    body = down.get_json()
    assert down.status_code == 503 and body["ready"] is False and body["status"] == "unhealthy"
    assert body["checks"]["jobs_redis"]["status"] == "unavailable"
    assert body["checks"]["redis"]["status"] == "ok"  # the main Redis is fine: the queue's is not


def test_readyz_does_not_probe_the_same_redis_twice(client: FlaskClient) -> None:
    assert "jobs_redis" not in client.get("/readyz").get_json()["checks"]
