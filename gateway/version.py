"""The service's name and version, as reported by `/`, `/docs`, `/metrics` and OpenAPI."""

from __future__ import annotations

SERVICE_NAME = "Royal Equips Orchestrator"
__version__ = "2.0.0"
