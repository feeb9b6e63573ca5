"""/admin/keys and /admin/audit: the CLI over HTTP, admin scope, secrets only when made."""

from __future__ import annotations

import json
from collections.abc import Callable

import redis
from flask import Flask

from auth import keys
from auth.loaders import pepper

CREATE_FIELDS = {"id", "name", "key", "prefix", "scopes", "rate_limit", "quota", "expires_at", "created_at"}


def test_create_show_list_revoke_rotate(
    app: Flask, auth_headers: Callable[..., dict[str, str]], r: redis.Redis
) -> None:
    client, admin = app.test_client(), auth_headers("admin")
    body = {"name": "svc", "scopes": ["events:write"], "rate_limit": "10/second", "expires_in_days": 30}
    made = client.post("/admin/keys", json=body, headers=admin)
    assert made.status_code == 201
    created = made.get_json()
    assert set(created) == CREATE_FIELDS and created["scopes"] == ["events:write"]
    shown = client.get(f"/admin/keys/{created['id']}", headers=admin).get_json()
    assert shown["status"] == "active" and "key" not in shown and "digest" not in shown
    listed = client.get("/admin/keys", headers=admin).get_json()
    assert created["id"] in [k["id"] for k in listed["keys"]] and created["key"] not in str(listed)
    rotated = client.post(f"/admin/keys/{created['id']}/rotate", headers=admin)
    assert rotated.status_code == 200 and rotated.get_json()["key"] != created["key"]
    assert keys.lookup(r, created["key"], pepper(app)) is None
    revoked = client.delete(f"/admin/keys/{created['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.get_json()["status"] == "revoked"
    assert client.get("/auth/me", headers={"X-API-Key": rotated.get_json()["key"]}).status_code == 401
    assert client.post(f"/admin/keys/{created['id']}/rotate", headers=admin).status_code == 409


def test_rotate_with_grace_body(app: Flask, auth_headers: Callable[..., dict[str, str]]) -> None:
    client, admin = app.test_client(), auth_headers("admin")
    created = client.post("/admin/keys", json={"name": "g"}, headers=admin).get_json()
    rotated = client.post(f"/admin/keys/{created['id']}/rotate", json={"grace_seconds": 30}, headers=admin)
    assert rotated.status_code == 200
    assert client.get("/auth/me", headers={"X-API-Key": created["key"]}).status_code == 200
    bad = client.post(f"/admin/keys/{created['id']}/rotate", json={"grace_seconds": -1}, headers=admin)
    assert bad.status_code == 400


def test_validation_errors_are_400(
    app: Flask, auth_headers: Callable[..., dict[str, str]], r: redis.Redis
) -> None:
    client, admin = app.test_client(), auth_headers("admin")
    for body, words in (
        ({"name": "x", "scopes": ["root"]}, "unknown scope"),
        ({"name": "x", "rate_limit": "fast"}, "rate_limit must be a limit"),
        ({"name": "x", "quota": "many"}, "quota must be a limit"),
        ({"name": ""}, "name"),
        ({"name": "x", "expires_in_days": 0}, "expires_in_days"),
    ):
        response = client.post("/admin/keys", json=body, headers=admin)
        assert response.status_code == 400 and words in response.get_json()["error"], response.get_json()
    assert client.post("/admin/keys", headers=admin).get_json()["error"] == "No JSON data provided"
    assert r.zcard(keys.index_key()) == 1  # only the admin key itself


def test_unknown_key_is_404(app: Flask, auth_headers: Callable[..., dict[str, str]]) -> None:
    client, admin = app.test_client(), auth_headers("admin")
    for method in ("get", "delete"):
        assert getattr(client, method)("/admin/keys/key_missing", headers=admin).status_code == 404
    assert client.post("/admin/keys/key_missing/rotate", headers=admin).status_code == 404


def test_non_admin_scopes_are_refused(app: Flask, auth_headers: Callable[..., dict[str, str]]) -> None:
    headers = auth_headers("agents:read", "agents:write", "jobs:read", "jobs:write", "metrics:read")
    response = app.test_client().get("/admin/keys", headers=headers)
    assert response.status_code == 403 and response.get_json()["status_code"] == 403


def test_audit_names_actor_action_key_and_ip(app: Flask, auth_headers: Callable[..., dict[str, str]]) -> None:
    client, admin = app.test_client(), auth_headers("admin", name="ops-bot")
    created = client.post("/admin/keys", json={"name": "a"}, headers=admin).get_json()
    client.delete(f"/admin/keys/{created['id']}", headers=admin)
    entries = client.get("/admin/audit?limit=2", headers=admin).get_json()
    assert entries["total"] == 2
    latest = entries["entries"][0]
    assert latest["action"] == "key.revoke" and latest["key_id"] == created["id"]
    assert latest["actor"].startswith("api_key:") and latest["actor_name"] == "ops-bot"
    assert latest["ip"] == "127.0.0.1" and latest["at"].endswith("Z")
    assert created["key"] not in str(entries)
    assert client.get("/admin/audit?limit=0", headers=admin).status_code == 400


def test_token_quota_and_allowed_ips_are_stored_and_shown(
    app: Flask, auth_headers: Callable[..., dict[str, str]]
) -> None:
    client, admin = app.test_client(), auth_headers("admin")
    body = {
        "name": "office",
        "token_quota": "100000/day",
        "allowed_ips": ["203.0.113.0/24", "2001:DB8::/32", "198.51.100.7", "203.0.113.0/24"],
    }
    created = client.post("/admin/keys", json=body, headers=admin).get_json()
    shown = client.get(f"/admin/keys/{created['id']}", headers=admin).get_json()
    # Normalised (a bare address is its /32, IPv6 lower case) and deduplicated.
    assert shown["allowed_ips"] == ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7/32"]
    assert shown["token_quota"] == "100000/day"
    listed = client.get("/admin/keys", headers=admin).get_json()["keys"]
    assert [k["allowed_ips"] for k in listed if k["id"] == created["id"]] == [shown["allowed_ips"]]


def test_bad_allowed_ips_and_token_quota_are_400(
    app: Flask, auth_headers: Callable[..., dict[str, str]], r: redis.Redis
) -> None:
    client, admin = app.test_client(), auth_headers("admin")
    for value, words in (
        (["10.0.0.7/24"], "host bits set; did you mean '10.0.0.0/24'"),
        (["not-an-ip"], "'not-an-ip' is not an IPv4 or IPv6 address or CIDR"),
        (["10.0.0.0/33"], "is not an IPv4 or IPv6 address or CIDR"),
        (["2001:db8::1/129"], "is not an IPv4 or IPv6 address or CIDR"),
        ([""], "allowed_ips entries must be IP addresses or CIDRs"),
        ("10.0.0.0/8", "allowed_ips must be a list"),
        ([7], "allowed_ips.0 must be a string"),
        ([f"10.0.{n // 256}.{n % 256}" for n in range(101)], "at most 100"),
    ):
        answer = client.post("/admin/keys", json={"name": "x", "allowed_ips": value}, headers=admin)
        assert answer.status_code == 400 and words in answer.get_json()["error"], answer.get_json()
    answer = client.post("/admin/keys", json={"name": "x", "token_quota": "lots"}, headers=admin)
    assert answer.status_code == 400
    assert answer.get_json()["error"].startswith("token_quota must be a limit such as")
    assert r.zcard(keys.index_key()) == 1  # only the admin key itself


def test_patch_is_in_the_openapi_document(app: Flask) -> None:
    document = app.test_client().get("/openapi.json").get_json()
    (path,) = [p for p in document["paths"] if p.startswith("/admin/keys/{") and p.count("/") == 3]
    patch = document["paths"][path]["patch"]
    body = patch["requestBody"]["content"]["application/json"]["schema"]
    assert "KeyUpdate" in json.dumps(body) and {"200", "409"} <= set(patch["responses"])
    props = json.dumps(document["components"]["schemas"]["KeyUpdate"])
    assert "allowed_ips" in props and "token_quota" in props
