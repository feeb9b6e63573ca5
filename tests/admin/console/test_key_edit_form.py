"""The console's key forms: the edit form, and the allow-list and token quota at creation (issue 16)."""

from __future__ import annotations

import redis
from flask import Flask
from flask.testing import FlaskClient

from auth import audit, keys
from auth.loaders import pepper
from tests.admin.console.conftest import Console, csrf_of


def _key(app: Flask, r: redis.Redis, **fields: object) -> tuple[dict, str]:
    fields = {"name": "svc", "scopes": ["agents:read", "jobs:read"], **fields}
    return keys.create_key(r, pepper=pepper(app), **fields)  # type: ignore[arg-type]


def _me(client: FlaskClient, secret: str) -> int:
    return client.get("/auth/me", headers={"X-API-Key": secret}).status_code


def test_console_edit_form(logged_in: Console, app: Flask, r: redis.Redis, client: FlaskClient) -> None:
    record, secret = _key(app, r, quota="7/day")
    listing = logged_in.get("/admin/").get_data(as_text=True)
    assert f"/admin/console/keys/{record['id']}/edit" in listing
    path = f"/admin/console/keys/{record['id']}/edit"
    page = logged_in.get(path)
    html = page.get_data(as_text=True)
    assert (
        page.status_code == 200
        and 'value="7/day"' in html
        and "nonce-" in page.headers["Content-Security-Policy"]
    )
    form = {"name": "edited", "scope": ["agents:read"], "quota": "", "token_quota": "50/day",
            "allowed_ips": "127.0.0.1\n2001:db8::/32"}  # fmt: skip
    # No CSRF token: refused, nothing changes.
    assert logged_in.post(path, form).status_code == 400
    assert keys.get_key(r, record["id"])["name"] == "svc"
    done = logged_in.post(path, form, csrf=csrf_of(html))
    assert done.status_code == 303
    stored = keys.get_key(r, record["id"])
    assert stored["name"] == "edited" and stored["scopes"] == ["agents:read"] and stored["quota"] is None
    assert stored["allowed_ips"] == ["127.0.0.1/32", "2001:db8::/32"] and stored["token_quota"] == "50/day"
    entry = audit.recent(r, 1)[0]
    assert entry["action"] == "key.update" and entry["actor"].startswith("user:")
    assert _me(client, secret) == 200
    shown = logged_in.get("/admin/").get_data(as_text=True)
    assert "2001:db8::/32" in shown and "tokens: 50/day" in shown
    bad = logged_in.post(path, {**form, "allowed_ips": "10.0.0.7/24"}, csrf=csrf_of(html))
    assert bad.status_code == 400 and "did you mean" in bad.get_data(as_text=True)
    keys.revoke_key(r, record["id"])
    gone = logged_in.post(path, form, csrf=csrf_of(html))
    assert gone.status_code == 400 and "revoked" in gone.get_data(as_text=True)


def test_console_new_key_form_takes_token_quota_and_allowed_ips(logged_in: Console, r: redis.Redis) -> None:
    fields = {"name": "ips", "scope": ["agents:read"], "token_quota": "1000/day",
              "allowed_ips": "198.51.100.0/24, 2001:db8::1"}  # fmt: skip
    response = logged_in.submit("/admin/console/keys/new", "/admin/console/keys/new", fields)
    assert response.status_code == 200, response.get_data(as_text=True)
    (stored,) = keys.list_keys(r)
    assert (
        stored["allowed_ips"] == ["198.51.100.0/24", "2001:db8::1/128"]
        and stored["token_quota"] == "1000/day"
    )
