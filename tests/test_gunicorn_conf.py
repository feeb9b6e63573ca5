"""gunicorn.conf.py in action: probes stay fast beside open streams, and SIGTERM is a
graceful shutdown bounded by GUNICORN_GRACEFUL_TIMEOUT."""

from __future__ import annotations

import http.client
import json
import signal
import time
from collections.abc import Callable

import pytest

from devtools.gunicorn import GunicornServer
from tests.agents.sse_client import Event, SSEParser

pytestmark = pytest.mark.gunicorn
Headers = Callable[..., dict[str, str]]


def open_stream(server: GunicornServer, headers: dict[str, str], words: int) -> http.client.HTTPResponse:
    """A session whose reply is about ``words`` + 35 word deltas, its stream opened."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    json_headers = {**headers, "Content-Type": "application/json"}
    conn.request("POST", "/agents/session", headers=headers)
    session_id = json.loads(conn.getresponse().read())["session_id"]
    message = {"session_id": session_id, "role": "user", "content": " ".join(["word"] * words)}
    conn.request("POST", "/agents/message", body=json.dumps(message), headers=json_headers)
    assert conn.getresponse().read()
    conn.request("GET", f"/agents/stream?session_id={session_id}", headers=headers)
    response = conn.getresponse()
    assert response.status == 200
    return response


def read_events(response: http.client.HTTPResponse, parser: SSEParser, until: int) -> list[Event]:
    """Up to ``until`` events, fewer when the server ends or cuts the stream."""
    events: list[Event] = []
    while len(events) < until:
        try:
            chunk = response.read1(65536)
        except (http.client.IncompleteRead, ConnectionError):
            break  # cut mid-stream: what matters is what arrived before
        if not chunk:
            break
        events += parser.feed(chunk.decode())
    return events


def test_health_stays_fast_and_sigterm_lets_open_streams_finish(
    gunicorn: Callable[..., GunicornServer], auth_headers: Headers
) -> None:
    # One worker, several slow streams on it: gevent keeps serving everything else.
    server = gunicorn(workers=1, env={"AGENT_BUILTIN_DELAY_MS": "60"})
    headers = auth_headers("agents:write")
    streams = [open_stream(server, headers, words=5) for _ in range(3)]
    parsers = [SSEParser() for _ in streams]
    for response, parser in zip(streams, parsers, strict=True):
        assert read_events(response, parser, until=2)
    started = time.monotonic()
    probe = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    probe.request("GET", "/healthz")
    assert probe.getresponse().read() == b"ok"
    assert time.monotonic() - started < 1.0
    probe.close()

    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    for response, parser in zip(streams, parsers, strict=True):
        rest = read_events(response, parser, until=1000)
        assert rest[-1].json["type"] == "done", "a stream was cut by a graceful shutdown"
    assert server.process.wait(20) == 0


def test_graceful_timeout_bounds_the_shutdown(
    gunicorn: Callable[..., GunicornServer], auth_headers: Headers
) -> None:
    server = gunicorn(workers=1, env={"AGENT_BUILTIN_DELAY_MS": "50", "GUNICORN_GRACEFUL_TIMEOUT": "1"})
    stream = open_stream(server, auth_headers("agents:write"), words=400)  # ~20 s of reply
    parser = SSEParser()
    assert read_events(stream, parser, until=2)
    assert server.process is not None
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(15) == 0
    assert time.monotonic() - started < 10
    rest = read_events(stream, parser, until=10_000)
    assert not rest or rest[-1].json["type"] != "done"
