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
Flask-Limiter's after_request and teardown hooks, and its pass in the wrapper of a
view with declared limits, run as before.

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

from flask import Flask

MIDDLEWARE = "_check_request_limit"


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
