"""Guard for gateway.fastpath.redis: the redis-py and gevent internals it drives by hand
still exist with the signatures it calls, and a round trip through them returns what the
public client returns. A failure here means: re-measure the shortcut, then adapt it to the
new internals or delete it (GATEWAY_FASTPATH=false runs on the public API alone)."""

from __future__ import annotations

import inspect

import redis
from flask import Flask
from gevent.hub import Waiter
from redis.connection import AbstractConnection, ConnectionPool

from core.extensions import get_redis
from gateway.fastpath.redis import Connections, FastTransport
from gateway.ratelimit.decision import DECIDE_LUA
from gateway.ratelimit.leases import RETURN_LUA


def params(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_connection_internals_keep_their_shape() -> None:
    assert params(ConnectionPool.get_connection)[:2] == ["self", "command_name"]
    assert params(ConnectionPool.release) == ["self", "connection"]
    assert params(AbstractConnection.pack_commands) == ["self", "commands"]
    assert params(AbstractConnection.send_packed_command)[:2] == ["self", "command"]
    assert params(AbstractConnection.read_response)[:2] == ["self", "disable_decoding"]
    assert callable(AbstractConnection.disconnect)
    assert params(Waiter.get) == ["self"] and params(Waiter.switch) == ["self", "value"]


def test_a_round_trip_by_hand_returns_what_the_client_returns(app: Flask) -> None:
    commands = [("SET", "gw:test:guard", "7"), ("GET", "gw:test:guard"), ("INCR", "gw:test:guard")]
    with app.app_context():
        client = get_redis()
        by_hand = Connections().pipeline([*commands, ("HGET", "gw:test:guard", "x")])
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        public = pipe.execute()
    # Raw replies: the same values, without redis-py's response callbacks (SET's "OK" -> True).
    assert by_hand[:3] == ["OK", "7", 8] and public == [True, "7", 8]
    assert isinstance(by_hand[3], redis.ResponseError)  # an error reply is returned, not raised


def test_the_decision_by_hand_equals_the_public_script(app: Flask, r: redis.Redis) -> None:
    keys, args = ["gw:test:guard:a", "gw:test:guard:b"], [1, 1, 1, 64, 5, 60_000, 9, 60_000]
    with app.app_context():
        fast = FastTransport(RETURN_LUA).run(DECIDE_LUA, keys, args)
        public = r.register_script(DECIDE_LUA)(keys=keys, args=args)
    assert fast[:4] == [0, 1, 1, 60_000] and public[:3] == [0, 1, 2]
    assert [fast[4], public[4]] == [1, 2]  # the second counter, once by each path
