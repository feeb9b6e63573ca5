"""Two tenants on one gateway (issue 10, item 11): each sees only its own events, jobs and
sessions; admin sees both; maintenance jobs need admin."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from flask.testing import FlaskClient

from core.redis import KEYS
from gateway.events import service as events

Headers = dict[str, str]
TENANT_SCOPES = ("events:read", "events:write", "jobs:read", "jobs:write", "agents:read", "agents:write")


@pytest.fixture
def tenants(auth_headers: Callable[..., Headers]) -> tuple[Headers, Headers, Headers]:
    """(tenant A, tenant B, admin): three keys on the same gateway."""
    return auth_headers(*TENANT_SCOPES), auth_headers(*TENANT_SCOPES), auth_headers("admin")


def post_event(client: FlaskClient, headers: Headers, event_type: str, **extra: str) -> str:
    answer = client.post("/events", json={"event_type": event_type}, headers={**headers, **extra})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()["event_id"]


def event_ids(client: FlaskClient, headers: Headers, **query: object) -> list[str]:
    answer = client.get("/events", query_string=query, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    return [e["event_id"] for e in answer.get_json()["events"]]


def test_events_are_visible_only_to_their_writer_and_admin(
    client: FlaskClient, tenants: tuple[Headers, Headers, Headers]
) -> None:
    a, b, admin = tenants
    mine = [post_event(client, a, f"a{i}") for i in range(3)]
    theirs = [post_event(client, b, f"b{i}") for i in range(2)]
    page_a = client.get("/events", headers=a).get_json()
    assert [e["event_id"] for e in page_a["events"]] == mine
    assert {e["posted_by"] for e in page_a["events"]} == {page_a["events"][0]["posted_by"]}
    assert page_a["stream_length"] == 3  # not the volume of other tenants
    assert event_ids(client, b) == theirs
    assert event_ids(client, admin) == sorted(mine + theirs)


def test_event_paging_is_per_owner(client: FlaskClient, tenants: tuple[Headers, Headers, Headers]) -> None:
    a, b, admin = tenants
    mine: list[str] = []
    for i in range(7):  # interleaved: B's events fall between A's ids
        mine.append(post_event(client, a, f"a{i}"))
        post_event(client, b, f"b{i}")
    seen: list[str] = []
    after: str | None = None
    for _ in range(10):
        page = client.get(
            "/events", query_string={"limit": 2, **({"after": after} if after else {})}, headers=a
        )
        body = page.get_json()
        if not body["events"]:
            break
        assert len(body["events"]) <= 2
        seen += [e["event_id"] for e in body["events"]]
        after = body["next_after"]
    assert seen == mine
    assert len(event_ids(client, admin, limit=1000)) == 14


def test_same_idempotency_key_from_two_tenants_makes_two_events(
    client: FlaskClient, tenants: tuple[Headers, Headers, Headers], r: redis.Redis
) -> None:
    a, b, _ = tenants
    first = post_event(client, a, "pay", **{"Idempotency-Key": "shared"})
    second = post_event(client, b, "pay", **{"Idempotency-Key": "shared"})
    assert first != second
    assert post_event(client, a, "pay", **{"Idempotency-Key": "shared"}) == first
    assert event_ids(client, a) == [first] and event_ids(client, b) == [second]
    assert r.xlen(KEYS.events_stream()) == 2


def test_owner_streams_keep_only_what_the_global_stream_keeps(r: redis.Redis) -> None:
    """The per-owner copy is bounded by the global one, even for an owner who stopped writing."""
    for i in range(400):
        events.append_event(r, event_type="quiet", data={"i": i}, timestamp=None, owner="q", max_length=1000)
    for i in range(900):
        events.append_event(r, event_type="loud", data={"i": i}, timestamp=None, owner="l", max_length=50)
    oldest = r.xrange(KEYS.events_stream(), count=1)[0][0]
    quiet = events.list_events(r, after=None, limit=1000, owner="q")
    assert all(e["event_id"] >= oldest for e in quiet)
    assert events.stream_length(r, owner="q") == len(quiet)


def test_jobs_are_visible_only_to_their_owner_and_admin(
    client: FlaskClient, tenants: tuple[Headers, Headers, Headers]
) -> None:
    a, b, admin = tenants
    body = {"name": "agent.run", "args": {"prompt": "hello"}}
    job_a = client.post("/jobs", json=body, headers=a).get_json()["job_id"]
    job_b = client.post("/jobs", json=body, headers=b).get_json()["job_id"]
    assert client.get(f"/jobs/{job_a}", headers=b).status_code == 404
    assert client.delete(f"/jobs/{job_a}", headers=b).status_code == 404
    assert [j["id"] for j in client.get("/jobs", headers=b).get_json()["jobs"]] == [job_b]
    assert [j["id"] for j in client.get("/jobs", headers=a).get_json()["jobs"]] == [job_a]
    assert {j["id"] for j in client.get("/jobs", headers=admin).get_json()["jobs"]} == {job_a, job_b}


def test_sessions_are_visible_only_to_their_owner_and_admin(
    client: FlaskClient, tenants: tuple[Headers, Headers, Headers]
) -> None:
    a, b, admin = tenants
    session_a = client.post("/agents/session", headers=a).get_json()["session_id"]
    session_b = client.post("/agents/session", headers=b).get_json()["session_id"]
    assert client.get(f"/agents/session/{session_a}/messages", headers=b).status_code == 404
    assert [s["session_id"] for s in client.get("/agents/sessions", headers=b).get_json()["sessions"]] == [
        session_b
    ]
    listing = client.get("/agents/sessions", headers=admin).get_json()["sessions"]
    assert {s["session_id"] for s in listing} == {session_a, session_b}


@pytest.mark.parametrize("scopes", [("jobs:write",), ("jobs:read", "jobs:write", "events:write")])
def test_maintenance_jobs_need_admin(
    client: FlaskClient, auth_headers: Callable[..., Headers], r: redis.Redis, scopes: tuple[str, ...]
) -> None:
    answer = client.post("/jobs", json={"name": "keys.sweep_expired"}, headers=auth_headers(*scopes))
    assert answer.status_code == 403
    body = answer.get_json()
    assert body["status_code"] == 403 and body["path"] == "/jobs"
    assert "admin" in body["message"]
    assert not list(r.scan_iter("rq:job:*"))
    admin = client.post("/jobs", json={"name": "keys.sweep_expired"}, headers=auth_headers("admin"))
    assert admin.status_code == 202
