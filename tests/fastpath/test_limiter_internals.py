"""Guard for gateway.fastpath.limiter: Flask-Limiter still registers its request check as
the before_request ``Limiter._check_request_limit``, and the gateway gates exactly that one
when GATEWAY_FASTPATH is on. A failure here means: re-measure, then adapt or delete the
shortcut (the request_filter keeps the pass a no-op without it)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask_limiter import Limiter

from gateway.fastpath.limiter import MIDDLEWARE, gate_after, gate_middleware, limiter_idle
from gateway.ratelimit import limiter


def limiter_checks(app: Flask, owner: Limiter) -> list[object]:
    """The before_request functions that are ``owner``'s check (gated or not)."""

    def owned(func: object) -> bool:
        bound = getattr(func, "__wrapped__", func)
        return getattr(bound, "__self__", None) is owner and getattr(bound, "__name__", "") == MIDDLEWARE

    return [f for f in app.before_request_funcs[None] if owned(f)]


def test_flask_limiter_registers_its_check_as_a_before_request() -> None:
    app = Flask(__name__)
    own = Limiter(lambda: "k", storage_uri="memory://")
    own.init_app(app)
    assert [getattr(f, "__self__", None) for f in limiter_checks(app, own)] == [own]
    assert gate_middleware(app, own, lambda: True)
    with app.test_request_context("/"):
        app.preprocess_request()  # gated: returns at once


@pytest.mark.parametrize(("fastpath", "gated"), [("true", True), ("false", False)])
def test_the_gateway_gates_it_only_with_the_switch_on(
    make_app: Callable[..., Flask], fastpath: str, gated: bool
) -> None:
    checks = limiter_checks(make_app(GATEWAY_FASTPATH=fastpath), limiter)
    assert len(checks) == 1 and bool(getattr(checks[0], "gated", False)) is gated


def test_flask_limiter_keeps_its_per_request_state_where_the_after_gate_looks() -> None:
    """The after_request/teardown gate skips a request when Flask-Limiter made no context in
    it: its hooks must still be found, and its context still kept on the request context."""
    app = Flask(__name__)
    own = Limiter(lambda: "k", storage_uri="memory://")
    own.init_app(app)
    assert gate_after(app, own) == 2  # __inject_headers (after_request) and __release_context (teardown)
    with app.test_request_context("/"):
        assert limiter_idle()
        own.context  # noqa: B018 - made on first use, as Flask-Limiter's own pass makes it
        assert not limiter_idle()


def test_a_limit_evaluated_by_flask_limiter_itself_still_settles_through_the_gate() -> None:
    """A ``with limiter.limit(...)`` block inside a view: Flask-Limiter's own after hook runs."""
    app = Flask(__name__)
    own = Limiter(lambda: "k", storage_uri="memory://")
    own.init_app(app)
    gate_after(app, own)
    settled: list[int] = []

    @app.get("/")
    def view() -> str:
        with own.limit("1/minute", deduct_when=lambda response: settled.append(1) or True):
            return "ok"

    client = app.test_client()
    assert client.get("/").status_code == 200
    assert settled == [1]  # deduct_when was asked after the answer: the after hook ran
    assert client.get("/").status_code == 429
