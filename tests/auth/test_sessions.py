"""Admin login, server-side sessions, logout, cross-site refusal and cookie-free API keys."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from auth.sessions import session_key
from core.redis import KEYS
from tests.auth.conftest import EMAIL, ORIGIN, PASSWORD

COOKIE = "gw_session"


def _cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def test_json_login_sets_a_hardened_cookie_and_me_answers(app: Flask, admin_user: dict[str, str]) -> None:
    client = app.test_client()
    response = client.post("/auth/login", json=admin_user, headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.get_json()["type"] == "user" and response.get_json()["scopes"] == ["admin"]
    set_cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    me = client.get("/auth/me").get_json()
    assert me == {"type": "user", "id": me["id"], "name": EMAIL, "scopes": ["admin"]}


def test_form_login_works_and_redirects_only_to_local_paths(app: Flask, admin_user: dict[str, str]) -> None:
    client = app.test_client()
    form = {**admin_user, "next": "/admin/"}
    response = client.post("/auth/login", data=form, headers={"Origin": ORIGIN})
    assert response.status_code == 303 and response.headers["Location"] == "/admin/"
    evil = {**admin_user, "next": "//evil.example/x"}
    response = app.test_client().post("/auth/login", data=evil, headers={"Origin": ORIGIN})
    assert response.status_code == 200 and response.get_json()["type"] == "user"


def test_production_cookie_is_secure(
    test_env: dict[str, str], r: redis.Redis, admin_user: dict[str, str]
) -> None:
    from gateway import create_app

    env = {**test_env, "FLASK_ENV": "production", "SECRET_KEY": "p" * 48, "FORCE_HTTPS": "false"}
    client = create_app(env).test_client()
    response = client.post("/auth/login", json=admin_user, headers={"Origin": "http://localhost"})
    assert response.status_code == 200
    assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.parametrize(
    "credentials",
    [
        {"email": EMAIL, "password": "wrong password 123"},
        {"email": "nobody@example.com", "password": PASSWORD},
    ],
)
def test_login_failures_look_alike(
    app: Flask, admin_user: dict[str, str], credentials: dict[str, str]
) -> None:
    response = app.test_client().post("/auth/login", json=credentials)
    assert response.status_code == 401
    assert response.get_json()["message"] == "Invalid email or password."
    assert "Set-Cookie" not in response.headers


def test_login_needs_both_fields(app: Flask) -> None:
    response = app.test_client().post("/auth/login", json={"email": EMAIL})
    assert response.status_code == 400
    assert response.get_json()["error"] == "email and password are required"


def test_login_issues_a_new_session_id(login: Callable[..., FlaskClient], r: redis.Redis) -> None:
    client = login()
    first = _cookie(client)
    login(client)
    second = _cookie(client)
    assert first != second
    assert not r.exists(session_key(first)) and r.exists(session_key(second))


def test_logout_makes_the_old_cookie_useless(
    app: Flask, login: Callable[..., FlaskClient], r: redis.Redis
) -> None:
    client = login()
    sid = _cookie(client)
    copy = app.test_client()
    copy.set_cookie(COOKIE, sid)
    assert copy.get("/auth/me").status_code == 200
    response = client.post("/auth/logout", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert not r.exists(session_key(sid))
    assert client.get("/auth/me").status_code == 401
    response = copy.get("/auth/me")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'


def test_redis_holds_a_hash_of_the_session_id_only(login: Callable[..., FlaskClient], r: redis.Redis) -> None:
    sid = _cookie(login())
    for name in r.keys("*"):
        assert sid not in name
        if r.type(name) == "string":
            assert sid not in r.get(name)


def test_idle_timeout_is_a_redis_ttl(
    test_env: dict[str, str], r: redis.Redis, admin_user: dict[str, str]
) -> None:
    from gateway import create_app

    app = create_app({**test_env, "SESSION_IDLE_MINUTES": "5", "SESSION_ABSOLUTE_HOURS": "1"})
    client = app.test_client()
    client.post("/auth/login", json=admin_user, headers={"Origin": ORIGIN})
    name = session_key(_cookie(client))
    assert 0 < r.ttl(name) <= 300
    r.expire(name, 10)
    assert client.get("/auth/me").status_code == 200  # activity slides the idle window
    assert 10 < r.ttl(name) <= 300


def test_idle_and_absolute_expiry_end_the_session(login: Callable[..., FlaskClient], r: redis.Redis) -> None:
    client = login()
    r.delete(session_key(_cookie(client)))  # what the idle TTL does
    assert client.get("/auth/me").status_code == 401
    login(client)
    name = session_key(_cookie(client))
    stored = r.get(name)
    assert stored is not None
    r.set(name, stored.replace('"created": ', '"created": -1000000', 1))  # far past the absolute end
    assert client.get("/auth/me").status_code == 401
    assert not r.exists(name)


def test_foreign_origin_cookie_post_changes_nothing(
    login: Callable[..., FlaskClient], r: redis.Redis
) -> None:
    client = login()
    body = {"name": "evil", "scopes": ["admin"]}
    for headers in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/page"}, {}):
        response = client.post("/admin/keys", json=body, headers=headers)
        assert response.status_code == 403, headers
        assert response.get_json()["status_code"] == 403
    assert r.zcard(KEYS.keys_index()) == 0
    response = client.post("/auth/logout", headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert client.get("/auth/me").status_code == 200
    assert client.post("/admin/keys", json=body, headers={"Referer": ORIGIN + "/admin/"}).status_code == 201


def test_allowed_cors_origin_may_post_with_the_cookie(
    test_env: dict[str, str], r: redis.Redis, admin_user: dict[str, str]
) -> None:
    from gateway import create_app

    app = create_app({**test_env, "CORS_ORIGINS": "https://console.example"})
    client = app.test_client()
    assert client.post("/auth/login", json=admin_user, headers={"Origin": ORIGIN}).status_code == 200
    response = client.post("/admin/keys", json={"name": "ok"}, headers={"Origin": "https://console.example"})
    assert response.status_code == 201


def test_login_from_a_foreign_origin_is_refused(app: Flask, admin_user: dict[str, str]) -> None:
    response = app.test_client().post(
        "/auth/login", json=admin_user, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403


def test_api_key_requests_get_no_cookie(app: Flask, auth_headers: Callable[..., dict[str, str]]) -> None:
    client = app.test_client()
    headers = auth_headers("admin")
    for method, path, kw in (
        ("get", "/auth/me", {}),
        ("post", "/admin/keys", {"json": {"name": "k"}}),
        ("post", "/auth/logout", {}),
        ("post", "/auth/login", {"json": {"email": EMAIL, "password": PASSWORD}}),
    ):
        response = getattr(client, method)(path, headers=headers, **kw)
        assert "Set-Cookie" not in response.headers, (path, response.status_code)
    assert client.get_cookie(COOKIE) is None


def test_api_key_wins_over_a_cookie_and_skips_the_origin_check(
    login: Callable[..., FlaskClient], auth_headers: Callable[..., dict[str, str]]
) -> None:
    client = login()
    me = client.get("/auth/me", headers=auth_headers("jobs:read")).get_json()
    assert me["type"] == "api_key"
    response = client.post("/admin/keys", json={"name": "x"}, headers=auth_headers("admin"))
    assert response.status_code == 201 and "Set-Cookie" not in response.headers


def test_unauthenticated_is_json_401_never_a_redirect(app: Flask) -> None:
    response = app.test_client().get("/auth/me")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert response.get_json()["path"] == "/auth/me"


def test_users_get_admin_and_the_audit_records_login(login: Callable[..., FlaskClient]) -> None:
    client = login()
    entries = client.get("/admin/audit").get_json()["entries"]
    assert entries[0]["action"] == "auth.login" and entries[0]["actor_name"] == EMAIL


def test_public_routes_do_not_read_the_session(
    login: Callable[..., FlaskClient], test_env: dict[str, str]
) -> None:
    from devtools.redis_server import free_port
    from gateway import create_app

    sid = _cookie(login())
    down = create_app({**test_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}).test_client()
    down.set_cookie(COOKIE, sid)
    response = down.get("/healthz")
    assert response.status_code == 200 and "Set-Cookie" not in response.headers
    assert down.get("/auth/me").status_code == 503  # a protected route does need the session


def test_a_session_loaded_before_logout_is_not_written_back(
    app: Flask, login: Callable[..., FlaskClient], r: redis.Redis
) -> None:
    from flask import request

    sid = _cookie(login())
    with app.test_request_context("/auth/me", headers={"Cookie": f"{COOKIE}={sid}"}):
        slow = app.session_interface.open_session(app, request)
        assert slow.get("_user_id", "").startswith("user:")  # loaded before the logout
        other = app.test_client()
        other.set_cookie(COOKIE, sid)
        assert other.post("/auth/logout", headers={"Origin": ORIGIN}).status_code == 200
        slow["late"] = "write"  # e.g. a CSRF token made while the logout ran
        response = app.response_class()
        app.session_interface.save_session(app, slow, response)
    assert not r.exists(session_key(sid)), "the deleted session was written back"
    assert f"{COOKIE}=;" in response.headers.get("Set-Cookie", "")
    copy = app.test_client()
    copy.set_cookie(COOKIE, sid)
    assert copy.get("/auth/me").status_code == 401


def test_production_session_cookie_has_the_host_prefix(
    redis_url: str, r: redis.Redis, admin_user: dict[str, str]
) -> None:
    from gateway import create_app

    env = {"FLASK_ENV": "production", "SECRET_KEY": "p" * 48, "REDIS_URL": redis_url}
    client = create_app(env).test_client()
    https = "https://localhost"
    response = client.post("/auth/login", json=admin_user, headers={"Origin": https}, base_url=https)
    assert response.status_code == 200, response.get_json()
    set_cookie = response.headers["Set-Cookie"]
    name, _, rest = set_cookie.partition("=")
    attributes = {part.strip().split("=")[0].lower() for part in rest.split(";")[1:]}
    assert name.startswith("__Host-"), set_cookie
    assert {"secure", "path", "httponly"} <= attributes and "domain" not in attributes
    assert "Path=/;" in set_cookie or set_cookie.endswith("Path=/")
    assert client.get("/auth/me", base_url=https).get_json()["type"] == "user"
    logout = client.post("/auth/logout", headers={"Origin": https}, base_url=https)
    assert logout.status_code == 200 and logout.headers["Set-Cookie"].startswith(f"{name}=;")
