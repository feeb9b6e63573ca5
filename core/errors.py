"""One JSON error shape for every error the gateway answers (CONTRACT section 4)."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import redis
from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from core.redis import NotReplicatedError, failure_label, is_unavailable

# Sentences for statuses whose Werkzeug description is written for HTML pages.
_MESSAGES: dict[int, str] = {
    400: "The request could not be understood.",
    401: "Authentication is required: send an API key as 'Authorization: Bearer <key>' or 'X-API-Key'.",
    403: "The credentials given do not allow this request.",
    404: "The requested resource was not found.",
    405: "The method is not allowed for the requested URL.",
    409: "The request conflicts with the current state of the resource.",
    413: "The request body is larger than the gateway accepts.",
    415: "The request body must be JSON (Content-Type: application/json).",
    429: "Too many requests: slow down and retry after the time given.",
    500: "The gateway hit an unexpected error; it has been logged.",
    503: "A service the gateway depends on is unavailable; retry shortly.",
}


class APIError(HTTPException):
    """Raise from views and services' callers for a contract error with a specific message."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(description=message or error)
        self.code = status
        self.error = error
        self.message = message or error
        self.extra_headers = dict(headers or {})
        self.extra = dict(extra or {})


# RFC 6750 section 3: the challenge of every 401 (CONTRACT section 3). auth.errors adds the
# error code for a presented key that is not valid.
BEARER_CHALLENGE = 'Bearer realm="gateway"'

# app.extensions entry: a callable (status, reason, message, headers) -> Response | None that
# answers an error as an HTML page where people browse (the admin console); None keeps JSON.
ERROR_PAGE_EXTENSION = "gateway.error_page"


def error_response(
    status: int,
    error: str | None = None,
    message: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Build the contract's error body: error, status_code, message, path (+ extra fields)."""
    reason = error or HTTPStatus(status).phrase
    sentence = message or _MESSAGES.get(status) or reason
    render_page = current_app.extensions.get(ERROR_PAGE_EXTENSION)
    page = render_page(status, reason, sentence, headers or {}) if render_page else None
    if page is not None:
        return page  # type: ignore[no-any-return]
    body: dict[str, Any] = {
        "error": reason,
        "status_code": status,
        "message": sentence,
        "path": request.path,
    }
    body.update(extra)
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    if status == 401:
        response.headers.setdefault("WWW-Authenticate", BEARER_CHALLENGE)
    return response


def _from_http_exception(exc: HTTPException) -> Response:
    if isinstance(exc, APIError):
        return error_response(exc.code, exc.error, exc.message, headers=exc.extra_headers, **exc.extra)
    status = exc.code or 500
    # Werkzeug's own descriptions are generic HTML-page prose; keep ours unless a view gave one.
    description = exc.description if exc.description != type(exc).description else None
    kept = {k: v for k, v in exc.get_headers() if k in ("Allow", "Retry-After", "WWW-Authenticate")}
    return error_response(status, message=description, headers=kept)


def _unexpected(exc: Exception) -> Response:
    # Log with the traceback for operators; the client gets the generic sentence only.
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500)


def _redis_error(exc: Exception) -> Response:
    # Only the classes and reply codes that mean "not now" become 503; any other Redis
    # error (WRONGTYPE, a bad argument) is a bug and goes the 500 way, with its traceback.
    if not is_unavailable(exc):
        return _unexpected(exc)
    current_app.logger.warning(
        "redis unavailable on %s %s: %s", request.method, request.path, failure_label(exc)
    )
    message = "The data store is unavailable; retry shortly."
    if isinstance(exc, NotReplicatedError):  # REDIS_WAIT_REPLICAS not reached: not acknowledged
        message = "The write was not confirmed by enough Redis replicas; retry shortly."
    return error_response(503, "Service Unavailable", message, headers={"Retry-After": "1"})


def init_app(app: Flask) -> None:
    """Route every error through error_response()."""
    app.register_error_handler(HTTPException, _from_http_exception)
    app.register_error_handler(redis.RedisError, _redis_error)
    app.register_error_handler(Exception, _unexpected)
