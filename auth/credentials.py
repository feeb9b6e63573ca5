"""The credentials a request presents: an API key, from two headers only (CONTRACT section 3).

Its own module because the session interface, the identity, the origin check and the
limiter all ask, and none of them may import another to find out.
"""

from __future__ import annotations

from flask import Request

BEARER_PREFIX = "bearer "


def presented_key(req: Request) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``; never the query string or body."""
    header = req.headers.get("Authorization", "")
    if header[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
        return header[len(BEARER_PREFIX) :].strip() or None
    return req.headers.get("X-API-Key", "").strip() or None
