"""Token quotas in Redis: reserve, extend, settle and give back in one script; reservations
of a dead worker lapse; signals after settling; many streams across gunicorn workers never
together pass the limit."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from redis.cluster import key_slot

from core import signals
from devtools.gunicorn import GunicornServer
from gateway.ratelimit import tokens
from gateway.ratelimit.tokens import TokenPolicy, TokenQuotaExhausted
from tests.agents.sse_client import parse

POLICY = TokenPolicy("key_tq", 1000, 3600)
OWNER = "api_key:key_tq"


def reserve(r: redis.Redis, app: Flask, step: int, ttl: int = 30) -> tokens.Reservation:
    return tokens.reserve(r, POLICY, owner=OWNER, app=app, step=step, ttl_seconds=ttl)


def test_reserve_extend_settle_and_give_back(r: redis.Redis, app: Flask) -> None:
    held = reserve(r, app, step=300)
    assert held.reserved == 300
    assert tokens.peek(r, POLICY).remaining == 700
    assert held.cover(250, sent=0)  # inside the reservation: no Redis call
    assert held.cover(400, sent=250)  # past it: extended to cover 400, plus one step ahead
    assert held.reserved == 700
    window = tokens.peek(r, POLICY)
    assert (window.used, window.held, window.remaining) == (0, 700, 300)
    assert held.settle({"total_tokens": 420}) == 420
    window = tokens.peek(r, POLICY)
    assert (window.used, window.held, window.remaining) == (420, 0, 580)
    assert held.settle({"total_tokens": 420}) == 0  # once only


def test_reservations_never_pass_the_limit(r: redis.Redis, app: Flask) -> None:
    first, second = reserve(r, app, step=600), reserve(r, app, step=600)
    assert (first.reserved, second.reserved) == (600, 400)  # min(step, remaining)
    with pytest.raises(TokenQuotaExhausted) as refused:
        reserve(r, app, step=600, ttl=30)
    assert 1 <= refused.value.retry_after <= 30  # held, not settled: free within a lifetime
    assert not first.cover(601, sent=600)  # nothing left to extend with
    # A reply that used more than it could reserve is counted up to the limit, never past it.
    assert first.settle({"total_tokens": 900}) == 600
    assert second.settle({"total_tokens": 300}) == 300
    window = tokens.peek(r, POLICY)
    assert window.used == 900 and window.held == 0
    last = reserve(r, app, step=600)
    assert last.reserved == 100
    assert last.settle({"total_tokens": 5000}) == 100
    assert tokens.peek(r, POLICY).used == 1000
    with pytest.raises(TokenQuotaExhausted) as spent:
        reserve(r, app, step=1)
    assert spent.value.retry_after > 3000  # settled to the limit: wait for the window


def test_a_dead_workers_reservation_lapses_counted_for_what_it_sent(r: redis.Redis, app: Flask) -> None:
    dead = reserve(r, app, step=500, ttl=1)
    dead.renew(sent=120)  # the last report before the worker was killed
    assert tokens.peek(r, POLICY, ttl_seconds=1).held == 500
    time.sleep(2.2)
    window = tokens.peek(r, POLICY, ttl_seconds=1)
    assert (window.used, window.held, window.remaining) == (120, 0, 880)
    assert dead.settle({"total_tokens": 400}) == 0  # swept already: never counted twice
    assert tokens.peek(r, POLICY).used == 120


def test_keys_share_the_keys_slot(r: redis.Redis) -> None:
    names = POLICY.redis_keys()
    assert len({key_slot(n.encode()) for n in names}) == 1
    assert all("{k:key_tq}" in n for n in names)


def test_settling_sends_the_signals(r: redis.Redis, app: Flask) -> None:
    got: list[tuple[str, dict[str, Any]]] = []

    def counted(sender: Flask, **kwargs: Any) -> None:
        got.append(("tokens", kwargs))

    def window(sender: Flask, **kwargs: Any) -> None:
        got.append(("window", kwargs))

    signals.tokens_counted.connect(counted)
    signals.quota_window_used.connect(window)
    try:
        reserve(r, app, step=100).settle({"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40})
        reserve(r, app, step=100).settle(
            {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10, "estimated": True}
        )
    finally:
        signals.tokens_counted.disconnect(counted)
        signals.quota_window_used.disconnect(window)
    assert got[0] == (
        "tokens",
        {
            "key_id": "key_tq",
            "owner": OWNER,
            "usage": {"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40},
            "estimated": False,
        },
    )
    kind, data = got[1]
    assert kind == "window" and data["kind"] == "tokens" and (data["before"], data["after"]) == (0, 40)
    assert data["limit"] == 1000 and data["window_seconds"] == 3600
    assert abs(data["window_start"] - time.time()) < 5
    assert got[2][1]["estimated"] is True and (got[3][1]["before"], got[3][1]["after"]) == (40, 50)


# ---- many streams at once, two workers ---------------------------------------------------


def _open(port: int, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    payload = json.dumps(body) if body is not None else None
    extra = {"Content-Type": "application/json"} if payload else {}
    conn.request("GET" if body is None else "POST", path, body=payload, headers={**headers, **extra})
    response = conn.getresponse()
    raw = response.read().decode()
    conn.close()
    return response.status, raw, response.headers


@pytest.mark.gunicorn
def test_concurrent_streams_across_workers_never_overshoot(
    gunicorn: Callable[..., GunicornServer], make_key: Callable[..., str], r: redis.Redis
) -> None:
    limit = 400
    env = {
        "AGENT_TOKEN_RESERVE": "40",
        "AGENT_BUILTIN_DELAY_MS": "5",
        "STREAM_MAX_CONCURRENT_PER_KEY": "0",
        "RATELIMIT_STREAM_OPENS": "1000/minute",
    }
    server = gunicorn(workers=2, env=env)
    headers = {"Authorization": f"Bearer {make_key(token_quota=f'{limit}/day', rate_limit='1000/minute')}"}
    sessions = []
    for n in range(16):
        status, raw, _ = _open(server.port, "/agents/session", headers, {})
        assert status == 201
        session_id = json.loads(raw)["session_id"]
        message = {"session_id": session_id, "role": "user", "content": f"question number {n}, please?"}
        assert _open(server.port, "/agents/message", headers, message)[0] == 200
        sessions.append(session_id)
    results: list[tuple[int, str]] = []
    start = threading.Barrier(len(sessions))

    def stream(session_id: str) -> None:
        start.wait()
        status, raw, _ = _open(server.port, f"/agents/stream?session_id={session_id}", headers)
        results.append((status, raw))

    threads = [threading.Thread(target=stream, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == len(sessions)
    done = refused = cut = 0
    counted = 0
    for status, raw in results:
        if status == 429:
            refused += 1
            continue
        assert status == 200
        events, _ = parse(raw)
        last = events[-1]
        if last.event == "error":
            assert last.json["reason"] == "token_quota_exhausted"
            cut += 1
        else:
            done += 1
            counted += last.json["usage"]["total_tokens"]
    policy = TokenPolicy(r.hget(r.keys("gw:keys:*:record")[0], "id"), limit, 86400)
    window = tokens.peek(r, policy)
    print(f"\ntoken quota {limit}: {done} done, {cut} cut, {refused} refused; used {window.used}")
    # Each reply is ~75 tokens: 16 of them want ~1200 of the 400.
    assert refused + cut > 0 and refused + cut + done == len(sessions)
    assert 0 < window.used <= limit and window.held == 0  # what cut streams sent is counted too
    assert counted <= window.used
