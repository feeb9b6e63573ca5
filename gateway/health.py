"""Probe routes: outside auth, quotas and the https redirect (CONTRACT section 3)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel

from auth import public
from core import forks
from core.extensions import get_redis
from core.redis import failure_label, is_unavailable, key, primaries
from core.schemas import endpoint
from gateway.jobs.queue import app_connection
from gateway.ratelimit import limiter

bp = Blueprint("health", __name__)

# The probe routes' endpoints (see is_probe).
HEALTH_ENDPOINTS = frozenset({"health.healthz", "health.health", "health.readyz"})
TAGS = ("health",)
READYZ_KEY_TTL_MS = 5000
log = logging.getLogger(__name__)


def is_probe() -> bool:
    """True when this request is routed to a health probe.

    The one test every edge layer asks: probes get no Host check and no https
    redirect (the platform probes plain http with its own Host), no access line
    and no request metrics (probe traffic is not load); they still get the
    security headers. A request to a probe path that matched no route (a POST
    /healthz, a 405) is not a probe: it is an ordinary client error.
    """
    return request.endpoint in HEALTH_ENDPOINTS


class Readiness(BaseModel):
    """Readiness report (200 ready, 503 not ready). ``topology`` is standalone, sentinel or
    cluster; ``checks.redis.primaries`` lists each primary's address and reachability."""

    ready: bool
    status: str
    checks: dict[str, dict[str, Any]]
    topology: str
    timestamp: str


def _ok() -> Response:
    return Response("ok", mimetype="text/plain")


@bp.get("/healthz")
@limiter.exempt
@public
@endpoint("Liveness", tags=TAGS, responses={200: "ok"}, content_type="text/plain")
def healthz() -> Response:
    """Liveness: the process answers; touches nothing else."""
    return _ok()


@bp.get("/health")
@limiter.exempt
@public
@endpoint("Liveness (FastAPI-era name)", tags=TAGS, responses={200: "ok"}, content_type="text/plain")
def health() -> Response:
    """Liveness, FastAPI-era name."""
    return _ok()


def _redis_check(client: Any = None) -> dict[str, Any]:
    # A write, not a PING: a full (OOM under noeviction), read-only (a replica after a
    # failover) or busy Redis still answers PING, yet the gateway cannot do its work.
    # One short-lived key per process, so probes never pile keys up.
    started = time.perf_counter()
    try:
        target = client if client is not None else get_redis()
        target.set(key("health", "readyz", forks.pid()), "1", px=READYZ_KEY_TTL_MS)
    except redis.RedisError as exc:
        # Any Redis error means "not ready"; only an unexpected kind is worth a warning.
        if not is_unavailable(exc):
            log.warning("readiness write failed: %s", failure_label(exc))
        return {"status": "unavailable", "error": type(exc).__name__}
    return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def _topology(written: bool) -> dict[str, Any]:
    # Only a primary takes the readiness write: on one server or Sentinel it is that
    # primary's reachability; a cluster's primaries are each asked (core.redis.primaries).
    report = primaries(get_redis())
    for primary in report["primaries"]:
        primary.setdefault("reachable", written)
    return report


def _jobs_redis_apart() -> bool:
    jobs = current_app.config.get("JOBS_REDIS_URL")
    return bool(jobs) and jobs != current_app.config["REDIS_URL"]


@bp.get("/readyz")
@limiter.exempt
@public
@endpoint("Readiness", tags=TAGS, responses={200: Readiness, 503: Readiness})
def readyz() -> tuple[Response, int]:
    """Readiness: Redis takes a tiny write within the client's timeout."""
    redis_check = _redis_check()
    ready = redis_check["status"] == "ok"
    redis_check.update(_topology(ready))
    checks = {"redis": redis_check}
    if _jobs_redis_apart():
        # The queue's own Redis (JOBS_REDIS_URL): without it no job can be enqueued.
        checks["jobs_redis"] = _redis_check(app_connection())
        ready = ready and checks["jobs_redis"]["status"] == "ok"
    body = {
        "ready": ready,
        "status": "healthy" if ready else "unhealthy",
        "checks": checks,
        "topology": redis_check["topology"],
        "timestamp": datetime.now(UTC).isoformat(),
    }
    return jsonify(body), 200 if ready else 503
