"""The access line is an ordinary ``gateway.access`` log record: formatted by the same
JsonFormatter, written by the same handler, batched on the process's BackgroundLoop."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from core import forks
from gateway import logging as gateway_logging


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def operator_handler() -> Iterator[_Records]:
    """A handler an operator adds to the access logger (with a filter of its own)."""
    handler = _Records()
    handler.addFilter(lambda record: record.fields["path"] != "/ignored")  # type: ignore[attr-defined]
    access = logging.getLogger(gateway_logging.ACCESS_LOGGER)
    access.addHandler(handler)
    yield handler
    access.removeHandler(handler)


def _access_lines(err: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == gateway_logging.ACCESS_LOGGER]


def test_the_access_line_is_a_record_that_every_handler_sees(
    make_app: Callable[..., Flask],
    operator_handler: _Records,
    make_key: Callable[..., str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    client = make_app().test_client()
    capfd.readouterr()
    client.get("/_probe/me", headers={"X-API-Key": make_key(), "X-Request-ID": "rid-1"})
    client.get("/ignored")
    client.get("/healthz")  # probes: no access line
    [record] = operator_handler.records
    assert record.name == "gateway.access" and record.levelno == logging.INFO
    assert record.getMessage() == "request"
    assert record.fields["path"] == "/_probe/me" and record.fields["status"] == 200  # type: ignore[attr-defined]
    assert record.process == forks.pid() and record.created > 0 and record.threadName
    lines = _access_lines(capfd.readouterr().err)  # the JSON handler writes both lines
    assert [line["path"] for line in lines] == ["/_probe/me", "/ignored"]
    assert list(lines[0]) == [
        "ts", "level", "logger", "message", "request_id",
        "method", "path", "status", "duration_ms", "remote_addr", "identity",
    ]  # fmt: skip
    again = json.loads(gateway_logging.JsonFormatter().format(record))  # the one formatter
    assert "request_id" not in again  # formatted outside the request, which gave the id
    assert {k: v for k, v in again.items() if k != "ts"} == {
        k: v for k, v in lines[0].items() if k not in ("ts", "request_id")
    }


def test_a_disabled_access_logger_writes_nothing(
    make_app: Callable[..., Flask], capfd: pytest.CaptureFixture[str]
) -> None:
    client = make_app().test_client()
    access = logging.getLogger(gateway_logging.ACCESS_LOGGER)
    access.setLevel(logging.WARNING)
    try:
        capfd.readouterr()
        assert client.get("/").status_code == 200
        assert _access_lines(capfd.readouterr().err) == []
    finally:
        access.setLevel(logging.NOTSET)


def test_a_forked_child_never_writes_the_lines_its_parent_held(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_app(ACCESS_LOG_FLUSH_MS="60000").test_client()
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    written: list[str] = []
    monkeypatch.setattr(gateway_logging, "_write_stderr", written.append)
    client.get("/")
    batch = gateway_logging._batch
    assert batch.lines and batch.loop.owned()
    monkeypatch.setattr(forks, "_pid", forks.pid() + 1)  # as seen from a forked child
    batch.flush()
    # The parent's to write. (Other lines may pass meanwhile: a background loop of an earlier
    # test's app, whose Redis is gone, logs its failed metrics flush once a second.)
    assert not [w for w in written if '"gateway.access"' in w]
    client.get("/")  # the child's first line starts its own loop and drops the copy
    assert len(batch.lines) == 1 and batch.loop.owned()
    monkeypatch.undo()
    batch.configure(0)  # writes what is held and stops batching for the next tests


def _access_lines(err: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "gateway.access"]


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
