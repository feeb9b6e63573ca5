"""Metrics: buffered recorder, /metrics JSON and Prometheus exposition, summed across workers."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from auth import public
from core.redis import KEYS, create_redis
from devtools.redis_server import free_port
from gateway import create_app
from gateway.metrics import recorder, store

Headers = dict[str, str]
LIMITS = {"RATELIMIT_ANONYMOUS": "100000/minute", "RATELIMIT_DEFAULT": "100000/minute"}


@pytest.fixture(autouse=True)
def clean_metrics(r: redis.Redis) -> None:
    """Earlier tests' apps share this process's recorder: write out what they buffered, then wipe it."""
    recorder.flush_all(quiet=True)
    r.delete(KEYS.metrics_counters(), KEYS.metrics_processes())


@pytest.fixture
def app(test_env: dict[str, str], r: redis.Redis) -> Flask:
    """The app with limits high enough that counting requests never meets a 429."""
    app = create_app({**test_env, **LIMITS})

    @public
    def boom() -> str:
        raise RuntimeError("a bug")

    app.add_url_rule("/test-boom", "test_boom", boom)
    return app


@pytest.fixture
def reader(auth_headers: Callable[..., Headers]) -> Headers:
    return auth_headers("metrics:read")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse an exposition into {(sample name, labels): value}."""
    parsed = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return parsed


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed.get((name, frozenset(labels.items())), 0.0)


def test_metrics_summary_counts_requests_and_errors(
    client: FlaskClient, reader: Headers, r: redis.Redis
) -> None:
    for _ in range(5):
        assert client.get("/").status_code == 200
    client.get("/healthz")  # probes are not counted
    client.get("/no/such/path")
    client.get("/test-boom")
    body = client.get("/metrics", headers=reader).get_json()
    assert body["ok"] is True and body["backend"] == "flask"
    assert body["total_requests"] == 7
    assert body["total_errors"] == 1
    assert body["active_sessions"] == 0 and body["total_messages"] == 0
    assert body["uptime_seconds"] >= 0
    assert body["timestamp"].endswith("Z") and body["version"]
    # The first /metrics answer is counted by the next one.
    assert client.get("/metrics", headers=reader).get_json()["total_requests"] == 8


def test_metrics_summary_reads_agent_sessions(
    client: FlaskClient, reader: Headers, auth_headers: Callable[..., Headers]
) -> None:
    agent = auth_headers("agents:write")
    session = client.post("/agents/session", headers=agent).get_json()["session_id"]
    message = {"session_id": session, "role": "user", "content": "hi"}
    assert client.post("/agents/message", json=message, headers=agent).status_code == 200
    body = client.get("/metrics", headers=reader).get_json()
    assert body["active_sessions"] == 1
    assert body["total_messages"] == 1


def test_metrics_need_the_scope(client: FlaskClient, auth_headers: Callable[..., Headers]) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics/prometheus", headers=auth_headers("events:read")).status_code == 403


def test_prometheus_labels_are_route_templates(
    client: FlaskClient, reader: Headers, auth_headers: Callable[..., Headers]
) -> None:
    jobs = auth_headers("jobs:read")
    for job_id in ("a" * 32, "b" * 32, "c" * 32):
        assert client.get(f"/jobs/{job_id}", headers=jobs).status_code == 404
    client.get("/secret-path-one")
    client.get("/secret-path-two")
    answer = client.get("/metrics/prometheus", headers=reader)
    assert answer.status_code == 200
    assert answer.content_type.startswith("text/plain")
    text = answer.get_data(as_text=True)
    parsed = samples(text)
    assert (
        value(parsed, "gateway_http_requests_total", route="/jobs/<job_id>", method="GET", status="404") == 3
    )
    assert value(parsed, "gateway_http_requests_total", route="unmatched", method="GET", status="404") == 2
    labels = {"route": "/jobs/<job_id>", "method": "GET"}
    assert value(parsed, "gateway_http_request_duration_seconds_count", **labels) == 3
    assert value(parsed, "gateway_http_request_duration_seconds_bucket", le="+Inf", **labels) == 3
    # No raw paths, ids or key material in any label.
    for secret in ("secret-path", "a" * 32, "key_", "rgw_"):
        assert secret not in text


