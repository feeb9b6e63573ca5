"""The one Redis client factory against real servers: every URL scheme of the contract
connects, and a stalled server fails a command after one short retry, not more."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.redis import create_redis
from devtools.redis_server import RedisServer, find_redis_server


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    """A redis-server listening on a unix socket only."""
    path = tmp_path / "redis.sock"
    command = [find_redis_server(), "--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700"]
    command += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield path
    process.terminate()
    process.wait(10)


def test_unix_socket_urls_connect(unix_socket: Path) -> None:
    client = create_redis(f"unix://{unix_socket}")
    assert client.ping() is True
    client.set("k", "v")
    assert client.get("k") == "v"


def test_a_stalled_server_fails_a_new_connection_after_one_retry(tmp_path: Path) -> None:
    """0.5 s read timeout, one retry: about 1 s. No extra health-check PING round on top."""
    with RedisServer(tmp_path / "stalled") as server:
        admin = redis.Redis.from_url(server.url)
        admin.execute_command("CLIENT", "PAUSE", "4000", "ALL")
        try:
            client = create_redis(server.url)  # no pooled connection yet: a new one is made
            started = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                client.ping()
            elapsed = time.monotonic() - started
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
            admin.close()
    assert elapsed < 1.8, elapsed
