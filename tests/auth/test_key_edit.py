"""Editing keys in place: PATCH /admin/keys/<id> and `keys update` (issue 16); the console's
form is tested in tests/admin/console/test_key_edit_form.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from auth import audit, keys
from auth.loaders import pepper
from devtools.gunicorn import GunicornServer


def _key(app: Flask, r: redis.Redis, **fields: object) -> tuple[dict, str]:
    fields = {"name": "svc", "scopes": ["agents:read", "jobs:read"], **fields}
    return keys.create_key(r, pepper=pepper(app), **fields)  # type: ignore[arg-type]


def _me(client: FlaskClient, secret: str) -> int:
    return client.get("/auth/me", headers={"X-API-Key": secret}).status_code


def test_patch_changes_fields_keeps_the_secret_and_audits_before_after(
    app: Flask, r: redis.Redis, auth_headers: Callable[..., dict[str, str]]
) -> None:
    client, admin = app.test_client(), auth_headers("admin")
    record, secret = _key(app, r, rate_limit="10/minute", expires_in_days=5)
    assert client.get("/jobs", headers={"X-API-Key": secret}).status_code == 200  # cached on this worker
    body = {
        "name": "svc2",
        "scopes": ["agents:read"],
        "rate_limit": None,
        "quota": "500/day",
        "token_quota": "9000/day",
        "allowed_ips": ["127.0.0.1", "::1"],
        "expires_in_days": None,
    }
    answer = client.patch(f"/admin/keys/{record['id']}", json=body, headers=admin)
    assert answer.status_code == 200, answer.get_json()
    view = answer.get_json()
    assert view["name"] == "svc2" and view["scopes"] == ["agents:read"] and view["rate_limit"] is None
    assert view["quota"] == "500/day" and view["token_quota"] == "9000/day" and view["expires_at"] is None
    assert view["allowed_ips"] == ["127.0.0.1/32", "::1/128"] and "key" not in view
    stored = keys.get_key(r, record["id"])
    assert stored is not None and int(stored[keys.VERSION_FIELD]) == int(record[keys.VERSION_FIELD]) + 1
    assert stored["digest"] == record["digest"] and stored["expires_ts"] is None
    # The same secret works, with the new scopes at once (this worker's cache was dropped).
    assert _me(client, secret) == 200
    assert client.get("/jobs", headers={"X-API-Key": secret}).status_code == 403
    entry = audit.recent(r, 1)[0]
    assert "update" in entry["action"] and entry["key_id"] == record["id"]
    assert entry["actor"].startswith("api_key:") and entry["ip"] == "127.0.0.1"
    changes = entry["details"]["changes"]
    assert changes["scopes"] == {"before": ["agents:read", "jobs:read"], "after": ["agents:read"]}
    assert changes["rate_limit"] == {"before": "10/minute", "after": None}
    assert changes["expires_at"]["before"] and changes["expires_at"]["after"] is None
    assert changes["allowed_ips"]["after"] == ["127.0.0.1/32", "::1/128"]
    assert secret not in json.dumps(entry)


def test_patch_sets_an_expiry_and_sends_only_what_changed(
    app: Flask, r: redis.Redis, auth_headers: Callable[..., dict[str, str]]
) -> None:
    client, admin = app.test_client(), auth_headers("admin")
    record, _ = _key(app, r, quota="5/day")
    view = client.patch(f"/admin/keys/{record['id']}", json={"expires_in_days": 2}, headers=admin).get_json()
    assert view["expires_at"] and view["quota"] == "5/day" and view["name"] == "svc"
    assert keys.get_key(r, record["id"])["expires_ts"]
    assert list(audit.recent(r, 1)[0]["details"]["changes"]) == ["expires_at"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"scopes": ["root"]}, 400, "unknown scope 'root'"),
        ({"rate_limit": "fast"}, 400, "rate_limit must be a limit such as"),
        ({"quota": "many"}, 400, "quota must be a limit such as"),
        ({"token_quota": "lots"}, 400, "token_quota must be a limit such as"),
        ({"allowed_ips": ["10.0.0.7/24"]}, 400, "host bits set; did you mean '10.0.0.0/24'"),
        ({"allowed_ips": ["nope"]}, 400, "is not an IPv4 or IPv6 address or CIDR"),
        ({"expires_in_days": 0}, 400, "expires_in_days must be at least 1"),
        ({"expires_in_days": "soon"}, 400, "expires_in_days must be an integer"),
        ({"name": ""}, 400, "name must be at least 1 characters"),
        ({"name": None}, 400, "name cannot be cleared"),
        ({"name": "   "}, 400, "name must be 1 to 100 printable characters"),
        ({"nmae": "typo"}, 400, "nmae is not an accepted field"),
        ({}, 400, "Nothing to change"),
    ],
)
def test_patch_validates_like_creation(
    app: Flask,
    r: redis.Redis,
    auth_headers: Callable[..., dict[str, str]],
    body: dict,
    status: int,
    words: str,
) -> None:
    client, admin = app.test_client(), auth_headers("admin")
    record, _ = _key(app, r)
    answer = client.patch(f"/admin/keys/{record['id']}", json=body, headers=admin)
    error = answer.get_json()
    assert answer.status_code == status and words in error["error"], error
    assert set(error) == {"error", "status_code", "message", "path"}
    assert keys.get_key(r, record["id"])[keys.VERSION_FIELD] == record[keys.VERSION_FIELD]


def test_patch_unknown_revoked_and_non_admin(
    app: Flask, r: redis.Redis, auth_headers: Callable[..., dict[str, str]]
) -> None:
    client, admin = app.test_client(), auth_headers("admin")
    missing = client.patch("/admin/keys/key_missing", json={"name": "x"}, headers=admin)
    assert missing.status_code == 404 and missing.get_json()["message"] == "Key not found"
    record, _ = _key(app, r)
    keys.revoke_key(r, record["id"])
    revoked = client.patch(f"/admin/keys/{record['id']}", json={"name": "x"}, headers=admin)
    assert revoked.status_code == 409 and "revoked" in revoked.get_json()["message"]
    assert keys.get_key(r, record["id"])["name"] == "svc"
    plain = auth_headers("agents:read", "jobs:write")
    assert client.patch(f"/admin/keys/{record['id']}", json={"name": "x"}, headers=plain).status_code == 403


def test_cli_update_sets_and_clears(app: Flask, runner: FlaskCliRunner, r: redis.Redis) -> None:
    record, _ = _key(app, r, rate_limit="10/minute", allowed_ips=["10.0.0.0/8"])
    args = ["keys", "update", record["id"], "--name", "renamed", "--scope", "events:read",
            "--token-quota", "100/day", "--allow-ip", "192.0.2.0/24", "--allow-ip", "2001:db8::/48",
            "--no-rate-limit", "--json"]  # fmt: skip
    result = runner.invoke(args=args)
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert view["name"] == "renamed" and view["scopes"] == ["events:read"] and view["rate_limit"] is None
    assert view["allowed_ips"] == ["192.0.2.0/24", "2001:db8::/48"] and view["token_quota"] == "100/day"
    entry = audit.recent(r, 1)[0]
    assert entry["actor"] == "cli" and entry["action"] == "key.update"
    assert entry["details"]["changes"]["allowed_ips"]["before"] == ["10.0.0.0/8"]
    cleared = runner.invoke(args=["keys", "update", record["id"], "--allow-any-ip", "--no-token-quota"])
    assert cleared.exit_code == 0 and "ips any" in cleared.output
    stored = keys.get_key(r, record["id"])
    assert stored["allowed_ips"] == [] and stored["token_quota"] is None and stored["name"] == "renamed"


def test_cli_update_refusals(app: Flask, runner: FlaskCliRunner, r: redis.Redis) -> None:
    record, _ = _key(app, r)
    nothing = runner.invoke(args=["keys", "update", record["id"]])
    assert nothing.exit_code != 0 and "nothing to change" in nothing.output
    bad = runner.invoke(args=["keys", "update", record["id"], "--quota", "lots"])
    assert bad.exit_code != 0 and "--quota must be a limit" in bad.output
    bad = runner.invoke(args=["keys", "update", record["id"], "--allow-ip", "300.1.1.1"])
    assert bad.exit_code != 0 and "not an IPv4 or IPv6 address" in bad.output
    missing = runner.invoke(args=["keys", "update", "key_missing", "--name", "x"])
    assert missing.exit_code != 0 and "no key with id key_missing" in missing.output
    keys.revoke_key(r, record["id"])
    revoked = runner.invoke(args=["keys", "update", record["id"], "--name", "x"])
    assert revoked.exit_code != 0 and "revoked" in revoked.output


def _statuses(url: str, path: str, secret: str, count: int = 32) -> list[int]:
    """GETs on fresh connections, in parallel, so gunicorn spreads them over its workers."""

    def one(_: int) -> int:
        headers = {"X-API-Key": secret, "Connection": "close"}
        return requests.get(url + path, headers=headers, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.gunicorn
def test_an_edit_reaches_every_gunicorn_worker_within_one_second(
    gunicorn: Callable[..., GunicornServer], runner: FlaskCliRunner
) -> None:
    url = gunicorn(workers=2).url
    made = runner.invoke(args=["keys", "create", "--name", "admin", "--scope", "admin", "--json"])
    admin = {"X-API-Key": json.loads(made.output)["key"], "Connection": "close"}
    made = runner.invoke(args=["keys", "create", "--name", "svc", "--scope", "jobs:read", "--json"])
    key = json.loads(made.output)
    assert set(_statuses(url, "/jobs", key["key"])) == {200}  # warm in every worker
    # Scopes removed over the API (one worker answers; the other learns from the version).
    edit = requests.patch(
        f"{url}/admin/keys/{key['id']}", json={"scopes": ["agents:read"]}, headers=admin, timeout=10
    )
    changed = time.monotonic()
    assert edit.status_code == 200, edit.text
    time.sleep(max(0.0, changed + 1.0 - time.monotonic()))
    assert set(_statuses(url, "/jobs", key["key"])) == {403}
    assert set(_statuses(url, "/auth/me", key["key"])) == {200}
    # The allow-list narrowed by the CLI (no worker is told): the test client is 127.0.0.1.
    assert runner.invoke(args=["keys", "update", key["id"], "--allow-ip", "203.0.113.0/24"]).exit_code == 0
    changed = time.monotonic()
    time.sleep(max(0.0, changed + 1.0 - time.monotonic()))
    assert set(_statuses(url, "/auth/me", key["key"])) == {403}
