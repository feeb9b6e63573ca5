"""One reply per user message (issue 11, item 3): reopening replays, unknown ids get a clear answer,
concurrent opens generate once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from tests.agents.sse_client import Event, iter_events, parse

Headers = Callable[..., dict[str, str]]


def stream(client: FlaskClient, headers: dict[str, str], session_id: str, **extra: str) -> Any:
    return client.get(f"/agents/stream?session_id={session_id}", headers={**headers, **extra}, buffered=False)


def read_all(response: Any) -> list[Event]:
    events, _ = parse(response.get_data(as_text=True))
    response.close()
    return events


def roles(client: FlaskClient, headers: dict[str, str], session_id: str) -> list[str]:
    body = client.get(f"/agents/session/{session_id}/messages", headers=headers).get_json()
    return [m["role"] for m in body["messages"]]


def reply_of(events: list[Event]) -> str:
    return "".join(e.json["content"] for e in events if e.json.get("type") == "delta")


def test_reopening_an_answered_session_replays_the_stored_reply(
    client: FlaskClient, auth_headers: Headers, new_session: Any
) -> None:
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(client, headers, "answer me once")
    first = read_all(stream(client, headers, session_id))
    again = read_all(stream(client, headers, session_id))
    assert again[-1].json["type"] == "done"
    assert reply_of(again) == reply_of(first) != ""
    assert roles(client, headers, session_id) == ["user", "assistant"]
    # The replay is itself resumable: its last frame's id answers 204.
    assert stream(client, headers, session_id, **{"Last-Event-ID": again[-1].id}).status_code == 204


def test_unknown_or_malformed_last_event_id_never_starts_a_reply(
    client: FlaskClient, auth_headers: Headers, new_session: Any
) -> None:
    headers = auth_headers("agents:write", "agents:read")
    first = new_session(client, headers, "one")
    second = new_session(client, headers, "two")
    events = read_all(stream(client, headers, first))
    malformed = stream(client, headers, second, **{"Last-Event-ID": "garbage"})
    assert malformed.status_code == 400
    assert malformed.get_json()["status_code"] == 400 and malformed.get_json()["path"] == "/agents/stream"
    # Unknown, expired or another session's stream: 409 while the message is unanswered...
    for last_id in (events[2].id, "0" * 32 + ":3"):
        answer = stream(client, headers, second, **{"Last-Event-ID": last_id})
        assert answer.status_code == 409, last_id
        assert answer.get_json()["status_code"] == 409
    assert roles(client, headers, second) == ["user"]
    # ...and 204 once the reply is complete.
    read_all(stream(client, headers, second))
    assert stream(client, headers, second, **{"Last-Event-ID": "0" * 32 + ":3"}).status_code == 204
    assert roles(client, headers, second) == ["user", "assistant"]


def test_concurrent_opens_for_one_message_generate_once(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any
) -> None:
    app = make_app(AGENT_BUILTIN_DELAY_MS="10")
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(app.test_client(), headers, "only one of you may answer")
    opened = [stream(app.test_client(), headers, session_id) for _ in range(3)]
    results: list[list[Event]] = [[] for _ in opened]

    def consume(index: int) -> None:
        results[index] = list(iter_events(opened[index].response))
        opened[index].close()

    readers = [threading.Thread(target=consume, args=(n,)) for n in range(len(opened))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(20)
    assert all(events and events[-1].json["type"] == "done" for events in results)
    assert len({reply_of(events) for events in results}) == 1
    assert roles(app.test_client(), headers, session_id) == ["user", "assistant"]
