"""Per-request timing and counting into the app's recorder (``Recorder.request``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, request

from core.extensions import RedisStore
from gateway.health import is_probe
from gateway.metrics import recorder

START_ENVIRON_KEY = "gateway.metrics.start"
UNMATCHED_ROUTE = "unmatched"  # every path that matched no route shares this one label


class _StartTime:
    """WSGI middleware stamping when a request arrived, before any Flask hook can reject it."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ[START_ENVIRON_KEY] = time.perf_counter()
        return self.wsgi_app(environ, start_response)


def _counter(shared: recorder.Recorder) -> Callable[[Response], Response]:
    """The after_request hook counting into ``shared`` (bound here: no app lookup per request)."""

    def record(response: Response) -> Response:
        """Count every answer except health probes (probe traffic is not load)."""
        if is_probe():
            return response
        started = request.environ.get(START_ENVIRON_KEY)
        seconds = time.perf_counter() - started if started is not None else 0.0
        # The route template (url_rule), never the raw path: label values stay bounded.
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED_ROUTE
        shared.request(route, request.method, response.status_code, seconds)
        return response

    return record


def init_app(app: Flask) -> None:
    """Bind a recorder to ``app`` and count its requests (when ENABLE_METRICS is on)."""
    if not app.config["ENABLE_METRICS"]:
        app.extensions[recorder.EXTENSION_KEY] = None  # every recorder call becomes a no-op
        return
    shared = recorder.shared(app.config["REDIS_URL"], lambda: RedisStore.client(app))
    app.extensions[recorder.EXTENSION_KEY] = shared
    app.wsgi_app = _StartTime(app.wsgi_app)  # type: ignore[method-assign]
    app.after_request(_counter(shared))
