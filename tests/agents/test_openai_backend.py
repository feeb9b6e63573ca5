"""The openai backend against a real local server speaking the streaming chat-completions format."""

from __future__ import annotations

import ast
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from gateway.agents.backends import AgentBackendError, backend_from_config
from gateway.agents.backends.breaker import CLOSED, HALF_OPEN, OPEN
from gateway.agents.backends.openai import OpenAIBackend, parse_chat_stream
from tests.agents.fake_openai import FakeUpstream
from tests.agents.sse_client import parse

Headers = Callable[..., dict[str, str]]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def openai_app(make_app: Callable[..., Flask], upstream: FakeUpstream) -> Flask:
    return make_app(
        AGENT_BACKEND="openai",
        OPENAI_BASE_URL=upstream.url,
        OPENAI_API_KEY="sk-test-upstream-secret",
        OPENAI_MODEL="test-model",
        OPENAI_READ_TIMEOUT="0.5",
        OPENAI_CONNECT_TIMEOUT="0.5",
        OPENAI_BREAKER_FAILURES="2",
        OPENAI_BREAKER_COOLDOWN_SECONDS="1",
    )


def run_stream(app: Flask, headers: dict[str, str], session_id: str) -> list[Any]:
    response = app.test_client().get(f"/agents/stream?session_id={session_id}", headers=headers)
    events, _ = parse(response.get_data(as_text=True))
    return events


def test_normal_stream_sends_the_session_history(
    openai_app: Flask, upstream: FakeUpstream, auth_headers: Headers, new_session: Any
) -> None:
    client = openai_app.test_client()
    headers = auth_headers("agents:write", "agents:read")
    session_id = new_session(client, headers, "first question")
    first = run_stream(openai_app, headers, session_id)
    body = {"session_id": session_id, "role": "user", "content": "second question"}
    client.post("/agents/message", headers=headers, json=body)
    events = run_stream(openai_app, headers, session_id)
    final = events[-1].json
    usage = final.pop("usage")
    assert final == {"type": "done", "session_id": session_id}
    reply = "".join(e.json["content"] for e in events[:-1])
    assert usage == upstream.usage_of(upstream.requests[-1]["messages"])  # the upstream's own count
    first_reply = "".join(e.json["content"] for e in first[:-1])
    assert first_reply == "Upstream heard 1 messages, the last: first question"
    assert reply == "Upstream heard 3 messages, the last: second question"
    # The conversation sent upstream is the session's history, oldest first.
    sent = upstream.requests[-1]
    assert sent["stream"] is True and sent["model"] == "test-model"
    assert sent["messages"] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": first_reply},
        {"role": "user", "content": "second question"},
    ]
    assert upstream.headers[-1]["Authorization"] == "Bearer sk-test-upstream-secret"
    stored = client.get(f"/agents/session/{session_id}/messages", headers=headers).get_json()
    assert stored["messages"][-1]["content"] == reply


def test_slow_upstream_hits_the_read_timeout(
    openai_app: Flask, upstream: FakeUpstream, auth_headers: Headers, new_session: Any
) -> None:
    upstream.mode = "slow"
    headers = auth_headers("agents:write", "agents:read")
    client = openai_app.test_client()
    session_id = new_session(client, headers, "hello")
    started = time.monotonic()
    events = run_stream(openai_app, headers, session_id)
    assert time.monotonic() - started < upstream.stall_seconds  # the timeout, not the upstream, ended it
    assert events[0].json["type"] == "delta"  # what arrived before the stall was streamed
    assert events[-1].event == "error"
    assert events[-1].json["error"] == "upstream_error"
    assert events[-1].json["message"] == "The agent upstream timed out."
    roles = [
        m["role"]
        for m in client.get(f"/agents/session/{session_id}/messages", headers=headers).get_json()["messages"]
    ]
    assert roles == ["user"]  # a failed reply is not kept


