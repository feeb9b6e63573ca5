"""Through real gunicorn (gevent) workers: shared sessions, and a disconnect stopping generation."""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from devtools.gunicorn import GunicornServer
from gateway.redis import KEYS
from tests.agents.sse_client import SSEParser

pytestmark = pytest.mark.gunicorn
Headers = Callable[..., dict[str, str]]


def serving_pid(server: GunicornServer, conn: http.client.HTTPConnection) -> int | None:
    """The worker holding the server side of ``conn`` (read from /proc: no app hook needed)."""
    assert conn.sock is not None
    client_port = conn.sock.getsockname()[1]
    wanted = f"0100007F:{server.port:04X} 0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as table:
        inodes = {line.split()[9] for line in table if " ".join(line.split()[1:3]) == wanted}
    for pid in server.worker_pids():
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return pid
    return None


def call(
    conn: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    payload = json.dumps(body) if body is not None else None
    extra = {"Content-Type": "application/json"} if payload else {}
    conn.request(method, path, body=payload, headers={**headers, **extra})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"null")


def test_a_session_made_on_one_worker_is_served_by_the_other(
    gunicorn: Callable[..., GunicornServer], auth_headers: Headers
) -> None:
    server = gunicorn(workers=2)
    headers = auth_headers("agents:write", "agents:read")
    maker = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    status, body = call(maker, "POST", "/agents/session", headers)
    assert status == 201
    session_id = body["session_id"]
    message = {"session_id": session_id, "role": "user", "content": "shared state"}
    assert call(maker, "POST", "/agents/message", headers, message)[0] == 200
    maker_pid = serving_pid(server, maker)  # the keep-alive connection is still open
    assert maker_pid in server.worker_pids()
    readers: list[http.client.HTTPConnection] = []  # kept open so each holds its worker
    seen = []
    for _ in range(100):
        reader = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        readers.append(reader)
        status, body = call(reader, "GET", f"/agents/session/{session_id}/messages", headers)
        assert status == 200 and body["messages"][0]["content"] == "shared state"
        seen.append(serving_pid(server, reader))
        if seen[-1] not in (None, maker_pid):
            break
        time.sleep(0.01)
    else:
        pytest.fail(f"no connection reached the other worker: maker {maker_pid}, readers {seen}")
    for conn in (maker, *readers):
        conn.close()


def test_client_disconnect_stops_generation(
    gunicorn: Callable[..., GunicornServer], auth_headers: Headers, r: redis.Redis
) -> None:
    server = gunicorn(workers=1, env={"AGENT_BUILTIN_DELAY_MS": "50"})
    headers = auth_headers("agents:write", "agents:read")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    session_id = call(conn, "POST", "/agents/session", headers)[1]["session_id"]
    long_message = " ".join(f"word{n}" for n in range(400))  # ~20 s of reply at 50 ms a word
    body = {"session_id": session_id, "role": "user", "content": long_message}
    assert call(conn, "POST", "/agents/message", headers, body)[0] == 200
    conn.request("GET", f"/agents/stream?session_id={session_id}", headers=headers)
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("X-Accel-Buffering") == "no"
    parser, events = SSEParser(), []
    while len(events) < 5:
        events += parser.feed(response.read1(65536).decode())
    stream_id = events[0].id.split(":")[0]
    response.close()
    conn.close()  # the client goes away mid-reply
    meta = KEYS.agent_stream(stream_id)
    deadline = time.monotonic() + 10
    while r.hget(meta, "state") != "aborted" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r.hget(meta, "state") == "aborted"
    produced = r.llen(KEYS.agent_stream_frames(stream_id))
    time.sleep(1.5)  # generation would have produced ~30 more frames by now
    assert r.llen(KEYS.agent_stream_frames(stream_id)) == produced < 100
    assert r.hget(meta, "state") == "aborted"
    # No assistant reply was kept, and the stream slot is free again.
    check = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    history = call(check, "GET", f"/agents/session/{session_id}/messages", headers)[1]
    assert [m["role"] for m in history["messages"]] == ["user"]
    assert sum(r.zcard(name) for name in r.scan_iter(KEYS.agent_stream_slots("*"))) == 0
    check.close()
