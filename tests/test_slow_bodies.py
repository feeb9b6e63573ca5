"""Slow and oversized request bodies, through real gunicorn with raw sockets (issue 11, item 1)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from devtools.gunicorn import GunicornServer

BODY_READ_TIMEOUT = 2
HEAD = (
    "POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    "Content-Length: 100\r\n\r\n"
)


class Trickler:
    """A client that sends the headers, then one byte of its 100-byte body a second."""

    def __init__(self, port: int, head: str = HEAD) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(head.encode())
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        for _ in range(100):
            if self.stop.wait(1.0):
                return
            try:
                self.sock.sendall(b" ")
            except OSError:
                return

    def read_answer(self, timeout: float) -> bytes:
        """Everything the server sends until it closes the connection (or ``timeout``)."""
        self.sock.settimeout(timeout)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:  # reset: closed too
                return data + b"<closed>"
            if not chunk:
                return data + b"<closed>"
            data += chunk
        return data

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def server(gunicorn: Callable[..., GunicornServer]) -> GunicornServer:
    # One worker of 20 connections: 20 tricklers would fill it, as 50 filled 50 in the issue.
    env = {"BODY_READ_TIMEOUT": str(BODY_READ_TIMEOUT), "WORKER_CONNECTIONS": "20"}
    return gunicorn(workers=1, env={**env, "RATELIMIT_LOGIN": "1000/minute"})


@pytest.fixture
def tricklers() -> Iterator[list[Trickler]]:
    made: list[Trickler] = []
    yield made
    for t in made:
        t.close()


def _status_and_body(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body.replace(b"<closed>", b"") or b"{}")


def test_a_trickled_body_gets_408_json_and_the_connection_closes(
    server: GunicornServer, tricklers: list[Trickler]
) -> None:
    started = time.monotonic()
    t = Trickler(server.port)
    tricklers.append(t)
    raw = t.read_answer(timeout=BODY_READ_TIMEOUT + 6)
    elapsed = time.monotonic() - started
    assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
    status, body = _status_and_body(raw)
    assert status == 408 and body["status_code"] == 408 and body["path"] == "/auth/login"
    assert raw.endswith(b"<closed>"), "the connection stays open"
    assert elapsed < BODY_READ_TIMEOUT + 4


def test_healthz_answers_while_tricklers_fill_the_worker(
    server: GunicornServer, tricklers: list[Trickler]
) -> None:
    tricklers.extend(Trickler(server.port) for _ in range(20))
    time.sleep(0.5)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=BODY_READ_TIMEOUT + 4) as probe:
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = probe.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200")
    assert time.monotonic() - started < BODY_READ_TIMEOUT + 3


def test_a_chunked_body_over_the_limit_is_413(gunicorn: Callable[..., GunicornServer]) -> None:
    server = gunicorn(workers=1, env={"MAX_CONTENT_LENGTH": "1000", "BODY_READ_TIMEOUT": "5"})
    chunk = b'{"email": "' + b"a" * 1990 + b'"}'
    request = (
        b"POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + f"{len(chunk):x}\r\n".encode()
        + chunk
        + b"\r\n0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=8) as sock:
        sock.sendall(request)
        raw = b""
        while chunk_in := sock.recv(65536):
            raw += chunk_in
    status, body = _status_and_body(raw)
    assert status == 413 and body["status_code"] == 413


def test_a_spent_ip_is_refused_before_a_public_body_is_read(
    gunicorn: Callable[..., GunicornServer], tricklers: list[Trickler]
) -> None:
    server = gunicorn(workers=1, env={"RATELIMIT_ANONYMOUS": "1/minute", "BODY_READ_TIMEOUT": "5"})
    head = HEAD.replace("/auth/login", "/admin/login").replace("application/json", "text/plain")
    first = Trickler(server.port, head)
    tricklers.append(first)
    first.read_answer(timeout=8)  # takes the IP's one request (the answer itself does not matter)
    started = time.monotonic()
    second = Trickler(server.port, head)
    tricklers.append(second)
    second.sock.settimeout(4)
    assert second.sock.recv(65536).startswith(b"HTTP/1.1 429")
    assert time.monotonic() - started < 3
