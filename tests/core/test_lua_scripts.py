"""Lua scripts run by digest: the body crosses the wire once per server, not per call."""

from __future__ import annotations

from collections.abc import Callable

import redis
from flask.testing import FlaskClient

from core.redis import LuaScript


def _calls(r: redis.Redis, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_script_is_sent_once_then_called_by_digest(r: redis.Redis) -> None:
    script = LuaScript("return redis.call('INCR', KEYS[1])")
    r.script_flush()
    r.config_resetstat()
    assert [script(r, ["lua:count"], []) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert _calls(r, "eval") == 0
    assert _calls(r, "evalsha") == 6  # the first met NOSCRIPT, loaded the body, and ran again
    assert _calls(r, "script|load") == 1


def test_a_server_that_lost_its_scripts_gets_the_body_again(r: redis.Redis) -> None:
    script = LuaScript("return ARGV[1]")
    assert script(r, [], ["one"]) == "one"
    r.script_flush()  # a restart or a failover to a replica that never saw the script
    assert script(r, [], ["two"]) == "two"


def test_event_appends_call_their_script_by_digest(
    client: FlaskClient, r: redis.Redis, auth_headers: Callable[..., dict[str, str]]
) -> None:
    headers = auth_headers("events:write")
    client.post("/events", json={"event_type": "warm.up", "data": {}}, headers=headers)
    r.config_resetstat()
    for n in range(5):
        answer = client.post("/events", json={"event_type": "bench.tick", "data": {"n": n}}, headers=headers)
        assert answer.status_code == 201, answer.get_json()
    assert _calls(r, "eval") == 0
    assert _calls(r, "evalsha") >= 5
