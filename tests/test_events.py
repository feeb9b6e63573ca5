"""Events: POST /events into a bounded Redis Stream, paging, Idempotency-Key dedup."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from core.redis import KEYS
from gateway.events import service


@pytest.fixture
def writer(auth_headers: Callable[..., dict[str, str]]) -> dict[str, str]:
    return auth_headers("events:write", "events:read")


def post(client: FlaskClient, headers: dict[str, str], body: object, **extra: str):
    return client.post("/events", json=body, headers={**headers, **extra})


def test_post_answers_201_with_id_and_timestamp(client: FlaskClient, writer: dict[str, str]) -> None:
    answer = post(client, writer, {"event_type": "order.created", "data": {"id": 7}})
    assert answer.status_code == 201
    body = answer.get_json()
    assert body["status"] == "accepted"
    assert body["event_id"] and body["timestamp"].endswith("Z")


def test_client_timestamp_is_kept(client: FlaskClient, writer: dict[str, str]) -> None:
    body = post(client, writer, {"event_type": "t", "timestamp": "2024-05-01T12:00:00+02:00"}).get_json()
    assert body["timestamp"] == "2024-05-01T10:00:00Z"
    listed = client.get("/events", headers=writer).get_json()["events"]
    assert listed[0]["timestamp"] == "2024-05-01T10:00:00Z"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "No JSON data provided"),
        ({}, "No JSON data provided"),
        ({"data": {"a": 1}}, "event_type is required"),
        ({"event_type": ""}, "event_type is required"),
        ({"event_type": "   "}, "event_type is required"),
        ({"event_type": "x", "data": [1, 2]}, "data must be a JSON object"),
        ({"event_type": "x", "timestamp": "yesterday"}, "timestamp must be an ISO 8601 date-time"),
    ],
)
def test_post_validation(client: FlaskClient, writer: dict[str, str], body: object, message: str) -> None:
    answer = (
        client.post("/events", json=body, headers=writer)
        if body is not None
        else client.post("/events", headers=writer)
    )
    assert answer.status_code == 400
    assert answer.get_json()["error"] == message


def test_scopes(client: FlaskClient, auth_headers: Callable[..., dict[str, str]]) -> None:
    reader = auth_headers("events:read")
    assert post(client, reader, {"event_type": "x"}).status_code == 403
    assert client.get("/events", headers=auth_headers("events:write")).status_code == 403
    assert client.get("/events").status_code == 401


def test_events_keep_their_order_and_poster(
    client: FlaskClient, writer: dict[str, str], r: redis.Redis
) -> None:
    ids = [
        post(client, writer, {"event_type": f"e{i}", "data": {"i": i}}).get_json()["event_id"]
        for i in range(5)
    ]
    events = client.get("/events", headers=writer).get_json()
    assert [e["event_id"] for e in events["events"]] == ids
    assert [e["data"] for e in events["events"]] == [{"i": i} for i in range(5)]
    assert events["total"] == 5
    assert all(e["posted_by"].startswith("api_key:key_") for e in events["events"])
    assert r.xlen(KEYS.events_stream()) == 5


def test_paging_with_after_and_limit(client: FlaskClient, writer: dict[str, str]) -> None:
    ids = [post(client, writer, {"event_type": f"e{i}"}).get_json()["event_id"] for i in range(7)]
    seen: list[str] = []
    after = None
    for _ in range(5):
        query = {"limit": 3, **({"after": after} if after else {})}
        page = client.get("/events", query_string=query, headers=writer).get_json()
        if not page["events"]:
            break
        assert len(page["events"]) <= 3
        seen += [e["event_id"] for e in page["events"]]
        after = page["next_after"]
    assert seen == ids
    tail = client.get("/events", query_string={"after": ids[4]}, headers=writer).get_json()
    assert [e["event_id"] for e in tail["events"]] == ids[5:]


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "ten"},
        {"after": "abc"},
        {"after": "1-2-3"},
        {"after": "99999999999999999999-0"},  # beyond 64 bits
        {"after": "18446744073709551615-18446744073709551615"},  # nothing comes after it
    ],
)
def test_bad_paging_is_400(client: FlaskClient, writer: dict[str, str], query: dict[str, object]) -> None:
    answer = client.get("/events", query_string=query, headers=writer)
    assert answer.status_code == 400
    assert answer.get_json()["status_code"] == 400


def test_idempotency_key_returns_the_first_event(
    client: FlaskClient, writer: dict[str, str], r: redis.Redis
) -> None:
    body = {"event_type": "payment", "data": {"amount": 5}}
    first = post(client, writer, body, **{"Idempotency-Key": "pay-123"})
    again = post(client, writer, body, **{"Idempotency-Key": "pay-123"})
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert r.xlen(KEYS.events_stream()) == 1
    other = post(client, writer, body, **{"Idempotency-Key": "pay-124"}).get_json()
    assert other["event_id"] != first.get_json()["event_id"]
    # Only a digest of the key is stored.
    assert not [k for k in r.scan_iter("*") if "pay-123" in k]


def test_idempotency_key_with_a_different_body_conflicts(client: FlaskClient, writer: dict[str, str]) -> None:
    post(client, writer, {"event_type": "a"}, **{"Idempotency-Key": "k1"})
    answer = post(client, writer, {"event_type": "b"}, **{"Idempotency-Key": "k1"})
    assert answer.status_code == 409


def test_idempotency_keys_are_per_identity(
    client: FlaskClient, auth_headers: Callable[..., dict[str, str]]
) -> None:
    one, two = auth_headers("events:write"), auth_headers("events:write")
    a = post(client, one, {"event_type": "x"}, **{"Idempotency-Key": "same"}).get_json()
    b = post(client, two, {"event_type": "x"}, **{"Idempotency-Key": "same"}).get_json()
    assert a["event_id"] != b["event_id"]


def test_bad_idempotency_key_is_400(client: FlaskClient, writer: dict[str, str]) -> None:
    assert post(client, writer, {"event_type": "x"}, **{"Idempotency-Key": "k" * 256}).status_code == 400


def test_concurrent_repeats_append_once(app: Flask, writer: dict[str, str], r: redis.Redis) -> None:
    results: list[tuple[int, str]] = []
    barrier = threading.Barrier(12)

    def send() -> None:
        client = app.test_client()
        barrier.wait()
        answer = post(client, writer, {"event_type": "once"}, **{"Idempotency-Key": "race"})
        results.append((answer.status_code, answer.get_json()["event_id"]))

    threads = [threading.Thread(target=send) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 12
    assert {status for status, _ in results} == {201}
    assert len({event_id for _, event_id in results}) == 1
    assert r.xlen(KEYS.events_stream()) == 1


def test_stream_length_is_bounded(r: redis.Redis) -> None:
    for i in range(600):
        service.append_event(r, event_type="bulk", data={"i": i}, timestamp=None, owner="t", max_length=50)
    # Approximate trimming keeps at least max_length entries, far fewer than were added.
    assert 50 <= r.xlen(KEYS.events_stream()) < 300
    newest = service.list_events(r, after=None, limit=1000, owner=None)[-1]
    assert newest["data"] == {"i": 599}
