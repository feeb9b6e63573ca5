"""Redis faults seen through a real gunicorn: stopped, restarted, paused.

Each test starts a Redis of its own (not the suite's) so it can stop and pause it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from auth import keys
from auth.loaders import pepper
from devtools.gunicorn import GunicornServer
from devtools.redis_server import RedisServer
from gateway import create_app

pytestmark = pytest.mark.gunicorn

# Generous bounds that catch a hang, not a speed target.
FAULT_ANSWER_WITHIN = 3.0
PAUSED_ANSWER_WITHIN = 2.5


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis this test may stop and restart on the same port; append-only so data survives."""
    server = RedisServer(tmp_path / "own-redis", persist=True).start()
    yield server
    server.stop()


@pytest.fixture
def served(
    own_redis: RedisServer, test_env: dict[str, str], gunicorn: Callable[..., GunicornServer]
) -> tuple[GunicornServer, dict[str, str]]:
    """gunicorn (2 workers) on ``own_redis`` and headers with a key stored there."""
    env = {**test_env, "REDIS_URL": own_redis.url}
    store = redis.Redis.from_url(own_redis.url, decode_responses=True)
    _, secret = keys.create_key(
        store, pepper=pepper(create_app(env)), name="faults", scopes=["agents:write", "events:read"]
    )
    store.close()
    return gunicorn(workers=2, env={"REDIS_URL": own_redis.url}), {"Authorization": f"Bearer {secret}"}


def probe_headers(path: str, headers: dict[str, str]) -> dict[str, str]:
    """Probes come without credentials (as from a load balancer); data requests with a key."""
    return {} if path in ("/healthz", "/readyz") else headers


def timed(method: str, url: str, **kwargs: object) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.request(method, url, timeout=15, **kwargs)  # type: ignore[arg-type]
    return response, time.monotonic() - started


# Routes whose answers need Redis: readiness, a write and a read of the data API.
DATA_REQUESTS = [("GET", "/readyz"), ("POST", "/agents/session"), ("GET", "/events")]


def assert_working(server: GunicornServer, headers: dict[str, str]) -> None:
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 200
    assert requests.post(server.url + "/agents/session", headers=headers, timeout=5).status_code == 201
    assert requests.get(server.url + "/events", headers=headers, timeout=5).status_code == 200


def test_redis_stopped_then_restarted(
    served: tuple[GunicornServer, dict[str, str]], own_redis: RedisServer
) -> None:
    server, headers = served
    assert_working(server, headers)
    port = own_redis.port
    own_redis.stop()

    healthz, seconds = timed("GET", server.url + "/healthz")
    assert healthz.status_code == 200 and healthz.text == "ok"
    assert seconds < 1.0
    for method, path in DATA_REQUESTS:
        answer, seconds = timed(method, server.url + path, headers=probe_headers(path, headers))
        assert answer.status_code == 503, (path, answer.status_code, answer.text)
        assert answer.headers["Content-Type"].startswith("application/json")
        assert seconds < FAULT_ANSWER_WITHIN, (path, seconds)
        body = answer.json()
        if path == "/readyz":
            assert body["ready"] is False
        else:
            assert body["status_code"] == 503 and body["path"] == path

    # Same port, same data directory: the same gunicorn recovers without a restart.
    own_redis.port = port
    own_redis.start()
    deadline = time.monotonic() + 10
    while requests.get(server.url + "/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "gunicorn did not recover after Redis came back"
        time.sleep(0.2)
    assert_working(server, headers)


def test_paused_redis_never_holds_a_request(
    served: tuple[GunicornServer, dict[str, str]], own_redis: RedisServer
) -> None:
    server, headers = served
    assert_working(server, headers)
    admin = redis.Redis.from_url(own_redis.url)
    calls = [*DATA_REQUESTS, ("GET", "/healthz")] * 2

    def send(call: tuple[str, str]) -> tuple[tuple[str, str], requests.Response, float]:
        method, path = call
        return (call, *timed(method, server.url + path, headers=probe_headers(path, headers)))

    try:
        admin.execute_command("CLIENT", "PAUSE", "5000", "ALL")
        with ThreadPoolExecutor(len(calls)) as pool:
            answers = list(pool.map(send, calls))
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
    for (_, path), answer, seconds in answers:
        assert seconds < PAUSED_ANSWER_WITHIN, (path, seconds)
        assert answer.status_code in (200, 503), (path, answer.status_code, answer.text)
        if path == "/healthz":
            assert answer.status_code == 200
        elif path == "/readyz":
            assert answer.status_code == 503
    assert_working(server, headers)
