"""Through real gunicorn workers: revocation and rotation (CLI and API) reach every worker
within one second; Redis and the logs never hold a key secret or a password; one key's
agent session is invisible to another."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests
from flask.testing import FlaskCliRunner

from devtools.gunicorn import GunicornServer

PROPAGATION = 1.0  # CONTRACT section 6: every worker within one second
PARALLEL = 8
PASSWORD = "gunicorn admin password 77"
WRONG_PASSWORD = "not the password at all 88"


def _statuses(url: str, key: str, count: int = 32) -> list[int]:
    """GET /auth/me on fresh connections, in parallel, so gunicorn spreads them over its workers."""

    def one(_: int) -> int:
        headers = {"Authorization": f"Bearer {key}", "Connection": "close"}
        return requests.get(url + "/auth/me", headers=headers, timeout=10).status_code

    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(one, range(count)))


def _assert_refused_everywhere_after(changed_at: float, url: str, key: str) -> None:
    time.sleep(max(0.0, changed_at + PROPAGATION - time.monotonic()))
    assert set(_statuses(url, key)) == {401}


def _cli_json(runner: FlaskCliRunner, *args: str) -> dict[str, str]:
    result = runner.invoke(args=[*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _dump(r: redis.Redis) -> str:
    """Every key name and every value in Redis, as one string."""
    parts: list[str] = []
    readers: dict[str, Callable[[str], object]] = {
        "string": r.get,
        "hash": r.hgetall,
        "list": lambda k: r.lrange(k, 0, -1),
        "set": r.smembers,
        "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
        "stream": lambda k: r.xrange(k),
    }
    for name in r.scan_iter(count=1000):
        kind = r.type(name)
        parts.append(f"{name} {kind} {readers[kind](name) if kind in readers else ''}")
    return "\n".join(parts)


@pytest.mark.gunicorn
def test_revocation_rotation_and_no_secrets_anywhere(
    gunicorn: Callable[..., GunicornServer],
    runner: FlaskCliRunner,
    r: redis.Redis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    server = gunicorn(workers=2)
    url = server.url
    secrets_seen: list[str] = []

    admin = _cli_json(runner, "keys", "create", "--name", "admin", "--scope", "admin")["key"]
    admin_headers = {"Authorization": f"Bearer {admin}", "Connection": "close"}
    secrets_seen.append(admin)

    # API revocation.
    made = requests.post(url + "/admin/keys", json={"name": "api"}, headers=admin_headers, timeout=10).json()
    secrets_seen.append(made["key"])
    assert set(_statuses(url, made["key"])) == {200}  # warm every worker's cache
    assert requests.delete(f"{url}/admin/keys/{made['id']}", headers=admin_headers, timeout=10).ok
    _assert_refused_everywhere_after(time.monotonic(), url, made["key"])

    # CLI revocation.
    cli_key = _cli_json(runner, "keys", "create", "--name", "cli")
    secrets_seen.append(cli_key["key"])
    assert set(_statuses(url, cli_key["key"])) == {200}
    assert runner.invoke(args=["keys", "revoke", cli_key["id"]]).exit_code == 0
    _assert_refused_everywhere_after(time.monotonic(), url, cli_key["key"])

    # API rotation without grace: the old secret dies, the new one works at once.
    agents = ["agents:read", "agents:write"]
    body = {"name": "rot", "scopes": agents}
    made = requests.post(url + "/admin/keys", json=body, headers=admin_headers, timeout=10).json()
    assert set(_statuses(url, made["key"])) == {200}
    rotate_url = f"{url}/admin/keys/{made['id']}/rotate"
    rotated = requests.post(rotate_url, headers=admin_headers, timeout=10).json()
    changed = time.monotonic()
    secrets_seen += [made["key"], rotated["key"]]
    assert set(_statuses(url, rotated["key"])) == {200}
    _assert_refused_everywhere_after(changed, url, made["key"])

    # CLI rotation with a grace period: the old secret works during it, not after it.
    cli_rot = _cli_json(
        runner, "keys", "create", "--name", "cli-rot", "--scope", agents[0], "--scope", agents[1]
    )
    assert set(_statuses(url, cli_rot["key"])) == {200}
    new = _cli_json(runner, "keys", "rotate", cli_rot["id"], "--grace-seconds", "2")
    changed = time.monotonic()
    secrets_seen += [cli_rot["key"], new["key"]]
    assert set(_statuses(url, cli_rot["key"], 16)) == {200}
    assert set(_statuses(url, new["key"], 16)) == {200}
    _assert_refused_everywhere_after(changed + 2, url, cli_rot["key"])

    # One key's agent session is invisible to another key (CONTRACT section 3).
    owner = {"X-API-Key": rotated["key"]}
    created = requests.post(url + "/agents/session", headers=owner, timeout=10)
    assert created.status_code == 201, created.text
    session_id = created.json()["session_id"]
    other = {"X-API-Key": new["key"]}
    listed = requests.get(url + "/agents/sessions", headers=other, timeout=10).json()
    assert session_id not in json.dumps(listed)
    history = requests.get(f"{url}/agents/session/{session_id}/messages", headers=other, timeout=10)
    assert history.status_code == 404
    message = {"session_id": session_id, "role": "user", "content": "hi"}
    assert requests.post(url + "/agents/message", json=message, headers=other, timeout=10).status_code == 404
    assert requests.get(f"{url}/agents/session/{session_id}/messages", headers=owner, timeout=10).ok

    # An admin user logs in (and someone fails to) through gunicorn.
    result = runner.invoke(args=["users", "create", "ops@example.com", "--password-stdin"], input=PASSWORD)
    assert result.exit_code == 0, result.output
    browser = requests.Session()
    wrong = {"email": "ops@example.com", "password": WRONG_PASSWORD}
    assert browser.post(url + "/auth/login", json=wrong, timeout=10).status_code == 401
    good = {"email": "ops@example.com", "password": PASSWORD}
    assert browser.post(url + "/auth/login", json=good, headers={"Origin": url}, timeout=10).ok
    assert browser.get(url + "/auth/me", timeout=10).json()["type"] == "user"

    server.stop()  # flushes and closes the log
    stored = _dump(r)
    logs = (tmp_path / "gunicorn-0.log").read_text() + caplog.text
    assert len(secrets_seen) == 7 and "gw:keys:{k:" in stored and "gw:sessions:" in stored
    for secret in secrets_seen:
        body = secret[4:-6]  # the random part alone
        assert body not in stored, "a key secret is stored in Redis"
        assert body not in logs, "a key secret is in the logs"
    for password in (PASSWORD, WRONG_PASSWORD):
        assert password not in stored and password not in logs
    cookie = browser.cookies.get("gw_session")
    assert cookie and cookie not in stored and cookie not in logs


@pytest.mark.gunicorn
def test_every_worker_ends_older_secrets_at_each_rotation_and_all_at_revocation(
    gunicorn: Callable[..., GunicornServer], runner: FlaskCliRunner
) -> None:
    url = gunicorn(workers=2).url
    first = _cli_json(runner, "keys", "create", "--name", "chain")
    second = _cli_json(runner, "keys", "rotate", first["id"], "--grace-seconds", "600")
    assert set(_statuses(url, first["key"])) == {200}  # the graced secret is warm in every worker
    assert set(_statuses(url, second["key"])) == {200}
    third = _cli_json(runner, "keys", "rotate", first["id"])  # no grace: both earlier secrets end
    changed = time.monotonic()
    assert set(_statuses(url, third["key"])) == {200}
    _assert_refused_everywhere_after(changed, url, first["key"])
    _assert_refused_everywhere_after(changed, url, second["key"])

    fourth = _cli_json(runner, "keys", "rotate", first["id"], "--grace-seconds", "600")
    assert set(_statuses(url, third["key"])) == {200} and set(_statuses(url, fourth["key"])) == {200}
    assert runner.invoke(args=["keys", "revoke", first["id"]]).exit_code == 0
    changed = time.monotonic()
    _assert_refused_everywhere_after(changed, url, third["key"])
    _assert_refused_everywhere_after(changed, url, fourth["key"])
