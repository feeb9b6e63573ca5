"""GATEWAY_FASTPATH on or off, the rate limiter decides the same: the same answers, the same
headers, the same counters, leases and login give-backs included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask

from gateway.fastpath.redis import FastTransport
from gateway.ratelimit import give_back_leases
from gateway.ratelimit.backend import EXTENSION_KEY
from gateway.ratelimit.decision import ScriptTransport

HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "RateLimit-Policy", "Retry-After")


def run(app: Flask, secret: str) -> list[Any]:
    """A key near its limits, an anonymous caller, a leased large limit and failed/good logins."""
    client, seen = app.test_client(), []
    for path, headers in [("/_probe/me", {"X-API-Key": secret})] * 6 + [("/", {})] * 4:
        answer = client.get(path, headers=headers)
        seen.append((answer.status_code, [answer.headers.get(name) for name in HEADERS]))
    for _ in range(4):
        answer = client.post("/_probe/login", json={"email": "a@example.com"})
        seen.append((answer.status_code, answer.headers.get("X-RateLimit-Remaining")))
    return seen


@pytest.mark.parametrize("fastpath", ["true", "false"])
def test_the_transport_follows_the_switch(make_app: Callable[..., Flask], fastpath: str) -> None:
    decider = make_app(GATEWAY_FASTPATH=fastpath).extensions[EXTENSION_KEY]
    assert isinstance(decider.transport, FastTransport if fastpath == "true" else ScriptTransport)


def test_decisions_are_identical_with_the_shortcut_on_and_off(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    results, counters = [], []
    for fastpath in ("true", "false"):
        r.flushdb()
        app = make_app(GATEWAY_FASTPATH=fastpath, RATELIMIT_ANONYMOUS="3/minute", RATELIMIT_LOGIN="2/minute")
        results.append(run(app, make_key(rate_limit="4/minute", quota="5/hour")))
        give_back_leases(app, everything=True)
        counters.append(sorted(int(r.get(name)) for name in r.scan_iter("gw:ratelimit:*")))
    assert results[0] == results[1]
    assert counters[0] == counters[1]
    assert [status for status, _ in results[0]][:6] == [200] * 4 + [429] * 2
