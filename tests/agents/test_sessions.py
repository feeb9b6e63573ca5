"""Sessions and messages: contract shapes, exact messages, scopes, ownership, history, expiry."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from core.redis import KEYS
from gateway.agents import service

Headers = Callable[..., dict[str, str]]


def assert_error(response: Any, status: int, message: str) -> None:
    assert response.status_code == status
    body = response.get_json()
    assert body == {"error": message, "status_code": status, "message": message, "path": body["path"]}


def test_create_session_answers_201_with_uuid(client: FlaskClient, auth_headers: Headers) -> None:
    response = client.post("/agents/session", headers=auth_headers("agents:write"))
    assert response.status_code == 201
    body = response.get_json()
    assert list(body) == ["session_id"]
    assert str(uuid.UUID(body["session_id"])) == body["session_id"]


def test_message_and_history_shapes(client: FlaskClient, auth_headers: Headers, new_session: Any) -> None:
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(client, headers)
    first = client.post(
        "/agents/message", headers=headers, json={"session_id": session_id, "role": "user", "content": "hi"}
    )
    assert first.status_code == 200
    assert first.get_json()["status"] == "received"
    second = client.post(
        "/agents/message",
        headers=headers,
        json={"session_id": session_id, "role": "assistant", "content": "hello"},
    )
    body = client.get(f"/agents/session/{session_id}/messages", headers=headers).get_json()
    assert body["session_id"] == session_id and body["total"] == 2
    assert [m["content"] for m in body["messages"]] == ["hi", "hello"]  # oldest first
    assert [m["id"] for m in body["messages"]] == [
        first.get_json()["message_id"],
        second.get_json()["message_id"],
    ]
    assert set(body["messages"][0]) == {"id", "session_id", "role", "content", "timestamp"}
    listing = client.get("/agents/sessions", headers=headers).get_json()
    assert listing["total"] == 1
    assert listing["sessions"][0]["session_id"] == session_id
    assert listing["sessions"][0]["message_count"] == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "No JSON data provided"),
        ({}, "No JSON data provided"),
        ({"role": "user", "content": "x"}, "session_id is required"),
        ({"session_id": "", "role": "user", "content": "x"}, "session_id is required"),
        ({"session_id": "s", "content": "x"}, "role must be 'user' or 'assistant'"),
        ({"session_id": "s", "role": "system", "content": "x"}, "role must be 'user' or 'assistant'"),
        ({"session_id": "s", "role": "user"}, "content is required and cannot be empty"),
        ({"session_id": "s", "role": "user", "content": ""}, "content is required and cannot be empty"),
        ({"session_id": "s", "role": "user", "content": "  \n"}, "content is required and cannot be empty"),
        (
            {"session_id": "s", "role": "user", "content": "x" * 4001},
            "content must be 4000 characters or less",
        ),
        # Validation order is session_id, role, content.
        ({"role": "bad", "content": ""}, "session_id is required"),
        ({"session_id": "s", "role": "bad", "content": ""}, "role must be 'user' or 'assistant'"),
    ],
)
def test_message_validation_messages(
    client: FlaskClient, auth_headers: Headers, body: dict[str, Any] | None, message: str
) -> None:
    response = client.post("/agents/message", headers=auth_headers("agents:write"), json=body)
    assert_error(response, 400, message)


def test_message_limits_are_inclusive(client: FlaskClient, auth_headers: Headers, new_session: Any) -> None:
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers)
    ok = {"session_id": session_id, "role": "user", "content": "x" * 4000}
    assert client.post("/agents/message", headers=headers, json=ok).status_code == 200


def test_unknown_session_is_404(client: FlaskClient, auth_headers: Headers) -> None:
    headers = auth_headers("agents:write", "agents:read")
    body = {"session_id": str(uuid.uuid4()), "role": "user", "content": "x"}
    assert_error(client.post("/agents/message", headers=headers, json=body), 404, "Session not found")
    assert_error(
        client.get(f"/agents/session/{uuid.uuid4()}/messages", headers=headers), 404, "Session not found"
    )
    assert_error(
        client.get(f"/agents/stream?session_id={uuid.uuid4()}", headers=headers), 404, "Session not found"
    )


def test_stream_needs_session_id(client: FlaskClient, auth_headers: Headers) -> None:
    headers = auth_headers("agents:write")
    assert_error(client.get("/agents/stream", headers=headers), 400, "session_id parameter is required")
    assert_error(
        client.get("/agents/stream?session_id=", headers=headers), 400, "session_id parameter is required"
    )


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("post", "/agents/session", "agents:write"),
        ("post", "/agents/message", "agents:write"),
        ("get", "/agents/stream?session_id=x", "agents:write"),
        ("get", "/agents/sessions", "agents:read"),
        ("get", "/agents/session/x/messages", "agents:read"),
    ],
)
def test_scopes(client: FlaskClient, auth_headers: Headers, method: str, path: str, scope: str) -> None:
    other = "agents:read" if scope == "agents:write" else "agents:write"
    call = getattr(client, method)
    assert call(path).status_code == 401
    assert call(path, headers=auth_headers(other)).status_code == 403
    assert call(path, headers=auth_headers(scope)).status_code not in (401, 403)


def test_sessions_belong_to_their_creator(
    client: FlaskClient, auth_headers: Headers, new_session: Any
) -> None:
    owner = auth_headers("agents:write", "agents:read")
    other = auth_headers("agents:write", "agents:read")
    admin = auth_headers("admin")
    session_id = new_session(client, owner, "mine")
    body = {"session_id": session_id, "role": "user", "content": "intrude"}
    assert_error(client.post("/agents/message", headers=other, json=body), 404, "Session not found")
    assert_error(
        client.get(f"/agents/session/{session_id}/messages", headers=other), 404, "Session not found"
    )
    assert_error(
        client.get(f"/agents/stream?session_id={session_id}", headers=other), 404, "Session not found"
    )
    assert client.get("/agents/sessions", headers=other).get_json() == {"sessions": [], "total": 0}
    # The intruder's attempts left nothing behind.
    owners_view = client.get(f"/agents/session/{session_id}/messages", headers=owner).get_json()
    assert [m["content"] for m in owners_view["messages"]] == ["mine"]
    # admin sees every session and its history.
    others_session = new_session(client, other, "theirs")
    listing = client.get("/agents/sessions", headers=admin).get_json()
    assert {s["session_id"] for s in listing["sessions"]} == {session_id, others_session}
    assert listing["total"] == 2
    assert client.get(f"/agents/session/{session_id}/messages", headers=admin).status_code == 200


def test_history_keeps_the_last_1000_messages(
    client: FlaskClient, auth_headers: Headers, new_session: Any, r: redis.Redis
) -> None:
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(client, headers)
    session = service.get_session(r, session_id=session_id, owner="", see_all=True)
    for n in range(1, 1006):
        service.add_message(r, session=session, role="user", content=f"message {n}")
    body = client.get(f"/agents/session/{session_id}/messages", headers=headers).get_json()
    assert body["total"] == 1000
    assert body["messages"][0]["content"] == "message 6"
    assert body["messages"][-1]["content"] == "message 1005"


def test_sessions_expire_after_seven_days_without_activity(
    client: FlaskClient, auth_headers: Headers, new_session: Any, r: redis.Redis, key_id: Any
) -> None:
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, "hello")
    week = 7 * 24 * 3600
    owner_index = KEYS.agent_sessions_by_owner(f"api_key:{key_id(headers)}")
    for name in (KEYS.agent_session(session_id), KEYS.agent_messages(session_id), owner_index):
        assert week - 60 < r.ttl(name) <= week
    # Activity pushes the expiry forward again.
    r.expire(KEYS.agent_session(session_id), 100)
    r.expire(KEYS.agent_messages(session_id), 100)
    body = {"session_id": session_id, "role": "user", "content": "still here"}
    assert client.post("/agents/message", headers=headers, json=body).status_code == 200
    assert r.ttl(KEYS.agent_session(session_id)) > week - 60
    assert r.ttl(KEYS.agent_messages(session_id)) > week - 60


def test_expired_sessions_leave_lists_and_counts(
    client: FlaskClient, auth_headers: Headers, new_session: Any, r: redis.Redis
) -> None:
    headers = auth_headers("agents:write", "agents:read")
    old, fresh = new_session(client, headers), new_session(client, headers)
    # Age one session past the window, as eight days without activity would.
    eight_days_ago = r.time()[0] - 8 * 24 * 3600
    r.zadd(KEYS.agent_sessions_index(), {old: eight_days_ago})
    for name in r.scan_iter(KEYS.agent_sessions_by_owner("*")):
        r.zadd(name, {old: eight_days_ago})
    r.delete(KEYS.agent_session(old))
    listing = client.get("/agents/sessions", headers=headers).get_json()
    assert [s["session_id"] for s in listing["sessions"]] == [fresh]
    assert listing["total"] == 1
    assert service.session_stats(r)["active_sessions"] == 1


def test_session_stats(client: FlaskClient, auth_headers: Headers, new_session: Any, r: redis.Redis) -> None:
    assert service.session_stats(r) == {"active_sessions": 0, "total_messages": 0}
    headers = auth_headers("agents:write")
    new_session(client, headers, "a", "b")
    new_session(client, auth_headers("agents:write"), "c")
    assert service.session_stats(r) == {"active_sessions": 2, "total_messages": 3}


def test_messages_are_stored_as_json_records(
    client: FlaskClient, auth_headers: Headers, new_session: Any, r: redis.Redis
) -> None:
    session_id = new_session(client, auth_headers("agents:write"), "stored")
    (raw,) = r.lrange(KEYS.agent_messages(session_id), 0, -1)
    assert json.loads(raw)["content"] == "stored"
    assert r.hget(
        KEYS.agent_session(session_id),
        "created_by",
    ).startswith("api_key:")


def test_streaming_can_be_switched_off(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any
) -> None:
    client = make_app(ENABLE_STREAMING="false").test_client()
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, "hi")
    response = client.get(f"/agents/stream?session_id={session_id}", headers=headers)
    assert response.status_code == 503
    assert response.get_json()["status_code"] == 503
