"""The secured hot path's shortcuts keep the same behaviour as the general paths they bypass.

* Flask-Login's key-first loading;
* the access line written without a LogRecord;
* the precomputed security headers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask


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
