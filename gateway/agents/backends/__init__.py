"""Agent backends behind one small interface: ``stream_reply(messages) -> Iterator[str]``.

``builtin`` answers locally and deterministically (no network); ``openai`` streams
from any OpenAI-compatible chat-completions server. Callers (the SSE stream, the
``agent.run`` job) only see text deltas and :class:`AgentBackendError`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from gateway.agents.backends.base import (
    AgentBackend,
    AgentBackendError,
    AgentRequestRefused,
    Message,
    UsageMeter,
)

# One backend per distinct configuration and process, so the openai backend's
# connection pool and circuit breaker are shared by every stream of a worker.
_backends: dict[tuple[Any, ...], AgentBackend] = {}
_lock = threading.Lock()


def _cache_key(config: Mapping[str, Any]) -> tuple[Any, ...]:
    if config["AGENT_BACKEND"] == "builtin":
        return ("builtin", config["AGENT_BUILTIN_DELAY_MS"])
    names = (
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_MODEL",
        "OPENAI_CONNECT_TIMEOUT",
        "OPENAI_READ_TIMEOUT",
        "OPENAI_BREAKER_FAILURES",
        "OPENAI_BREAKER_COOLDOWN_SECONDS",
        "AGENT_HISTORY_TOKENS",
        "OPENAI_MAX_TOKENS",
    )
    return ("openai", *(config.get(name) for name in names))


def _build(config: Mapping[str, Any]) -> AgentBackend:
    if config["AGENT_BACKEND"] == "openai":
        from gateway.agents.backends.openai import OpenAIBackend

        return OpenAIBackend.from_config(config)
    from gateway.agents.backends.builtin import BuiltinBackend

    return BuiltinBackend(delay_seconds=config["AGENT_BUILTIN_DELAY_MS"] / 1000)


def backend_from_config(config: Mapping[str, Any]) -> AgentBackend:
    """The backend named by ``AGENT_BACKEND`` (shared per process for equal settings)."""
    cache_key = _cache_key(config)
    with _lock:
        backend = _backends.get(cache_key)
        if backend is None:
            backend = _backends[cache_key] = _build(config)
    return backend


def clear_backends() -> None:
    """Forget the cached backends (and their breakers), e.g. after the settings changed."""
    with _lock:
        _backends.clear()


__all__ = [
    "AgentBackend",
    "AgentBackendError",
    "AgentRequestRefused",
    "Message",
    "UsageMeter",
    "backend_from_config",
    "clear_backends",
]