def test_prometheus_gauges_and_upstream(app: Flask, client: FlaskClient, reader: Headers) -> None:
    with app.app_context():
        recorder.stream_opened()
        recorder.stream_opened()
        recorder.stream_closed()
        recorder.record_upstream_failure("openai")
        recorder.set_breaker_state("openai", "open")
        recorder.record_rate_limited("quota")
        recorder.record_rate_limited("something-odd")
    parsed = samples(client.get("/metrics/prometheus", headers=reader).get_data(as_text=True))
    assert value(parsed, "gateway_open_streams") == 1
    assert value(parsed, "gateway_upstream_failures_total", backend="openai") == 1
    assert value(parsed, "gateway_upstream_breaker_state", backend="openai", state="open") == 1
    assert value(parsed, "gateway_upstream_breaker_state", backend="openai", state="closed") == 0
    assert value(parsed, "gateway_rate_limited_total", kind="quota") == 1
    assert value(parsed, "gateway_rate_limited_total", kind="other") == 1
    assert value(parsed, "gateway_processes") >= 1


def test_rate_limit_rejections_are_counted(test_env: dict[str, str], r: redis.Redis) -> None:
    app = create_app({**test_env, "RATELIMIT_ANONYMOUS": "2/minute"})
    client = app.test_client()
    statuses = [client.get("/").status_code for _ in range(4)]
    assert statuses.count(429) == 2
    with app.app_context():
        recorder.flush()
    snapshot = store.read(r)
    assert snapshot.value("ratelimited", "anonymous") == 2
    assert snapshot.value("req", "/", "GET", "429") == 2


def test_job_queue_depth(client: FlaskClient, reader: Headers, auth_headers: Callable[..., Headers]) -> None:
    jobs = auth_headers("admin")  # keys.sweep_expired is a maintenance job: admin only
    for _ in range(2):
        assert client.post("/jobs", json={"name": "keys.sweep_expired"}, headers=jobs).status_code == 202
    parsed = samples(client.get("/metrics/prometheus", headers=reader).get_data(as_text=True))
    assert value(parsed, "gateway_job_queue_depth", queue="gateway") == 2


def test_disabled_metrics_record_nothing(
    test_env: dict[str, str], r: redis.Redis, auth_headers: Callable[..., Headers]
) -> None:
    app = create_app({**test_env, "ENABLE_METRICS": "false"})
    client = app.test_client()
    client.get("/")
    with app.app_context():
        recorder.stream_opened()
        recorder.record_rate_limited("rate")
        recorder.flush()
    time.sleep(recorder.FLUSH_INTERVAL + 0.5)
    assert r.hlen(KEYS.metrics_counters()) == 0
    assert client.get("/metrics", headers=auth_headers("metrics:read")).status_code == 404


def test_flusher_writes_without_a_reader(client: FlaskClient, r: redis.Redis) -> None:
    client.get("/")
    deadline = time.monotonic() + 5
    while store.read(r).value(store.TOTAL_REQUESTS) != 1:
        assert time.monotonic() < deadline, "the background flush never happened"
        time.sleep(0.1)


def test_redis_outage_keeps_deltas_and_never_raises() -> None:
    dead = create_redis(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2, connect_timeout=0.2)
    buffer = recorder.Recorder(dead)
    buffer.add({store.TOTAL_REQUESTS: 3})
    started = time.monotonic()
    assert buffer.flush() is False
    assert time.monotonic() - started < 5
    assert buffer.counters[store.TOTAL_REQUESTS] == 3


@pytest.mark.gunicorn
def test_figures_add_up_across_two_workers(
    gunicorn: Callable[..., object], make_key: Callable[..., str], r: redis.Redis
) -> None:
    server = gunicorn(workers=2, env=LIMITS)
    headers = {"Authorization": f"Bearer {make_key(scopes=['metrics:read'])}"}
    sent = 0

    def hit(_: int) -> int:
        return requests.get(server.url + "/", timeout=10).status_code

    workers = {str(pid) for pid in server.worker_pids()}

    def reporting_workers() -> int:
        return sum(1 for p in r.hkeys(KEYS.metrics_processes()) if p.rsplit(":", 1)[-1] in workers)

    # Spread load until both workers have reported (connections go to whichever accepts).
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            assert set(pool.map(hit, range(20))) == {200}
            sent += 20
            time.sleep(recorder.FLUSH_INTERVAL + 0.3)
            if reporting_workers() == 2:
                break
    assert reporting_workers() == 2
    time.sleep(recorder.FLUSH_INTERVAL * 2 + 0.5)  # every worker has flushed everything it counted
    parsed = samples(requests.get(server.url + "/metrics/prometheus", headers=headers, timeout=10).text)
    assert value(parsed, "gateway_http_requests_total", route="/", method="GET", status="200") == sent
    assert value(parsed, "gateway_http_request_duration_seconds_count", route="/", method="GET") == sent
    time.sleep(recorder.FLUSH_INTERVAL + 0.5)  # the scrape may have been served by the other worker
    summary = requests.get(server.url + "/metrics", headers=headers, timeout=10).json()
    assert summary["total_requests"] == sent + 1  # plus the Prometheus scrape above
    assert summary["uptime_seconds"] > 0
