"""`flask keys ...` and `flask users create` (CONTRACT section 6)."""

from __future__ import annotations

import json

import redis
from flask import Flask
from flask.testing import FlaskCliRunner

from auth import audit, keys, users
from auth.loaders import pepper

CREATE_FIELDS = {"id", "name", "key", "prefix", "scopes", "rate_limit", "quota", "expires_at", "created_at"}


def _create(runner: FlaskCliRunner, *args: str) -> dict[str, object]:
    result = runner.invoke(args=["keys", "create", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_create_json_has_exactly_the_contract_fields(
    app: Flask, runner: FlaskCliRunner, r: redis.Redis
) -> None:
    args = ["--name", "ci", "--scope", "jobs:read", "--scope", "agents:write"]
    made = _create(
        runner, *args, "--rate-limit", "100/minute", "--quota", "10000/day", "--expires-in-days", "7"
    )
    assert set(made) == CREATE_FIELDS
    assert made["scopes"] == ["agents:write", "jobs:read"] and made["rate_limit"] == "100/minute"
    assert made["quota"] == "10000/day" and made["expires_at"] and str(made["key"]).startswith("rgw_")
    assert keys.lookup(r, str(made["key"]), pepper(app))["id"] == made["id"]
    entry = audit.recent(r, 1)[0]
    assert entry["actor"] == "cli" and entry["action"] == "key.create" and entry["key_id"] == made["id"]


def test_create_without_json_shows_the_secret_once(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["keys", "create", "--name", "human"])
    assert result.exit_code == 0 and "rgw_" in result.output and "only this once" in result.output


def test_create_rejects_bad_scopes_and_limits(runner: FlaskCliRunner, r: redis.Redis) -> None:
    cases = [
        (["--scope", "root"], "root"),
        (["--rate-limit", "lots"], "--rate-limit must be a limit"),
        (["--quota", "10000 a day"], "--quota must be a limit"),
        (["--expires-in-days", "0"], "expires-in-days"),
    ]
    for extra, message in cases:
        result = runner.invoke(args=["keys", "create", "--name", "x", *extra])
        assert result.exit_code == 2 and message in result.output, result.output
    assert r.zcard(keys.index_key()) == 0


def test_list_json_has_no_secrets(runner: FlaskCliRunner) -> None:
    made = _create(runner, "--name", "listed", "--scope", "metrics:read")
    result = runner.invoke(args=["keys", "list", "--json"])
    listed = json.loads(result.output)
    assert [k["id"] for k in listed] == [made["id"]] and listed[0]["status"] == "active"
    assert str(made["key"]) not in result.output and "digest" not in result.output
    human = runner.invoke(args=["keys", "list"]).output
    assert made["id"] in human and str(made["key"]) not in human


def test_revoke_and_rotate(app: Flask, runner: FlaskCliRunner, r: redis.Redis) -> None:
    made = _create(runner, "--name", "r")
    rotated = json.loads(runner.invoke(args=["keys", "rotate", str(made["id"]), "--json"]).output)
    assert set(rotated) == CREATE_FIELDS and rotated["id"] == made["id"] and rotated["key"] != made["key"]
    assert keys.lookup(r, str(made["key"]), pepper(app)) is None
    result = runner.invoke(args=["keys", "revoke", str(made["id"])])
    assert result.exit_code == 0 and "Revoked" in result.output
    assert keys.lookup(r, str(rotated["key"]), pepper(app)) is None
    result = runner.invoke(args=["keys", "rotate", str(made["id"])])
    assert result.exit_code == 1 and "revoked" in result.output
    assert runner.invoke(args=["keys", "revoke", "key_nope"]).exit_code == 1
    actions = [e["action"] for e in audit.recent(r)]
    assert actions[:3] == ["key.revoke", "key.rotate", "key.create"]


def test_rotate_grace_keeps_the_old_secret(app: Flask, runner: FlaskCliRunner, r: redis.Redis) -> None:
    made = _create(runner, "--name", "g")
    result = runner.invoke(args=["keys", "rotate", str(made["id"]), "--grace-seconds", "60"])
    assert result.exit_code == 0
    assert keys.lookup(r, str(made["key"]), pepper(app)) is not None
    assert 0 < r.ttl(keys.digest_key(keys.digest(str(made["key"]), pepper(app)))) <= 60


def test_users_create_from_stdin_hashes_with_argon2id(runner: FlaskCliRunner, r: redis.Redis) -> None:
    password = "a long enough password"
    result = runner.invoke(
        args=["users", "create", "Ops@Example.com", "--password-stdin"], input=password + "\n"
    )
    assert result.exit_code == 0, result.output
    user_id = r.get(users.email_key("ops@example.com"))
    stored = r.hget(users.record_key(user_id), "password_hash")
    assert stored.startswith("$argon2id$") and password not in stored
    assert users.authenticate(r, email="ops@example.com", password=password) is not None
    again = runner.invoke(args=["users", "create", "ops@example.com", "--password-stdin"], input=password)
    assert again.exit_code == 1 and "already exists" in again.output
    assert audit.recent(r, 1)[0]["action"] == "user.create"


def test_users_create_prompts_with_confirmation(runner: FlaskCliRunner, r: redis.Redis) -> None:
    password = "prompted password 42"
    result = runner.invoke(args=["users", "create", "p@example.com"], input=f"{password}\n{password}\n")
    assert result.exit_code == 0, result.output
    assert users.authenticate(r, email="p@example.com", password=password) is not None
    short = runner.invoke(args=["users", "create", "s@example.com", "--password-stdin"], input="short\n")
    assert short.exit_code == 2 and "at least" in short.output


def test_create_with_token_quota_and_allowed_ips(runner: FlaskCliRunner, r: redis.Redis) -> None:
    made = _create(
        runner, "--name", "office", "--token-quota", "100000/day",
        "--allow-ip", "203.0.113.0/24", "--allow-ip", "2001:db8::/32",
    )  # fmt: skip
    record = keys.get_key(r, str(made["id"]))
    assert record is not None and record["token_quota"] == "100000/day"
    assert record["allowed_ips"] == ["203.0.113.0/24", "2001:db8::/32"]
    listed = runner.invoke(args=["keys", "list"]).output
    assert "token_quota 100000/day" in listed and "ips 203.0.113.0/24, 2001:db8::/32" in listed
    shown = json.loads(runner.invoke(args=["keys", "show", str(made["id"]), "--json"]).output)
    assert shown["allowed_ips"] == record["allowed_ips"] and "digest" not in shown
    bad = runner.invoke(args=["keys", "create", "--name", "x", "--allow-ip", "10.0.0.7/24"])
    assert bad.exit_code != 0 and "did you mean '10.0.0.0/24'" in bad.output
    bad = runner.invoke(args=["keys", "create", "--name", "x", "--token-quota", "lots"])
    assert bad.exit_code != 0 and "--token-quota must be a limit" in bad.output
