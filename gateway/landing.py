"""Public landing routes kept from the FastAPI era (CONTRACT section 7)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, redirect
from pydantic import BaseModel

from auth import public
from core.schemas import endpoint
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


TAGS = ("main",)


class ServiceInfo(BaseModel):
    """Service identity and the map of endpoints."""

    service: str
    status: str
    version: str
    backend: str
    endpoints: dict[str, str]


class DocsInfo(BaseModel):
    """FastAPI-era docs summary."""

    message: str
    version: str
    backend: str
    endpoints: dict[str, str]


def _service_info() -> dict[str, Any]:
    return {"version": __version__, "backend": "flask", "endpoints": ENDPOINTS}


@bp.get("/")
@public
@endpoint("Service identity", tags=TAGS, responses={200: ServiceInfo})
def root() -> Response:
    """Service identity and the map of endpoints."""
    return jsonify({"service": SERVICE_NAME, "status": "ok", **_service_info()})


@bp.get("/docs")
@public
@endpoint("FastAPI-era docs summary", tags=TAGS, responses={200: DocsInfo})
def docs() -> Response:
    """FastAPI-era docs summary; the full document is /openapi.json."""
    return jsonify(
        {"message": f"{SERVICE_NAME} API - see /openapi.json for the OpenAPI 3.1 document", **_service_info()}
    )


@bp.get("/command-center")
@public
@endpoint("Command center", tags=TAGS, responses={307: "Redirect to COMMAND_CENTER_URL."})
def command_center() -> Response:
    """Redirect to the configured command center."""
    return redirect(current_app.config["COMMAND_CENTER_URL"], code=307)


@bp.get("/control-center")
@bp.get("/dashboard")
@public
@endpoint("Old names of the command center", tags=TAGS, responses={307: "Redirect to /command-center."})
def control_center() -> Response:
    """Old names of the command center."""
    return redirect("/command-center", code=307)


@bp.get("/favicon.ico")
@public
@endpoint("No favicon", tags=TAGS, responses={204: "No content."})
def favicon() -> Response:
    """No icon: an empty answer keeps browsers from logging 404s."""
    return Response(status=204)
