"""Every limit is counted on its own (issue 10, item 9): a rate and a quota of the same
window, or two limits of one window with different amounts, never share a counter."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from flask import Flask

from gateway.ratelimit import give_back_leases, leases

ME = "/_probe/me"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def admitted(client: object, headers: dict[str, str], attempts: int) -> int:
    """How many of ``attempts`` requests were answered 200 (the rest must be 429)."""
    statuses = [client.get(ME, headers=headers).status_code for _ in range(attempts)]  # type: ignore[attr-defined]
    assert set(statuses) <= {200, 429}
    # Once refused, refused: a fixed window never admits again within the test.
    assert statuses == sorted(statuses), statuses
    return statuses.count(200)


def counters(r: redis.Redis) -> dict[str, int]:
    """Every rate-limit counter in Redis and its count."""
    return {name: int(r.get(name) or 0) for name in r.scan_iter("gw:ratelimit:*")}


@pytest.mark.parametrize(
    ("rate_limit", "quota", "expected"),
    [
        ("10/hour", "100/hour", 10),  # the reported case: refused at the 6th before
        ("100/hour", "10/hour", 10),
        ("10/minute", "10/minute", 10),  # equal limits of two kinds: still two counters
    ],
)
def test_a_rate_and_a_quota_of_one_window_are_counted_apart(
    make_app: Callable[..., Flask],
    make_key: Callable[..., str],
    r: redis.Redis,
    rate_limit: str,
    quota: str,
    expected: int,
) -> None:
    client = make_app().test_client()
    headers = bearer(make_key(rate_limit=rate_limit, quota=quota))
    assert admitted(client, headers, expected + 3) == expected
    counted = counters(r)
    assert len(counted) == 2  # one counter per policy, each holding the admitted requests
    assert set(counted.values()) == {expected}


def test_two_amounts_of_one_window_are_counted_apart(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    client = make_app().test_client()
    headers = bearer(make_key(rate_limit="4/minute;6/minute"))
    first = client.get(ME, headers=headers)
    assert first.status_code == 200
    # Two policies, two names: a header reader can tell them apart.
    names = [item.split(";")[0] for item in first.headers["RateLimit-Policy"].split(", ")]
    assert len(names) == 2 and len(set(names)) == 2
    assert admitted(client, headers, 6) == 3  # the 4/minute one decides
    assert sorted(counters(r).values()) == [4, 4]


def test_a_refused_request_takes_nothing_from_any_counter(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    client = make_app().test_client()
    headers = bearer(make_key(rate_limit="3/hour", quota="50/hour"))
    assert admitted(client, headers, 3) == 3
    before = counters(r)
    for _ in range(5):
        assert client.get(ME, headers=headers).status_code == 429
    assert counters(r) == before
    assert set(before.values()) == {3}


def test_leases_of_large_limits_of_one_window_stay_exact(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    app = make_app()
    client = app.test_client()
    headers = bearer(make_key(rate_limit="100000/hour", quota="200000/hour"))
    answers = [client.get(ME, headers=headers) for _ in range(40)]
    assert {answer.status_code for answer in answers} == {200}
    # Leased units are counted once per policy, not once per policy sharing a window.
    # HOT_REQUESTS - 1 counted singly until the key is hot, then two leases of RATELIMIT_LEASE_MAX (32).
    singly = leases.HOT_REQUESTS - 1
    assert sorted(counters(r).values()) == [singly + 64, singly + 64]
    remaining = [int(answer.headers["X-RateLimit-Remaining"]) for answer in answers]
    assert remaining == list(range(99_999, 99_959, -1))
    give_back_leases(app, everything=True)
    assert sorted(counters(r).values()) == [40, 40]  # unused units back to each counter
