"""Fixtures: a real redis-server per test session, the app, its clients, keys, gunicorn."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from auth import keys
from auth.loaders import pepper
from auth.scopes import ALL_SCOPES
from devtools.gunicorn import GunicornServer
from devtools.redis_server import RedisServer
from gateway import create_app
from gateway.usage import buffer as usage_buffer
from tests.support.probes import add_probe_routes


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the suite's own on a free port (never the machine's shared one)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def test_env(redis_url: str) -> dict[str, str]:
    """Environment for a testing app; tests add to it before building the app."""
    return {"FLASK_ENV": "testing", "REDIS_URL": redis_url}


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A direct client to the suite's Redis, flushed before each test.

    Usage counts are buffered per process and Redis URL (gateway.usage.buffer): an earlier
    test's app would flush its leftovers into this test's empty Redis, so they go first."""
    usage_buffer.discard_all()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def app(test_env: dict[str, str], r: redis.Redis) -> Flask:
    return create_app(test_env)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def make_key(app: Flask, r: redis.Redis) -> Callable[..., str]:
    """Create a stored API key and return its secret: ``make_key(scopes=[...], rate_limit=...)``."""

    def make(scopes: tuple[str, ...] | list[str] = ALL_SCOPES, name: str = "test", **fields: Any) -> str:
        _, secret = keys.create_key(r, pepper=pepper(app), name=name, scopes=list(scopes), **fields)
        return secret

    return make


@pytest.fixture
def auth_headers(make_key: Callable[..., str]) -> Callable[..., dict[str, str]]:
    """``auth_headers("agents:write")`` → headers carrying a fresh key with those scopes."""

    def headers(*scopes: str, **fields: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_key(scopes=scopes or ALL_SCOPES, **fields)}"}

    return headers


@pytest.fixture
def gunicorn(
    test_env: dict[str, str], tmp_path: Path, r: redis.Redis
) -> Iterator[Callable[..., GunicornServer]]:
    """Start real gunicorn servers: ``gunicorn(workers=2, env={...})``; all stopped at teardown."""
    started: list[GunicornServer] = []

    def start(workers: int = 2, env: dict[str, str] | None = None) -> GunicornServer:
        log = tmp_path / f"gunicorn-{len(started)}.log"
        server = GunicornServer({**test_env, **(env or {})}, workers=workers, log_path=log)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def make_app(test_env: dict[str, str], r: object) -> Callable[..., Flask]:
    """``make_app(RATELIMIT_ANONYMOUS="3/minute", ...)``: a testing app with probe routes."""

    def make(**env: str) -> Flask:
        return add_probe_routes(create_app({**test_env, **env}))

    return make
