"""Idle pooled Redis connections are given back after a burst (issue 11, item 9)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import redis

from core.redis import create_redis
from devtools.gunicorn import GunicornServer

IDLE_SECONDS = 2.0


def connected(r: redis.Redis) -> int:
    return int(r.info("clients")["connected_clients"])


def still_open(r: redis.Redis, ids: set[str]) -> int:
    """How many of these client ids are still connected (other apps of the process share the name)."""
    return sum(1 for c in r.client_list() if c["id"] in ids)


def test_the_pool_closes_idle_connections_above_its_floor(redis_url: str, r: redis.Redis) -> None:
    client = create_redis(redis_url, idle_seconds=IDLE_SECONDS, min_idle=2)
    pool = client.connection_pool
    held = [pool.get_connection() for _ in range(30)]
    ids = set()
    for conn in held:
        conn.send_command("CLIENT", "ID")
        ids.add(str(conn.read_response()))
    for conn in held:
        pool.release(conn)
    assert still_open(r, ids) == 30
    deadline = time.monotonic() + IDLE_SECONDS + 6
    while still_open(r, ids) > 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert still_open(r, ids) == 2
    assert client.ping()  # the pool still serves, reconnecting what it needs
    client.close()


def _burst(port: int, clients: int) -> None:
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(clients)]
    request = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    for sock in socks:
        sock.sendall(request)
    for sock in socks:
        while sock.recv(65536):
            pass
        sock.close()


def test_connections_come_back_after_a_burst_through_gunicorn(
    gunicorn: Callable[..., GunicornServer], r: redis.Redis
) -> None:
    server = gunicorn(workers=1, env={"REDIS_POOL_IDLE_SECONDS": str(IDLE_SECONDS)})
    before = connected(r)
    _burst(server.port, 300)
    peak = connected(r)
    deadline = time.monotonic() + IDLE_SECONDS + 8
    while connected(r) > before + 8 and time.monotonic() < deadline:
        time.sleep(0.25)
    after = connected(r)
    print(f"connected_clients before={before} peak={peak} after={after}")
    assert peak > before + 10, "the burst did not grow the pool: the test proves nothing"
    assert after <= before + 8
