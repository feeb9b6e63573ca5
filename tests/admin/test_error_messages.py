"""Admin API errors name the actual problem in the gateway's words, never pydantic's (issue 16)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis
from flask import Flask

from auth import keys, users

# Pydantic's own wording, which must never reach a client.
LEAKS = ("Field required", "Input should be", "value_error", "Value error", "pydantic", "type=", "[type")
BAD_KEY_BODIES = [
    ({}, "name is required"),
    ({"scopes": ["agents:read"]}, "name is required"),
    ({"name": None}, "name must be a string"),
    ({"name": 7}, "name must be a string"),
    ({"name": ""}, "name must be at least 1 characters"),
    ({"name": "x" * 101}, "name must be at most 100 characters"),
    ({"name": "x", "scopes": "admin"}, "scopes must be a list"),
    ({"name": "x", "scopes": [1]}, "scopes.0 must be a string"),
    ({"name": "x", "scopes": ["root"]}, "unknown scope 'root'"),
    ({"name": "x", "rate_limit": 5}, "rate_limit must be a string"),
    ({"name": "x", "quota": "many"}, "quota must be a limit such as"),
    ({"name": "x", "expires_in_days": "soon"}, "expires_in_days must be an integer"),
    ({"name": "x", "expires_in_days": 1.5}, "expires_in_days must be an integer"),
    ({"name": "x", "expires_in_days": 0}, "expires_in_days must be at least 1"),
    ({"name": "x", "expires_in_days": 99999}, "expires_in_days must be at most 3650"),
    ({"name": "x", "allowed_ips": {"a": 1}}, "allowed_ips must be a list"),
    ({"name": "x", "allowed_ips": ["1.2.3.4/99"]}, "is not an IPv4 or IPv6 address or CIDR"),
]


def _assert_clean(answer, words: str) -> None:  # type: ignore[no-untyped-def]
    body = answer.get_json()
    assert answer.status_code == 400, body
    assert set(body) == {"error", "status_code", "message", "path"} and body["status_code"] == 400
    assert words in body["error"], body
    text = json.dumps(body)
    assert not any(leak in text for leak in LEAKS), body


@pytest.mark.parametrize(("body", "words"), BAD_KEY_BODIES)
def test_create_key_errors(
    app: Flask, auth_headers: Callable[..., dict[str, str]], r: redis.Redis, body: dict, words: str
) -> None:
    admin = auth_headers("admin")
    _assert_clean(app.test_client().post("/admin/keys", json=body, headers=admin), words)
    assert r.zcard(keys.index_key()) == 1  # only the admin key itself


@pytest.mark.parametrize(("body", "words"), [(b, w) for b, w in BAD_KEY_BODIES if b.get("name") == "x"])
def test_update_key_errors(
    app: Flask, auth_headers: Callable[..., dict[str, str]], r: redis.Redis, body: dict, words: str
) -> None:
    admin = auth_headers("admin")
    key_id = keys.list_keys(r)[0]["id"]
    body = {k: v for k, v in body.items() if k != "name"}
    _assert_clean(app.test_client().patch(f"/admin/keys/{key_id}", json=body, headers=admin), words)


def test_a_missing_or_broken_body_keeps_its_message(
    app: Flask, auth_headers: Callable[..., dict[str, str]]
) -> None:
    client, admin = app.test_client(), auth_headers("admin")
    assert client.post("/admin/keys", headers=admin).get_json()["error"] == "No JSON data provided"
    assert client.post("/admin/keys", json=[], headers=admin).get_json()["error"] == "No JSON data provided"
    broken = client.post("/admin/keys", data="{", content_type="application/json", headers=admin)
    assert broken.status_code == 400


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/admin/users/ops@example.com/password", {}, "password must be a string of"),
        ("/admin/users/ops@example.com/password", {"password": 5}, "password must be a string of"),
        ("/admin/keys/{key}/rotate", {"grace_seconds": "soon"}, "grace_seconds must be an integer"),
        ("/admin/keys/{key}/rotate", {"grace_seconds": -1}, "grace_seconds must be at least 0"),
    ],
)
def test_user_and_rotate_routes(
    app: Flask, auth_headers: Callable[..., dict[str, str]], r: redis.Redis, path: str, body: dict, words: str
) -> None:
    admin = auth_headers("admin")
    users.create_user(r, email="ops@example.com", password="a long enough password 1")
    path = path.format(key=keys.list_keys(r)[0]["id"])
    _assert_clean(app.test_client().post(path, json=body, headers=admin), words)


def test_query_errors(app: Flask, auth_headers: Callable[..., dict[str, str]]) -> None:
    answer = app.test_client().get("/admin/audit?limit=lots", headers=auth_headers("admin"))
    _assert_clean(answer, "limit must be an integer")
