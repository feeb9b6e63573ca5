"""The admin console's pages through Flask's test client (the browser flow is in test_browser.py)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from auth import audit, keys
from auth.loaders import pepper
from tests.admin.console.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Console, csrf_of, form_id_of

PAGES = ["/admin/", "/admin/console/keys/new", "/admin/console/audit", "/admin/console/users"]
SECRET = re.compile(r'<code id="secret">(rgw_[0-9A-Za-z]+)</code>')


def _secret_in(html: str) -> str | None:
    match = SECRET.search(html)
    return match.group(1) if match else None


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _make_console_key(app: Flask, r: redis.Redis, name: str = "svc") -> dict:
    record, _ = keys.create_key(r, pepper=pepper(app), name=name, scopes=["agents:read"])
    return record


@pytest.mark.parametrize("path", [*PAGES, "/admin/console/keys/key_0123456789abcdef/revoke"])
def test_anonymous_visitors_are_redirected_to_the_login_page(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/admin/login")


def test_json_admin_api_keeps_its_401(client: FlaskClient) -> None:
    response = client.get("/admin/keys")
    assert response.status_code == 401
    assert response.get_json()["status_code"] == 401


def test_login_page_has_csrf_field_and_nonce_csp(client: FlaskClient) -> None:
    response = client.get("/admin/login")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert csrf_of(html)
    csp = response.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce, csp
    assert f'nonce="{nonce.group(1)}"' in html
    assert "<script>" not in html and "style=" not in html  # no inline code the CSP would block


def test_login_with_wrong_password_shows_the_form_again(console: Console, admin_user: dict) -> None:
    response = console.log_in(password="not the password at all")
    assert response.status_code == 401
    assert "Wrong email or password." in response.get_data(as_text=True)
    assert console.get("/admin/").status_code == 303


def test_login_without_csrf_token_is_refused(console: Console, admin_user: dict) -> None:
    console.get("/admin/login")
    response = console.post("/admin/login", {"email": ADMIN_EMAIL, "password": "x" * 20}, csrf="forged")
    assert response.status_code == 400
    assert response.mimetype == "text/html"  # a console page answers errors as pages
    assert "CSRF" in response.get_data(as_text=True)


def test_logged_in_admin_sees_every_page(logged_in: Console) -> None:
    for path in PAGES:
        response = logged_in.get(path)
        assert response.status_code == 200, path
        assert ADMIN_EMAIL in response.get_data(as_text=True)


def test_key_list_shows_the_public_fields_only(
    logged_in: Console, app: Flask, r: redis.Redis, make_key: Callable[..., str]
) -> None:
    secret = make_key(scopes=["jobs:read", "events:write"], name="reporting", rate_limit="50/minute")
    html = logged_in.get("/admin/").get_data(as_text=True)
    assert "reporting" in html and "jobs:read" in html and "50/minute" in html
    assert f"{secret[:8]}…{secret[-4:]}" in html
    assert secret not in html
    assert "active" in html


def test_create_key_shows_the_secret_once_and_it_works(
    logged_in: Console, client: FlaskClient, r: redis.Redis
) -> None:
    page = logged_in.get("/admin/console/keys/new").get_data(as_text=True)
    form = {
        "name": "ci bot",
        "scope": ["agents:read", "jobs:write"],
        "quota": "1000/day",
        "form_id": form_id_of(page),
    }
    response = logged_in.post("/admin/console/keys/new", form, csrf=csrf_of(page))
    secret = _secret_in(response.get_data(as_text=True))
    assert response.status_code == 200 and secret
    assert response.headers["Cache-Control"] == "no-store"
    me = client.get("/auth/me", headers=_bearer(secret)).get_json()
    assert me["name"] == "ci bot" and me["scopes"] == ["agents:read", "jobs:write"]
    # The same form again (a reload): no new key, no secret.
    again = logged_in.post("/admin/console/keys/new", form, csrf=csrf_of(page))
    assert again.status_code == 303 and again.headers["Location"].endswith("/admin/")
    assert [k["name"] for k in keys.list_keys(r)] == ["ci bot"]
    assert secret not in logged_in.get("/admin/").get_data(as_text=True)
    assert audit.recent(r)[0]["action"] == "key.create"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "", "scope": ["agents:read"]}, "name must be"),
        ({"name": "x", "scope": []}, "choose at least one scope"),
        ({"name": "x", "scope": ["root"]}, "unknown scope"),
        ({"name": "x", "scope": ["admin"], "rate_limit": "lots"}, "rate_limit must be a limit"),
        ({"name": "x", "scope": ["admin"], "expires_in_days": "0"}, "expires_in_days must be between"),
    ],
)
def test_invalid_create_form_is_shown_again_with_the_reason(
    logged_in: Console, r: redis.Redis, fields: dict, message: str
) -> None:
    response = logged_in.submit("/admin/console/keys/new", "/admin/console/keys/new", fields)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert keys.list_keys(r) == []


def test_revoke_needs_confirmation_and_csrf(
    logged_in: Console, client: FlaskClient, app: Flask, r: redis.Redis, make_key: Callable[..., str]
) -> None:
    secret = make_key(scopes=["agents:read"], name="doomed")
    key_id = keys.list_keys(r)[0]["id"]
    confirm = logged_in.get(f"/admin/console/keys/{key_id}/revoke")
    assert confirm.status_code == 200 and "Revoke this key?" in confirm.get_data(as_text=True)
    forged = logged_in.post(f"/admin/console/keys/{key_id}/revoke", csrf="forged")
    assert forged.status_code == 400
    assert keys.key_status(keys.get_key(r, key_id)) == "active"
    done = logged_in.post(
        f"/admin/console/keys/{key_id}/revoke", csrf=csrf_of(confirm.get_data(as_text=True))
    )
    assert done.status_code == 303
    assert keys.key_status(keys.get_key(r, key_id)) == "revoked"
    assert client.get("/auth/me", headers=_bearer(secret)).status_code == 401
    assert "is revoked" in logged_in.get("/admin/").get_data(as_text=True)


def test_revoke_of_an_unknown_key_is_404(logged_in: Console) -> None:
    assert logged_in.get("/admin/console/keys/key_ffffffffffffffff/revoke").status_code == 404


def test_rotate_shows_a_new_secret_once(
    logged_in: Console, client: FlaskClient, r: redis.Redis, make_key: Callable[..., str]
) -> None:
    old = make_key(scopes=["agents:read"], name="rotating")
    key_id = keys.list_keys(r)[0]["id"]
    page = f"/admin/console/keys/{key_id}/rotate"
    html = logged_in.get(page).get_data(as_text=True)
    form = {"form_id": form_id_of(html)}
    response = logged_in.post(page, form, csrf=csrf_of(html))
    new = _secret_in(response.get_data(as_text=True))
    assert response.status_code == 200 and new and new != old
    assert client.get("/auth/me", headers=_bearer(old)).status_code == 401
    assert client.get("/auth/me", headers=_bearer(new)).status_code == 200
    assert logged_in.post(page, form, csrf=csrf_of(html)).status_code == 303  # a reload shows nothing


def test_audit_page_lists_admin_actions(logged_in: Console, app: Flask, r: redis.Redis) -> None:
    record = _make_console_key(app, r)
    confirm = logged_in.get(f"/admin/console/keys/{record['id']}/revoke").get_data(as_text=True)
    logged_in.post(f"/admin/console/keys/{record['id']}/revoke", csrf=csrf_of(confirm))
    html = logged_in.get("/admin/console/audit").get_data(as_text=True)
    assert "key.revoke" in html and record["id"] in html and "auth.login" in html


def test_logout_ends_the_session_on_the_server(logged_in: Console, client: FlaskClient) -> None:
    html = logged_in.get("/admin/").get_data(as_text=True)
    cookie = client.get_cookie("gw_session")
    assert cookie is not None
    response = logged_in.post("/admin/logout", csrf=csrf_of(html))
    assert response.status_code == 303 and response.headers["Location"].endswith("/admin/login")
    # The old cookie, replayed, no longer opens the console.
    client.set_cookie("gw_session", cookie.value)
    assert client.get("/admin/").status_code == 303


def test_api_keys_do_not_open_the_console(client: FlaskClient, auth_headers: Callable[..., dict]) -> None:
    response = client.get("/admin/", headers=auth_headers("admin"))
    assert response.status_code == 303
    assert "Set-Cookie" not in response.headers


def test_cross_site_form_post_is_refused(logged_in: Console, client: FlaskClient, r: redis.Redis) -> None:
    html = logged_in.get("/admin/console/keys/new").get_data(as_text=True)
    form = {"name": "evil", "scope": ["admin"], "form_id": form_id_of(html), "csrf_token": csrf_of(html)}
    response = client.post("/admin/console/keys/new", data=form, headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert keys.list_keys(r) == []


def test_assets_are_public_and_cacheable(client: FlaskClient) -> None:
    css = client.get("/admin/static/console.css")
    assert css.status_code == 200 and css.mimetype == "text/css"
    assert "max-age=3600" in css.headers["Cache-Control"]
    assert client.get("/admin/static/console.js").mimetype in ("text/javascript", "application/javascript")
    assert client.get("/admin/static/../templates/console/base.html").status_code == 404


def test_console_login_shares_the_login_rate_limit(console: Console, admin_user: dict) -> None:
    # Not a side door around POST /auth/login's 5 attempts a minute per IP and per email.
    statuses = [console.log_in(password=f"wrong password {n}").status_code for n in range(6)]
    assert statuses[:5] == [401] * 5
    assert statuses[5] == 429


def test_key_list_shows_the_secret_still_in_its_grace(logged_in: Console, app: Flask, r: redis.Redis) -> None:
    record, old = keys.create_key(r, pepper=pepper(app), name="graced", scopes=["agents:read"])
    keys.rotate_key(r, record["id"], pepper=pepper(app), grace_seconds=600)
    html = logged_in.get("/admin/").get_data(as_text=True)
    assert f'also live: <span class="mono">{old[:8]}…{old[-4:]}</span> until' in html
    assert old not in html


def _second_admin(r: redis.Redis, email: str = "second@example.com") -> str:
    from auth import users

    users.create_user(r, email=email, password="another long password 1")
    return email


def test_users_page_lists_users_without_secrets(logged_in: Console, r: redis.Redis) -> None:
    other = _second_admin(r)
    response = logged_in.get("/admin/console/users")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and ADMIN_EMAIL in html and other in html
    assert "argon2" not in html and "(you)" in html
    assert 'href="/admin/console/users"' in logged_in.get("/admin/").get_data(as_text=True)


def test_users_page_disable_and_enable_need_confirmation_and_csrf(
    logged_in: Console, app: Flask, r: redis.Redis
) -> None:
    from auth import users
    from tests.admin.console.conftest import Console as Browser

    other = _second_admin(r)
    theirs = Browser(app.test_client())
    assert theirs.log_in(other, "another long password 1").status_code == 303
    page = f"/admin/console/users/{other}/disable"
    confirm = logged_in.get(page)
    assert confirm.status_code == 200 and "Disable this admin user?" in confirm.get_data(as_text=True)
    assert logged_in.post(page, csrf="forged").status_code == 400
    assert theirs.get("/admin/").status_code == 200
    done = logged_in.post(page, csrf=csrf_of(confirm.get_data(as_text=True)))
    assert done.status_code == 303 and done.headers["Location"].endswith("/admin/console/users")
    assert theirs.get("/admin/").status_code == 303  # their session ended at once
    assert "is disabled" in logged_in.get("/admin/console/users").get_data(as_text=True)
    assert users.authenticate(r, email=other, password="another long password 1") is None
    enable = f"/admin/console/users/{other}/enable"
    logged_in.post(enable, csrf=csrf_of(logged_in.get(enable).get_data(as_text=True)))
    assert users.authenticate(r, email=other, password="another long password 1") is not None
    actions = [entry["action"] for entry in audit.recent(r, 3)]
    assert actions[:2] == ["user.enable", "user.disable"]


def test_users_page_refuses_to_disable_the_last_enabled_user(logged_in: Console) -> None:
    page = f"/admin/console/users/{ADMIN_EMAIL}/disable"
    done = logged_in.post(page, csrf=csrf_of(logged_in.get(page).get_data(as_text=True)))
    assert done.status_code == 303
    html = logged_in.get("/admin/console/users").get_data(as_text=True)
    assert "last enabled admin user" in html and "enabled" in html


def test_users_page_logout_everywhere_ends_ones_own_session(logged_in: Console) -> None:
    page = f"/admin/console/users/{ADMIN_EMAIL}/logout-all"
    done = logged_in.post(page, csrf=csrf_of(logged_in.get(page).get_data(as_text=True)))
    assert done.status_code == 303
    assert logged_in.get("/admin/console/users").status_code == 303  # back to the login page


def test_users_page_unknown_user_or_action_is_404(logged_in: Console) -> None:
    assert logged_in.get("/admin/console/users/nobody@example.com/disable").status_code == 404
    assert logged_in.get(f"/admin/console/users/{ADMIN_EMAIL}/delete").status_code == 404


# The login form's CSRF token is stateless (double submit): no server session before login.


def _set_cookies(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """name -> the whole Set-Cookie line, for every cookie an answer sets."""
    return {line.split("=", 1)[0]: line for line in response.headers.getlist("Set-Cookie")}


def _login_form(**form: str) -> dict:
    return {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, **form}


def _post_login(client: FlaskClient, form: dict):  # type: ignore[no-untyped-def]
    return client.post("/admin/login", data=form, headers={"Origin": "http://localhost"})


def test_cookieless_login_page_views_store_nothing_but_the_rate_limit_counter(
    app: Flask, r: redis.Redis
) -> None:
    visitor = app.test_client(use_cookies=False)  # every view a new, cookieless visitor
    for _ in range(5):
        response = visitor.get("/admin/login")
        assert response.status_code == 200 and csrf_of(response.get_data(as_text=True))
        assert app.config["SESSION_COOKIE_NAME"] not in _set_cookies(response)
    # The per-IP counter, and the process-wide metrics aggregates that the recorder flushes
    # in the background on its own schedule (a fixed handful of keys, not one per visitor).
    stored = r.keys("*")
    per_visitor = [name for name in stored if not name.startswith("gw:metrics:")]
    assert per_visitor and all(name.startswith("gw:ratelimit:") for name in per_visitor), stored


def test_login_csrf_cookie_is_strict_httponly_and_short_lived(app: Flask) -> None:
    response = app.test_client().get("/admin/login")
    (line,) = _set_cookies(response).values()
    attributes = {part.strip().split("=")[0].lower(): part for part in line.split(";")[1:]}
    assert "httponly" in attributes and attributes["samesite"].strip() == "SameSite=Strict"
    assert 0 < int(attributes["max-age"].split("=")[1]) <= 1800


def test_login_csrf_cookie_has_the_host_prefix_when_cookies_are_secure(app: Flask) -> None:
    app.config["SESSION_COOKIE_SECURE"] = True
    response = app.test_client().get("/admin/login", base_url="https://localhost")
    (name,) = _set_cookies(response)
    line = _set_cookies(response)[name]
    assert name.startswith("__Host-") and "Secure" in line and "Path=/;" in line + ";"
    assert "Domain=" not in line


def test_login_through_the_stateless_form_starts_a_session(
    console: Console, admin_user: dict, r: redis.Redis
) -> None:
    console.get("/admin/login")
    assert not r.keys("gw:sessions:*")
    response = console.log_in()
    assert response.status_code == 303 and r.keys("gw:sessions:*")
    assert console.get("/admin/").status_code == 200
    # The login form's cookie is spent with the login; the logged-in forms use the session's token.
    cookies = _set_cookies(response)
    (login_cookie,) = [line for name, line in cookies.items() if name != "gw_session"]
    assert "Max-Age=0" in login_cookie or "expires=Thu, 01 Jan 1970" in login_cookie


def test_a_failed_login_gives_a_form_whose_token_works(console: Console, admin_user: dict) -> None:
    html = console.log_in(password="not the password at all").get_data(as_text=True)
    again = console.post("/admin/login", _login_form(), csrf=csrf_of(html))
    assert again.status_code == 303


@pytest.mark.parametrize(
    "token",
    [None, "", "forged", "tampered"],
    ids=["missing", "empty", "forged", "tampered"],
)
def test_login_refuses_a_missing_or_forged_token(
    client: FlaskClient, admin_user: dict, r: redis.Redis, token: str | None
) -> None:
    real = csrf_of(client.get("/admin/login").get_data(as_text=True))
    form = _login_form()
    if token == "tampered":
        form["csrf_token"] = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    elif token is not None:
        form["csrf_token"] = token
    response = _post_login(client, form)
    assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True)
    assert not r.keys("gw:sessions:*")


def test_login_refuses_a_token_swapped_from_another_visitor(
    app: Flask, admin_user: dict, r: redis.Redis
) -> None:
    attacker, victim = app.test_client(), app.test_client()
    stolen = csrf_of(attacker.get("/admin/login").get_data(as_text=True))
    victim.get("/admin/login")
    response = _post_login(victim, _login_form(csrf_token=stolen))
    assert response.status_code == 400
    assert not r.keys("gw:sessions:*")


def test_login_refuses_a_token_without_its_cookie(client: FlaskClient, admin_user: dict) -> None:
    page = client.get("/admin/login")
    for name in _set_cookies(page):
        client.delete_cookie(name)
    response = _post_login(client, _login_form(csrf_token=csrf_of(page.get_data(as_text=True))))
    assert response.status_code == 400


def test_login_refuses_an_expired_token(
    client: FlaskClient, admin_user: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import itsdangerous

    with monkeypatch.context() as patched:  # the page was served 31 minutes ago
        patched.setattr(
            itsdangerous.TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 31 * 60
        )
        token = csrf_of(client.get("/admin/login").get_data(as_text=True))
    response = _post_login(client, _login_form(csrf_token=token))
    assert response.status_code == 400
