"""Shortcut: Flask-Limiter's before_request pass skipped on requests the gateway's rate
limiter has already decided.

What it bypasses: Flask-Limiter registers ``Limiter._check_request_limit`` as a
before_request. In the gateway that pass never has anything to evaluate (no default,
application or meta limits are declared with Flask-Limiter; route limits are
evaluated in the view's wrapper), yet it resolves the endpoint's exemption scope,
reads ``flask.request``/``flask.current_app`` through a dozen proxies and builds its
per-request context: with its ``request_filter`` answering true it still costs about
110 Python calls per request. This module finds that registration (a private method
of Flask-Limiter, in Flask's ``before_request_funcs``) and gates it with ``skip``.
Flask-Limiter's after_request (``__inject_headers``) and teardown
(``__release_context``) hooks are gated too, by ``idle``: on a request during which
Flask-Limiter never made its per-request context (no declared limit, no ``with
limiter.limit(...)`` block), both would only create that context to find it empty.
Its pass in the wrapper of a view with declared limits runs as before.

Measured gain (docs/rate-limits.md, "The cost of Flask-Limiter, measured"): cProfile
counts 1,539 Python calls per secured ``GET /auth/me`` without the gate and 1,428 with
it (111 fewer, the bulk of Flask-Limiter's per-request work); wall-clock figures on
the shared VM were too noisy to separate. Off (``GATEWAY_FASTPATH=false``)
the gateway's ``request_filter`` makes the same pass a no-op through the public API.
tests/fastpath/test_limiter_internals.py fails when the registration changes shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import Flask, Response
from flask.globals import request_ctx

MIDDLEWARE = "_check_request_limit"
AFTER = "__inject_headers"  # registered as partial(Limiter.__inject_headers, limiter)
TEARDOWN = "__release_context"  # registered as the bound method limiter.__release_context
CONTEXT_ATTR = "_limiter_request_context"  # where Limiter.context keeps its state, on the request context


def limiter_idle() -> bool:
    """True when Flask-Limiter made no per-request context in this request (nothing to settle)."""
    return not hasattr(request_ctx, CONTEXT_ATTR)


def gate_after(app: Flask, limiter: Any, skip: Callable[[], bool] = limiter_idle) -> int:
    """Gate ``limiter``'s after_request and teardown hooks on ``app`` with ``skip``; how many were found."""
    found = 0
    after = app.after_request_funcs.setdefault(None, [])
    for index, func in enumerate(after):
        if _is_inject_headers(func, limiter):
            after[index] = _gated_response(func, skip)
            found += 1
    teardown = app.teardown_request_funcs.setdefault(None, [])
    for index, func in enumerate(teardown):
        if getattr(func, "__self__", None) is limiter and getattr(func, "__name__", "") == TEARDOWN:
            teardown[index] = _gated_teardown(func, skip)
            found += 1
    return found


def _is_inject_headers(func: Any, limiter: Any) -> bool:
    is_partial = isinstance(func, functools.partial)
    return is_partial and getattr(func.func, "__name__", "") == AFTER and func.args == (limiter,)


def _gated_response(
    hook: Callable[[Response], Response], skip: Callable[[], bool]
) -> Callable[[Response], Response]:
    @functools.wraps(hook)
    def gated(response: Response) -> Response:
        return response if skip() else hook(response)

    gated.gated = True  # type: ignore[attr-defined]
    return gated


def _gated_teardown(
    hook: Callable[[BaseException | None], None], skip: Callable[[], bool]
) -> Callable[..., None]:
    @functools.wraps(hook)
    def gated(exc: BaseException | None = None) -> None:
        if not skip():
            hook(exc)

    gated.gated = True  # type: ignore[attr-defined]
    return gated


def gate_middleware(app: Flask, limiter: Any, skip: Callable[[], bool]) -> bool:
    """Make ``limiter``'s before_request on ``app`` return at once when ``skip()``; True if found."""
    funcs = app.before_request_funcs.setdefault(None, [])
    for index, func in enumerate(funcs):
        if getattr(func, "__self__", None) is limiter and getattr(func, "__name__", "") == MIDDLEWARE:
            funcs[index] = _gated(func, skip)
            return True
    return False


def _gated(check: Callable[[], None], skip: Callable[[], bool]) -> Callable[[], None]:
    @functools.wraps(check)
    def gated() -> None:
        if not skip():
            check()

    gated.gated = True  # type: ignore[attr-defined]  # for the guard test
    return gated
