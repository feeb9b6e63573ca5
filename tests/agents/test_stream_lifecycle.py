"""Streams under crash and deploy, in-process (issue 11, item 2): slots kept by a heartbeat,
frames in Redis within a fraction of a second, a draining server ends streams resumably."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from core.redis import KEYS
from gateway.agents import streaming
from tests.agents.sse_client import SSEParser, iter_events, parse

Headers = Callable[..., dict[str, str]]
LONG = " ".join(f"word{n}" for n in range(300))


@pytest.fixture
def drain() -> Iterator[Callable[[float], None]]:
    """``drain(grace)``: this process starts shutting down, as gunicorn's SIGTERM makes it."""
    yield lambda grace: streaming.watch_shutdown(lambda: True, grace_seconds=grace)
    streaming.watch_shutdown(lambda: False, grace_seconds=0)


def stream(client: Any, headers: dict[str, str], session_id: str, **extra: str) -> Any:
    return client.get(f"/agents/stream?session_id={session_id}", headers={**headers, **extra}, buffered=False)


def slot_key(key_id: Callable[[dict[str, str]], str], headers: dict[str, str]) -> str:
    return KEYS.agent_stream_slots(f"api_key:{key_id(headers)}")


def test_frames_reach_redis_within_a_fraction_of_a_second(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any, r: redis.Redis
) -> None:
    client = make_app(AGENT_BUILTIN_DELAY_MS="50").test_client()
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, LONG)
    response = stream(client, headers, session_id)
    received: list[float] = []  # when each frame reached the client
    worst = 0
    frames_key = ""
    for event in iter_events(response.response):
        now = time.monotonic()
        received.append(now)
        frames_key = frames_key or KEYS.agent_stream_frames(event.id.split(":")[0])
        # Frames the client got more than half a second ago must be in Redis by now.
        due = sum(1 for at in received if now - at > 0.5)
        worst = max(worst, due - r.llen(frames_key))
        if now - received[0] > 1.5:
            break
    response.close()
    assert len(received) > 20
    assert worst <= 0, f"{worst} frames sent over 0.5 s earlier were not yet in Redis"


def test_a_slot_is_booked_for_seconds_and_kept_by_the_heartbeat(
    make_app: Callable[..., Flask],
    auth_headers: Headers,
    new_session: Any,
    r: redis.Redis,
    key_id: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streaming, "SLOT_REFRESH_SECONDS", 0.3)
    client = make_app(AGENT_BUILTIN_DELAY_MS="50").test_client()
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, LONG)
    response = stream(client, headers, session_id)
    slots = slot_key(key_id, headers)
    iterator = iter_events(response.response)
    next(iterator)
    booked = r.zrange(slots, 0, -1, withscores=True)[0][1] - r.time()[0]
    assert booked <= 15, f"a slot is booked for {booked:.0f} s: a dead worker's slot would leak that long"
    first = r.zrange(slots, 0, -1, withscores=True)[0][1]
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        next(iterator)
    assert r.zrange(slots, 0, -1, withscores=True)[0][1] > first  # refreshed while the stream lives
    response.close()
    assert r.zcard(slots) == 0


def test_a_draining_server_ends_streams_resumably(
    make_app: Callable[..., Flask],
    auth_headers: Headers,
    new_session: Any,
    r: redis.Redis,
    key_id: Any,
    drain: Callable[[float], None],
) -> None:
    client = make_app(AGENT_BUILTIN_DELAY_MS="20").test_client()
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(client, headers, LONG)
    response = stream(client, headers, session_id)
    parser, events = SSEParser(), []
    chunks = iter(response.response)
    raw = ""
    while len(events) < 3:
        text = next(chunks).decode()
        raw += text
        events += parser.feed(text)
    drain(0)
    started = time.monotonic()
    for chunk in chunks:
        raw += chunk.decode()
        events += parser.feed(chunk.decode())
    response.close()
    assert time.monotonic() - started < 3
    last = events[-1]
    assert last.event == "error" and last.json["reason"] == "server_restarting"
    assert "\nretry: " in raw.rsplit("id: ", 1)[-1]  # the final frame carries the reconnect delay
    assert r.zcard(slot_key(key_id, headers)) == 0
    body = client.get(f"/agents/session/{session_id}/messages", headers=headers).get_json()
    assert [m["role"] for m in body["messages"]] == ["user"]
    # The reconnect, on a process that is not draining, starts a new attempt at the reply.
    streaming.watch_shutdown(lambda: False, grace_seconds=0)
    other = make_app(AGENT_BUILTIN_DELAY_MS="0").test_client()
    reconnect = stream(other, headers, session_id, **{"Last-Event-ID": last.id})
    resumed, _ = parse(reconnect.get_data(as_text=True))
    assert resumed[0].id.endswith(":1") and resumed[-1].json["type"] == "done"
    body = client.get(f"/agents/session/{session_id}/messages", headers=headers).get_json()
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"]


def test_draining_lets_a_stream_finish_within_the_grace(
    make_app: Callable[..., Flask], auth_headers: Headers, new_session: Any, drain: Callable[[float], None]
) -> None:
    client = make_app(AGENT_BUILTIN_DELAY_MS="10").test_client()
    headers = auth_headers("agents:write")
    session_id = new_session(client, headers, "short")
    response = stream(client, headers, session_id)
    drain(30)
    events, _ = parse(response.get_data(as_text=True))
    response.close()
    assert events[-1].json["type"] == "done"
