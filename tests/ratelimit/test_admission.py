"""Admission: a secured request costs one Redis round trip, whatever the number of keys.

Round trips are counted by Redis itself (MONITOR lists every command a client sends,
and marks those a script runs as ``lua``), so a test cannot pass by counting its own
calls. Metrics, flushed in the background once a second whatever the traffic, are off in
these apps; flushes of other apps in the same process (earlier tests) are left out by name.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from auth import keys, management
from auth.audit import Actor
from auth.loaders import key_cache, pepper
from gateway.ratelimit import counter_key

ME = "/_probe/me"
ACTOR = Actor(owner="cli", name="test")


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def metrics_flush(command: str) -> bool:
    """A command of a background metrics or usage flush (a MULTI of HINCRBYs on its own connection)."""
    if "gw:metrics:" in command or "gw:usage:" in command:
        return True
    return command in ("MULTI", "EXEC", "CLIENT SETNAME gateway")


@contextmanager
def round_trips(r: redis.Redis, *, flushes: bool = False) -> Iterator[list[str]]:
    """The commands clients sent Redis inside the block (not those scripts ran; metrics
    flushes only when ``flushes``)."""
    seen: list[str] = []
    marker = f"round-trips-end-{uuid.uuid4().hex}"
    monitor = r.monitor()
    monitor.__enter__()

    def read() -> None:
        while True:
            command = monitor.next_command()
            if marker in command["command"]:
                return
            if command.get("client_type") != "lua" and (flushes or not metrics_flush(command["command"])):
                seen.append(command["command"])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield seen
    finally:
        r.echo(marker)
        reader.join(timeout=10)
        monitor.__exit__()
        assert not reader.is_alive(), "MONITOR never showed the end marker"


def trips(r: redis.Redis, client: FlaskClient, secret: str, status: int = 200) -> list[str]:
    with round_trips(r) as seen:
        assert client.get(ME, headers=bearer(secret)).status_code == status
    return list(seen)


@pytest.fixture
def setup(make_app: Callable[..., Flask], make_key: Callable[..., str]) -> tuple[Flask, FlaskClient]:
    app = make_app(ENABLE_METRICS="false")
    client = app.test_client()
    client.get(ME, headers=bearer(make_key()))  # the scripts are loaded before anything is counted
    return app, client


def test_a_known_key_costs_one_round_trip_fresh_or_not(
    setup: tuple[Flask, FlaskClient], make_key: Callable[..., str], r: redis.Redis
) -> None:
    app, client = setup
    secret = make_key()
    # First sight in this worker: the look-up (which would count a wrong key against
    # its IP in the same call), then the admission. Once per key and worker.
    first = trips(r, client, secret)
    assert len(first) == 2 and all(c.startswith("EVALSHA ") for c in first), first
    assert len(trips(r, client, secret)) == 1  # cached and fresh
    time.sleep(key_cache(app).ttl + 0.1)  # no longer fresh: the old design's look-up on every request
    assert len(trips(r, client, secret)) == 1
    assert keys.get_key(r, keys.lookup(r, secret, pepper(app))["id"])["last_used_at"]  # in that call


def test_an_unknown_key_costs_one_round_trip_and_counts_against_its_ip(
    setup: tuple[Flask, FlaskClient], r: redis.Redis
) -> None:
    _, client = setup
    wrong = keys.generate_secret()  # well formed: only Redis can tell it is unknown
    assert len(trips(r, client, wrong, status=401)) == 1
    assert len(trips(r, client, wrong, status=401)) == 1  # unknown keys are never cached
    counters = list(r.scan_iter(counter_key("ip:*", "anonymous", "*", "*")))
    assert len(counters) == 1 and int(r.get(counters[0])) == 2  # each guess, in its one call


def test_the_round_trip_is_the_same_with_a_thousand_keys(
    setup: tuple[Flask, FlaskClient], make_key: Callable[..., str], r: redis.Redis
) -> None:
    """The 0.5 s cache of earlier releases looked nearly every key up again at this scale."""
    _, client = setup
    secrets = [make_key() for _ in range(1000)]
    for secret in secrets:  # every key seen once by this worker
        assert client.get(ME, headers=bearer(secret)).status_code == 200
    with round_trips(r) as seen:
        for secret in secrets[:200]:  # each one more than a fresh entry's age after its first request
            assert client.get(ME, headers=bearer(secret)).status_code == 200
    assert len(seen) == 200


def test_a_revocation_by_another_worker_takes_effect_on_the_next_request(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    # Two workers: their own caches, one Redis.
    serving, other = make_app(ENABLE_METRICS="false"), make_app(ENABLE_METRICS="false")
    client = serving.test_client()
    secret = make_key()
    assert client.get(ME, headers=bearer(secret)).status_code == 200
    key_id = keys.lookup(r, secret, pepper(serving))["id"]
    key_counter = counter_key(f"key:{key_id}", "rate", "*", "*")
    before = {name: r.get(name) for name in r.scan_iter(key_counter)}
    with other.app_context():
        management.revoke_key(r, actor=ACTOR, key_id=key_id, cache=key_cache(other))
    assert key_cache(serving).get(key_cache(serving).digest(secret)) is not None  # still fresh there
    answer = client.get(ME, headers=bearer(secret))
    assert answer.status_code == 401  # the version check refused it: no wait for a cache to expire
    assert {name: r.get(name) for name in r.scan_iter(key_counter)} == before  # nothing counted on it
    assert key_cache(serving).known(key_cache(serving).digest(secret)) is None


def test_a_change_reaches_a_fresh_entry_within_its_freshness(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    """Even the requests that make no round trip (a lease) stop within FRESH_SECONDS."""
    serving = make_app(ENABLE_METRICS="false")
    client = serving.test_client()
    secret = make_key(rate_limit="100000/minute")
    deadline = time.monotonic() + 5
    while len(trips(r, client, secret)) > 0:  # until the key is hot and served from a lease
        assert time.monotonic() < deadline
    key_id = keys.lookup(r, secret, pepper(serving))["id"]
    management.revoke_key(r, actor=ACTOR, key_id=key_id, cache=None)  # another process
    revoked_at = time.monotonic()
    while client.get(ME, headers=bearer(secret)).status_code == 200:
        assert time.monotonic() - revoked_at < 1.0  # CONTRACT section 6: within one second
    assert client.get(ME, headers=bearer(secret)).status_code == 401


def test_a_rotated_keys_old_secret_works_through_its_grace(
    setup: tuple[Flask, FlaskClient], make_key: Callable[..., str], r: redis.Redis
) -> None:
    app, client = setup
    old = make_key()
    assert client.get(ME, headers=bearer(old)).status_code == 200
    key_id = keys.lookup(r, old, pepper(app))["id"]
    rotate = {"pepper": pepper(app), "actor": ACTOR, "key_id": key_id, "cache": None, "grace_seconds": 60}
    _, new = management.rotate_key(r, **rotate)  # by another process: this worker holds the old record
    management.rotate_key(r, **rotate)
    # Two rotations: the first secret ended with the second rotation, the second is in its grace.
    assert client.get(ME, headers=bearer(old)).status_code == 401
    assert client.get(ME, headers=bearer(new)).status_code == 200


def test_metrics_ride_in_batches_not_per_request(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    """With metrics on, a request still makes its one call; counters go out about once a second."""
    client = make_app().test_client()
    secrets = [make_key() for _ in range(100)]
    for secret in secrets:
        assert client.get(ME, headers=bearer(secret)).status_code == 200
    started, served = time.monotonic(), 0
    with round_trips(r, flushes=True) as seen:
        while time.monotonic() - started < 2.5:  # long enough for the background flush to run
            assert client.get(ME, headers=bearer(secrets[served % 100])).status_code == 200
            served += 1
    calls = [c for c in seen if c.startswith("EVALSHA ")]
    others = [c for c in seen if not c.startswith("EVALSHA ")]
    assert len(calls) == served > 100
    # The rest is metrics flushes: a MULTI ... EXEC of a worker's deltas about once a second
    # whatever the traffic (other apps of this process flush too), never one per request.
    assert all(metrics_flush(c) for c in others), others[:5]
    assert 1 <= others.count("EXEC") <= served / 20
