"""Through real gunicorn (gevent) workers: shared sessions, and a disconnect stopping generation."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from core.redis import KEYS
from devtools.gunicorn import GunicornServer
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


# ---- crash and deploy (issue 11, item 2) ---------------------------------------------------


def open_reply(
    server: GunicornServer, headers: dict[str, str], words: int
) -> tuple[str, http.client.HTTPConnection, http.client.HTTPResponse]:
    """A session with one user message of ``words`` words, its stream opened: (id, conn, response)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    session_id = call(conn, "POST", "/agents/session", headers)[1]["session_id"]
    body = {"session_id": session_id, "role": "user", "content": " ".join(f"w{n}" for n in range(words))}
    assert call(conn, "POST", "/agents/message", headers, body)[0] == 200
    conn.request("GET", f"/agents/stream?session_id={session_id}", headers=headers)
    response = conn.getresponse()
    assert response.status == 200
    return session_id, conn, response


def read_until(response: http.client.HTTPResponse, parser: SSEParser, count: int) -> tuple[list[Any], str]:
    """(events, raw text) until ``count`` events, the body's end or a cut connection."""
    events: list[Any] = []
    raw = ""
    while len(events) < count:
        try:
            chunk = response.read1(65536).decode()
        except (http.client.IncompleteRead, ConnectionError):
            break
        if not chunk:
            break
        raw += chunk
        events += parser.feed(chunk)
    return events, raw


def roles(server: GunicornServer, headers: dict[str, str], session_id: str) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    body = call(conn, "GET", f"/agents/session/{session_id}/messages", headers)[1]
    conn.close()
    return [m["role"] for m in body["messages"]]


def test_sigkill_frees_slots_within_seconds_and_a_resume_gets_the_missed_frames(
    gunicorn: Callable[..., GunicornServer], auth_headers: Headers, r: redis.Redis
) -> None:
    env = {"AGENT_BUILTIN_DELAY_MS": "30", "STREAM_MAX_CONCURRENT_PER_KEY": "1"}
    server = gunicorn(workers=2, env=env)
    headers = auth_headers("agents:write", "agents:read")
    session_id, conn, response = open_reply(server, headers, words=80)
    parser = SSEParser()
    events, _ = read_until(response, parser, 12)
    pid = serving_pid(server, conn)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    events += read_until(response, parser, 10_000)[0]  # whatever was in flight
    conn.close()
    frames_key = KEYS.agent_stream_frames(events[0].id.split(":")[0])
    stored = r.llen(frames_key)
    lost = len(events) - stored
    print(f"\n{lost} of {len(events)} frames the client got were not in Redis at the kill")
    assert lost <= 10, f"{lost} frames the client got never reached Redis"
    # The dead worker's slot comes back by itself; until then the key's one slot is taken.
    resume_from = events[4]
    while True:
        resumer = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        resumer.request(
            "GET",
            f"/agents/stream?session_id={session_id}",
            headers={**headers, "Last-Event-ID": resume_from.id},
        )
        answer = resumer.getresponse()
        if answer.status != 429 or time.monotonic() - killed_at > 30:
            break
        answer.read()
        resumer.close()
        time.sleep(0.25)
    recovered = time.monotonic() - killed_at
    print(f"\nslots back {recovered:.1f} s after a worker's SIGKILL")
    assert answer.status == 200 and recovered < 20
    resumed, _ = read_until(answer, SSEParser(), 10_000)
    resumer.close()
    kept = [e for e in events[5:] if int(e.id.split(":")[1]) <= stored]
    assert [(e.id, e.data) for e in resumed[: len(kept)]] == [(e.id, e.data) for e in kept]
    assert resumed[-1].event == "error" and resumed[-1].json["reason"] == "stream_interrupted"
    # The interrupted reply was never stored: a new open answers it, once.
    fresh_conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    fresh_conn.request("GET", f"/agents/stream?session_id={session_id}", headers=headers)
    fresh, _ = read_until(fresh_conn.getresponse(), SSEParser(), 10_000)
    fresh_conn.close()
    assert fresh[-1].json["type"] == "done"
    assert roles(server, headers, session_id) == ["user", "assistant"]


def test_sigterm_ends_open_streams_resumably_and_frees_their_slots(
    gunicorn: Callable[..., GunicornServer], auth_headers: Headers, r: redis.Redis
) -> None:
    # graceful_timeout 4: streams get 1 s to finish, then server_restarting.
    env = {"AGENT_BUILTIN_DELAY_MS": "40", "GUNICORN_GRACEFUL_TIMEOUT": "4"}
    server = gunicorn(workers=2, env=env)
    headers = auth_headers("agents:write", "agents:read")
    session_id, conn, response = open_reply(server, headers, words=60)
    parser = SSEParser()
    assert read_until(response, parser, 5)[0]
    pid = serving_pid(server, conn)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # what a deploy does to every worker
    stopped_at = time.monotonic()
    rest, tail = read_until(response, parser, 10_000)
    ended = time.monotonic() - stopped_at
    conn.close()
    last = rest[-1]
    assert last.event == "error" and last.json["reason"] == "server_restarting", last
    assert "\nretry: " in tail.rsplit("id: ", 1)[-1]
    assert ended < 4, f"the stream ended {ended:.1f} s after SIGTERM: not inside the graceful timeout"
    deadline = time.monotonic() + 5
    while sum(r.zcard(k) for k in r.scan_iter(KEYS.agent_stream_slots("*"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(r.zcard(k) for k in r.scan_iter(KEYS.agent_stream_slots("*"))) == 0
    assert roles(server, headers, session_id) == ["user"]
    # EventSource reconnects with the last id; a live worker makes a new attempt, stored once.
    again = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    again.request(
        "GET", f"/agents/stream?session_id={session_id}", headers={**headers, "Last-Event-ID": last.id}
    )
    answer = again.getresponse()
    assert answer.status == 200
    retried, _ = read_until(answer, SSEParser(), 10_000)
    again.close()
    assert retried[-1].json["type"] == "done"
    assert roles(server, headers, session_id) == ["user", "assistant"]
