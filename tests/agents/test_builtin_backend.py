"""The built-in agent: deterministic word deltas answering the latest user message."""

from __future__ import annotations

import time

from gateway.agents.backends import backend_from_config
from gateway.agents.backends.builtin import NO_MESSAGE_REPLY, BuiltinBackend, compose_reply, word_deltas


def test_reply_answers_the_latest_user_message_deterministically() -> None:
    conversation = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "Is this the second one?"},
    ]
    reply = compose_reply(conversation)
    assert reply == compose_reply(list(conversation))
    assert reply.startswith('You said: "Is this the second one?". That question has 5 words')
    assert "message 2 from you" in reply
    assert compose_reply([]) == NO_MESSAGE_REPLY


def test_deltas_are_words_that_join_back() -> None:
    text = "  leading\r\n\r\nblank  lines\tand tabs "
    deltas = word_deltas(text)
    assert "".join(deltas) == text
    assert len(deltas) == 5


def test_pacing_between_deltas() -> None:
    backend = BuiltinBackend(delay_seconds=0.02)
    started = time.monotonic()
    deltas = list(backend.stream_reply([{"role": "user", "content": "one two three"}]))
    assert time.monotonic() - started >= 0.02 * (len(deltas) - 1)


def test_backend_from_config_is_shared_per_configuration() -> None:
    config = {"AGENT_BACKEND": "builtin", "AGENT_BUILTIN_DELAY_MS": 0}
    assert backend_from_config(config) is backend_from_config(dict(config))
    assert backend_from_config({**config, "AGENT_BUILTIN_DELAY_MS": 5}) is not backend_from_config(config)
