"""Scopes an identity may hold (CONTRACT section 3). ``admin`` implies every other one."""

from __future__ import annotations

from core.echo import clip

AGENTS_READ = "agents:read"
AGENTS_WRITE = "agents:write"
JOBS_READ = "jobs:read"
JOBS_WRITE = "jobs:write"
EVENTS_READ = "events:read"
EVENTS_WRITE = "events:write"
METRICS_READ = "metrics:read"
ADMIN = "admin"

ALL_SCOPES: tuple[str, ...] = (
    AGENTS_READ,
    AGENTS_WRITE,
    JOBS_READ,
    JOBS_WRITE,
    EVENTS_READ,
    EVENTS_WRITE,
    METRICS_READ,
    ADMIN,
)


def grants(held: frozenset[str] | set[str], needed: str) -> bool:
    """True when the held scopes allow ``needed``."""
    return ADMIN in held or needed in held


def validate_scopes(scopes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Return the scopes de-duplicated in canonical order, or raise ValueError naming an unknown one."""
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {clip(unknown[0])!r}; known scopes: {', '.join(ALL_SCOPES)}")
    return tuple(s for s in ALL_SCOPES if s in scopes)
