"""Public landing routes kept from the FastAPI era (CONTRACT section 7)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, redirect

from auth import public
from gateway.version import SERVICE_NAME, __version__

bp = Blueprint("main", __name__)

# What `/` and `/docs` advertise; kept in step with the blueprints by a test.
ENDPOINTS: dict[str, str] = {
    "health": "/healthz",
    "readiness": "/readyz",
    "docs": "/docs",
    "openapi": "/openapi.json",
    "metrics": "/metrics",
    "prometheus": "/metrics/prometheus",
    "agents": "/agents/session",
    "stream": "/agents/stream",
    "jobs": "/jobs",
    "events": "/events",
    "auth": "/auth/me",
    "admin": "/admin/",
    "command_center": "/command-center",
}


def _service_info() -> dict[str, Any]:
    return {"version": __version__, "backend": "flask", "endpoints": ENDPOINTS}


@bp.get("/")
@public
def root() -> Response:
    """Service identity and the map of endpoints."""
    return jsonify({"service": SERVICE_NAME, "status": "ok", **_service_info()})


@bp.get("/docs")
@public
def docs() -> Response:
    """FastAPI-era docs summary; the full document is /openapi.json."""
    return jsonify(
        {"message": f"{SERVICE_NAME} API - see /openapi.json for the OpenAPI 3.1 document", **_service_info()}
    )


@bp.get("/command-center")
@public
def command_center() -> Response:
    """Redirect to the configured command center."""
    return redirect(current_app.config["COMMAND_CENTER_URL"], code=307)


@bp.get("/control-center")
@bp.get("/dashboard")
@public
def control_center() -> Response:
    """Old names of the command center."""
    return redirect("/command-center", code=307)


@bp.get("/favicon.ico")
@public
def favicon() -> Response:
    """No icon: an empty answer keeps browsers from logging 404s."""
    return Response(status=204)
