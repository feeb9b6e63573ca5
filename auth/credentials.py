"""The credentials a request presents: an API key, from two headers only (CONTRACT section 3),
or a stream ticket on the one route that accepts it (CONTRACT section 8).

Its own module because the session interface, the identity, the origin check and the
limiter all ask, and none of them may import another to find out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Request, current_app

BEARER_PREFIX = "bearer "


def presented_key(req: Request) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``; never the query string or body."""
    header = req.headers.get("Authorization", "")
    if header[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
        return header[len(BEARER_PREFIX) :].strip() or None
    return req.headers.get("X-API-Key", "").strip() or None


# Stream tickets (issue 16): a browser's EventSource cannot send headers, so one route takes a
# short-lived, single-use ticket from the query string instead. Only the endpoints an area
# registers with accept_tickets() do; on any other route a ticket is no credential at all.
TICKET_PARAM = "ticket"
TICKET_EXTENSION = "auth.ticket_redeemers"


@dataclass(frozen=True)
class TicketGrant:
    """Who a redeemed ticket was issued to: ``owner`` (``api_key:<id>`` / ``user:<id>``) and,
    for an admin user, the login session (its id and auth epoch) that asked for it."""

    owner: str
    login_sid: str | None = None
    auth_epoch: str | None = None


Redeemer = Callable[[Request, str], TicketGrant | None]


def accept_tickets(app: Flask, endpoint: str, redeem: Redeemer) -> None:
    """Let ``endpoint`` (GET only) take ``?ticket=``; ``redeem`` consumes it, or returns None."""
    app.extensions.setdefault(TICKET_EXTENSION, {})[endpoint] = redeem


def presented_ticket(req: Request) -> tuple[str, Redeemer] | None:
    """The ticket of a GET to an endpoint that accepts one, with its redeemer; else None.

    A presented key decides alone: a request carrying both is authenticated by the key."""
    if req.method != "GET" or presented_key(req) is not None:
        return None
    redeem = current_app.extensions.get(TICKET_EXTENSION, {}).get(req.endpoint or "")
    ticket = req.args.get(TICKET_PARAM, "")
    return (ticket, redeem) if redeem is not None and ticket else None
