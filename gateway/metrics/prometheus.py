"""The Prometheus text exposition of the figures every worker flushed to Redis.

Its own module, imported by the /metrics/prometheus view when it is first
scraped: prometheus_client (about 1 MB of RSS per worker) is then loaded only
in processes that are scraped, not by every worker that serves requests.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from gateway.metrics import store
from gateway.metrics.recorder import BREAKER_STATES, PROCESS_KINDS
from gateway.metrics.service import uptime_seconds

# prometheus_client.CONTENT_TYPE_PLAIN_0_0_4: what every Prometheus version scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SnapshotCollector:
    """A prometheus_client collector over one Redis snapshot (read once per scrape)."""

    def __init__(
        self,
        snapshot: store.Snapshot,
        queue_depths: dict[str, int],
        tokens: tuple[list[tuple[str, int]], int] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.queue_depths = queue_depths
        self.tokens = tokens

    def collect(self) -> Iterator[Metric]:
        yield self._requests()
        yield self._latency()
        yield self._counter(
            "gateway_rate_limited", "Requests refused with 429, by kind", "kind", "ratelimited"
        )
        yield self._counter(
            "gateway_upstream_failures", "Failed calls to agent backends", "backend", "upstream_fail"
        )
        yield from self._gauges()
        if self.tokens is not None:
            yield self._tokens(*self.tokens)

    def _tokens(self, top: list[tuple[str, int]], other: int) -> Metric:
        # Bounded: the USAGE_PROMETHEUS_TOP_KEYS keys with the most tokens, the rest as "other".
        family = CounterMetricFamily(
            "gateway_agent_tokens",
            "Agent reply tokens of the top keys by tokens, the rest as other",
            labels=["key"],
        )
        for key, value in top:
            family.add_metric([key], value)
        family.add_metric(["other"], other)
        return family

    def _requests(self) -> Metric:
        family = CounterMetricFamily(
            "gateway_http_requests",
            "Answered requests by route template, method and status (health probes excluded)",
            labels=["route", "method", "status"],
        )
        for labels, value in sorted(self.snapshot.family("req").items()):
            family.add_metric(list(labels), value)
        return family

    def _latency(self) -> Metric:
        family = HistogramMetricFamily(
            "gateway_http_request_duration_seconds",
            "Time to the response headers by route template and method",
            labels=["route", "method"],
        )
        counts: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * (len(store.BUCKETS) + 1))
        for (route, method, bucket), value in self.snapshot.family("lat").items():
            counts[(route, method)][int(bucket)] += value
        sums = self.snapshot.family("latsum")
        for (route, method), per_bucket in sorted(counts.items()):
            cumulative, buckets = 0.0, []
            for bound, value in zip((*map(str, store.BUCKETS), "+Inf"), per_bucket, strict=True):
                cumulative += value
                buckets.append((bound, cumulative))
            family.add_metric([route, method], buckets, sums.get((route, method), 0.0))
        return family

    def _counter(self, name: str, doc: str, label: str, field: str) -> Metric:
        family = CounterMetricFamily(name, doc, labels=[label])
        for (value_label,), value in sorted(self.snapshot.family(field).items()):
            family.add_metric([value_label], value)
        return family

    def _gauges(self) -> Iterator[Metric]:
        processes = self.snapshot.processes
        kinds = dict.fromkeys(PROCESS_KINDS, 0)
        for process in processes:  # a process of an older version, without a kind, was a web worker
            kind = process.get("kind", "web")
            if kind in kinds:
                kinds[kind] += 1
        yield GaugeMetricFamily("gateway_processes", "Gateway web worker processes reporting", kinds["web"])
        by_kind = GaugeMetricFamily(
            "gateway_processes_by_kind",
            "Processes reporting metrics: web workers, job workers, RQ work horses",
            labels=["kind"],
        )
        for kind, count in kinds.items():
            by_kind.add_metric([kind], count)
        yield by_kind
        yield GaugeMetricFamily(
            "gateway_uptime_seconds",
            "Seconds since the oldest live process started",
            uptime_seconds(self.snapshot, time.time()),
        )
        yield GaugeMetricFamily(
            "gateway_open_streams", "Open SSE streams", sum(p.get("open_streams", 0) for p in processes)
        )
        depth = GaugeMetricFamily("gateway_job_queue_depth", "Jobs waiting in the queue", labels=["queue"])
        for queue, count in sorted(self.queue_depths.items()):
            depth.add_metric([queue], count)
        yield depth
        yield self._breakers()

    def _breakers(self) -> Metric:
        family = GaugeMetricFamily(
            "gateway_upstream_breaker_state",
            "Processes whose circuit breaker for the backend is in each state",
            labels=["backend", "state"],
        )
        tally: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(sorted(BREAKER_STATES), 0))
        for process in self.snapshot.processes:
            for backend, state in process.get("breakers", {}).items():
                tally[backend][state] = tally[backend].get(state, 0) + 1
        for backend, states in sorted(tally.items()):
            for state, count in states.items():
                family.add_metric([backend, state], count)
        return family


def prometheus_text(
    snapshot: store.Snapshot,
    queue_depths: dict[str, int],
    tokens: tuple[list[tuple[str, int]], int] | None = None,
) -> bytes:
    """The text exposition format of everything in ``snapshot`` (and the top keys' tokens)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, queue_depths, tokens))
    return generate_latest(registry)
