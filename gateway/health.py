"""Probe routes: outside auth, quotas and the https redirect (CONTRACT section 3)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel

from auth import public
from gateway.api import endpoint
from gateway.extensions import get_redis
from gateway.redis import REDIS_UNAVAILABLE

bp = Blueprint("health", __name__)

# Endpoints the security layers (limiter, https redirect, access logs) leave alone.
HEALTH_ENDPOINTS = frozenset({"health.healthz", "health.health", "health.readyz"})
HEALTH_PATHS = frozenset({"/healthz", "/health", "/readyz"})
TAGS = ("health",)


class Readiness(BaseModel):
    """Readiness report (200 ready, 503 not ready)."""

    ready: bool
    status: str
    checks: dict[str, dict[str, Any]]
    timestamp: str


def _ok() -> Response:
    return Response("ok", mimetype="text/plain")


@bp.get("/healthz")
@public
@endpoint("Liveness", tags=TAGS, responses={200: "ok"}, content_type="text/plain")
def healthz() -> Response:
    """Liveness: the process answers; touches nothing else."""
    return _ok()


@bp.get("/health")
@public
@endpoint("Liveness (FastAPI-era name)", tags=TAGS, responses={200: "ok"}, content_type="text/plain")
def health() -> Response:
    """Liveness, FastAPI-era name."""
    return _ok()


@bp.get("/readyz")
@public
@endpoint("Readiness", tags=TAGS, responses={200: Readiness, 503: Readiness})
def readyz() -> tuple[Response, int]:
    """Readiness: Redis answers a PING within the client's timeout."""
    started = time.perf_counter()
    try:
        get_redis().ping()
        redis_check = {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    except REDIS_UNAVAILABLE as exc:
        redis_check = {"status": "unavailable", "error": type(exc).__name__}
    ready = redis_check["status"] == "ok"
    body = {
        "ready": ready,
        "status": "healthy" if ready else "unhealthy",
        "checks": {"redis": redis_check},
        "timestamp": datetime.now(UTC).isoformat(),
    }
    return jsonify(body), 200 if ready else 503
