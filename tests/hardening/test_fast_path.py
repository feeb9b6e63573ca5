"""The secured hot path's shortcuts keep the same behaviour as the general paths they bypass.

* the limiter's coalescing of one gevent worker's concurrent calls into one pipeline;
* Flask-Login's key-first loading;
* the access line written without a LogRecord;
* the precomputed security headers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import gevent
import pytest
import redis
from flask import Flask

from gateway.ratelimit import _Coalescer, _Connections

CALLERS = 20


class _RecordingConnections(_Connections):
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
    calls = _Coalescer(connections, cooperative=True)
    replies = _concurrently(app, lambda n: calls.call("INCR", "gw:test:coalesce"))
    assert sorted(replies) == list(range(1, CALLERS + 1))  # every INCR ran once, each saw its own count
    assert connections.sent == [CALLERS]  # one pipeline for the whole turn
    assert int(r.get("gw:test:coalesce")) == CALLERS


def test_an_error_reply_reaches_only_its_caller(app: Flask, r: redis.Redis) -> None:
    r.set("gw:test:text", "not a number")
    calls = _Coalescer(_Connections(), cooperative=True)
    replies = _concurrently(app, lambda n: calls.call("INCR", "gw:test:text" if n == 3 else "gw:test:num"))
    assert isinstance(replies[3], redis.ResponseError)
    others = [reply for n, reply in enumerate(replies) if n != 3]
    assert sorted(others) == list(range(1, CALLERS))


def test_an_unreachable_redis_fails_every_caller_of_the_batch(test_env: dict[str, str]) -> None:
    from gateway import create_app

    app = create_app({**test_env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    calls = _Coalescer(_Connections(), cooperative=True)
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
    calls = _Coalescer(_Connections(), cooperative=True)
    replies = _concurrently(app, lambda n: calls.call("INCR", "gw:test:leader"))
    assert isinstance(replies[0], gevent.GreenletExit)
    assert sorted(replies[1:]) == list(range(1, CALLERS))  # the others answered; the leader's call dropped
    assert int(r.get("gw:test:leader")) == CALLERS - 1


def test_without_gevent_calls_go_straight_to_redis(app: Flask, r: redis.Redis) -> None:
    connections = _RecordingConnections()
    calls = _Coalescer(connections, cooperative=False)
    with app.app_context():
        assert [calls.call("INCR", "gw:test:direct") for _ in range(3)] == [1, 2, 3]
    assert connections.sent == [1, 1, 1]


def test_a_key_request_is_decided_by_the_key_alone(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    """With a key, the session cookie is not read (no Redis call for it) and a wrong key stays anonymous."""
    app = make_app()
    client = app.test_client()
    secret = make_key()
    client.set_cookie("gw_session", "A" * 43)  # shaped like a session id: would cost a look-up
    before = r.info("commandstats").get("cmdstat_eval", {}).get("calls", 0)
    assert client.get("/_probe/me", headers={"X-API-Key": secret}).get_json()["type"] == "api_key"
    assert client.get("/_probe/me", headers={"X-API-Key": secret}).status_code == 200
    after = r.info("commandstats").get("cmdstat_eval", {}).get("calls", 0)
    assert after - before == 1  # the key's one look-up; no session script
    assert client.get("/_probe/me", headers={"X-API-Key": "rgw_" + "x" * 36}).status_code == 401


def _access_lines(err: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "gateway.access"]


def test_the_direct_access_line_matches_the_logging_one(
    make_app: Callable[..., Flask],
    make_key: Callable[..., str],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_app()
    client = app.test_client()
    headers = {"X-API-Key": make_key(), "X-Request-ID": "same-id"}
    capfd.readouterr()
    client.get("/_probe/me", headers=headers)  # pytest's log capture is on the root logger: general path
    general = _access_lines(capfd.readouterr().err)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # now the JSON handler is the only one
    client.get("/_probe/me", headers=headers)
    direct = _access_lines(capfd.readouterr().err)
    assert len(general) == len(direct) == 1
    for line in (general[0], direct[0]):
        line.pop("ts"), line.pop("duration_ms")
    assert list(direct[0]) == list(general[0]) and direct[0] == general[0]
    assert direct[0]["request_id"] == "same-id" and direct[0]["identity"].startswith("api_key:")


@pytest.mark.parametrize("path", ["/_probe/me", "/", "/nowhere", "/_probe/page", "/_probe/stream"])
def test_each_security_header_is_sent_exactly_once(make_app: Callable[..., Flask], path: str) -> None:
    answer = make_app().test_client().get(path)
    names = [name.lower() for name, _ in answer.headers]
    for name in ("content-security-policy", "strict-transport-security", "x-content-type-options",
                 "referrer-policy", "cache-control", "x-request-id"):  # fmt: skip
        assert names.count(name) == 1, (path, name)


def test_batched_access_lines_arrive_complete_in_order_and_atomic_sized(
    make_app: Callable[..., Flask],
    make_key: Callable[..., str],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway import logging as gateway_logging

    app = make_app(ACCESS_LOG_FLUSH_MS="60000")  # flushed here by size, by other lines and by hand
    client = app.test_client()
    headers = {"X-API-Key": make_key()}
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # the direct (batched) path
    writes: list[str] = []
    real_write = gateway_logging._write_stderr
    record = lambda data: (writes.append(data), real_write(data))  # noqa: E731
    monkeypatch.setattr(gateway_logging, "_write_stderr", record)
    capfd.readouterr()
    client.get("/_probe/me", headers=headers)
    assert _access_lines(capfd.readouterr().err) == []  # held in the batch for now
    logging.getLogger("gateway.test").warning("an event")  # another line: the batch goes first
    err = capfd.readouterr().err.splitlines()
    assert [json.loads(line)["logger"] for line in err] == ["gateway.access", "gateway.test"]
    for _ in range(60):  # ~20 KB of lines: written in several batches, each atomic on a pipe
        client.get("/_probe/me", headers=headers)
    gateway_logging._batch.flush()
    assert len(_access_lines(capfd.readouterr().err)) == 60
    assert len(writes) > 3 and all(len(data.encode()) <= gateway_logging.PIPE_BUF for data in writes)
    assert all(data.endswith("\n") for data in writes)
