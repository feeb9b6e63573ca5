"""Structured logs: one JSON object per line, each carrying the request's id.

A request id comes from the client's ``X-Request-ID`` when it is short and plain
(so a proxy's or caller's id links their logs to ours), else a fresh one; it is
returned in the answer. Access lines name the method, path (never the query
string), status, duration and identity; headers are never logged, so the
``Authorization`` and ``X-API-Key`` headers and cookies cannot leak, and the
formatter blanks anything shaped like a key or a bearer token in any message.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, has_request_context, request

from gateway.health import HEALTH_ENDPOINTS

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# API keys (auth.keys format), bearer credentials and key=value secrets in free text.
_SECRETS = re.compile(
    r"rgw_[A-Za-z0-9]{4,}|(?i:bearer)\s+\S+|(?i:(?:api[_-]?key|password|secret|token)[\"']?\s*[:=]\s*)\S+"
)
REDACTED = "[redacted]"
# Loggers whose records get the JSON handler (the app's own and the auth package's).
LOGGERS = ("gateway", "auth", "config")
ACCESS_LOGGER = "gateway.access"


def redact(text: str) -> str:
    return _SECRETS.sub(REDACTED, text)


def request_id() -> str | None:
    """This request's id (None outside a request)."""
    return g.get("request_id") if has_request_context() else None


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id", ...extra fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        rid = request_id()
        if rid:
            entry["request_id"] = rid
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc_info"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (gunicorn and test capture swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _configure_loggers(level: str) -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        # create_app() may run many times in one process (tests): keep one handler.
        for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(old)
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(level)


def start_request() -> None:
    """before_request: adopt a plain client id or make one; start the clock."""
    g.request_started = time.perf_counter()
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = offered if offered and _REQUEST_ID.match(offered) else os.urandom(16).hex()


def finish_request(response: Response) -> Response:
    """after_request: return the id and write the access line (health probes excepted)."""
    rid = g.get("request_id")
    if rid:
        response.headers[REQUEST_ID_HEADER] = rid
    if request.endpoint not in HEALTH_ENDPOINTS:
        _log_access(response)
    return response


def _log_access(response: Response) -> None:
    started = g.get("request_started")
    duration = (time.perf_counter() - started) * 1000 if started else None
    identity = getattr(g.get("_login_user"), "owner", None)
    fields = {
        "method": request.method,
        "path": request.path,
        "status": response.status_code,
        "duration_ms": round(duration, 2) if duration is not None else None,
        "remote_addr": request.remote_addr,
        "identity": identity,
    }
    logger = logging.getLogger(ACCESS_LOGGER)
    if logger.isEnabledFor(logging.INFO):
        # makeRecord + handle, not .info(): one line per request need not walk the stack for its caller.
        logger.handle(
            logger.makeRecord(logger.name, logging.INFO, "", 0, "request", (), None, extra={"fields": fields})
        )


def init_app(app: Flask) -> None:
    """JSON log lines for the app's loggers, request ids and access lines; call first."""
    _configure_loggers(app.config["LOG_LEVEL"])
    app.before_request(start_request)
    app.after_request(finish_request)
