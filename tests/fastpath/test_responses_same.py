"""With GATEWAY_FASTPATH on or off, every kind of answer is the same: status, headers
in order, body (gateway.fastpath.responses and gateway.fastpath.headers)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from auth import keys
from auth.loaders import pepper
from core.redis import redis_from_config
from gateway import create_app
from tests.support.probes import add_probe_routes

REQUEST_ID = "fastpath-same"
_NONCE = re.compile(r"'nonce-([^']+)'")
_HIDDEN_VALUE = re.compile(r'(name="(?:csrf_token|form_id|login_token)"[^>]*value=")[^"]*"')


def _normalized(answer: TestResponse) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer with its per-request random parts (nonce, cookie values, form tokens) blanked."""
    csp = answer.headers.get("Content-Security-Policy", "")
    nonce = m.group(1) if (m := _NONCE.search(csp)) else None
    headers = []
    for name, value in answer.headers:
        if nonce:
            value = value.replace(nonce, "NONCE")
        if name == "Set-Cookie":
            value = re.sub(r"^([^=]+)=[^;]*", r"\1=VALUE", value)
            value = re.sub(r"Expires=[^;]*", "Expires=WHEN", value)  # the two answers may straddle a second
        if name == "Content-Length" and (answer.mimetype == "text/html" or answer.request.path == "/readyz"):
            value = "LENGTH"  # form tokens and /readyz's latency vary in length; bodies are compared below
        if name == "X-RateLimit-Reset":
            value = "RESET"  # a clock reading: the two answers may straddle a second
        headers.append((name, value))
    body = answer.get_data()
    if nonce:
        body = body.replace(nonce.encode(), b"NONCE")
    body = _HIDDEN_VALUE.sub(lambda m: m.group(1) + 'TOKEN"', body.decode()).encode()
    return answer.status_code, headers, body


@pytest.fixture
def pair(test_env: dict[str, str], r: object) -> Callable[..., tuple[Flask, Flask]]:
    """Two apps alike but for the switch (probe routes included)."""

    base = test_env["REDIS_URL"].rsplit("/", 1)[0]

    def make(**env: str) -> tuple[Flask, Flask]:
        # Each its own Redis database, so that both count the same limits from zero.
        on, off = (
            {**test_env, **env, "GATEWAY_FASTPATH": flag, "REDIS_URL": f"{base}/{db}"}
            for flag, db in (("true", 1), ("false", 2))
        )
        return add_probe_routes(create_app(on)), add_probe_routes(create_app(off))

    return make


def _same(apps: tuple[Flask, Flask], path: str, method: str = "GET", **kwargs: object) -> TestResponse:
    headers = {"X-Request-ID": REQUEST_ID, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    answers = []
    for app in apps:  # one after the other: a streamed answer is read to its end first
        answer = app.test_client().open(path, method=method, headers=headers, **kwargs)
        answers.append((answer, _normalized(answer)))
        answer.close()
    (fast, one), (_, other) = answers
    assert one[:2] == other[:2], path
    if path != "/readyz":  # its body holds a latency and a timestamp
        assert one[2] == other[2], path
    return fast


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/auth/me", 401),
        ("/nowhere", 404),
        ("/", 200),
        ("/healthz", 200),
        ("/readyz", 200),
        ("/favicon.ico", 204),
        ("/dashboard", 307),  # a redirect with a Location
        ("/admin/", 303),  # the console sends a visitor to its login page
        ("/admin/login", 200),  # a console page: the nonce policy
        ("/admin/nowhere", 404),  # a console error page
        ("/admin/static/console.css", 200),  # a static file keeps its own caching
        ("/_probe/page", 200),
        ("/_probe/stream", 200),  # a view that sets Cache-Control itself
        ("/_probe/crash", 500),
        ("/openapi.json", 200),
    ],
)
def test_each_kind_of_answer_is_the_same(
    pair: Callable[..., tuple[Flask, Flask]], path: str, status: int
) -> None:
    assert _same(pair(), path).status_code == status


def test_an_api_answer_with_a_key_is_the_same(pair: Callable[..., tuple[Flask, Flask]]) -> None:
    apps = pair()
    first = redis_from_config(apps[0].config)
    _, secret = keys.create_key(first, pepper=pepper(apps[0]), name="same", scopes=[])
    for name in first.keys("*"):  # the same key in the other app's database
        first.copy(name, name, destination_db=2)
    assert _same(apps, "/auth/me", headers={"X-API-Key": secret}).status_code == 200
    assert _same(apps, "/_probe/json", "POST", json={"name": "a"}).status_code == 200


def test_refusals_are_the_same(pair: Callable[..., tuple[Flask, Flask]]) -> None:
    apps = pair(RATELIMIT_ANONYMOUS="1/minute", MAX_CONTENT_LENGTH="1024")
    assert _same(apps, "/").status_code == 200
    assert _same(apps, "/").status_code == 429
    assert _same(apps, "/_probe/json", "POST", data=b"x" * 2048).status_code == 413
    assert _same(apps, "/", "DELETE").status_code == 429  # 405s count against the limit too


def test_the_https_redirect_is_the_same(pair: Callable[..., tuple[Flask, Flask]]) -> None:
    apps = pair(FLASK_ENV="production", SECRET_KEY="s" * 64, FORCE_HTTPS="true")
    answer = _same(apps, "/_probe/json?x=1", "POST", json={"name": "a"})
    assert answer.status_code == 308 and answer.headers["Location"] == "https://localhost/_probe/json?x=1"


def test_the_switch_picks_the_classes(pair: Callable[..., tuple[Flask, Flask]]) -> None:
    from gateway.fastpath.responses import FastGateway, FastResponse

    fast, public = pair()
    assert isinstance(fast, FastGateway) and fast.response_class is FastResponse
    assert not isinstance(public, FastGateway) and not issubclass(public.response_class, FastResponse)
