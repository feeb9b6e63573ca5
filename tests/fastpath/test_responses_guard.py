"""Guards: the library internals gateway.fastpath.responses and gateway.fastpath.headers
rely on still have the shape they had. A failure here means an upgrade changed one:
turn GATEWAY_FASTPATH off (the public path needs none of them) and fix the shortcut."""

from __future__ import annotations

import inspect

from flask import Flask, Response, request
from flask_talisman import Talisman
from flask_talisman import talisman as talisman_module
from werkzeug.datastructures import Headers
from werkzeug.wrappers import Response as WerkzeugResponse

from gateway.fastpath import responses


def test_headers_keep_a_plain_list_of_name_value_tuples() -> None:
    headers = Headers([("A", "1")])
    headers.add("B", "2")
    assert isinstance(headers._list, list)  # type: ignore[attr-defined]
    assert headers._list == [("A", "1"), ("B", "2")]  # type: ignore[attr-defined]
    headers._list.append(("C", "3"))  # type: ignore[attr-defined]
    assert list(headers) == [("A", "1"), ("B", "2"), ("C", "3")]  # what the server is handed


def test_get_wsgi_headers_takes_the_environ_and_returns_headers() -> None:
    assert list(inspect.signature(WerkzeugResponse.get_wsgi_headers).parameters) == ["self", "environ"]
    answer = Response("hi")
    sent = answer.get_wsgi_headers({"SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http"})
    assert isinstance(sent, Headers) and sent["Content-Length"] == "2"
    # The server turns the result into a list of its own: sharing the response's is safe.
    start = inspect.getsource(WerkzeugResponse.get_wsgi_response)
    assert "headers.to_wsgi_list()" in start


def test_the_fast_response_skips_the_copy_only_where_werkzeug_would_change_nothing() -> None:
    environ = {"SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    plain = responses.FastResponse("hi")
    assert plain.get_wsgi_headers(environ) is plain.headers
    for special in (
        responses.FastResponse("", status=204),
        responses.FastResponse("", status=304),
        responses.FastResponse("x", headers={"Location": "/y"}),
    ):
        fast = list(special.get_wsgi_headers(environ))
        assert fast == list(Response.get_wsgi_headers(special, environ))


def test_ensure_sync_returns_a_plain_function_itself_and_wraps_a_coroutine_function() -> None:
    app = Flask(__name__)

    def plain() -> str:
        return "plain"

    async def coroutine() -> str:
        return "async"

    assert app.ensure_sync(plain) is plain  # what FastGateway caches the answer to
    fast = responses.FastGateway(__name__)
    assert fast.ensure_sync(plain) is plain and fast.ensure_sync(plain) is plain
    # A coroutine function goes to async_to_sync, as in Flask (which needs asgiref for it).
    seen: list[object] = []
    fast.async_to_sync = lambda func: seen.append(func) or plain  # type: ignore[method-assign]
    assert fast.ensure_sync(coroutine) is plain and seen == [coroutine]
    assert inspect.iscoroutinefunction(coroutine) and not inspect.iscoroutinefunction(plain)


def test_talisman_registers_the_three_hooks_the_shortcut_replaces() -> None:
    app = Flask(__name__)
    talisman = Talisman(app, force_https=False, content_security_policy_nonce_in=["script-src"])
    assert talisman._force_https in app.before_request_funcs[None]
    assert talisman._make_nonce in app.before_request_funcs[None]
    assert talisman._set_response_headers in app.after_request_funcs[None]
    assert list(inspect.signature(talisman._set_response_headers).parameters) == ["response"]


def test_talisman_writes_the_nonce_it_finds_on_the_request() -> None:
    app = Flask(__name__)
    talisman = Talisman(
        app, force_https=False, content_security_policy={"script-src": "'self'"},
        content_security_policy_nonce_in=["script-src"],
    )  # fmt: skip
    assert isinstance(talisman_module.NONCE_LENGTH, int)
    nonce = talisman_module.get_random_string(talisman_module.NONCE_LENGTH)
    assert isinstance(nonce, str) and len(nonce) == talisman_module.NONCE_LENGTH
    with app.test_request_context("/"):
        request.csp_nonce = "abc"  # type: ignore[attr-defined]
        answer = talisman._set_response_headers(Response("x"))
        assert answer.headers["Content-Security-Policy"] == "script-src 'self' 'nonce-abc'"
        assert app.jinja_env.globals["csp_nonce"]() == "abc"  # Talisman's own global reads it there


def test_flask_still_calls_views_and_hooks_through_ensure_sync() -> None:
    # Otherwise FastGateway's cache would be dead code (harmless, but no longer a gain).
    for method in (Flask.dispatch_request, Flask.preprocess_request, Flask.process_response):
        assert "self.ensure_sync(" in inspect.getsource(method), method.__name__
