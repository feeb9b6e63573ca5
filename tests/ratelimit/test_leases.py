"""Rate-limit leases: a large limit is taken a few units at a time, never beyond the
limit, and units a worker did not use go back to the window they came from."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient

from auth import keys
from auth.loaders import pepper
from devtools.gunicorn import GunicornServer
from gateway.ratelimit import counter_key, give_back_leases, leases

ME = "/_probe/me"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def rate_counter(r: redis.Redis, app: Flask, secret: str, window: int = 60) -> int:
    """The Redis counter of a key's (one) rate limit (0 when its window has not started)."""
    record = keys.lookup(r, secret, pepper(app))
    assert record is not None
    names = list(r.scan_iter(counter_key(f"key:{record['id']}", "rate", "*", window)))  # type: ignore[arg-type]
    assert len(names) <= 1, names
    return int(r.get(names[0]) or 0) if names else 0


def evalsha_calls(r: redis.Redis) -> int:
    """Redis decisions made so far (Redis's own count of EVALSHA calls)."""
    return int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def load_script(client: FlaskClient) -> None:
    """One anonymous request, so the limiter's script is loaded before anything is counted."""
    client.get(ME)


HOT = leases.HOT_REQUESTS


def heat(client: FlaskClient, secret: str) -> None:
    """HOT - 1 requests, each decided in Redis: the next one finds the key hot and leases."""
    for _ in range(HOT - 1):
        assert client.get(ME, headers=bearer(secret)).status_code == 200


