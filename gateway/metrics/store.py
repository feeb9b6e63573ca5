"""How metrics are laid out in Redis: one hash of counters, one hash of live processes.

Counters (``KEYS.metrics_counters()``) are fields named by their labels joined
with a tab (Flask route templates never contain one) and only ever grow with
HINCRBY / HINCRBYFLOAT, so deltas from any number of workers add up exactly.
Gauges live in ``KEYS.metrics_processes()``: one JSON field per process,
rewritten on every flush with a ``seen`` timestamp; a process that stopped
reporting for ``STALE_AFTER`` seconds no longer counts and is pruned later.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.redis import KEYS

# Prometheus' default latency buckets (seconds); the last bucket is +Inf.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SEP = "\t"
TOTAL_REQUESTS = "total_requests"
TOTAL_ERRORS = "total_errors"
STALE_AFTER = 10.0  # seconds without a flush before a process's gauges stop counting
PRUNE_AFTER = 3600.0  # seconds before a silent process's field is deleted


def bucket_index(seconds: float) -> int:
    """Index of the first bucket whose upper bound holds ``seconds`` (len(BUCKETS) = +Inf)."""
    return bisect.bisect_left(BUCKETS, seconds)


def request_field(route: str, method: str, status: int) -> str:
    return SEP.join(("req", route, method, str(status)))


def latency_field(route: str, method: str, bucket: int) -> str:
    return SEP.join(("lat", route, method, str(bucket)))


def latency_sum_field(route: str, method: str) -> str:
    return SEP.join(("latsum", route, method))


def rate_limited_field(kind: str) -> str:
    return SEP.join(("ratelimited", kind))


def upstream_failure_field(backend: str) -> str:
    return SEP.join(("upstream_fail", backend))


def write(
    r: Any,
    counters: Mapping[str, int],
    sums: Mapping[str, float],
    process_id: str | None,
    started_at: float,
    gauges: Mapping[str, Any],
) -> None:
    """One transaction: add the deltas and (with a ``process_id``) refresh this process's gauges."""
    pipe = r.pipeline(transaction=True)
    counters_key = KEYS.metrics_counters()
    for name, delta in counters.items():
        if delta:
            pipe.hincrby(counters_key, name, delta)
    for name, delta in sums.items():
        if delta:
            pipe.hincrbyfloat(counters_key, name, delta)
    if process_id is not None:
        state = {"started_at": started_at, "seen": time.time(), **gauges}
        pipe.hset(KEYS.metrics_processes(), process_id, json.dumps(state))
    if len(pipe):
        pipe.execute()


@dataclass
class Snapshot:
    """Everything the metrics views render, read from Redis in two round trips."""

    counters: dict[tuple[str, ...], float] = field(default_factory=dict)
    processes: list[dict[str, Any]] = field(default_factory=list)

    def value(self, *labels: str) -> float:
        return self.counters.get(labels, 0)

    def family(self, name: str) -> dict[tuple[str, ...], float]:
        """Counters of one family, keyed by their label values."""
        return {k[1:]: v for k, v in self.counters.items() if k[0] == name}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read(r: Any, now: float | None = None) -> Snapshot:
    """Read counters and live processes; prune processes silent for PRUNE_AFTER."""
    now = time.time() if now is None else now
    raw_counters = r.hgetall(KEYS.metrics_counters())
    raw_processes = r.hgetall(KEYS.metrics_processes())
    counters = {tuple(_text(k).split(SEP)): float(_text(v)) for k, v in raw_counters.items()}
    live, dead = [], []
    for pid, raw in raw_processes.items():
        state = json.loads(_text(raw))
        if now - state["seen"] <= STALE_AFTER:
            live.append(state)
        elif now - state["seen"] > PRUNE_AFTER:
            dead.append(pid)
    if dead:
        r.hdel(KEYS.metrics_processes(), *dead)
    return Snapshot(counters, live)
