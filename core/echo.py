"""Bounded echoes of client input in messages (foundation: imports nothing of the gateway's).

An error that quotes what the client sent (an unknown job, field or scope) helps
the client; quoting all of it lets one request turn a 1 MiB body into a 1 MiB
error answer and log line. Quotes are cut to ECHO_LIMIT characters and marked.
"""

from __future__ import annotations

ECHO_LIMIT = 64
MARKER = "…[truncated]"


def clip(value: object, *, limit: int = ECHO_LIMIT) -> str:
    """``value`` as text, at most ``limit`` characters of it, with MARKER when cut."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + MARKER
