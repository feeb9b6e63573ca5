"""Fixtures for the rate-limit tests: apps with a few probe routes of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.redis_server import RedisServer


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server these tests may stop (the suite's shared one must stay up)."""
    server = RedisServer(tmp_path / "own-redis")
    server.start()
    yield server
    server.stop()
