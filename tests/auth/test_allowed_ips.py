"""Per-key IP allow-lists (issue 16): a key used from outside its ``allowed_ips`` gets 403 in
the contract's error shape, before any limit or quota counter moves, on every path a
request takes (first sight, a cached record, a lease, a public page, streams, jobs)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from redis.cluster import RedisCluster

from auth import keys
from auth.cache import FRESH_SECONDS
from auth.identity import OUTSIDE_ALLOWED_IPS
from auth.loaders import pepper
from gateway import create_app
from tests.cluster.conftest import cluster_app, rc, redis_cluster  # noqa: F401 (fixtures)

OFFICE_V4 = "203.0.113.0/24"
OFFICE_V6 = "2001:db8:1::/48"
LIMITS = {"rate_limit": "10000/minute", "quota": "100000/day"}


def _key(app: Flask, r: redis.Redis, *cidrs: str) -> tuple[dict, str]:
    return keys.create_key(
        r, pepper=pepper(app), name="office", scopes=["agents:read", "agents:write", "jobs:read"],
        allowed_ips=list(cidrs), **LIMITS,
    )  # fmt: skip


def counters(r: redis.Redis | RedisCluster) -> dict[str, bytes | None]:
    """Every rate-limit and quota counter (the key's, and any IP's), as raw values."""
    return {name: r.dump(name) for name in r.scan_iter("gw:ratelimit:*")}  # type: ignore[misc]


def _get(client: FlaskClient, path: str, secret: str, ip: str, **headers: str):  # type: ignore[no-untyped-def]
    return client.get(path, headers={"X-API-Key": secret, **headers}, environ_base={"REMOTE_ADDR": ip})


def assert_refused(answer, path: str = "/auth/me") -> None:  # type: ignore[no-untyped-def]
    body = answer.get_json()
    assert answer.status_code == 403, body
    assert body == {"error": "Forbidden", "status_code": 403, "message": OUTSIDE_ALLOWED_IPS, "path": path}


@pytest.mark.parametrize(
    ("inside", "outside"),
    [("203.0.113.9", "198.51.100.1"), ("2001:db8:1:ffff::5", "2001:db8:2::5"), ("::ffff:203.0.113.9", "::1")],
)
def test_outside_the_list_is_403_and_counts_nothing(
    app: Flask, r: redis.Redis, inside: str, outside: str
) -> None:
    _, secret = _key(app, r, OFFICE_V4, OFFICE_V6)
    client = app.test_client()
    assert_refused(_get(client, "/auth/me", secret, outside))  # first sight: no counter yet
    assert counters(r) == {}
    assert _get(client, "/auth/me", secret, inside).status_code == 200
    before = counters(r)
    assert before  # the allowed request was counted
    assert_refused(_get(client, "/auth/me", secret, outside))  # cached record, fresh
    time.sleep(FRESH_SECONDS)
    assert_refused(_get(client, "/auth/me", secret, outside))  # cached record, re-read first
    assert counters(r) == before


def test_an_empty_list_allows_any_ip(app: Flask, r: redis.Redis) -> None:
    _, secret = _key(app, r)
    for ip in ("198.51.100.1", "2001:db8::1"):
        assert _get(app.test_client(), "/auth/me", secret, ip).status_code == 200


def test_a_hot_key_with_a_lease_is_refused_too(app: Flask, r: redis.Redis) -> None:
    _, secret = _key(app, r, OFFICE_V4)
    client = app.test_client()
    for _ in range(40):  # hot: the worker takes a lease of the key's limits
        assert _get(client, "/auth/me", secret, "203.0.113.9").status_code == 200
    before = counters(r)
    for _ in range(5):
        assert_refused(_get(client, "/auth/me", secret, "198.51.100.1"))
    assert counters(r) == before


def test_stream_and_jobs_routes_and_a_public_page(app: Flask, r: redis.Redis) -> None:
    _, secret = _key(app, r, OFFICE_V4)
    client = app.test_client()
    for path in ("/agents/stream?session_id=abc", "/jobs", "/agents/sessions"):
        assert_refused(_get(client, path, secret, "198.51.100.1"), path.split("?")[0])
    # A public page read with a key is counted as that key (the hook's general path).
    assert_refused(_get(client, "/docs", secret, "198.51.100.1"), "/docs")
    posted = client.post(
        "/jobs", json={"name": "agent.run", "args": {"prompt": "hi"}},
        headers={"X-API-Key": secret}, environ_base={"REMOTE_ADDR": "198.51.100.1"},
    )  # fmt: skip
    assert_refused(posted, "/jobs")
    assert counters(r) == {}
    assert _get(client, "/jobs", secret, "203.0.113.9").status_code == 200


@pytest.fixture
def proxied_app(test_env: dict[str, str], r: redis.Redis) -> Flask:
    return create_app({**test_env, "TRUSTED_PROXY_COUNT": "1"})


def test_behind_a_trusted_proxy_the_forwarded_client_ip_decides(proxied_app: Flask, r: redis.Redis) -> None:
    _, secret = _key(proxied_app, r, OFFICE_V4)
    client = proxied_app.test_client()
    proxy = "10.0.0.2"  # the proxy itself is not in the list; the client behind it is
    inside = _get(client, "/auth/me", secret, proxy, **{"X-Forwarded-For": "203.0.113.9"})
    assert inside.status_code == 200
    before = counters(r)
    # A client's own X-Forwarded-For entries before the trusted hop are not believed.
    spoofed = _get(client, "/auth/me", secret, proxy, **{"X-Forwarded-For": "203.0.113.9, 198.51.100.1"})
    assert_refused(spoofed)
    assert counters(r) == before


def test_without_a_trusted_proxy_x_forwarded_for_is_ignored(app: Flask, r: redis.Redis) -> None:
    _, secret = _key(app, r, OFFICE_V4)
    forged = _get(app.test_client(), "/auth/me", secret, "198.51.100.1", **{"X-Forwarded-For": "203.0.113.9"})
    assert_refused(forged)
    assert counters(r) == {}


def test_an_edit_narrowing_or_widening_the_list_applies_before_counting(
    app: Flask, r: redis.Redis, auth_headers: Callable[..., dict[str, str]]
) -> None:
    record, secret = _key(app, r)
    client = app.test_client()
    assert _get(client, "/auth/me", secret, "198.51.100.1").status_code == 200
    # Another worker's edit: this worker's cache is not told, only the version moves.
    keys.update_key(r, record["id"], {"allowed_ips": [OFFICE_V4]})
    before = counters(r)
    time.sleep(FRESH_SECONDS)
    assert_refused(_get(client, "/auth/me", secret, "198.51.100.1"))
    assert counters(r) == before
    keys.update_key(r, record["id"], {"allowed_ips": []})
    time.sleep(FRESH_SECONDS)
    assert _get(client, "/auth/me", secret, "198.51.100.1").status_code == 200


@pytest.mark.topology
def test_allow_list_and_edit_on_a_redis_cluster(cluster_app: Flask, rc: RedisCluster) -> None:  # noqa: F811
    """The edit's MULTI stays on the record's slot; the refusal counts nothing on any shard."""
    admin = keys.create_key(rc, pepper=pepper(cluster_app), name="admin", scopes=["admin"])[1]
    client = cluster_app.test_client()
    headers = {"X-API-Key": admin}
    made = client.post("/admin/keys", json={"name": "c", "allowed_ips": [OFFICE_V4]}, headers=headers)
    assert made.status_code == 201, made.get_json()
    key_id, secret = made.get_json()["id"], made.get_json()["key"]
    before = counters(rc)
    assert_refused(_get(client, "/auth/me", secret, "198.51.100.1"))
    assert counters(rc) == before
    widened = client.patch(f"/admin/keys/{key_id}", json={"allowed_ips": []}, headers=headers)
    assert widened.status_code == 200 and widened.get_json()["allowed_ips"] == []
    assert _get(client, "/auth/me", secret, "198.51.100.1").status_code == 200
