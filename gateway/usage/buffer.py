"""One process's usage deltas, flushed to Redis about once a second (core.background).

A request adds to a dict under a lock: no Redis command on the hot path. The process's
background loop writes every (identity, day) delta in one pipeline; exit flushes (atexit,
which a graceful gunicorn worker stop runs), and a forked child drops what it inherited.
When Redis is down the deltas stay buffered (bounded by identities x days) and go out on
the next successful flush.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from core.background import BackgroundLoop
from gateway.usage import store

FLUSH_INTERVAL = 1.0
log = logging.getLogger(__name__)


def today_number() -> int:
    """The UTC day, counted from the epoch."""
    return int(time.time() // store.DAY_SECONDS)


class UsageBuffer:
    """Deltas per (owner, day) for one Redis."""

    def __init__(self, redis_client: Any) -> None:
        self.redis = redis_client
        self.lock = threading.Lock()
        self.deltas: dict[tuple[str, int], dict[str, int]] = {}
        self.failing = False

    def add(self, owner: str, field: str, count: int = 1, *more: str) -> None:
        _loop.ensure_started()  # first, so that a forked child forgets its parent's deltas
        slot = (owner, today_number())
        with self.lock:
            fields = self.deltas.get(slot)
            if fields is None:
                fields = self.deltas[slot] = {}
            fields[field] = fields.get(field, 0) + count
            for name in more:
                fields[name] = fields.get(name, 0) + 1

    def forget(self) -> None:
        with self.lock:
            self.deltas = {}

    def flush(self, *, quiet: bool = False) -> bool:
        with self.lock:
            deltas, self.deltas = self.deltas, {}
        if not deltas:
            return True
        try:
            store.write(self.redis, deltas)
        except Exception as exc:  # usage must never break the process, whatever failed
            self._keep(deltas)
            if not quiet and not self.failing:  # once per outage, not once a second
                log.warning("usage flush failed (%s); deltas kept for the next flush", type(exc).__name__)
            self.failing = True
            return False
        if self.failing:
            log.info("usage flush recovered")
            self.failing = False
        return True

    def _keep(self, deltas: dict[tuple[str, int], dict[str, int]]) -> None:
        with self.lock:
            for slot, fields in deltas.items():
                mine = self.deltas.setdefault(slot, {})
                for name, count in fields.items():
                    mine[name] = mine.get(name, 0) + count


_buffers: dict[str, UsageBuffer] = {}
_buffers_lock = threading.Lock()


def flush_all(*, quiet: bool = False) -> None:
    for buffer in list(_buffers.values()):
        buffer.flush(quiet=quiet)


def discard_all() -> None:
    """Drop every buffer and what it holds, for a process that starts over on an empty Redis
    (the test suite, between tests): counts of an earlier app must not land in the next one's
    Redis, nor a Redis that is gone be retried for the rest of the process."""
    with _buffers_lock:
        _buffers.clear()


def _forget_all() -> None:
    for buffer in list(_buffers.values()):
        buffer.forget()


_loop = BackgroundLoop(
    "usage-flusher",
    FLUSH_INTERVAL,
    flush_all,
    final=functools.partial(flush_all, quiet=True),  # graceful exit: nothing counted is lost
    on_fork=_forget_all,
)


def shared(url: str, make_client: Callable[[], Any]) -> UsageBuffer:
    """This process's buffer for the Redis at ``url`` (one per URL: test apps share it)."""
    with _buffers_lock:
        if url not in _buffers:
            _buffers[url] = UsageBuffer(make_client())
        return _buffers[url]
