"""GET /metrics (JSON summary) and GET /metrics/prometheus (text exposition)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel

from auth import require_scope
from auth.scopes import METRICS_READ
from core.errors import APIError
from core.extensions import get_redis
from core.schemas import endpoint
from gateway.metrics import recorder, service, store

bp = Blueprint("metrics", __name__)
TAGS = ("metrics",)
# gateway.metrics.prometheus.CONTENT_TYPE, repeated so the view's declaration does not import
# prometheus_client into every worker (the exposition module loads it on the first scrape).
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsSummary(BaseModel):
    ok: bool
    backend: str
    version: str
    uptime_seconds: float
    active_sessions: int
    total_messages: int
    total_requests: int
    total_errors: int
    timestamp: str


def _snapshot() -> store.Snapshot:
    if not current_app.config["ENABLE_METRICS"]:
        raise APIError(404, "Not Found", "Metrics are disabled on this gateway (ENABLE_METRICS=false).")
    recorder.flush()  # this worker's latest figures; the others flush at least every second
    return store.read(get_redis())


def _session_stats(r: Any) -> dict[str, Any]:
    from gateway.agents.service import session_stats

    return session_stats(r)


@bp.get("/metrics")
@require_scope(METRICS_READ)
@endpoint("Gateway totals across all workers", tags=TAGS, responses={200: MetricsSummary})
def metrics() -> Response:
    """Request, error and session totals of the whole deployment."""
    snapshot = _snapshot()
    return jsonify(service.summary(snapshot, _session_stats(get_redis())))


@bp.get("/metrics/prometheus")
@require_scope(METRICS_READ)
@endpoint(
    "Prometheus metrics of all workers",
    tags=TAGS,
    responses={200: "Prometheus text exposition format"},
    content_type=PROMETHEUS_CONTENT_TYPE,
)
def prometheus() -> Response:
    """Prometheus text exposition of every worker's metrics together."""
    from gateway.jobs.queue import app_connection, queue_depths
    from gateway.metrics.prometheus import prometheus_text
    from gateway.usage.store import top_tokens

    snapshot = _snapshot()
    tokens = top_tokens(get_redis(), current_app.config["USAGE_PROMETHEUS_TOP_KEYS"])
    body = prometheus_text(snapshot, queue_depths(app_connection()), tokens)  # the queue: JOBS_REDIS_URL
    return Response(body, content_type=PROMETHEUS_CONTENT_TYPE)
