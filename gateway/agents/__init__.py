"""Agent sessions, messages and streamed replies (/agents/*)."""

from __future__ import annotations

from gateway.agents.routes import bp

__all__ = ["bp"]
