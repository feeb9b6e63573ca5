"""Counting answers and tokens into the process's usage buffer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Response

from auth.identity import loaded_identity
from core import signals
from core.extensions import RedisStore
from gateway.usage import buffer

EXTENSION_KEY = "gateway.usage"


def _counter(shared: buffer.UsageBuffer) -> Callable[[Response], Response]:
    def count(response: Response) -> Response:
        # Only an identity this request resolved already: never a Redis lookup here.
        identity = loaded_identity()
        if identity is None:
            return response
        status = response.status_code
        if status < 400:
            shared.add(identity.owner, "requests")
        elif status == 429:
            shared.add(identity.owner, "requests", 1, "errors", "rate_limited")
        else:
            shared.add(identity.owner, "requests", 1, "errors")
        return response

    return count


def _tokens(shared: buffer.UsageBuffer) -> Callable[..., None]:
    def counted(
        sender: Any, *, key_id: str | None = None, owner: str = "", usage: Any = None, **_: Any
    ) -> None:
        total = int((usage or {}).get("total_tokens") or 0)
        who = owner or (f"api_key:{key_id}" if key_id else "")
        if who and total > 0:
            shared.add(who, "tokens", total)

    return counted


def init_app(app: Flask) -> None:
    shared = buffer.shared(app.config["REDIS_URL"], lambda: RedisStore.client(app))
    app.extensions[EXTENSION_KEY] = shared
    app.after_request(_counter(shared))
    receiver = _tokens(shared)
    app.extensions[EXTENSION_KEY + ".tokens"] = receiver  # blinker holds receivers weakly
    signals.tokens_counted.connect(receiver, sender=app)


def current(app: Flask) -> buffer.UsageBuffer | None:
    return app.extensions.get(EXTENSION_KEY)