def test_failing_upstream_opens_the_breaker_which_closes_after_cool_down(
    openai_app: Flask, upstream: FakeUpstream, auth_headers: Headers, new_session: Any
) -> None:
    headers = auth_headers("agents:write")
    session_id = new_session(openai_app.test_client(), headers, "hello")
    backend = backend_from_config(openai_app.config)
    assert isinstance(backend, OpenAIBackend)
    upstream.mode = "fail"
    for _ in range(2):
        events = run_stream(openai_app, headers, session_id)
        assert [e.event for e in events] == ["error"]
        assert events[0].json["message"] == "The agent upstream answered HTTP 500."
    assert backend.breaker.state == OPEN and len(upstream.requests) == 2
    # While open: answered at once, without calling the upstream.
    events = run_stream(openai_app, headers, session_id)
    assert events[0].event == "error" and "unavailable" in events[0].json["message"]
    assert len(upstream.requests) == 2
    # After the cool-down one trial goes through; the upstream has recovered, so it closes.
    upstream.mode = "normal"
    time.sleep(1.1)
    events = run_stream(openai_app, headers, session_id)
    assert events[-1].json["type"] == "done"
    assert backend.breaker.state == CLOSED and len(upstream.requests) == 3


def test_breaker_reopens_when_the_trial_fails(upstream: FakeUpstream) -> None:
    config = {
        "OPENAI_BASE_URL": upstream.url,
        "OPENAI_API_KEY": None,
        "OPENAI_MODEL": "m",
        "OPENAI_CONNECT_TIMEOUT": 0.5,
        "OPENAI_READ_TIMEOUT": 0.5,
        "OPENAI_BREAKER_FAILURES": 1,
        "OPENAI_BREAKER_COOLDOWN_SECONDS": 0.3,
    }
    backend = OpenAIBackend.from_config(config)
    upstream.mode = "fail"
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(AgentBackendError):
        list(backend.stream_reply(messages))
    assert backend.breaker.state == OPEN
    time.sleep(0.35)
    with pytest.raises(AgentBackendError, match="HTTP 500"):
        list(backend.stream_reply(messages))  # the half-open trial reached the upstream
    assert backend.breaker.state == OPEN and len(upstream.requests) == 2


