"""The built-in agent: local, deterministic, no network.

It answers the latest user message by quoting it back with a short description
(length, whether it is a question, its place in the conversation), so clients,
tests and benchmarks see realistic word-by-word streaming without an upstream.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from gateway.agents.backends.base import Message, UsageMeter, estimate_tokens, text_tokens

_WORD = re.compile(r"\s*\S+\s*")
NO_MESSAGE_REPLY = "Hello! Post a user message to this session and I will answer it."


def compose_reply(messages: list[Message]) -> str:
    """The whole reply to ``messages``; the same conversation always gets the same reply."""
    user_turns = [m["content"] for m in messages if m.get("role") == "user"]
    if not user_turns:
        return NO_MESSAGE_REPLY
    latest = user_turns[-1]
    kind = "question" if latest.rstrip().endswith("?") else "message"
    return (
        f'You said: "{latest}". That {kind} has {len(latest.split())} words and '
        f"{len(latest)} characters; it is message {len(user_turns)} from you in this session. "
        "I am the built-in agent: I acknowledge and describe messages. "
        "Set AGENT_BACKEND=openai to answer with a language model."
    )


def word_deltas(text: str) -> list[str]:
    """Word-sized pieces (each word with its surrounding whitespace) that join back to ``text``."""
    return _WORD.findall(text) or ([text] if text else [])


class BuiltinBackend:
    """Streams :func:`compose_reply` word by word, pausing between words."""

    name = "builtin"

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds
        self.max_pause_seconds = delay_seconds

    def stream_reply(self, messages: list[Message], meter: UsageMeter | None = None) -> Iterator[str]:
        """Yield the reply's words with ``delay_seconds`` between them."""
        reply = compose_reply(messages)
        if meter is not None:
            # Its own count, the same for the same conversation: no model, no tokenizer, so the
            # estimate's rule is the count (not marked estimated).
            meter.prompt_tokens = sum(map(estimate_tokens, messages))
        del messages  # the conversation is not needed any more: do not keep it for the stream's life
        # Each piece is cut as it is sent (match at an offset), not all at once: a thousand
        # open streams then hold one reply string and an int each, neither a list of words
        # nor a finditer scanner (~1.7 KB with its enumerate and regex state).
        position = 0
        while (match := _WORD.match(reply, position)) is not None:
            if position and self.delay_seconds > 0:
                # time.sleep is gevent's cooperative sleep under the gevent worker
                # (monkey-patched before the app loads), so pacing never blocks a worker.
                time.sleep(self.delay_seconds)
            position = match.end()
            yield match.group()
        if meter is not None:  # the whole reply went out: its count is final
            meter.reported = {"prompt_tokens": meter.prompt_tokens, "completion_tokens": text_tokens(reply)}
