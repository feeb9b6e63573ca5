"""The interface every agent backend offers, and its errors (imported by the backends
and by the package that picks one, so neither imports the other)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

Message = dict[str, str]

# Token estimate without the model's tokenizer: ~4 characters a token in English text, plus
# the few tokens chat formats spend on every message's role and separators. A tokenizer
# (tiktoken) would be exact for OpenAI's own models only, and costs a download per encoding.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def estimate_tokens(message: Message) -> int:
    return TOKENS_PER_MESSAGE + text_tokens(message["content"])


def text_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


class UsageMeter:
    """The tokens of one reply, filled in as it is produced.

    The backend sets ``prompt_tokens`` before its first delta (its estimate of what it sends)
    and ``reported`` when it has an exact count (the upstream's ``usage``, the built-in
    agent's own); the caller adds every delta it passes on. Without ``reported`` the usage is
    the estimate, and says so.
    """

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_chars = 0
        self.reported: dict[str, int] | None = None

    def add(self, delta: str) -> None:
        self.completion_chars += len(delta)

    def sent(self, extra: str = "") -> int:
        """Estimated tokens so far (with ``extra`` added): what a reservation must cover."""
        return self.prompt_tokens + -(-(self.completion_chars + len(extra)) // CHARS_PER_TOKEN)

    def usage(self) -> dict[str, int | bool]:
        """``{prompt_tokens, completion_tokens, total_tokens}`` (+ ``estimated: true``)."""
        if self.reported is not None:
            prompt, completion = self.reported["prompt_tokens"], self.reported["completion_tokens"]
            total = prompt + completion
            return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
        completion = -(-self.completion_chars // CHARS_PER_TOKEN)
        total = self.prompt_tokens + completion
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": total,
            "estimated": True,
        }


class AgentBackendError(Exception):
    """The backend could not produce a reply; ``str(exc)`` is a sentence safe to show clients."""


class AgentRequestRefused(AgentBackendError):
    """The upstream refused this one request (a 4xx such as a context that is too long).

    The caller's own failure, not the upstream's: it must not count against the
    circuit breaker that every tenant of the process shares.
    """


class AgentBackend(Protocol):
    """What every backend offers: the reply to a conversation, as text deltas."""

    name: str
    # The longest the iterator may block between deltas, when the backend knows it
    # (None: unknown, e.g. an upstream read). Short pauses let a stream iterate the
    # backend inline instead of in a background thread.
    max_pause_seconds: float | None

    def stream_reply(self, messages: list[Message], meter: UsageMeter | None = None) -> Iterator[str]:
        """Yield the reply to ``messages`` ([{"role", "content"}], oldest first) piece by piece;
        fill ``meter``'s prompt tokens and, when known exactly, its reported usage."""
        ...
