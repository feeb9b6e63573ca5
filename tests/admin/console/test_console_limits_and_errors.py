"""A logged-in admin browsing the console (issue 10, item 14): static files are not limited
like API calls, the admin is counted as that admin, and console pages show errors as pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from gateway import create_app
from gateway.admin.console import actions
from gateway.version import __version__
from tests.admin.console.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, ORIGIN

ASSETS = ("console.css", "console.js")


@pytest.fixture
def test_env(test_env: dict[str, str]) -> dict[str, str]:
    return {**test_env, "RATELIMIT_ANONYMOUS": "30/minute", "RATELIMIT_DEFAULT": "120/minute"}


@pytest.fixture
def admin(app: Flask, admin_user: dict) -> FlaskClient:
    """A client holding an admin session (logged in through the JSON route)."""
    client = app.test_client()
    answer = client.post(
        "/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, headers={"Origin": ORIGIN}
    )
    assert answer.status_code == 200
    return client


def asset_url(name: str) -> str:
    return f"/admin/static/{name}?v={__version__}"


def is_console_page(answer: Any, status: int) -> bool:
    html = answer.get_data(as_text=True)
    return (
        answer.status_code == status
        and answer.mimetype == "text/html"
        and str(status) in html
        and "console.css" in html  # the console's layout, its stylesheet
        and "Traceback" not in html
    )


def test_static_files_are_not_limited_like_api_calls(client: FlaskClient) -> None:
    answers = [client.get(asset_url(ASSETS[n % 2])) for n in range(40)]
    assert [answer.status_code for answer in answers] == [200] * 40
    assert all("X-RateLimit-Limit" not in answer.headers for answer in answers)
    # Versioned URLs change with every release: browsers may keep them for a year.
    cache = answers[0].headers["Cache-Control"]
    assert "max-age=31536000" in cache and "immutable" in cache
    assert client.get("/").status_code == 200  # the anonymous budget is untouched by them


def test_unversioned_static_files_are_cached_briefly(client: FlaskClient) -> None:
    answer = client.get("/admin/static/console.css")
    assert answer.status_code == 200
    assert "immutable" not in answer.headers["Cache-Control"]


def test_a_logged_in_admin_is_limited_as_that_admin(admin: FlaskClient) -> None:
    # 40 page views, each with its two assets: 120 requests, four times the anonymous 30/minute.
    for _ in range(40):
        page = admin.get("/admin/")
        assert page.status_code == 200, page.get_data(as_text=True)[:200]
        assert page.headers["RateLimit-Policy"].startswith('"rate"')
        for name in ASSETS:
            assert admin.get(asset_url(name)).status_code == 200


def test_a_logged_in_admin_on_a_public_page_is_counted_as_that_admin(admin: FlaskClient) -> None:
    answer = admin.get("/admin/login")
    assert answer.status_code == 303  # already logged in: on to the keys page
    assert answer.headers["RateLimit-Policy"].startswith('"rate"')


def test_a_console_404_is_a_page(admin: FlaskClient) -> None:
    assert is_console_page(admin.get("/admin/console/keys/key_nope/revoke"), 404)
    assert is_console_page(admin.get("/admin/console/no-such-page"), 404)
    assert is_console_page(admin.get("/admin/no-such-page"), 404)


def test_the_json_admin_api_keeps_json_errors(
    admin: FlaskClient, auth_headers: Callable[..., dict[str, str]]
) -> None:
    for answer in (
        admin.get("/admin/keys/key_nope"),
        admin.get("/admin/keys/key_nope", headers={"Accept": "text/html"}),
        admin.get("/admin/keys/key_nope/no/such/route", headers={"Accept": "text/html"}),
        admin.get("/admin/keys/key_nope", headers=auth_headers("admin")),
    ):
        assert answer.status_code == 404 and answer.is_json
        assert answer.get_json()["status_code"] == 404


def test_a_console_429_is_a_page(test_env: dict[str, str], r: redis.Redis, admin_user: dict) -> None:
    app = create_app({**test_env, "RATELIMIT_DEFAULT": "3/minute"})
    client = app.test_client()
    body = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    assert client.post("/auth/login", json=body, headers={"Origin": ORIGIN}).status_code == 200
    statuses = [client.get("/admin/").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = client.get("/admin/")
    assert is_console_page(refused, 429)
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"


def test_a_console_403_and_400_are_pages(admin: FlaskClient) -> None:
    cross_site = admin.post(
        "/admin/console/keys/new", data={"name": "x"}, headers={"Origin": "https://evil.example"}
    )
    assert is_console_page(cross_site, 403)
    no_token = admin.post("/admin/console/keys/new", data={"name": "x"}, headers={"Origin": ORIGIN})
    assert is_console_page(no_token, 400)
    assert "Reload the page" in no_token.get_data(as_text=True)  # the specific message is kept


def test_a_console_500_is_a_page_without_internals(
    admin: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("secret internals rgw_notakeybutlookslikeone")

    monkeypatch.setattr(actions, "list_keys", broken)
    answer = admin.get("/admin/")
    assert is_console_page(answer, 500)
    assert "secret internals" not in answer.get_data(as_text=True)


def test_a_console_503_is_a_page(admin: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable() -> None:
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(actions, "list_keys", unreachable)
    answer = admin.get("/admin/")
    assert is_console_page(answer, 503)
    assert answer.headers["Retry-After"] == "1"


def test_public_pages_with_a_cookie_stay_up_when_redis_is_down_and_failing_open(
    test_env: dict[str, str], tmp_path: Any
) -> None:
    from devtools.redis_server import RedisServer

    server = RedisServer(tmp_path / "stopped-redis")
    server.start()
    url = server.url
    server.stop()
    app = create_app({**test_env, "REDIS_URL": url, "RATELIMIT_FAIL_OPEN": "true"})
    client = app.test_client()
    client.set_cookie(app.config["SESSION_COOKIE_NAME"], "s" * 43)  # looks like a session id
    # The session cannot be read: the request is counted per IP, in the fallback counters.
    answer = client.get("/")
    assert answer.status_code == 200
    assert answer.headers["RateLimit-Policy"].startswith('"anonymous"')
