"""What one tenant may keep in Redis (issue 10, item 3): event size and age, agent sessions
per identity, unfinished jobs per owner. Caps hold under concurrency (threads, real Redis)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from config import ConfigError, load_config
from core.redis import KEYS
from devtools.gunicorn import GunicornServer
from gateway.agents import service as sessions
from gateway.events import service as events
from gateway.jobs import limits as job_limits
from gateway.jobs import service as jobs
from gateway.jobs.queue import rq_connection

Headers = dict[str, str]
DAY_MS = 24 * 3600 * 1000


def assert_error_shape(answer: Any, status: int, path: str) -> dict[str, Any]:
    assert answer.status_code == status
    body = answer.get_json()
    assert set(body) >= {"error", "status_code", "message", "path"}
    assert body["status_code"] == status and body["path"] == path
    return body


def race(count: int, work: Callable[[], Any]) -> list[Any]:
    """Run ``work`` on ``count`` threads released together; the results or the exceptions."""
    barrier = threading.Barrier(count)
    results: list[Any] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(work())
        except Exception as exc:  # the test counts refusals
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == count
    return results


# --- settings ---------------------------------------------------------------------------------


def test_bounds_have_defaults_and_refuse_nonsense(redis_url: str) -> None:
    config = load_config({"FLASK_ENV": "testing", "REDIS_URL": redis_url})
    assert config["EVENTS_MAX_BYTES"] == 65536
    assert config["EVENTS_RETENTION_DAYS"] == 30
    assert config["AGENT_SESSIONS_MAX"] == 1000
    assert config["JOBS_QUEUED_MAX"] == 100
    for name in ("EVENTS_MAX_BYTES", "EVENTS_RETENTION_DAYS", "AGENT_SESSIONS_MAX", "JOBS_QUEUED_MAX"):
        with pytest.raises(ConfigError, match=name):
            load_config({"FLASK_ENV": "testing", "REDIS_URL": redis_url, name: "0"})


# --- events -----------------------------------------------------------------------------------


def test_event_over_events_max_bytes_is_413(
    client: FlaskClient, auth_headers: Callable[..., Headers], r: redis.Redis
) -> None:
    writer = auth_headers("events:write")
    # event_type "t" (1 byte) + data {"p":"xx..."} (n + 8 bytes) = n + 9
    at_limit = {"event_type": "t", "data": {"p": "x" * (65536 - 9)}}
    assert client.post("/events", json=at_limit, headers=writer).status_code == 201
    over = {"event_type": "t", "data": {"p": "x" * (65536 - 8)}}
    body = assert_error_shape(client.post("/events", json=over, headers=writer), 413, "/events")
    assert "65536" in body["error"]
    assert r.xlen(KEYS.events_stream()) == 1


def test_events_max_bytes_counts_stored_json(app: Flask, client: FlaskClient, auth_headers: Callable) -> None:
    app.config["EVENTS_MAX_BYTES"] = 100
    writer = auth_headers("events:write")
    # 20 non-ASCII characters are stored as 20 six-byte \\u escapes: over 100 bytes.
    answer = client.post("/events", json={"event_type": "t", "data": {"s": "é" * 20}}, headers=writer)
    assert_error_shape(answer, 413, "/events")
    assert (
        client.post("/events", json={"event_type": "t", "data": {"s": "e" * 20}}, headers=writer).status_code
        == 201
    )


def _old_event(r: redis.Redis, owner: str, ms: int) -> str:
    fields = {"event_type": "old", "data": "{}", "timestamp": "x", "received_at": "x", "posted_by": owner}
    event_id = r.xadd(KEYS.events_stream(), fields, id=f"{ms}-0")
    r.xadd(KEYS.events_by_owner(owner), fields, id=event_id)
    return event_id


def test_events_older_than_the_retention_are_dropped(r: redis.Redis) -> None:
    now_ms = int(time.time() * 1000)
    stale = _old_event(r, "o", now_ms - 3 * DAY_MS)
    fresh = _old_event(r, "o", now_ms - 1 * DAY_MS)
    accepted = events.append_event(
        r, event_type="new", data=None, timestamp=None, owner="o", max_length=1000, retention_days=2
    )
    kept = [e["event_id"] for e in events.list_events(r, after=None, limit=10, owner=None)]
    assert kept == [fresh, accepted.event_id]
    assert [e["event_id"] for e in events.list_events(r, after=None, limit=10, owner="o")] == kept
    assert stale not in kept


def test_owner_event_streams_expire_with_the_retention(r: redis.Redis) -> None:
    events.append_event(
        r, event_type="e", data=None, timestamp=None, owner="o", max_length=10, retention_days=3
    )
    ttl = r.ttl(KEYS.events_by_owner("o"))
    assert 2 * 86400 < ttl <= 3 * 86400


# --- agent sessions ---------------------------------------------------------------------------


def test_sessions_per_identity_are_capped_with_409(
    app: Flask, client: FlaskClient, auth_headers: Callable[..., Headers]
) -> None:
    app.config["AGENT_SESSIONS_MAX"] = 3
    owner, other = auth_headers("agents:write"), auth_headers("agents:write")
    for _ in range(3):
        assert client.post("/agents/session", headers=owner).status_code == 201
    body = assert_error_shape(client.post("/agents/session", headers=owner), 409, "/agents/session")
    assert "3" in body["message"]
    assert client.post("/agents/session", headers=other).status_code == 201


def test_session_cap_holds_under_concurrency(r: redis.Redis) -> None:
    results = race(20, lambda: sessions.create_session(r, owner="racer", max_sessions=5))
    created = [x for x in results if isinstance(x, str)]
    refused = [x for x in results if isinstance(x, sessions.SessionLimitReached)]
    assert len(created) == 5 and len(refused) == 15
    assert r.zcard(KEYS.agent_sessions_by_owner("racer")) == 5


def test_expired_sessions_free_their_place(r: redis.Redis) -> None:
    ids = [sessions.create_session(r, owner="o", max_sessions=2) for _ in range(2)]
    with pytest.raises(sessions.SessionLimitReached):
        sessions.create_session(r, owner="o", max_sessions=2)
    long_ago = time.time() - sessions.SESSION_TTL_SECONDS - 10
    r.zadd(KEYS.agent_sessions_by_owner("o"), {ids[0]: long_ago})
    assert sessions.create_session(r, owner="o", max_sessions=2)


# --- jobs -------------------------------------------------------------------------------------

AGENT_RUN = {"name": "agent.run", "args": {"prompt": "hello"}}


def test_unfinished_jobs_per_owner_are_capped_with_429(
    app: Flask, client: FlaskClient, auth_headers: Callable[..., Headers], runner: FlaskCliRunner
) -> None:
    app.config["JOBS_QUEUED_MAX"] = 2
    owner = auth_headers("jobs:read", "jobs:write")
    first = client.post("/jobs", json=AGENT_RUN, headers=owner).get_json()["job_id"]
    assert client.post("/jobs", json=AGENT_RUN, headers=owner).status_code == 202
    answer = client.post("/jobs", json=AGENT_RUN, headers=owner)
    body = assert_error_shape(answer, 429, "/jobs")
    assert int(answer.headers["Retry-After"]) >= 1 and body["retry_after"] >= 1
    assert client.post("/jobs", json=AGENT_RUN, headers=auth_headers("jobs:write")).status_code == 202
    # A canceled job frees its place at once; finished ones too.
    assert client.delete(f"/jobs/{first}", headers=owner).status_code == 200
    assert client.post("/jobs", json=AGENT_RUN, headers=owner).status_code == 202
    assert client.post("/jobs", json=AGENT_RUN, headers=owner).status_code == 429
    assert runner.invoke(args=["jobs", "worker", "--burst"]).exit_code == 0
    assert client.post("/jobs", json=AGENT_RUN, headers=owner).status_code == 202


def test_job_cap_holds_under_concurrency(app: Flask, r: redis.Redis) -> None:
    conn = rq_connection(app.config)

    def submit() -> str:
        return jobs.enqueue(conn, name="agent.run", args={"prompt": "hi"}, owner="racer", max_queued=3)

    results = race(12, submit)
    queued = [x for x in results if isinstance(x, str)]
    refused = [x for x in results if isinstance(x, job_limits.QueuedJobsLimitReached)]
    assert len(queued) == 3 and len(refused) == 9, results
    assert len(list(r.scan_iter("rq:job:*"))) == 3


def test_a_reservation_whose_job_never_appeared_is_released(app: Flask, r: redis.Redis) -> None:
    conn = rq_connection(app.config)
    stale = time.time() - job_limits.RESERVATION_GRACE_SECONDS - 5
    r.zadd(KEYS.jobs_unfinished("o"), {"0" * 32: stale})  # a crash between reserving and enqueueing
    assert jobs.enqueue(conn, name="agent.run", args={"prompt": "hi"}, owner="o", max_queued=1)
    assert json.dumps(r.zrange(KEYS.jobs_unfinished("o"), 0, -1)) != json.dumps(["0" * 32])


# --- across gunicorn workers ------------------------------------------------------------------


@pytest.mark.gunicorn
def test_caps_hold_across_gunicorn_workers(
    gunicorn: Callable[..., GunicornServer], auth_headers: Callable[..., Headers], r: redis.Redis
) -> None:
    server = gunicorn(workers=2, env={"AGENT_SESSIONS_MAX": "4", "JOBS_QUEUED_MAX": "3"})
    headers = {**auth_headers("agents:write", "jobs:write"), "Content-Type": "application/json"}

    def post(path: str, body: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request("POST", path, body=body, headers=headers)
            return conn.getresponse().status
        finally:
            conn.close()

    sessions_made = race(16, lambda: post("/agents/session", "{}"))
    assert sorted(sessions_made) == [201] * 4 + [409] * 12
    jobs_made = race(12, lambda: post("/jobs", json.dumps(AGENT_RUN)))
    assert sorted(jobs_made) == [202] * 3 + [429] * 9
    assert len(list(r.scan_iter("rq:job:*"))) == 3
