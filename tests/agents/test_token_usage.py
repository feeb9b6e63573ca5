"""Tokens of agent replies: usage in done frames and job results, the key's token quota
enforced on /agents/stream and agent.run (429, mid-reply exhaustion), replays free."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from gateway.agents.backends.base import estimate_tokens, text_tokens
from gateway.agents.backends.builtin import compose_reply
from gateway.ratelimit import tokens
from tests.agents.fake_openai import FakeUpstream
from tests.agents.sse_client import parse

Headers = Callable[..., dict[str, str]]


def stream(client: FlaskClient, headers: dict[str, str], session_id: str) -> Any:
    return client.get(f"/agents/stream?session_id={session_id}", headers=headers)


def events_of(response: Any) -> list[Any]:
    events, _ = parse(response.get_data(as_text=True))
    return events


def used(r: redis.Redis, key_id: str, quota: str) -> tokens.Window:
    policy = tokens.token_policy(key_id, quota)
    assert policy is not None
    return tokens.peek(r, policy)


def builtin_usage(prompt: str) -> dict[str, int]:
    messages = [{"role": "user", "content": prompt}]
    prompt_tokens = estimate_tokens(messages[0])
    completion = text_tokens(compose_reply(messages))
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def test_done_frame_carries_usage_counted_once_and_replays_count_nothing(
    client: FlaskClient, auth_headers: Headers, new_session: Any, key_id: Any, r: redis.Redis
) -> None:
    headers = auth_headers("agents:write", "agents:read", token_quota="100000/day")
    session_id = new_session(client, headers, "How many tokens is this?")
    response = stream(client, headers, session_id)
    assert response.status_code == 200
    assert '"tokens";q=100000;w=86400' in response.headers["RateLimit-Policy"]
    assert '"tokens";r=' in response.headers["RateLimit"]
    assert response.headers["RateLimit-Policy"].count('"rate"') == 1  # the request policy stays
    done = events_of(response)[-1].json
    expected = builtin_usage("How many tokens is this?")
    assert done["usage"] == expected  # the built-in agent's own count, not marked estimated
    window = used(r, key_id(headers), "100000/day")
    assert (window.used, window.held) == (expected["total_tokens"], 0)
    replay = events_of(stream(client, headers, session_id))
    assert replay[-1].json["usage"] == expected  # the stored reply's usage
    assert used(r, key_id(headers), "100000/day").used == expected["total_tokens"]  # not counted again


def test_nothing_left_is_429_with_retry_after_before_any_generation(
    client: FlaskClient, auth_headers: Headers, new_session: Any, key_id: Any, r: redis.Redis
) -> None:
    headers = auth_headers("agents:write", "agents:read", token_quota="30/day")
    policy = tokens.token_policy(key_id(headers), "30/day")
    assert policy is not None
    held = tokens.reserve(r, policy, owner="x", app=client.application, step=30)
    held.settle({"total_tokens": 30})
    session_id = new_session(client, headers, "anything left?")
    refused = stream(client, headers, session_id)
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["error"] == "Too Many Requests" and body["reason"] == "token_quota_exhausted"
    assert int(refused.headers["Retry-After"]) > 3600  # settled to the limit: the window's end
    assert '"tokens";q=30;w=86400' in refused.headers["RateLimit-Policy"]
    assert '"tokens";r=0;' in refused.headers["RateLimit"]
    messages = client.get(f"/agents/session/{session_id}/messages", headers=headers).get_json()
    assert [m["role"] for m in messages["messages"]] == ["user"]  # nothing generated


def test_quota_running_out_mid_reply_ends_with_an_error_frame(
    client: FlaskClient, auth_headers: Headers, new_session: Any, key_id: Any, r: redis.Redis
) -> None:
    headers = auth_headers("agents:write", "agents:read", token_quota="20/day")
    session_id = new_session(client, headers, "hi")
    response = stream(client, headers, session_id)
    assert response.status_code == 200
    events = events_of(response)
    *deltas, last = events
    assert deltas and all(e.json["type"] == "delta" for e in deltas)
    assert last.event == "error" and last.json["reason"] == "token_quota_exhausted"
    assert last.json["error"] == "token_quota_exhausted" and last.json["session_id"] == session_id
    sent = "".join(e.json["content"] for e in deltas)
    counted = estimate_tokens({"role": "user", "content": "hi"}) + text_tokens(sent)
    window = used(r, key_id(headers), "20/day")
    assert window.used == counted <= 20 and window.held == 0  # what was sent is counted
    again = stream(client, headers, session_id)  # not stored: a new attempt, refused
    assert again.status_code == 429


def test_a_key_without_token_quota_has_no_token_policy(
    client: FlaskClient, auth_headers: Headers, new_session: Any
) -> None:
    headers = auth_headers("agents:write", "agents:read")
    response = stream(client, headers, new_session(client, headers, "hello"))
    assert '"tokens"' not in response.headers["RateLimit-Policy"]
    assert events_of(response)[-1].json["usage"]["total_tokens"] > 0


# ---- openai: the upstream's usage, or an estimate ---------------------------------------


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def openai_app(make_app: Callable[..., Flask], upstream: FakeUpstream) -> Flask:
    return make_app(AGENT_BACKEND="openai", OPENAI_BASE_URL=upstream.url, OPENAI_READ_TIMEOUT="2")


def test_openai_asks_for_usage_and_counts_the_upstreams(
    openai_app: Flask,
    upstream: FakeUpstream,
    auth_headers: Headers,
    new_session: Any,
    key_id: Any,
    r: redis.Redis,
) -> None:
    client = openai_app.test_client()
    headers = auth_headers("agents:write", "agents:read", token_quota="5000/hour")
    done = events_of(stream(client, headers, new_session(client, headers, "count me")))[-1].json
    sent = upstream.requests[-1]
    assert sent["stream_options"] == {"include_usage": True}
    assert done["usage"] == upstream.usage_of(sent["messages"]) and "estimated" not in done["usage"]
    assert used(r, key_id(headers), "5000/hour").used == done["usage"]["total_tokens"]


def test_openai_without_usage_estimates_and_says_so(
    openai_app: Flask,
    upstream: FakeUpstream,
    auth_headers: Headers,
    new_session: Any,
    key_id: Any,
    r: redis.Redis,
) -> None:
    upstream.send_usage = False
    client = openai_app.test_client()
    headers = auth_headers("agents:write", "agents:read", token_quota="5000/hour")
    events = events_of(stream(client, headers, new_session(client, headers, "estimate me")))
    usage = events[-1].json["usage"]
    reply = "".join(e.json["content"] for e in events[:-1])
    prompt = estimate_tokens({"role": "user", "content": "estimate me"})
    assert usage == {
        "prompt_tokens": prompt,
        "completion_tokens": text_tokens(reply),
        "total_tokens": prompt + text_tokens(reply),
        "estimated": True,
    }
    assert used(r, key_id(headers), "5000/hour").used == usage["total_tokens"]


def test_a_long_openai_reply_extends_its_reservation_in_steps(
    make_app: Callable[..., Flask],
    upstream: FakeUpstream,
    auth_headers: Headers,
    new_session: Any,
    key_id: Any,
    r: redis.Redis,
) -> None:
    upstream.words, upstream.send_usage = 400, False  # ~700 estimated tokens, reserve 50 at a time
    app = make_app(AGENT_BACKEND="openai", OPENAI_BASE_URL=upstream.url, AGENT_TOKEN_RESERVE="50")
    client = app.test_client()
    headers = auth_headers("agents:write", "agents:read", token_quota="100000/day")
    events = events_of(stream(client, headers, new_session(client, headers, "long one")))
    assert events[-1].json["type"] == "done"
    total = events[-1].json["usage"]["total_tokens"]
    assert total > 500
    window = used(r, key_id(headers), "100000/day")
    assert (window.used, window.held) == (total, 0)


# ---- agent.run jobs ---------------------------------------------------------------------


def run_jobs(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["jobs", "worker", "--burst"])
    assert result.exit_code == 0, result.output


def test_job_result_carries_usage_and_counts(
    client: FlaskClient, auth_headers: Headers, key_id: Any, r: redis.Redis
) -> None:
    headers = auth_headers("jobs:write", "jobs:read", token_quota="1000/day")
    created = client.post(
        "/jobs", json={"name": "agent.run", "args": {"prompt": "job tokens"}}, headers=headers
    )
    assert created.status_code == 202
    assert '"tokens";q=1000;w=86400' in created.headers["RateLimit-Policy"]
    run_jobs(client.application)
    job = client.get(f"/jobs/{created.get_json()['job_id']}", headers=headers).get_json()
    assert job["status"] == "finished"
    expected = builtin_usage("job tokens")
    # result stays the reply text (CONTRACT section 3); usage rides beside it (section 8).
    assert job["result"] == compose_reply([{"role": "user", "content": "job tokens"}])
    assert job["usage"] == expected
    assert used(r, key_id(headers), "1000/day").used == expected["total_tokens"]


def test_job_exhaustion_fails_mid_reply_then_429_at_enqueue(
    client: FlaskClient, auth_headers: Headers, key_id: Any, r: redis.Redis
) -> None:
    headers = auth_headers("jobs:write", "jobs:read", token_quota="20/day")
    created = client.post("/jobs", json={"name": "agent.run", "args": {"prompt": "hi"}}, headers=headers)
    assert created.status_code == 202
    run_jobs(client.application)
    job = client.get(f"/jobs/{created.get_json()['job_id']}", headers=headers).get_json()
    assert job["status"] == "failed"
    assert "token quota" in job["error"] and "ran out during the reply" in job["error"]
    window = used(r, key_id(headers), "20/day")
    assert 0 < window.used <= 20 and window.held == 0
    # Use up the rest: the next job is refused at once.
    policy = tokens.token_policy(key_id(headers), "20/day")
    assert policy is not None
    if window.used < 20:
        rest = tokens.reserve(r, policy, owner="x", app=client.application, step=20)
        rest.settle({"total_tokens": 20})
    refused = client.post("/jobs", json={"name": "agent.run", "args": {"prompt": "hi"}}, headers=headers)
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    assert refused.get_json()["reason"] == "token_quota_exhausted"


@pytest.mark.parametrize(
    ("name", "value"),
    [("AGENT_TOKEN_RESERVE", "0"), ("AGENT_TOKEN_RESERVATION_SECONDS", "5")],
)
def test_token_settings_are_checked(test_env: dict[str, str], name: str, value: str) -> None:
    from config import ConfigError, load_config

    with pytest.raises(ConfigError, match=name):
        load_config({**test_env, name: value})
