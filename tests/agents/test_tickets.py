"""Stream tickets: POST /agents/stream/ticket, then GET /agents/stream?session_id=&ticket= once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from auth import keys, users
from auth.loaders import pepper
from core.redis import KEYS
from tests.agents.sse_client import parse
from tests.auth.conftest import EMAIL, ORIGIN, PASSWORD

Headers = Callable[..., dict[str, str]]


def get_ticket(client: FlaskClient, headers: dict[str, str], session_id: str) -> str:
    response = client.post("/agents/stream/ticket", headers=headers, json={"session_id": session_id})
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["ticket"])


def open_stream(client: FlaskClient, session_id: str, ticket: str, **headers: str) -> Any:
    return client.get(f"/agents/stream?session_id={session_id}&ticket={ticket}", headers=headers)


def assert_ticket_refused(response: Any) -> None:
    assert response.status_code == 401
    body = response.get_json()
    assert body["error"] == "Unauthorized" and body["status_code"] == 401
    assert body["path"] == "/agents/stream" and "ticket" in body["message"]
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="gateway", error="invalid_token"'


def test_issue_answers_201_with_a_ticket_and_its_lifetime(
    client: FlaskClient, auth_headers: Headers, new_session: Any, r: redis.Redis
) -> None:
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, "hello")
    response = client.post("/agents/stream/ticket", headers=headers, json={"session_id": session_id})
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"ticket", "expires_in"} and body["expires_in"] == 60
    assert body["ticket"].startswith("gwt_") and len(body["ticket"]) == 47
    assert response.headers["Cache-Control"] == "no-store"
    # Only a digest is stored, in the session's slot, expiring with the ticket.
    [name] = r.keys("gw:agents:*ticket*")
    assert name.startswith(f"gw:agents:{{s:{session_id}}}:ticket:")
    assert body["ticket"] not in name and body["ticket"] not in r.get(name)
    assert 0 < r.ttl(name) <= 60


def test_stream_with_a_ticket_needs_no_header_and_works_once(
    client: FlaskClient, auth_headers: Headers, new_session: Any
) -> None:
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(client, headers, "What is a ticket?")
    ticket = get_ticket(client, headers, session_id)
    response = open_stream(client, session_id, ticket)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events, _ = parse(response.get_data(as_text=True))
    assert events[-1].json["type"] == "done" and events[-1].json["session_id"] == session_id
    messages = client.get(f"/agents/session/{session_id}/messages", headers=headers).get_json()["messages"]
    assert messages[-1]["role"] == "assistant"
    assert_ticket_refused(open_stream(client, session_id, ticket))  # second use


def test_an_expired_ticket_is_refused(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any
) -> None:
    client = make_app(STREAM_TICKET_SECONDS="1").test_client()
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, "hi")
    response = client.post("/agents/stream/ticket", headers=headers, json={"session_id": session_id})
    assert response.get_json()["expires_in"] == 1
    ticket = response.get_json()["ticket"]
    time.sleep(1.3)
    assert_ticket_refused(open_stream(client, session_id, ticket))


def test_ticket_lifetime_setting_is_bounded_to_120_seconds(make_app: Callable[..., Flask]) -> None:
    from config import ConfigError

    with pytest.raises(ConfigError, match="STREAM_TICKET_SECONDS"):
        make_app(STREAM_TICKET_SECONDS="121")
    with pytest.raises(ConfigError, match="STREAM_TICKET_SECONDS"):
        make_app(STREAM_TICKET_SECONDS="0")


def test_a_ticket_for_another_session_is_refused_and_stays_unused(
    client: FlaskClient, auth_headers: Headers, new_session: Any
) -> None:
    headers = auth_headers("agents:write")
    first = new_session(client, headers, "one")
    second = new_session(client, headers, "two")
    ticket = get_ticket(client, headers, first)
    assert_ticket_refused(open_stream(client, second, ticket))
    assert open_stream(client, first, ticket).status_code == 200


def test_revoking_the_key_voids_its_tickets(
    client: FlaskClient, auth_headers: Headers, new_session: Any, key_id: Any, r: redis.Redis
) -> None:
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, "hi")
    ticket = get_ticket(client, headers, session_id)
    keys.revoke_key(r, key_id(headers))
    assert_ticket_refused(open_stream(client, session_id, ticket))


def test_a_ticket_stream_runs_as_the_issuing_key(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any, key_id: Any, r: redis.Redis
) -> None:
    """Its limits count (the key's own counter moves, not the IP's) and its stream slot is taken."""
    client = make_app(STREAM_MAX_CONCURRENT_PER_KEY="1").test_client()
    headers = auth_headers("agents:write", rate_limit="50/minute")
    session_id = new_session(client, headers, "hi")
    ticket = get_ticket(client, headers, session_id)
    response = client.get(f"/agents/stream?session_id={session_id}&ticket={ticket}", buffered=False)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "50"
    owner = f"api_key:{key_id(headers)}"
    assert r.zcard(KEYS.agent_stream_slots(owner)) == 1  # the key's slot, as with a header
    # The key's one slot is taken: a header-authenticated open now gets 429.
    assert client.get(f"/agents/stream?session_id={session_id}", headers=headers).status_code == 429
    response.close()


def test_key_a_cannot_get_or_use_a_ticket_for_key_bs_session(
    client: FlaskClient, auth_headers: Headers, new_session: Any
) -> None:
    key_a, key_b = auth_headers("agents:write"), auth_headers("agents:write")
    session_b = new_session(client, key_b, "B's secret question")
    refused = client.post("/agents/stream/ticket", headers=key_a, json={"session_id": session_b})
    assert refused.status_code == 404 and refused.get_json()["error"] == "Session not found"
    # A's ticket for A's own session opens neither B's session nor anything else.
    session_a = new_session(client, key_a, "mine")
    ticket_a = get_ticket(client, key_a, session_a)
    assert_ticket_refused(open_stream(client, session_b, ticket_a))


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"session_id": "no-such-session"}, 404, "Session not found"),
        ({"session_id": "  "}, 400, "session_id is required"),
        ({"other": 1}, 400, "session_id is required"),
    ],
)
def test_issue_refuses_what_the_stream_refuses(
    client: FlaskClient, auth_headers: Headers, body: dict[str, Any], status: int, message: str
) -> None:
    response = client.post("/agents/stream/ticket", headers=auth_headers("agents:write"), json=body)
    assert response.status_code == status
    assert response.get_json()["error"] == message


def test_issue_needs_agents_write(client: FlaskClient, auth_headers: Headers, new_session: Any) -> None:
    session_id = new_session(client, auth_headers("agents:write"), "hi")
    no_header = client.post("/agents/stream/ticket", json={"session_id": session_id})
    assert no_header.status_code == 401
    reader = client.post(
        "/agents/stream/ticket", headers=auth_headers("agents:read"), json={"session_id": session_id}
    )
    assert reader.status_code == 403


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/auth/me?ticket={ticket}"),
        ("get", "/agents/sessions?ticket={ticket}"),
        ("get", "/agents/session/{session}/messages?ticket={ticket}"),
        ("post", "/agents/stream/ticket?ticket={ticket}"),
        ("get", "/agents/stream?session_id={session}&api_key={ticket}"),
    ],
)
def test_a_ticket_is_no_credential_anywhere_else(
    client: FlaskClient, auth_headers: Headers, new_session: Any, method: str, path: str
) -> None:
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(client, headers, "hi")
    ticket = get_ticket(client, headers, session_id)
    url = path.format(ticket=ticket, session=session_id)
    response = getattr(client, method)(url, json={"session_id": session_id})
    assert response.status_code == 401
    assert open_stream(client, session_id, ticket).status_code == 200  # still unused


def test_keys_are_still_refused_in_the_query_string(
    client: FlaskClient, make_key: Callable[..., str], new_session: Any
) -> None:
    secret = make_key(scopes=["agents:write"])
    session_id = new_session(client, {"X-API-Key": secret}, "hi")
    for name in ("api_key", "key", "ticket"):
        response = client.get(f"/agents/stream?session_id={session_id}&{name}={secret}")
        assert response.status_code == 401


def test_two_concurrent_consumers_get_one_stream(app: Flask, auth_headers: Headers, new_session: Any) -> None:
    """Two threads race for one ticket through the same app and the real Redis: one wins."""
    headers = auth_headers("agents:write")
    session_id = new_session(app.test_client(), headers, "hi")
    for _ in range(5):
        ticket = get_ticket(app.test_client(), headers, session_id)
        barrier, statuses = threading.Barrier(2), []

        def consume(
            ticket: str = ticket, barrier: threading.Barrier = barrier, statuses: list[int] = statuses
        ) -> None:
            client = app.test_client()
            barrier.wait()
            response = open_stream(client, session_id, ticket)
            statuses.append(response.status_code)
            response.close()

        threads = [threading.Thread(target=consume) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert sorted(statuses) == [200, 401]


def test_an_admin_users_ticket_ends_with_its_login_session(
    client: FlaskClient, auth_headers: Headers, new_session: Any, r: redis.Redis
) -> None:
    users.create_user(r, email=EMAIL, password=PASSWORD)
    admin = client
    assert (
        admin.post(
            "/auth/login", json={"email": EMAIL, "password": PASSWORD}, headers={"Origin": ORIGIN}
        ).status_code
        == 200
    )
    session_id = new_session(client, auth_headers("agents:write"), "hi")  # someone's: admin sees all
    origin = {"Origin": ORIGIN}
    ticket = admin.post("/agents/stream/ticket", json={"session_id": session_id}, headers=origin).get_json()[
        "ticket"
    ]
    later = admin.post("/agents/stream/ticket", json={"session_id": session_id}, headers=origin).get_json()[
        "ticket"
    ]
    assert not any(ticket in str(v) for v in r.mget(r.keys("gw:agents:*ticket*")))
    other = client.application.test_client()  # no cookie: the ticket alone
    assert open_stream(other, session_id, ticket).status_code == 200
    assert admin.post("/auth/logout", headers=origin).status_code in (200, 204)
    assert_ticket_refused(open_stream(other, session_id, later))


def test_the_ticket_appears_in_no_log_line(
    make_app: Callable[..., Flask],
    auth_headers: Headers,
    new_session: Any,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    client = make_app(ACCESS_LOG_FLUSH_MS="0", LOG_LEVEL="DEBUG").test_client()
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, "hi")
    capfd.readouterr()
    ticket = get_ticket(client, headers, session_id)
    open_stream(client, session_id, ticket).get_data()
    open_stream(client, session_id, ticket).get_data()  # refused: 401
    # A server's own line (werkzeug's request line, gunicorn's "Error handling request <uri>").
    for name in ("werkzeug", "gunicorn.error"):
        logging.getLogger(name).warning(
            "GET /agents/stream?session_id=%s&ticket=%s HTTP/1.1", session_id, ticket
        )
    logging.getLogger("gateway").error("failed on %s", f"/agents/stream?ticket={ticket}")
    err = capfd.readouterr().err
    assert '"path": "/agents/stream"' in err and '"status": 401' in err  # the lines were written
    assert ticket not in err and ticket[4:] not in err
    # The servers' records are cleaned before any handler sees them (the gateway's own
    # loggers are cleaned by their JSON formatter: the lines above).
    server = [rec.getMessage() for rec in caplog.records if not rec.name.startswith("gateway")]
    assert len(server) == 2 and all("[redacted]" in line and ticket[4:] not in line for line in server)


def test_openapi_documents_the_ticket_route_and_the_ticket_parameter(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    issue = document["paths"]["/agents/stream/ticket"]["post"]
    assert issue["x-required-scope"] == "agents:write"
    assert set(issue["responses"]) >= {"201", "401", "403", "404"}
    assert "requestBody" in issue
    stream = document["paths"]["/agents/stream"]["get"]
    assert "ticket" in [p["name"] for p in stream["parameters"]]
    assert {"streamTicket": []} in stream["security"]
    assert document["components"]["securitySchemes"]["streamTicket"]["in"] == "query"
    # No other operation takes a ticket.
    others = [
        op for path, ops in document["paths"].items() for m, op in ops.items() if path != "/agents/stream"
    ]
    assert not any({"streamTicket": []} in op.get("security", []) for op in others)


def test_revoking_the_key_ends_a_ticket_stream_midway(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any, r: redis.Redis, key_id: Any
) -> None:
    from tests.agents.sse_client import iter_events

    client = make_app(AGENT_BUILTIN_DELAY_MS="50").test_client()
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, " ".join(f"word{n}" for n in range(200)))
    ticket = get_ticket(client, headers, session_id)
    response = client.get(f"/agents/stream?session_id={session_id}&ticket={ticket}", buffered=False)
    events = []
    for event in iter_events(response.response):
        events.append(event)
        if len(events) == 3:
            keys.revoke_key(r, key_id(headers))
    response.close()
    assert events[-1].event == "error" and events[-1].json["error"] == "key_revoked"


@pytest.mark.parametrize("change", ["disable", "password"])
def test_a_disabled_user_or_changed_password_voids_the_users_tickets(
    client: FlaskClient, auth_headers: Headers, new_session: Any, r: redis.Redis, change: str
) -> None:
    user = users.create_user(r, email=EMAIL, password=PASSWORD)
    users.create_user(r, email="other@example.com", password=PASSWORD)  # the last admin is never disabled
    origin = {"Origin": ORIGIN}
    assert (
        client.post("/auth/login", json={"email": EMAIL, "password": PASSWORD}, headers=origin).status_code
        == 200
    )
    session_id = new_session(client, auth_headers("agents:write"), "hi")
    ticket = client.post("/agents/stream/ticket", json={"session_id": session_id}, headers=origin).get_json()[
        "ticket"
    ]
    if change == "disable":
        users.disable_user(r, user["id"])
    else:
        users.set_password(r, user["id"], PASSWORD + " changed")
    assert_ticket_refused(open_stream(client.application.test_client(), session_id, ticket))


def test_redis_down_when_redeeming_answers_503_not_500(
    tmp_path: Any, test_env: dict[str, str], make_key: Callable[..., str]
) -> None:
    from devtools.redis_server import RedisServer
    from gateway import create_app

    own = RedisServer(tmp_path / "own-redis").start()
    try:
        app = create_app({**test_env, "REDIS_URL": own.url})
        store = redis.Redis.from_url(own.url, decode_responses=True)
        _, secret = keys.create_key(store, pepper=pepper(app), name="t", scopes=["agents:write"])
        store.close()
        client, headers = app.test_client(), {"X-API-Key": secret}
        session_id = client.post("/agents/session", headers=headers).get_json()["session_id"]
        ticket = get_ticket(client, headers, session_id)
    finally:
        own.stop()
    response = open_stream(client, session_id, ticket)
    assert response.status_code == 503 and response.get_json()["status_code"] == 503
