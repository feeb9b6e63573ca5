"""Hot-path metrics: buffered in-process, flushed to Redis in the background.

Every gunicorn worker (and every instance) adds its own deltas to the same Redis
hash, so /metrics and /metrics/prometheus show the whole deployment. A request
only touches a dict under a lock; the process's ``core.background.BackgroundLoop``
(a greenlet under gevent workers, a daemon thread otherwise) writes the deltas at
least every ``FLUSH_INTERVAL`` seconds, and readers flush their own worker first.
The loop also owns fork and exit: a forked child (a preloaded worker, an RQ work
horse) drops the deltas it inherited before it counts its own, and exit flushes. When Redis
is down the deltas stay buffered (their size is bounded by the label sets, not
by traffic) and are written on the next successful flush; a metrics write never
makes a request wait or fail.

Gauges (open streams, breaker states, process start) are not deltas: each
process writes its current values under its own field with a timestamp, and
readers ignore processes that stopped reporting (see ``gateway.metrics.store``).

The public functions are no-ops outside an app context and when ENABLE_METRICS
is false.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from flask import current_app, has_app_context

from core import forks
from core.background import BackgroundLoop
from gateway.metrics import store

FLUSH_INTERVAL = 1.0
EXTENSION_KEY = "gateway.metrics"
log = logging.getLogger(__name__)

# Label values outside these sets are folded into "other" so cardinality stays bounded.
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
RATE_LIMIT_KINDS = frozenset({"rate", "quota", "anonymous", "login"})
BREAKER_STATES = frozenset({"closed", "open", "half_open"})
BACKENDS = frozenset({"builtin", "openai"})  # the AGENT_BACKEND choices
# What a reporting process is: a gunicorn worker, an RQ worker, or a work horse it forked.
PROCESS_KINDS = ("web", "job_worker", "work_horse")
_kind: tuple[str, int | None] = ("web", None)  # the declared kind, and the pid that declared it


def set_process_kind(kind: str) -> None:
    """Declare this process's kind (``jobs worker`` says job_worker); processes say web unless told."""
    global _kind
    if kind not in PROCESS_KINDS:
        raise ValueError(f"unknown process kind {kind!r}")
    _kind = (kind, forks.pid())
    _loop.ensure_started()  # a job worker reports itself even before it records anything


def process_kind() -> str:
    """This process's kind. RQ forks a work horse per job from the job worker: a child of a
    declared job worker is a horse, so it never passes for another worker."""
    kind, declared_by = _kind
    if kind == "job_worker" and declared_by != forks.pid():
        return "work_horse"
    return kind


def _bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else "other"


class Recorder:
    """One process's buffer for one Redis: counter deltas plus current gauge values."""

    def __init__(self, redis_client: Any) -> None:
        self.redis = redis_client
        self.lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.sums: Counter[str] = Counter()
        self.open_streams = 0
        self.breakers: dict[str, str] = {}
        self.started_at = time.time()
        self.failing = False

    def forget(self) -> None:
        """Drop the deltas and stream count (a forked child's copy of its parent's)."""
        with self.lock:
            self.counters.clear()
            self.sums.clear()
            self.open_streams = 0

    def add(self, counters: dict[str, int], sums: dict[str, float] | None = None) -> None:
        _loop.ensure_started()  # first, so that a forked child forgets its parent's deltas
        with self.lock:
            # Plain loops: Counter.update first asks isinstance(.., Mapping), an ABC check.
            totals = self.counters
            for name, count in counters.items():
                totals[name] = totals.get(name, 0) + count
            if sums:
                seconds = self.sums
                for name, value in sums.items():
                    seconds[name] = seconds.get(name, 0.0) + value

    def streams(self, delta: int) -> None:
        _loop.ensure_started()
        with self.lock:
            self.open_streams = max(0, self.open_streams + delta)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request by route template, method and status, with its latency."""
        counters, sum_field = _request_fields(route, method, status, store.bucket_index(seconds))
        self.add(counters, {sum_field: max(0.0, seconds)})

    def breaker(self, backend: str, state: str) -> None:
        _loop.ensure_started()
        with self.lock:
            self.breakers[backend] = state

    def process_id(self) -> str:
        return f"{socket.gethostname()}:{forks.pid()}"

    def flush(self, *, quiet: bool = False, heartbeat: bool = True) -> bool:
        """Write buffered deltas and this process's gauges; on failure keep them for next time."""
        _loop.ensure_started()
        with self.lock:
            counters, sums = self.counters, self.sums
            self.counters, self.sums = Counter(), Counter()
            gauges = {
                "open_streams": self.open_streams,
                "breakers": dict(self.breakers),
                "kind": process_kind(),
            }
        try:
            process = self.process_id() if heartbeat else None
            store.write(self.redis, counters, sums, process, self.started_at, gauges)
        except Exception as exc:  # metrics must never break the process, whatever failed
            with self.lock:
                self.counters.update(counters)
                self.sums.update(sums)
            if not quiet and not self.failing:  # once per outage, not once a second
                log.warning("metrics flush failed (%s); deltas kept for the next flush", type(exc).__name__)
            self.failing = True
            return False
        if self.failing:
            log.info("metrics flush recovered")
            self.failing = False
        return True