def test_a_cold_key_is_never_leased(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    """A tenant doing a few requests a second: each is counted in Redis, nothing to give back."""
    app = make_app()
    client = app.test_client()
    secret = make_key(rate_limit="100000/minute")
    heat(client, secret)
    assert rate_counter(r, app, secret) == HOT - 1  # no lease: one unit per request
    assert client.get(ME, headers=bearer(secret)).status_code == 200  # now hot
    assert rate_counter(r, app, secret) == HOT - 1 + 32


def test_a_large_limit_is_leased_and_the_unused_units_come_back(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    app = make_app()
    client = app.test_client()
    secret = make_key(rate_limit="100000/minute")
    load_script(client)
    heat(client, secret)
    answers = [client.get(ME, headers=bearer(secret))]  # the key is hot: this one takes the lease
    before = evalsha_calls(r)
    answers += [client.get(ME, headers=bearer(secret)) for _ in range(9)]
    remaining = [int(answer.headers["X-RateLimit-Remaining"]) for answer in answers]
    assert evalsha_calls(r) - before == 0  # one Redis decision for ten requests: the first
    top = 100_000 - HOT  # each answer still counts down by one
    assert remaining == list(range(top, top - 10, -1))
    assert rate_counter(r, app, secret) == HOT - 1 + 32  # RATELIMIT_LEASE_MAX units counted at once
    give_back_leases(app, everything=True)
    assert rate_counter(r, app, secret) == HOT - 1 + 10  # the 22 unused ones are back: nothing lost


def test_small_limits_and_lease_max_1_count_every_request_in_redis(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    app = make_app()
    small = make_key(rate_limit="100/minute")  # fewer than 2 * LEASE_SHARE left: exact counting
    for _ in range(3):
        app.test_client().get(ME, headers=bearer(small))
    assert rate_counter(r, app, small) == 3

    off = make_app(RATELIMIT_LEASE_MAX="1")
    large = make_key(rate_limit="100000/minute")
    for _ in range(3):
        off.test_client().get(ME, headers=bearer(large))
    assert rate_counter(r, off, large) == 3


@pytest.mark.parametrize(("used", "expected_take"), [(0, 32), (9_000, 15), (9_900, 1)])
def test_a_lease_is_a_small_share_of_what_is_left(
    make_app: Callable[..., Flask],
    make_key: Callable[..., str],
    r: redis.Redis,
    used: int,
    expected_take: int,
) -> None:
    app = make_app()
    secret = make_key(rate_limit="10000/minute")
    client = app.test_client()
    if used:
        record = keys.lookup(r, secret, pepper(app))
        assert record is not None
        r.set(counter_key(f"key:{record['id']}", "rate", 10000, 60), used, px=60_000)
    heat(client, secret)
    client.get(ME, headers=bearer(secret))
    # min(LEASE_MAX, left // LEASE_SHARE), at least the request's own unit.
    assert rate_counter(r, app, secret) == used + HOT - 1 + expected_take


def test_a_lease_never_serves_past_its_lifetime(
    make_app: Callable[..., Flask],
    make_key: Callable[..., str],
    r: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(leases, "LEASE_SECONDS", 0.05)
    app = make_app()
    client = app.test_client()
    secret = make_key(rate_limit="100000/minute")
    load_script(client)
    heat(client, secret)
    client.get(ME, headers=bearer(secret))  # takes a lease of 32
    time.sleep(0.1)
    before = evalsha_calls(r)
    client.get(ME, headers=bearer(secret))
    assert evalsha_calls(r) - before == 1  # the old lease had ended: Redis decided again
    give_back_leases(app)
    assert rate_counter(r, app, secret) == HOT + 1  # the ended lease's 31 units came back


def test_units_never_go_back_to_a_later_window(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    app = make_app()
    secret = make_key(rate_limit="100000/minute")
    client = app.test_client()
    heat(client, secret)
    client.get(ME, headers=bearer(secret))  # takes a lease
    record = keys.lookup(r, secret, pepper(app))
    assert record is not None
    counter = counter_key(f"key:{record['id']}", "rate", 100000, 60)
    time.sleep(0.2)  # later than the lease, by more than the return's tolerance ...
    r.set(counter, 5, px=60_000)  # ... the window ended and a new one (5 used) began
    give_back_leases(app, everything=True)
    assert int(r.get(counter)) == 5


@pytest.mark.gunicorn
def test_leases_across_four_workers_never_exceed_the_limit_and_lose_nothing(
    gunicorn: Callable[..., GunicornServer], make_key: Callable[..., str], r: redis.Redis, app: Flask
) -> None:
    limit = 600  # large enough to lease while more than 128 are left
    server = gunicorn(workers=4)
    secret = make_key(rate_limit=f"{limit}/minute")

    def one(_: int) -> int:
        with requests.Session() as session:
            return session.get(server.url + "/auth/me", headers=bearer(secret), timeout=10).status_code

    with ThreadPoolExecutor(16) as pool:
        burst = Counter(pool.map(one, range(900)))
    assert burst[200] <= limit and burst[200] + burst[429] == 900
    # Within LEASE_SECONDS plus a sweep, every unit a worker did not hand out is back.
    deadline = time.monotonic() + leases.LEASE_SECONDS + 3
    while rate_counter(r, app, secret) != burst[200] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rate_counter(r, app, secret) == burst[200]
    # So the rest of the limit is still there, exactly: no more, no less. (A 429 may come
    # while another worker holds unused units; it holds them for LEASE_SECONDS at most.)
    more = 0
    with requests.Session() as session:
        while True:
            if session.get(server.url + "/auth/me", headers=bearer(secret), timeout=10).status_code == 200:
                more += 1
                continue
            time.sleep(leases.LEASE_SECONDS + 1)  # let every worker's sweeper give back
            if session.get(server.url + "/auth/me", headers=bearer(secret), timeout=10).status_code != 200:
                break
            more += 1
    assert burst[200] + more == limit


@pytest.mark.gunicorn
def test_batched_access_lines_and_leases_are_flushed_by_a_graceful_stop(
    gunicorn: Callable[..., GunicornServer], make_key: Callable[..., str], r: redis.Redis, app: Flask
) -> None:
    # Production's batching, with a flush interval longer than the test: only exit flushes.
    server = gunicorn(workers=1, env={"ACCESS_LOG_FLUSH_MS": "600000"})
    secret = make_key(rate_limit="100000/minute")
    with requests.Session() as session:
        for _ in range(HOT + 4):
            assert session.get(server.url + "/auth/me", headers=bearer(secret), timeout=10).status_code == 200
    assert rate_counter(r, app, secret) == HOT - 1 + 32  # one lease, 27 units unused
    assert server.log_path is not None
    log_path = server.log_path
    server.stop()  # SIGTERM: gunicorn's graceful shutdown runs the worker's exit handlers
    lines = [line for line in log_path.read_text().splitlines() if '"gateway.access"' in line]
    assert len([line for line in lines if '"/auth/me"' in line]) == HOT + 4
    assert rate_counter(r, app, secret) == HOT + 4  # the unused units went back at exit


def test_a_forked_child_never_gives_back_its_parents_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    from core import forks

    given: list[list[leases.Lease]] = []
    book = leases.LeaseBook(given.append)
    now = time.monotonic()
    book.add(("policies",), leases.Lease(("k",), 5, (10,), (60_000,), now, now))  # already ended
    monkeypatch.setattr(forks, "_pid", forks.pid() + 1)  # as seen from a forked child
    book.sweep(everything=True)
    assert given == []
    monkeypatch.undo()
    book.sweep(everything=True)  # the parent itself still gives them back
    assert [lease.units for lease in given[0]] == [5]
