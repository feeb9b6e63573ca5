"""What the openai backend sends upstream: a bounded history and a max_tokens (issue 11, item 3)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from config import load_config
from gateway.agents.backends.openai import bounded_history, estimate_tokens
from tests.agents.fake_openai import FakeUpstream
from tests.agents.sse_client import parse

Headers = Callable[..., dict[str, str]]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def test_a_long_history_is_cut_to_the_newest_messages_and_max_tokens_is_sent(
    make_app: Callable[..., Flask], upstream: FakeUpstream, auth_headers: Headers, new_session: Any
) -> None:
    app = make_app(
        AGENT_BACKEND="openai",
        OPENAI_BASE_URL=upstream.url,
        AGENT_HISTORY_TOKENS="300",
        OPENAI_MAX_TOKENS="77",
    )
    client = app.test_client()
    headers = auth_headers("agents:write", "agents:read")
    contents = [f"message {n} " + "x" * 400 for n in range(12)]  # ~100 tokens each
    session_id = new_session(client, headers, *contents)
    response = client.get(f"/agents/stream?session_id={session_id}", headers=headers)
    events, _ = parse(response.get_data(as_text=True))
    assert events[-1].json["type"] == "done"
    sent = upstream.requests[-1]
    assert sent["max_tokens"] == 77
    assert [m["content"] for m in sent["messages"]] == contents[-2:]  # the newest that fit in 300


def test_bounded_history_keeps_the_system_prompt_and_the_newest_turns() -> None:
    system = {"role": "system", "content": "be brief"}
    turns = [{"role": "user" if n % 2 == 0 else "assistant", "content": "y" * 80} for n in range(10)]
    budget = estimate_tokens(system) + 3 * estimate_tokens(turns[0])
    assert bounded_history([system, *turns], budget) == [system, *turns[-3:]]
    # The latest message is always sent, even alone over the budget (the upstream then says so).
    huge = {"role": "user", "content": "z" * 10_000}
    assert bounded_history([*turns, huge], 100) == [huge]
    assert bounded_history([], 100) == []


def test_default_settings(test_env: dict[str, str]) -> None:
    config = load_config(test_env)
    assert config["AGENT_HISTORY_TOKENS"] == 8192 and config["OPENAI_MAX_TOKENS"] == 1024
