"""The interface every agent backend offers, and its errors (imported by the backends
and by the package that picks one, so neither imports the other)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

Message = dict[str, str]


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

    def stream_reply(self, messages: list[Message]) -> Iterator[str]:
        """Yield the reply to ``messages`` ([{"role", "content"}], oldest first) piece by piece."""
        ...
