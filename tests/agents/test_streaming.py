"""The SSE stream through the Flask app: frames, heartbeats, resume, stop checks, the cap."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from auth import keys, management, users
from auth.audit import Actor
from core.redis import KEYS
from gateway.agents.backends.builtin import compose_reply
from tests.agents.sse_client import Event, SSEParser, iter_events, parse

TEST_ACTOR = Actor(owner="cli", name="test")

Headers = Callable[..., dict[str, str]]
HOSTILE = 'line one\n\nevent: error\ndata: {"type": "done"}\r\nid: 999\r\n\r\n: comment\rretry: 1\u2028end'
LONG = " ".join(f"word{n}" for n in range(300))  # a reply of ~330 words


def stream(client: FlaskClient, headers: dict[str, str], session_id: str, **extra: str) -> Any:
    return client.get(f"/agents/stream?session_id={session_id}", headers={**headers, **extra}, buffered=False)


def read_all(response: Any) -> tuple[list[Event], list[str]]:
    events, comments = parse(response.get_data(as_text=True))
    response.close()
    return events, comments


def history(client: FlaskClient, headers: dict[str, str], session_id: str) -> list[dict[str, Any]]:
    body = client.get(f"/agents/session/{session_id}/messages", headers=headers).get_json()
    return body["messages"]


def test_stream_frames_and_stored_reply(client: FlaskClient, auth_headers: Headers, new_session: Any) -> None:
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(client, headers, "What is the weather like?")
    response = stream(client, headers, session_id)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Accel-Buffering"] == "no"
    events, _ = read_all(response)
    *deltas, done = events
    assert all(e.event == "message" and e.json["type"] == "delta" for e in deltas)
    assert all(e.json["session_id"] == session_id for e in events)
    final = done.json
    usage = final.pop("usage")
    assert done.event == "message" and final == {"type": "done", "session_id": session_id}
    reply = "".join(e.json["content"] for e in deltas)
    assert reply == compose_reply([{"role": "user", "content": "What is the weather like?"}])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert "question" in reply and len(deltas) > 10  # word-sized deltas
    # Every frame has an id: <stream>:<n>, numbered from 1.
    stream_ids = {e.id.split(":")[0] for e in events if e.id}
    assert len(stream_ids) == 1
    assert [e.id.split(":")[1] for e in events] == [str(n) for n in range(1, len(events) + 1)]
    stored = history(client, headers, session_id)
    assert [(m["role"], m["content"]) for m in stored][-1] == ("assistant", reply)


def test_hostile_content_cannot_add_or_split_frames(
    client: FlaskClient, auth_headers: Headers, new_session: Any
) -> None:
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(client, headers, HOSTILE)
    response = stream(client, headers, session_id)
    body = response.get_data(as_text=True)
    response.close()
    events, comments = parse(body)
    expected = compose_reply([{"role": "user", "content": HOSTILE}])
    deltas = [e for e in events if e.json["type"] == "delta"]
    # Exactly one frame per delta plus done; no injected error, id or comment.
    assert [e.event for e in events] == ["message"] * len(events)
    assert "".join(e.json["content"] for e in deltas) == expected
    assert events[-1].json["type"] == "done"
    assert comments == ["connected"]
    # Every data line is plain ASCII JSON on one line.
    data_lines = [line for line in body.split("\n") if line.startswith("data: ")]
    assert len(data_lines) == len(events)
    assert all(line.isascii() and "\r" not in line for line in data_lines)
    assert history(client, headers, session_id)[-1]["content"] == expected


def test_session_without_user_message_ends_with_error_event(
    client: FlaskClient, auth_headers: Headers, new_session: Any
) -> None:
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers)
    events, _ = read_all(stream(client, headers, session_id))
    assert [e.event for e in events] == ["error"]
    assert events[0].json["error"] == "no_user_message"
    assert events[0].id is not None


def test_heartbeats_keep_a_quiet_stream_alive(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any
) -> None:
    client = make_app(AGENT_BUILTIN_DELAY_MS="300", STREAM_HEARTBEAT_SECONDS="0.1").test_client()
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, "hi")
    response = stream(client, headers, session_id)
    parser = SSEParser()
    events = []
    for event in iter_events(response.response, parser):
        events.append(event)
        if len(events) == 4:
            break
    response.close()
    assert parser.comments.count("heartbeat") >= 3
    assert all(e.json["type"] == "delta" for e in events)


def test_max_lifetime_ends_the_stream(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any, r: redis.Redis
) -> None:
    client = make_app(AGENT_BUILTIN_DELAY_MS="100", STREAM_MAX_SECONDS="1").test_client()
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(client, headers, LONG)
    started = time.monotonic()
    events, _ = read_all(stream(client, headers, session_id))
    assert time.monotonic() - started < 10
    assert events[-1].event == "error" and events[-1].json["error"] == "max_lifetime"
    assert 3 < len(events) < 100
    assert [m["role"] for m in history(client, headers, session_id)] == ["user"]  # no partial reply kept


def test_revocation_ends_an_open_stream(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any, r: redis.Redis, key_id: Any
) -> None:
    client = make_app(AGENT_BUILTIN_DELAY_MS="50").test_client()
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, LONG)
    response = stream(client, headers, session_id)
    events: list[Event] = []
    revoked_at = 0.0
    for event in iter_events(response.response):
        events.append(event)
        if len(events) == 3:
            keys.revoke_key(r, key_id(headers))
            revoked_at = time.monotonic()
    response.close()
    assert events[-1].event == "error"
    assert events[-1].json["error"] == "key_revoked"
    assert "revoked" in events[-1].json["message"]
    assert time.monotonic() - revoked_at < 3  # checked at least once a second
    assert all(e.json["type"] == "delta" for e in events[:-1])


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"scopes": ["agents:read"]}, "key_scope_removed"),
        ({"allowed_ips": ["192.0.2.0/24"]}, "key_ip_not_allowed"),
    ],
)
def test_an_edit_that_no_longer_allows_the_stream_ends_it(
    make_app: Callable[..., Flask],
    auth_headers: Headers,
    new_session: Any,
    r: redis.Redis,
    key_id: Any,
    changes: dict[str, Any],
    reason: str,
) -> None:
    """PATCH /admin/keys narrowing the scopes or the allow-list reaches open streams too."""
    client = make_app(AGENT_BUILTIN_DELAY_MS="50").test_client()
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(client, headers, LONG)
    response = stream(client, headers, session_id)
    events: list[Event] = []
    edited_at = 0.0
    for event in iter_events(response.response):
        events.append(event)
        if len(events) == 3:
            management.update_key(r, actor=TEST_ACTOR, key_id=key_id(headers), cache=None, changes=changes)
            edited_at = time.monotonic()
    response.close()
    assert events[-1].event == "error" and events[-1].json["error"] == reason, events[-1].json
    assert time.monotonic() - edited_at < 3  # checked at least once a second
    assert all(e.json["type"] == "delta" for e in events[:-1])


def test_spent_quota_ends_an_open_stream(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any
) -> None:
    client = make_app(AGENT_BUILTIN_DELAY_MS="50").test_client()
    # session + message + stream take 3 of the 5; two more requests spend the quota.
    headers = auth_headers("agents:write", "agents:read", quota="5/day")
    session_id = new_session(client, headers, LONG)
    response = stream(client, headers, session_id)
    events: list[Event] = []
    for event in iter_events(response.response):
        events.append(event)
        if len(events) == 3:
            for _ in range(2):
                assert client.get("/agents/sessions", headers=headers).status_code == 200
            assert client.get("/agents/sessions", headers=headers).status_code == 429
    response.close()
    assert events[-1].event == "error"
    assert events[-1].json["error"] == "quota_exhausted"
    assert all(e.json["type"] == "delta" for e in events[:-1])


def test_admin_logout_ends_the_admins_open_stream(make_app: Callable[..., Flask], r: redis.Redis) -> None:
    client = make_app(AGENT_BUILTIN_DELAY_MS="50").test_client()
    origin = {"Origin": "http://localhost"}  # cookie-authenticated writes name their origin
    users.create_user(r, email="admin@example.com", password="correct horse battery staple 9")
    login = {"email": "admin@example.com", "password": "correct horse battery staple 9"}
    assert client.post("/auth/login", json=login, headers=origin).status_code == 200
    session_id = client.post("/agents/session", headers=origin).get_json()["session_id"]
    body = {"session_id": session_id, "role": "user", "content": LONG}
    assert client.post("/agents/message", json=body, headers=origin).status_code == 200
    response = client.get(f"/agents/stream?session_id={session_id}")
    assert response.status_code == 200
    events: list[Event] = []
    for event in iter_events(response.response):
        events.append(event)
        if len(events) == 3:
            assert client.post("/auth/logout", headers=origin).status_code == 200
    response.close()
    assert events[-1].event == "error"
    assert events[-1].json["error"] == "session_ended"


def test_stream_granted_the_last_unit_of_quota_finishes(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any
) -> None:
    client = make_app(AGENT_BUILTIN_DELAY_MS="5").test_client()
    headers = auth_headers("agents:write", quota="3/day")
    session_id = new_session(client, headers, "hello there")
    events = list(iter_events(stream(client, headers, session_id).response))
    assert events[-1].json["type"] == "done"


def test_stream_cap_per_identity(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any, r: redis.Redis, key_id: Any
) -> None:
    client = make_app(AGENT_BUILTIN_DELAY_MS="50", STREAM_MAX_CONCURRENT_PER_KEY="2").test_client()
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, "hello")
    slots = KEYS.agent_stream_slots(f"api_key:{key_id(headers)}")
    first, second = stream(client, headers, session_id), stream(client, headers, session_id)
    assert first.status_code == second.status_code == 200
    over = client.get(f"/agents/stream?session_id={session_id}", headers=headers)
    assert over.status_code == 429
    assert over.get_json()["retry_after"] > 0 and int(over.headers["Retry-After"]) > 0
    # Another identity has its own slots.
    other = auth_headers("agents:write")
    other_session = new_session(client, other, "hi")
    read_all(stream(client, other, other_session))
    # A stream closed early frees its slot; so does one that runs to its end.
    first.close()
    assert r.zcard(slots) == 1
    third = stream(client, headers, session_id)
    assert third.status_code == 200
    read_all(third)
    read_all(second)
    assert r.zcard(slots) == 0


def test_crashed_worker_cannot_leak_slots(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any, r: redis.Redis, key_id: Any
) -> None:
    client = make_app(STREAM_MAX_CONCURRENT_PER_KEY="1").test_client()
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, "hello")
    slots = KEYS.agent_stream_slots(f"api_key:{key_id(headers)}")
    r.zadd(slots, {"left-by-a-dead-worker": r.time()[0] - 1})  # its lifetime is over
    events, _ = read_all(stream(client, headers, session_id))
    assert events[-1].json["type"] == "done"


# ---- resume after Last-Event-ID -------------------------------------------------------


def test_resume_replays_only_the_missing_frames(
    client: FlaskClient, auth_headers: Headers, new_session: Any
) -> None:
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(client, headers, "resume me please")
    original, _ = read_all(stream(client, headers, session_id))
    seen = 5
    replay, _ = read_all(stream(client, headers, session_id, **{"Last-Event-ID": original[seen - 1].id}))
    assert [(e.id, e.event, e.data) for e in replay] == [(e.id, e.event, e.data) for e in original[seen:]]
    # Resuming generates nothing new: the reply is stored once.
    assert [m["role"] for m in history(client, headers, session_id)] == ["user", "assistant"]
    # Resuming after the last frame: nothing left, and 204 stops an EventSource from retrying.
    done = stream(client, headers, session_id, **{"Last-Event-ID": original[-1].id})
    assert done.status_code == 204


def test_resume_follows_a_stream_still_being_produced(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any, r: redis.Redis
) -> None:
    app = make_app(AGENT_BUILTIN_DELAY_MS="40")
    headers = auth_headers("agents:write")
    client = app.test_client()
    session_id = new_session(client, headers, " ".join(["follow this stream to its end"] * 20))
    original: list[Event] = []
    first_frame = threading.Event()

    def consume() -> None:
        response = stream(app.test_client(), headers, session_id)
        for event in iter_events(response.response):
            original.append(event)
            first_frame.set()
        response.close()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first_frame.wait(5)
    frames_key = KEYS.agent_stream_frames(original[0].id.split(":")[0])
    deadline = time.monotonic() + 5
    while r.llen(frames_key) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # frames reach Redis in batches
    assert original[-1].json["type"] == "delta"  # still being produced
    resumed, _ = read_all(stream(client, headers, session_id, **{"Last-Event-ID": original[0].id}))
    reader.join(10)
    assert resumed[-1].json["type"] == "done"
    assert [(e.id, e.data) for e in resumed] == [(e.id, e.data) for e in original[1:]]


def test_resume_of_an_interrupted_stream_ends_with_an_error(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any
) -> None:
    client = make_app(AGENT_BUILTIN_DELAY_MS="20").test_client()
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(client, headers, LONG)
    response = stream(client, headers, session_id)
    original = []
    for event in iter_events(response.response):
        original.append(event)
        if len(original) == 5:
            break
    response.close()  # the client went away: generation stops, nothing is stored
    time.sleep(0.3)
    assert [m["role"] for m in history(client, headers, session_id)] == ["user"]
    resumed, _ = read_all(stream(client, headers, session_id, **{"Last-Event-ID": original[1].id}))
    assert [e.data for e in resumed[:3]] == [e.data for e in original[2:5]]
    assert resumed[-1].event == "error" and resumed[-1].json["error"] == "stream_interrupted"
    # The interruption is kept: resuming after it has nothing left to send.
    assert stream(client, headers, session_id, **{"Last-Event-ID": resumed[-1].id}).status_code == 204


@pytest.mark.parametrize("mode", ["closed before reading", "closed after reading"])
def test_closing_the_response_releases_everything(
    make_app: Callable[..., Flask],
    auth_headers: Headers,
    new_session: Any,
    r: redis.Redis,
    key_id: Any,
    mode: str,
) -> None:
    client = make_app(AGENT_BUILTIN_DELAY_MS="20").test_client()
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, LONG)
    response = stream(client, headers, session_id)
    if mode == "closed after reading":
        next(iter_events(response.response))
    response.close()
    assert r.zcard(KEYS.agent_stream_slots(f"api_key:{key_id(headers)}")) == 0


def test_head_request_frees_its_slot(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any, r: redis.Redis, key_id: Any
) -> None:
    """A body that is never sent (HEAD) still ends the stream: its slot and gauge are released."""
    client = make_app(AGENT_BUILTIN_DELAY_MS="0").test_client()
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, "hello")
    response = client.head(f"/agents/stream?session_id={session_id}", headers=headers)
    assert response.status_code == 200
    assert response.data == b""
    assert response.headers["Content-Type"].startswith("text/event-stream")
    slots = KEYS.agent_stream_slots(f"api_key:{key_id(headers)}")
    assert r.zcard(slots) == 1  # held until the server closes the response, as WSGI servers do
    response.close()
    assert r.zcard(slots) == 0
