"""An OpenAI-compatible chat-completions backend, streamed over httpx.

Works with any server speaking ``POST {OPENAI_BASE_URL}/chat/completions`` with
``"stream": true`` (OpenAI, vLLM, llama.cpp, Ollama, LiteLLM...). Connect and
read timeouts bound every wait; a per-process circuit breaker answers at once
while the upstream keeps failing. What one reply may cost is bounded too: the
history sent is cut to ``AGENT_HISTORY_TOKENS`` (estimated; the newest messages
and any system prompt kept) and the reply to ``OPENAI_MAX_TOKENS``. Error
messages name what failed, never the URL's credentials or the API key.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx

from gateway.agents.backends.base import (
    AgentBackendError,
    AgentRequestRefused,
    Message,
    UsageMeter,
    estimate_tokens,
)
from gateway.agents.backends.breaker import CircuitBreaker, CircuitOpenError
from gateway.metrics import recorder

log = logging.getLogger(__name__)
NAME = "openai"
# An upstream error body is read only this far: enough for its code, never a flood.
ERROR_BODY_LIMIT = 4096
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # e.g. context_length_exceeded
# 4xx answers about the request's content: the caller can shorten or fix it.
_CONTENT_REFUSALS = frozenset({400, 413, 422})
DEFAULT_HISTORY_TOKENS = 8192
DEFAULT_MAX_TOKENS = 1024


def bounded_history(messages: list[Message], budget: int) -> list[Message]:
    """The system messages and the newest others that fit in ``budget`` estimated tokens, in
    order. The latest message is always kept: it is what the reply answers."""
    system = [m for m in messages if m["role"] == "system"]
    left = budget - sum(map(estimate_tokens, system))
    kept: list[Message] = []
    for message in reversed([m for m in messages if m["role"] != "system"]):
        cost = estimate_tokens(message)
        if kept and cost > left:
            break
        kept.append(message)
        left -= cost
    newest = set(map(id, kept))
    return [m for m in messages if m["role"] == "system" or id(m) in newest]


def _report_state(state: str) -> None:
    recorder.set_breaker_state(NAME, state)


class OpenAIBackend:
    """Streams the reply of an OpenAI-compatible server to the session's history."""

    name = NAME
    max_pause_seconds = None  # an upstream read may block up to OPENAI_READ_TIMEOUT

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        connect_timeout: float,
        read_timeout: float,
        breaker: CircuitBreaker,
        history_tokens: int = DEFAULT_HISTORY_TOKENS,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout)
        # One pooled client per process and configuration (see backend_from_config).
        self.client = httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers, timeout=timeout)
        self.model = model
        self.breaker = breaker
        self.history_tokens, self.max_tokens = history_tokens, max_tokens

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> OpenAIBackend:
        breaker = CircuitBreaker(
            failure_threshold=config["OPENAI_BREAKER_FAILURES"],
            cooldown_seconds=config["OPENAI_BREAKER_COOLDOWN_SECONDS"],
            on_change=_report_state,
        )
        _report_state(breaker.state)
        return cls(
            base_url=config["OPENAI_BASE_URL"],
            api_key=config.get("OPENAI_API_KEY"),
            model=config["OPENAI_MODEL"],
            connect_timeout=config["OPENAI_CONNECT_TIMEOUT"],
            read_timeout=config["OPENAI_READ_TIMEOUT"],
            breaker=breaker,
            history_tokens=config.get("AGENT_HISTORY_TOKENS", DEFAULT_HISTORY_TOKENS),
            max_tokens=config.get("OPENAI_MAX_TOKENS", DEFAULT_MAX_TOKENS),
        )

    def stream_reply(self, messages: list[Message], meter: UsageMeter | None = None) -> Iterator[str]:
        """Yield content deltas; raise AgentBackendError at once while the breaker is open."""
        try:
            self.breaker.before_call()
        except CircuitOpenError as exc:
            raise AgentBackendError(
                "The agent upstream is unavailable after repeated failures; "
                f"retry in {max(1, round(exc.retry_in))} seconds."
            ) from None
        verdict = False
        answered = False
        try:
            for delta in self._request(messages, meter):
                answered = True
                yield delta
            verdict = True
            self.breaker.success()
        except AgentRequestRefused:
            # This request's own fault (say, a context too long): it proves nothing about the
            # upstream either way, so it neither opens the shared breaker nor closes it.
            verdict = True
            self.breaker.release()
            raise
        except AgentBackendError:
            verdict = True
            self._failed()
            raise
        finally:
            if not verdict:
                # The consumer stopped early: a started answer proves the upstream works.
                if answered:
                    self.breaker.success()
                else:
                    self.breaker.release()

    def _failed(self) -> None:
        recorder.record_upstream_failure(NAME)
        self.breaker.failure()

    def _request(self, messages: list[Message], meter: UsageMeter | None) -> Iterator[str]:
        history = bounded_history(messages, self.history_tokens)
        if meter is not None:
            meter.prompt_tokens = sum(map(estimate_tokens, history))  # until the upstream says
        payload = {
            "model": self.model,
            "stream": True,
            # The upstream's own count, in a last chunk with empty choices (OpenAI, vLLM,
            # llama.cpp, LiteLLM); one that ignores it leaves the estimate in place.
            "stream_options": {"include_usage": True},
            "max_tokens": self.max_tokens,
            "messages": [{"role": m["role"], "content": m["content"]} for m in history],
        }
        try:
            with self.client.stream("POST", "chat/completions", json=payload) as response:
                if response.status_code != 200:
                    raise status_error(response.status_code, _error_code(response))
                yield from parse_chat_stream(response.iter_lines(), meter)
        except httpx.TimeoutException as exc:
            log.warning("openai upstream timed out: %s", type(exc).__name__)
            raise AgentBackendError("The agent upstream timed out.") from None
        except httpx.HTTPError as exc:
            log.warning("openai upstream failed: %s", type(exc).__name__)
            raise AgentBackendError("The agent upstream could not be reached.") from None