# ---- the background flusher: one per process, serving every recorder of the process ----

# One recorder per Redis URL and process: every app of a process that talks to
# the same Redis (tests build many) shares one buffer and one heartbeat.
_recorders: dict[str, Recorder] = {}
_recorders_lock = threading.Lock()


def flush_all(*, quiet: bool = False) -> None:
    """Flush every recorder of this process now."""
    for recorder in list(_recorders.values()):
        recorder.flush(quiet=quiet)


def _forget_all() -> None:
    for recorder in list(_recorders.values()):
        recorder.forget()


_loop = BackgroundLoop(
    "metrics-flusher",
    FLUSH_INTERVAL,
    flush_all,
    # Best effort at interpreter exit: Redis may already be gone, so no warning then.
    final=functools.partial(flush_all, quiet=True),
    on_fork=_forget_all,
)


def shared(url: str, make_client: Callable[[], Any]) -> Recorder:
    """This process's recorder for the Redis at ``url`` (created on first use)."""
    with _recorders_lock:
        if url not in _recorders:
            _recorders[url] = Recorder(make_client())
        return _recorders[url]


def current() -> Recorder | None:
    """The current app's recorder when metrics are on, else None (every call becomes a no-op)."""
    if not has_app_context():
        return None
    return current_app.extensions.get(EXTENSION_KEY)  # None when ENABLE_METRICS is false


# ---- the interface other areas call (CONTRACT of the helpers) ----


@functools.lru_cache(maxsize=4096)
def _request_fields(route: str, method: str, status: int, bucket: int) -> tuple[dict[str, int], str]:
    """The counter deltas and the latency-sum field of one answer (cached: the same few recur;
    the labels are bounded, so the cache is too). Callers must not change the returned dict."""
    method = _bounded(method.upper(), METHODS)
    status = status if 100 <= status <= 599 else 0
    counters = {
        store.request_field(route, method, status): 1,
        store.latency_field(route, method, bucket): 1,
        store.TOTAL_REQUESTS: 1,
    }
    if status >= 500:
        counters[store.TOTAL_ERRORS] = 1
    return counters, store.latency_sum_field(route, method)


def record_rate_limited(kind: str) -> None:
    """Count one 429 by kind: rate, quota, anonymous or login."""
    recorder = current()
    if recorder is not None:
        recorder.add({store.rate_limited_field(_bounded(kind, RATE_LIMIT_KINDS)): 1})


def stream_opened() -> None:
    """An SSE stream started in this process."""
    recorder = current()
    if recorder is not None:
        recorder.streams(+1)


def stream_closed() -> None:
    """An SSE stream ended in this process (call exactly once per stream_opened)."""
    recorder = current()
    if recorder is not None:
        recorder.streams(-1)


def record_upstream_failure(backend: str) -> None:
    """Count one failed call to an agent backend."""
    recorder = current()
    if recorder is not None:
        recorder.add({store.upstream_failure_field(_bounded(backend, BACKENDS)): 1})


def set_breaker_state(backend: str, state: str) -> None:
    """This process's circuit breaker for ``backend`` is now closed, open or half_open."""
    recorder = current()
    if recorder is not None:
        recorder.breaker(_bounded(backend, BACKENDS), _bounded(state, BREAKER_STATES))


def flush(*, heartbeat: bool = True) -> None:
    """Flush the current app's buffer now (readers call it so their own worker is up to date).

    ``heartbeat=False`` writes counters only: a short-lived process (an RQ work horse)
    is not a gateway process whose gauges and start time should count.
    """
    recorder = current()
    if recorder is not None:
        recorder.flush(heartbeat=heartbeat)
