"""Rotation ends every earlier secret but the one it gives a grace to; revocation ends them all;
the admin API and `keys list` show which secrets are live and until when (issue 10, item 8)."""

from __future__ import annotations

import json
from collections.abc import Callable

import redis
from flask import Flask
from flask.testing import FlaskCliRunner

from auth import keys
from auth.loaders import pepper

PEPPER = b"k" * 32


def _live(r: redis.Redis, *secrets: str) -> list[bool]:
    return [keys.lookup(r, secret, PEPPER) is not None for secret in secrets]


def test_rotate_with_grace_then_rotate_without_ends_the_first_secret(r: redis.Redis) -> None:
    record, first = keys.create_key(r, pepper=PEPPER, name="n", scopes=[])
    _, second = keys.rotate_key(r, record["id"], pepper=PEPPER, grace_seconds=3600)
    assert _live(r, first, second) == [True, True]
    _, third = keys.rotate_key(r, record["id"], pepper=PEPPER)
    assert _live(r, first, second, third) == [False, False, True]
    assert not r.exists(keys.digest_key(keys.digest(first, PEPPER)))


def test_rotate_with_grace_twice_keeps_only_the_latest_replaced_secret(r: redis.Redis) -> None:
    record, first = keys.create_key(r, pepper=PEPPER, name="n", scopes=[])
    _, second = keys.rotate_key(r, record["id"], pepper=PEPPER, grace_seconds=3600)
    _, third = keys.rotate_key(r, record["id"], pepper=PEPPER, grace_seconds=3600)
    assert _live(r, first, second, third) == [False, True, True]
    view = keys.public_view(keys.get_key(r, record["id"]))
    assert [s["prefix"] for s in view["secrets"]] == [third[:8], second[:8]]
    assert view["secrets"][0]["expires_at"] is None and view["secrets"][1]["expires_at"]


def test_a_stale_lookup_left_behind_is_refused(r: redis.Redis) -> None:
    # Defence in depth: the record, not the look-up's TTL, says which digests are live.
    record, old = keys.create_key(r, pepper=PEPPER, name="n", scopes=[])
    keys.rotate_key(r, record["id"], pepper=PEPPER)
    r.set(keys.digest_key(keys.digest(old, PEPPER)), record["id"], ex=3600)
    assert _live(r, old) == [False]


def test_revocation_ends_every_secret_at_once(r: redis.Redis) -> None:
    record, first = keys.create_key(r, pepper=PEPPER, name="n", scopes=[])
    _, second = keys.rotate_key(r, record["id"], pepper=PEPPER, grace_seconds=3600)
    keys.revoke_key(r, record["id"])
    assert _live(r, first, second) == [False, False]
    assert keys.public_view(keys.get_key(r, record["id"]))["secrets"] == []


def test_public_view_lists_live_secrets_without_digests(r: redis.Redis) -> None:
    record, first = keys.create_key(r, pepper=PEPPER, name="n", scopes=[], expires_in_days=5)
    view = keys.public_view(keys.get_key(r, record["id"]))
    assert view["secrets"] == [
        {
            "prefix": first[:8],
            "last4": first[-4:],
            "created_at": view["created_at"],
            "expires_at": view["expires_at"],
        }
    ]
    keys.rotate_key(r, record["id"], pepper=PEPPER, grace_seconds=60)
    dumped = json.dumps(keys.public_view(keys.get_key(r, record["id"])))
    assert "digest" not in dumped and keys.digest(first, PEPPER) not in dumped and first not in dumped


def test_admin_api_shows_live_secrets(app: Flask, auth_headers: Callable[..., dict[str, str]]) -> None:
    client, admin = app.test_client(), auth_headers("admin")
    created = client.post("/admin/keys", json={"name": "g"}, headers=admin).get_json()
    rotate = f"/admin/keys/{created['id']}/rotate"
    rotated = client.post(rotate, json={"grace_seconds": 30}, headers=admin).get_json()
    shown = client.get(f"/admin/keys/{created['id']}", headers=admin).get_json()
    assert [s["prefix"] for s in shown["secrets"]] == [rotated["prefix"], created["prefix"]]
    assert shown["secrets"][1]["expires_at"] > shown["secrets"][1]["created_at"]
    listed = client.get("/admin/keys", headers=admin).get_json()["keys"]
    entry = next(k for k in listed if k["id"] == created["id"])
    assert len(entry["secrets"]) == 2 and created["key"] not in json.dumps(listed)
    client.post(rotate, headers=admin)
    assert client.get("/auth/me", headers={"X-API-Key": created["key"]}).status_code == 401
    assert client.get("/auth/me", headers={"X-API-Key": rotated["key"]}).status_code == 401


def test_keys_list_shows_live_secrets(app: Flask, runner: FlaskCliRunner, r: redis.Redis) -> None:
    record, first = keys.create_key(r, pepper=pepper(app), name="n", scopes=[])
    _, second = keys.rotate_key(r, record["id"], pepper=pepper(app), grace_seconds=600)
    listed = json.loads(runner.invoke(args=["keys", "list", "--json"]).output)
    assert [s["prefix"] for s in listed[0]["secrets"]] == [second[:8], first[:8]]
    human = runner.invoke(args=["keys", "list"]).output
    assert f"{first[:8]}...{first[-4:]} until " in human and f"{second[:8]}...{second[-4:]}" in human
    assert first not in human and second not in human