def status_error(status: int, code: str | None = None) -> AgentBackendError:
    """The error for a non-200 answer: only 5xx and 429 (and odd 1xx-3xx) blame the upstream."""
    if status >= 500 or status == 429 or status < 400:
        return AgentBackendError(f"The agent upstream answered HTTP {status}.")
    log.warning("openai upstream refused a request: HTTP %s (%s)", status, code or "no code")
    detail = f"HTTP {status}: {code}" if code else f"HTTP {status}"
    hint = "; the conversation may be too long or malformed for the model"
    hint = hint if status in _CONTENT_REFUSALS else ""
    return AgentRequestRefused(f"The agent upstream refused this request ({detail}){hint}.")


def _error_code(response: httpx.Response) -> str | None:
    """The ``error.code`` of an OpenAI-style error body, when it is a plain token (never free text,
    which could carry upstream details a client should not see)."""
    if not 400 <= response.status_code < 500:
        return None
    raw = b""
    try:
        for chunk in response.iter_bytes():
            raw += chunk
            if len(raw) >= ERROR_BODY_LIMIT:
                return None
        error = json.loads(raw).get("error")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.match(code) else None


def parse_chat_stream(lines: Iterable[str], meter: UsageMeter | None = None) -> Iterator[str]:
    """Content deltas from chat-completions SSE lines, up to ``data: [DONE]``; the upstream's
    ``usage`` (any chunk may carry it, the last one does) goes to ``meter``."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # comments, blank separators, event names
        data = line[5:].strip()
        if data == "[DONE]":
            return
        content = _delta_content(data, meter)
        if content:
            yield content


def _delta_content(data: str, meter: UsageMeter | None = None) -> str | None:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise AgentBackendError("The agent upstream sent a malformed stream.") from None
    if not isinstance(chunk, dict):
        raise AgentBackendError("The agent upstream sent a malformed stream.")
    if chunk.get("error"):
        raise AgentBackendError("The agent upstream reported an error.")
    if meter is not None and chunk.get("usage"):
        reported = reported_usage(chunk["usage"])
        if reported is not None:
            meter.reported = reported
    choices = chunk.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    delta = choice.get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else None


def reported_usage(usage: Any) -> dict[str, int] | None:
    """The upstream's ``{prompt_tokens, completion_tokens}`` when both are counts; else None
    (a malformed usage is ignored: the estimate stands, it never fails a good reply)."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    counts = (prompt, completion)
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 10**9 for n in counts):
        return None
    return {"prompt_tokens": int(prompt), "completion_tokens": int(completion)}  # type: ignore[arg-type]
