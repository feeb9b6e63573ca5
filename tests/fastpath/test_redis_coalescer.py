"""gateway.fastpath.redis: the rate limiter's calls of one gevent turn share one pipeline,
and each caller still gets its own reply."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import pytest
import redis
from flask import Flask

from gateway.fastpath.redis import Coalescer, Connections

CALLERS = 20


class _RecordingConnections(Connections):
    """The limiter's real connections, noting the size of every pipeline they send."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[int] = []

    def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        self.sent.append(len(commands))
        return super().pipeline(commands)


def _concurrently(app: Flask, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(n)`` in CALLERS greenlets started in one turn of the event loop."""

    def one(n: int) -> Any:
        with app.app_context():
            try:
                return call(n)
            except (Exception, gevent.GreenletExit) as exc:  # the test inspects what each caller got
                return exc

    greenlets = [gevent.spawn(one, n) for n in range(CALLERS)]
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    assert all(g.ready() for g in greenlets)
    return [g.value for g in greenlets]


def test_concurrent_calls_share_one_pipeline_and_each_gets_its_own_reply(app: Flask, r: redis.Redis) -> None:
    connections = _RecordingConnections()
    calls = Coalescer(connections, cooperative=True)
    replies = _concurrently(app, lambda n: calls.call("INCR", "gw:test:coalesce"))
    assert sorted(replies) == list(range(1, CALLERS + 1))  # every INCR ran once, each saw its own count
    assert connections.sent == [CALLERS]  # one pipeline for the whole turn
    assert int(r.get("gw:test:coalesce")) == CALLERS


def test_an_error_reply_reaches_only_its_caller(app: Flask, r: redis.Redis) -> None:
    r.set("gw:test:text", "not a number")
    calls = Coalescer(Connections(), cooperative=True)
    replies = _concurrently(app, lambda n: calls.call("INCR", "gw:test:text" if n == 3 else "gw:test:num"))
    assert isinstance(replies[3], redis.ResponseError)
    others = [reply for n, reply in enumerate(replies) if n != 3]
    assert sorted(others) == list(range(1, CALLERS))


def test_an_unreachable_redis_fails_every_caller_of_the_batch(test_env: dict[str, str]) -> None:
    from gateway import create_app

    app = create_app({**test_env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    calls = Coalescer(Connections(), cooperative=True)
    replies = _concurrently(app, lambda n: calls.call("PING"))
    assert all(isinstance(reply, redis.ConnectionError) for reply in replies)


def test_an_interrupted_leader_still_answers_the_others(
    app: Flask, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sleep = gevent.sleep

    def interrupted_sleep(seconds: float = 0) -> None:
        real_sleep(seconds)  # the others join the batch meanwhile...
        raise gevent.GreenletExit  # ...then the leader is killed at its yield

    monkeypatch.setattr(gevent, "sleep", interrupted_sleep)
    calls = Coalescer(Connections(), cooperative=True)
    replies = _concurrently(app, lambda n: calls.call("INCR", "gw:test:leader"))
    assert isinstance(replies[0], gevent.GreenletExit)
    assert sorted(replies[1:]) == list(range(1, CALLERS))  # the others answered; the leader's call dropped
    assert int(r.get("gw:test:leader")) == CALLERS - 1


def test_without_gevent_calls_go_straight_to_redis(app: Flask, r: redis.Redis) -> None:
    connections = _RecordingConnections()
    calls = Coalescer(connections, cooperative=False)
    with app.app_context():
        assert [calls.call("INCR", "gw:test:direct") for _ in range(3)] == [1, 2, 3]
    assert connections.sent == [1, 1, 1]
