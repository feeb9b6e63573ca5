"""The admin account lifecycle: password change, disable, enable, log out everywhere (issue 10,
item 13), from the CLI and the admin API, with per-user session indexes and audit entries."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from auth import audit, users
from auth.sessions import session_key, user_sessions_key
from tests.auth.conftest import EMAIL, ORIGIN, PASSWORD

COOKIE = "gw_session"
OTHER = "second@example.com"
NEW_PASSWORD = "a brand new password 2024"


def _me(client: FlaskClient) -> int:
    return client.get("/auth/me").status_code


def _sid(client: FlaskClient) -> str:
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def _login_as(app: Flask, email: str, password: str) -> FlaskClient:
    client = app.test_client()
    response = client.post(
        "/auth/login", json={"email": email, "password": password}, headers={"Origin": ORIGIN}
    )
    assert response.status_code == 200, response.get_json()
    return client


def _cli(runner: FlaskCliRunner, *args: str, input: str | None = None) -> tuple[int, str]:
    result = runner.invoke(args=["users", *args], input=input)
    return result.exit_code, result.output


def _post(client: FlaskClient, path: str, **kw: object) -> tuple[int, dict]:
    response = client.post(path, headers={"Origin": ORIGIN}, **kw)  # type: ignore[arg-type]
    return response.status_code, response.get_json()


@pytest.fixture
def second_admin(r: redis.Redis) -> dict[str, str]:
    users.create_user(r, email=OTHER, password=PASSWORD)
    return {"email": OTHER, "password": PASSWORD}


def test_logins_are_indexed_per_user_and_logout_all_ends_exactly_theirs(
    app: Flask,
    login: Callable[..., FlaskClient],
    second_admin: dict[str, str],
    runner: FlaskCliRunner,
    r: redis.Redis,
) -> None:
    mine = [login(), login(), login()]
    theirs = _login_as(app, OTHER, PASSWORD)
    user_id = r.get(users.email_key(EMAIL))
    assert r.scard(user_sessions_key(user_id)) == 3
    sids = [_sid(client) for client in mine]
    code, output = _cli(runner, "logout-all", EMAIL)
    assert code == 0 and "3 session" in output, output
    assert [_me(client) for client in mine] == [401, 401, 401]
    assert not any(r.exists(session_key(sid)) for sid in sids)
    assert _me(theirs) == 200
    entry = audit.recent(r, 1)[0]
    assert (
        entry["action"] == "user.logout_all"
        and entry["actor"] == "cli"
        and entry["target"] == f"user:{user_id}"
    )


def test_passwd_changes_the_password_and_ends_every_session(
    app: Flask, login: Callable[..., FlaskClient], runner: FlaskCliRunner, r: redis.Redis
) -> None:
    first, second = login(), login()
    code, output = _cli(runner, "passwd", EMAIL, "--password-stdin", input=NEW_PASSWORD + "\n")
    assert code == 0, output
    assert (_me(first), _me(second)) == (401, 401)
    assert users.authenticate(r, email=EMAIL, password=PASSWORD) is None
    assert _me(_login_as(app, EMAIL, NEW_PASSWORD)) == 200
    stored = r.hget(users.record_key(r.get(users.email_key(EMAIL))), "password_hash")
    assert stored.startswith("$argon2id$") and NEW_PASSWORD not in stored
    assert audit.recent(r, 2)[1]["action"] == "user.password"
    assert NEW_PASSWORD not in str(audit.recent(r))
    short = _cli(runner, "passwd", EMAIL, "--password-stdin", input="short\n")
    assert short[0] == 2 and "at least" in short[1]
    assert _cli(runner, "passwd", "nobody@example.com", "--password-stdin", input=NEW_PASSWORD)[0] == 1


def test_disable_ends_sessions_at_once_and_refuses_login_until_enabled(
    app: Flask,
    login: Callable[..., FlaskClient],
    second_admin: dict[str, str],
    runner: FlaskCliRunner,
    r: redis.Redis,
) -> None:
    client = login()
    code, output = _cli(runner, "disable", EMAIL)
    assert code == 0, output
    assert _me(client) == 401
    refused = app.test_client().post("/auth/login", json={"email": EMAIL, "password": PASSWORD})
    assert refused.status_code == 401 and refused.get_json()["message"] == "Invalid email or password."
    assert _cli(runner, "enable", EMAIL)[0] == 0
    assert _me(_login_as(app, EMAIL, PASSWORD)) == 200
    assert [e["action"] for e in audit.recent(r, 3)][:2] == ["auth.login", "user.enable"]


def test_a_session_missing_from_the_index_still_ends_on_disable(
    login: Callable[..., FlaskClient], second_admin: dict[str, str], runner: FlaskCliRunner, r: redis.Redis
) -> None:
    # A session made before the index existed (or lost from it) must not outlive the change.
    client = login()
    r.delete(user_sessions_key(r.get(users.email_key(EMAIL))))
    assert _cli(runner, "logout-all", EMAIL)[0] == 0
    assert _me(client) == 401
    client = login()
    r.delete(user_sessions_key(r.get(users.email_key(EMAIL))))
    assert _cli(runner, "disable", EMAIL)[0] == 0
    assert _me(client) == 401


def test_the_last_enabled_user_cannot_be_disabled(
    app: Flask, login: Callable[..., FlaskClient], runner: FlaskCliRunner, r: redis.Redis
) -> None:
    client = login()
    code, output = _cli(runner, "disable", EMAIL)
    assert code == 1 and "last enabled" in output
    status, body = _post(client, f"/admin/users/{EMAIL}/disable")
    assert status == 409 and body["status_code"] == 409 and "last enabled" in body["message"]
    assert _me(client) == 200


def test_admin_api_lists_users_without_secrets(
    login: Callable[..., FlaskClient], second_admin: dict[str, str]
) -> None:
    client = login()
    listed = client.get("/admin/users").get_json()
    assert listed["total"] == 2 and [u["email"] for u in listed["users"]] == [EMAIL, OTHER]
    mine = listed["users"][0]
    assert mine["status"] == "enabled" and mine["active_sessions"] == 1 and mine["disabled_at"] is None
    assert "password_hash" not in str(listed) and "argon2" not in str(listed)


def test_admin_api_disable_enable_and_logout_all(
    app: Flask, login: Callable[..., FlaskClient], second_admin: dict[str, str], r: redis.Redis
) -> None:
    client = login()
    theirs = _login_as(app, OTHER, PASSWORD)
    status, body = _post(client, f"/admin/users/{OTHER.upper()}/disable")
    assert status == 200 and body["user"]["status"] == "disabled" and body["sessions_ended"] == 1
    assert _me(theirs) == 401
    status, body = _post(client, f"/admin/users/{OTHER}/enable")
    assert status == 200 and body["user"]["status"] == "enabled" and body["sessions_ended"] == 0
    theirs = _login_as(app, OTHER, PASSWORD)
    status, body = _post(client, f"/admin/users/{OTHER}/logout-all")
    assert status == 200 and body["sessions_ended"] == 1 and _me(theirs) == 401
    assert _post(client, "/admin/users/nobody@example.com/enable")[0] == 404
    actions = [e["action"] for e in audit.recent(r, 5)]
    assert actions[:4] == ["user.logout_all", "auth.login", "user.enable", "user.disable"]
    assert audit.recent(r, 1)[0]["actor_name"] == EMAIL


def test_admin_api_password_change_keeps_only_the_callers_own_session(
    app: Flask, login: Callable[..., FlaskClient], second_admin: dict[str, str]
) -> None:
    client, elsewhere = login(), login()
    status, body = _post(client, f"/admin/users/{EMAIL}/password", json={"password": NEW_PASSWORD})
    assert status == 200 and body["sessions_ended"] == 1, body
    assert (_me(client), _me(elsewhere)) == (200, 401)
    assert _me(client) == 200  # still current on the next request too
    theirs = _login_as(app, OTHER, PASSWORD)
    assert _post(client, f"/admin/users/{OTHER}/password", json={"password": NEW_PASSWORD})[0] == 200
    assert _me(theirs) == 401
    for bad in ({"password": "short"}, {}, {"password": 12345678901234}):
        status, body = _post(client, f"/admin/users/{OTHER}/password", json=bad)
        assert status == 400 and body["status_code"] == 400, bad
    assert (
        _post(client, "/admin/users/nobody@example.com/password", json={"password": NEW_PASSWORD})[0] == 404
    )


def test_disabling_oneself_ends_ones_own_session(
    login: Callable[..., FlaskClient], second_admin: dict[str, str]
) -> None:
    client = login()
    status, body = _post(client, f"/admin/users/{EMAIL}/disable")
    assert status == 200 and body["user"]["status"] == "disabled"
    assert _me(client) == 401


def test_user_routes_need_admin(app: Flask, auth_headers: Callable[..., dict[str, str]]) -> None:
    client = app.test_client()
    headers = auth_headers("jobs:read")
    assert client.get("/admin/users", headers=headers).status_code == 403
    assert client.post(f"/admin/users/{EMAIL}/disable", headers=headers).status_code == 403
    assert client.get("/admin/users").status_code == 401


def test_users_list_from_the_cli(runner: FlaskCliRunner, admin_user: dict[str, str]) -> None:
    code, output = _cli(runner, "list")
    assert code == 0 and EMAIL in output and "enabled" in output