def test_half_open_lets_a_single_trial_through(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend.from_config(
        {
            "OPENAI_BASE_URL": upstream.url,
            "OPENAI_MODEL": "m",
            "OPENAI_CONNECT_TIMEOUT": 0.5,
            "OPENAI_READ_TIMEOUT": 0.5,
            "OPENAI_BREAKER_FAILURES": 1,
            "OPENAI_BREAKER_COOLDOWN_SECONDS": 0.2,
        }
    )
    upstream.mode = "fail"
    with pytest.raises(AgentBackendError):
        list(backend.stream_reply([{"role": "user", "content": "x"}]))
    time.sleep(0.25)
    upstream.mode = "normal"
    trial = backend.stream_reply([{"role": "user", "content": "x"}])
    assert next(trial)  # the trial is in flight
    assert backend.breaker.state == HALF_OPEN
    with pytest.raises(AgentBackendError, match="unavailable"):
        next(backend.stream_reply([{"role": "user", "content": "y"}]))
    assert "".join(trial)
    assert backend.breaker.state == CLOSED


def test_unreachable_upstream_is_a_clear_error() -> None:
    from devtools.redis_server import free_port

    backend = OpenAIBackend.from_config(
        {
            "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
            "OPENAI_MODEL": "m",
            "OPENAI_CONNECT_TIMEOUT": 0.5,
            "OPENAI_READ_TIMEOUT": 0.5,
            "OPENAI_BREAKER_FAILURES": 3,
            "OPENAI_BREAKER_COOLDOWN_SECONDS": 1,
        }
    )
    with pytest.raises(AgentBackendError, match="could not be reached"):
        list(backend.stream_reply([{"role": "user", "content": "x"}]))


def test_parse_chat_stream() -> None:
    lines = [
        ": keep-alive",
        'data: {"choices": [{"delta": {"role": "assistant"}}]}',
        "",
        'data: {"choices": [{"delta": {"content": "Hel"}}]}',
        'data: {"choices": [{"delta": {"content": "lo"}, "finish_reason": null}]}',
        "data: [DONE]",
        'data: {"choices": [{"delta": {"content": "ignored"}}]}',
    ]
    assert list(parse_chat_stream(lines)) == ["Hel", "lo"]
    with pytest.raises(AgentBackendError, match="malformed"):
        list(parse_chat_stream(["data: {not json"]))
    with pytest.raises(AgentBackendError, match="reported an error"):
        list(parse_chat_stream(['data: {"error": {"message": "quota"}}']))


def test_a_tenants_own_400_never_opens_the_breaker(
    openai_app: Flask, upstream: FakeUpstream, auth_headers: Headers, new_session: Any
) -> None:
    """A context that is too long is that request's failure: others keep their upstream."""
    headers = auth_headers("agents:write")
    session_id = new_session(openai_app.test_client(), headers, "a very long conversation")
    backend = backend_from_config(openai_app.config)
    assert isinstance(backend, OpenAIBackend)
    upstream.mode = "reject"
    for _ in range(5):  # the breaker opens after 2 failures
        events = run_stream(openai_app, headers, session_id)
        assert [e.event for e in events] == ["error"]
        assert events[0].json["error"] == "upstream_error"
        assert events[0].json["message"] == (
            "The agent upstream refused this request (HTTP 400: context_length_exceeded); "
            "the conversation may be too long or malformed for the model."
        )
    assert backend.breaker.state == CLOSED and len(upstream.requests) == 5
    # The upstream's own failures still open it.
    upstream.mode = "fail"
    for _ in range(2):
        run_stream(openai_app, headers, session_id)
    assert backend.breaker.state == OPEN


def breaker_config(upstream: FakeUpstream, failures: int) -> dict[str, Any]:
    return {
        "OPENAI_BASE_URL": upstream.url,
        "OPENAI_MODEL": "m",
        "OPENAI_CONNECT_TIMEOUT": 0.5,
        "OPENAI_READ_TIMEOUT": 0.5,
        "OPENAI_BREAKER_FAILURES": failures,
        "OPENAI_BREAKER_COOLDOWN_SECONDS": 0.2,
    }


def test_upstream_429_counts_as_a_breaker_failure(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend.from_config(breaker_config(upstream, 2))
    upstream.mode = "busy"
    for _ in range(2):
        with pytest.raises(AgentBackendError, match="HTTP 429"):
            list(backend.stream_reply([{"role": "user", "content": "x"}]))
    assert backend.breaker.state == OPEN


def test_a_400_neither_resets_nor_adds_to_the_failure_count(upstream: FakeUpstream) -> None:
    """Refused requests prove nothing either way: a tenant's 400s cannot keep a failing upstream 'closed'."""
    backend = OpenAIBackend.from_config(breaker_config(upstream, 2))
    messages = [{"role": "user", "content": "x"}]
    for mode in ("fail", "reject", "reject", "fail"):
        upstream.mode = mode
        with pytest.raises(AgentBackendError):
            list(backend.stream_reply(messages))
    assert backend.breaker.state == OPEN


def test_a_refused_half_open_trial_frees_the_next_trial(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend.from_config(breaker_config(upstream, 1))
    messages = [{"role": "user", "content": "x"}]
    upstream.mode = "fail"
    with pytest.raises(AgentBackendError):
        list(backend.stream_reply(messages))
    time.sleep(0.25)
    upstream.mode = "reject"
    with pytest.raises(AgentBackendError, match="HTTP 400"):
        list(backend.stream_reply(messages))  # the trial: refused, no verdict
    upstream.mode = "normal"
    assert "".join(backend.stream_reply(messages))  # the next call is let through as the trial
    assert backend.breaker.state == CLOSED


OUTBOUND_HTTP = {"httpx", "requests", "urllib.request", "http.client", "aiohttp", "urllib3", "pycurl"}


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from urllib import request`` is urllib.request too.
            found.update({node.module, *(f"{node.module}.{alias.name}" for alias in node.names)})
    return found


def test_only_the_openai_backend_makes_outbound_http_calls() -> None:
    """SSRF: no request can pick where the gateway connects; the one HTTP client goes to the
    configured OPENAI_BASE_URL, and the job worker's quota alerts to the configured WEBHOOK_URL.
    A new outbound call has to be added here, on purpose."""
    root = Path(__file__).resolve().parents[2]
    callers = {
        str(path.relative_to(root))
        for package in ("gateway", "auth", "config")
        for path in (root / package).rglob("*.py")
        if any(
            name.split(".")[0] in OUTBOUND_HTTP or name in OUTBOUND_HTTP for name in _imported_modules(path)
        )
    }
    assert callers == {"gateway/agents/backends/openai.py", "gateway/jobs/webhooks.py"}
