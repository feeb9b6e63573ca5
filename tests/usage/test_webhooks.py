"""Signed webhook deliveries by the job worker, against a real local HTTP receiver."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from rq import Queue, SimpleWorker
from rq.scheduler import RQScheduler

from config import ConfigError, load_config
from gateway import create_app
from gateway.jobs import tasks, webhooks
from gateway.jobs.queue import rq_connection, serializer

SECRET = "whsec-test"


class Receiver:
    """An http.server in a thread: answers ``fail_first`` 500s, then 200; records what came."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers), body))
                status = 500 if len(outer.received) <= outer.fail_first else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://user:pw@127.0.0.1:{self.server.server_address[1]}/hook?x=1"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    made = Receiver(getattr(request, "param", 0))
    yield made
    made.close()


def _verify(headers: dict[str, str], body: bytes) -> None:
    parts = dict(item.split("=", 1) for item in headers["X-Gateway-Signature"].split(","))
    expected = hmac.new(SECRET.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    assert abs(int(parts["t"]) - time.time()) < 60


def _app(test_env: dict[str, str], url: str) -> Flask:
    app = create_app({**test_env, "WEBHOOK_URL": url, "WEBHOOK_SECRET": SECRET})
    tasks.set_worker_app(app)
    return app


def _drain(app: Flask, rounds: int) -> None:
    """A real RQ worker (in-process), plus the scheduler step that re-queues due retries."""
    connection = rq_connection(app.config)
    queue = Queue("gateway", connection=connection, serializer=serializer())
    for _ in range(rounds):
        SimpleWorker([queue], connection=connection, serializer=serializer()).work(burst=True)
        scheduler = RQScheduler([queue], connection=connection, serializer=serializer())
        scheduler.acquire_locks()
        deadline = time.monotonic() + 10
        while not queue.count and queue.scheduled_job_registry.count and time.monotonic() < deadline:
            scheduler.enqueue_scheduled_jobs()
            time.sleep(0.2)
        scheduler.release_locks()


def test_delivery_is_signed(test_env: dict[str, str], r: redis.Redis, receiver: Receiver) -> None:
    app = _app(test_env, receiver.url)
    webhooks.enqueue(rq_connection(app.config), {"event_type": "quota.threshold", "data": {"threshold": 0.8}})
    _drain(app, 1)
    ((headers, body),) = receiver.received
    _verify(headers, body)
    assert headers["Content-Type"] == "application/json"
    assert b'"threshold":0.8' in body


@pytest.mark.parametrize("receiver", [2], indirect=True)
def test_a_receiver_failing_twice_gets_it_on_the_third_try(
    test_env: dict[str, str], r: redis.Redis, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app(test_env, receiver.url)
    webhooks.enqueue(rq_connection(app.config), {"event_type": "quota.threshold", "data": {}})
    _drain(app, 3)
    assert len(receiver.received) == 3
    assert [b for _, b in receiver.received] == [receiver.received[0][1]] * 3
    for headers, body in receiver.received:
        _verify(headers, body)
    assert "pw@" not in caplog.text and "user:pw" not in caplog.text


def test_safe_url_drops_credentials_and_query() -> None:
    assert webhooks.safe_url("https://u:p@hooks.example:8443/in?token=x") == "https://hooks.example:8443/in"


def test_secret_required_with_url() -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        load_config({"FLASK_ENV": "testing", "REDIS_URL": "redis://localhost", "WEBHOOK_URL": "https://h/x"})
