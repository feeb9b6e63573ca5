"""HTTP views for events (CONTRACT section 7): thin wrappers over gateway.events.service."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel, Field, field_validator

from auth import current_identity, require_scope
from auth.identity import Identity
from auth.scopes import ADMIN, EVENTS_READ, EVENTS_WRITE
from core import idempotency
from core.errors import APIError
from core.extensions import get_redis
from core.schemas import Schema, endpoint, parse_json, parse_query
from gateway.events import service

bp = Blueprint("events", __name__)

TAGS = ("events",)


class EventIn(Schema):
    """An event to append. ``timestamp`` defaults to the time the gateway received it."""

    event_type: str = Field(min_length=1, max_length=200)
    data: dict[str, Any] | None = None
    timestamp: datetime | None = None

    error_messages = {
        ("event_type", "string_too_long"): "event_type must be 200 characters or less",
        "event_type": "event_type is required",
        "data": "data must be a JSON object",
        "timestamp": "timestamp must be an ISO 8601 date-time",
    }

    @field_validator("event_type")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("blank")
        return value


class EventsQuery(Schema):
    """Paging: events strictly after ``after`` (an event id), at most ``limit`` of them."""

    after: str | None = Field(default=None, pattern=r"^\d{1,20}-\d{1,20}$")
    limit: int = Field(default=100, ge=1, le=1000)

    error_messages = {
        "after": "after must be an event id such as '1700000000000-0'",
        "limit": "limit must be an integer between 1 and 1000",
    }


class EventAccepted(BaseModel):
    status: str = "accepted"
    event_id: str
    timestamp: str


class EventOut(BaseModel):
    event_id: str
    event_type: str
    data: dict[str, Any] | None = None
    timestamp: str
    received_at: str
    posted_by: str


class EventList(BaseModel):
    events: list[EventOut]
    total: int = Field(description="Number of events in this page")
    next_after: str | None = Field(description="Pass as `after` to read the next page")
    stream_length: int = Field(description="Events currently kept that the caller may read")


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # a naive time is taken as UTC
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _identity() -> Identity:
    identity = current_identity()
    if identity is None:  # the access guard runs first; this only keeps types honest
        raise APIError(401, "Unauthorized")
    return identity


@bp.post("/events")
@require_scope(EVENTS_WRITE)
@endpoint(
    "Append an event",
    tags=TAGS,
    body=EventIn,
    responses={
        201: EventAccepted,
        409: "Idempotency-Key reused with a different body",
        413: "The event (event_type + data as JSON) is over EVENTS_MAX_BYTES",
    },
)
def post_event() -> tuple[Response, int]:
    """Append an event owned by the caller; an Idempotency-Key repeat returns the first event."""
    event = parse_json(EventIn)
    idempotency_key = idempotency.request_key()
    config = current_app.config
    try:
        accepted = service.append_event(
            get_redis(),
            event_type=event.event_type,
            data=event.data,
            timestamp=_iso(event.timestamp) if event.timestamp else None,
            owner=_identity().owner,
            max_length=config["EVENTS_MAX_LENGTH"],
            max_bytes=config["EVENTS_MAX_BYTES"],
            retention_days=config["EVENTS_RETENTION_DAYS"],
            idempotency_key=idempotency_key,
        )
    except service.EventTooLarge as exc:
        raise APIError(
            413,
            f"event must be {exc.limit} bytes or less",
            f"event_type and data take {exc.size} bytes as JSON; this gateway keeps events "
            f"of at most {exc.limit} bytes (EVENTS_MAX_BYTES).",
        ) from None
    except service.IdempotencyConflict:
        raise APIError(
            409, "Idempotency-Key conflict", "This Idempotency-Key was used with a different request body."
        ) from None
    body = EventAccepted(event_id=accepted.event_id, timestamp=accepted.timestamp).model_dump()
    response = jsonify(body)
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response, 201


@bp.get("/events")
@require_scope(EVENTS_READ)
@endpoint(
    "List the caller's events (admin: all), oldest first",
    tags=TAGS,
    query=EventsQuery,
    responses={200: EventList},
)
def list_events() -> Response:
    """Page through the caller's events (admin: every event) oldest first, ``after`` the last seen."""
    query = parse_query(EventsQuery)
    identity = _identity()
    owner = None if identity.has_scope(ADMIN) else identity.owner
    r = get_redis()
    try:
        events = service.list_events(r, after=query.after, limit=query.limit, owner=owner)
    except ValueError:
        raise APIError(400, EventsQuery.error_messages["after"]) from None
    next_after = events[-1]["event_id"] if events else query.after
    return jsonify(
        {
            "events": events,
            "total": len(events),
            "next_after": next_after,
            "stream_length": service.stream_length(r, owner=owner),
        }
    )
