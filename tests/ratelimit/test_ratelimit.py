"""Rate limits and quotas in one process: headers, quotas, per-IP limits, spoofing, guessing."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
from flask import Flask

from auth import keys
from auth.identity import Identity
from auth.loaders import pepper
from gateway.ratelimit import quota_exhausted

ME = "/_probe/me"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_header_sequence_for_a_5_per_minute_key(make_app: Callable[..., Flask], make_key: Callable) -> None:
    client = make_app().test_client()
    headers = bearer(make_key(rate_limit="5/minute"))
    resets = set()
    for expected_remaining in (4, 3, 2, 1, 0):
        answer = client.get(ME, headers=headers)
        assert answer.status_code == 200
        assert answer.headers["X-RateLimit-Limit"] == "5"
        assert answer.headers["X-RateLimit-Remaining"] == str(expected_remaining)
        assert "Retry-After" not in answer.headers
        resets.add(int(answer.headers["X-RateLimit-Reset"]))
    # One fixed window: the reset instant is the same for all five, about a minute ahead.
    assert len(resets) <= 2  # rounding to whole seconds may move it by one
    assert 0 < min(resets) - time.time() <= 61

    refused = client.get(ME, headers=headers)
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["status_code"] == 429 and body["path"] == ME
    assert 1 <= body["retry_after"] <= 60
    assert refused.headers["Retry-After"] == str(body["retry_after"])
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.headers["X-RateLimit-Limit"] == "5"
    assert refused.headers["RateLimit-Policy"] == '"rate";q=5;w=60'
    assert refused.headers["RateLimit"].startswith('"rate";r=0;t=')


def test_default_limit_applies_to_keys_without_one(
    make_app: Callable[..., Flask], make_key: Callable
) -> None:
    client = make_app(RATELIMIT_DEFAULT="2/minute").test_client()
    headers = bearer(make_key())
    assert [client.get(ME, headers=headers).status_code for _ in range(3)] == [200, 200, 429]


def test_daily_quota_beside_a_per_minute_rate(
    make_app: Callable[..., Flask], make_key: Callable, r: redis.Redis
) -> None:
    client = make_app().test_client()
    headers = bearer(make_key(rate_limit="3/minute", quota="4/day"))
    first = client.get(ME, headers=headers)
    assert first.headers["RateLimit-Policy"] == '"rate";q=3;w=60, "quota";q=4;w=86400'
    assert first.headers["RateLimit"].startswith('"rate";r=2;t=')
    assert '"quota";r=3;t=' in first.headers["RateLimit"]
    assert [client.get(ME, headers=headers).status_code for _ in range(3)] == [200, 200, 429]

    # A new minute: the rate allows again, the quota has one request left, then none.
    for name in r.scan_iter("gw:ratelimit:*:60"):
        r.delete(name)
    assert client.get(ME, headers=headers).status_code == 200
    spent = client.get(ME, headers=headers)
    assert spent.status_code == 429
    assert spent.headers["X-RateLimit-Limit"] == "4"  # the quota is what refused
    assert spent.get_json()["retry_after"] > 60 * 60  # about a day away


def test_quota_exhausted_looks_without_taking(
    make_app: Callable[..., Flask], make_key: Callable, r: redis.Redis
) -> None:
    app = make_app()
    secret = make_key(rate_limit="2/minute")
    record = keys.lookup(r, secret, pepper(app))
    assert record is not None
    identity = Identity("api_key", record["id"], "t", frozenset(), rate_limit="2/minute")
    client = app.test_client()
    with app.test_request_context():
        assert quota_exhausted(identity) is False
        assert quota_exhausted(identity) is False  # looking takes nothing
    assert [client.get(ME, headers=bearer(secret)).status_code for _ in range(2)] == [200, 200]
    with app.test_request_context():
        assert quota_exhausted(identity) is True


def test_changing_a_keys_limit_starts_a_counter_of_its_own(
    make_app: Callable[..., Flask], make_key: Callable, r: redis.Redis
) -> None:
    app = make_app()
    client = app.test_client()
    secret = make_key(rate_limit="5/minute")
    headers = bearer(secret)
    for _ in range(3):
        assert client.get(ME, headers=headers).status_code == 200
    record = keys.lookup(r, secret, pepper(app))
    assert record is not None
    # An edit, as every change of a record is made: the fields and a new version, together.
    pipe = r.pipeline(transaction=True)
    pipe.hset(keys.record_key(record["id"]), "rate_limit", "4/minute")
    pipe.hincrby(keys.record_key(record["id"]), keys.VERSION_FIELD, 1)
    pipe.execute()
    answer = client.get(ME, headers=headers)  # at once: the worker's next call sees the new version
    assert answer.status_code == 200
    assert answer.headers["X-RateLimit-Limit"] == "4"
    # A counter is named by its policy (kind, amount, window): 4/minute is a new policy.
    assert answer.headers["X-RateLimit-Remaining"] == "3"
    assert [client.get(ME, headers=headers).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_anonymous_limit_per_ip(make_app: Callable[..., Flask]) -> None:
    client = make_app(RATELIMIT_ANONYMOUS="3/minute").test_client()
    a = {"REMOTE_ADDR": "198.51.100.1"}
    b = {"REMOTE_ADDR": "198.51.100.2"}
    assert [client.get("/", environ_base=a).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert client.get("/", environ_base=b).status_code == 200  # another client, its own budget
    assert client.get("/healthz", environ_base=a).status_code == 200  # probes are never limited
    refused = client.get("/", environ_base=a)
    assert refused.get_json()["retry_after"] >= 1
    assert refused.headers["RateLimit-Policy"] == '"anonymous";q=3;w=60'


def test_health_routes_carry_no_limit(make_app: Callable[..., Flask]) -> None:
    client = make_app(RATELIMIT_ANONYMOUS="1/minute").test_client()
    for _ in range(5):
        answer = client.get("/healthz")
        assert answer.status_code == 200
        assert "X-RateLimit-Limit" not in answer.headers


@pytest.mark.parametrize("hops", [0, 1])
def test_spoofed_forwarded_for_does_not_reset_the_ip_limit(make_app: Callable[..., Flask], hops: int) -> None:
    client = make_app(RATELIMIT_ANONYMOUS="3/minute", TRUSTED_PROXY_COUNT=str(hops)).test_client()
    statuses = []
    for n in range(5):
        # With one trusted proxy, the proxy appends the real client (the last entry);
        # everything before it is whatever the client chose to send.
        forwarded = f"10.9.{n}.{n}, 203.0.113.7" if hops else f"10.9.{n}.{n}"
        answer = client.get(
            "/", headers={"X-Forwarded-For": forwarded}, environ_base={"REMOTE_ADDR": "192.0.2.1"}
        )
        statuses.append(answer.status_code)
    assert statuses == [200, 200, 200, 429, 429]
    if hops:
        # The real client behind the proxy is what is counted: another one has its own budget.
        other = client.get(
            "/", headers={"X-Forwarded-For": "203.0.113.8"}, environ_base={"REMOTE_ADDR": "192.0.2.1"}
        )
        assert other.status_code == 200


def test_key_guessing_runs_into_the_ip_limit(make_app: Callable[..., Flask], make_key: Callable) -> None:
    client = make_app(RATELIMIT_ANONYMOUS="4/minute").test_client()
    ip = {"REMOTE_ADDR": "198.51.100.9"}
    guesses = [keys.generate_secret() for _ in range(3)] + ["not-even-a-key"]
    statuses = [client.get(ME, headers=bearer(g), environ_base=ip).status_code for g in guesses]
    assert statuses == [401, 401, 401, 401]
    # The budget is spent by guesses: the next guess, and an anonymous call, get 429 not 401.
    assert client.get(ME, headers={"X-API-Key": keys.generate_secret()}, environ_base=ip).status_code == 429
    assert client.get(ME, environ_base=ip).status_code == 429
    # A valid key is counted against itself, not against the spent IP budget.
    assert client.get(ME, headers=bearer(make_key()), environ_base=ip).status_code == 200


def test_successful_logins_take_nothing_from_the_login_limits(make_app: Callable[..., Flask]) -> None:
    # The probe behind login_limit always succeeds: successes are never counted (failures are:
    # tests/auth/test_login_limits.py drives the real /auth/login).
    client = make_app().test_client()
    ip = {"REMOTE_ADDR": "198.51.100.20"}
    statuses = [
        client.post("/_probe/login", json={"email": "u@example.com"}, environ_base=ip).status_code
        for _ in range(12)
    ]
    assert statuses == [200] * 12


@pytest.mark.parametrize("damage", ["no_expiry", "wrong_type"])
def test_a_damaged_counter_is_replaced_not_a_500(
    make_app: Callable[..., Flask], r: redis.Redis, damage: str
) -> None:
    client = make_app(RATELIMIT_ANONYMOUS="3/minute").test_client()
    ip = {"REMOTE_ADDR": "198.51.100.40"}
    assert client.get("/", environ_base=ip).status_code == 200
    (counter,) = r.keys("gw:ratelimit:{ip:198.51.100.40}:fw:ip:198.51.100.40:*")
    r.delete(counter)
    if damage == "no_expiry":
        r.set(counter, 999)  # would block the client forever if trusted
    else:
        r.rpush(counter, "x")
        r.expire(counter, 60)
    answer = client.get("/", environ_base=ip)
    assert answer.status_code == 200
    assert answer.headers["X-RateLimit-Remaining"] == "2"
    assert 0 < r.ttl(counter) <= 60
