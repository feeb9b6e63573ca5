"""Request and response models of /agents/*: validation and the OpenAPI document in one place."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from core.schemas import Schema

CONTENT_MAX = 4000
SESSION_ID_REQUIRED = "session_id is required"
ROLE_INVALID = "role must be 'user' or 'assistant'"
CONTENT_REQUIRED = "content is required and cannot be empty"
CONTENT_TOO_LONG = f"content must be {CONTENT_MAX} characters or less"
STREAM_SESSION_REQUIRED = "session_id parameter is required"
SESSION_NOT_FOUND = "Session not found"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("blank")
    return value


class MessageIn(Schema):
    """A message to add to a session's history."""

    # Field order is validation order: the first failing field names the 400 message.
    session_id: str = Field(min_length=1)
    role: Literal["user", "assistant"]
    content: str = Field(min_length=1, max_length=CONTENT_MAX)

    error_messages = {
        "session_id": SESSION_ID_REQUIRED,
        "role": ROLE_INVALID,
        ("content", "string_too_long"): CONTENT_TOO_LONG,
        "content": CONTENT_REQUIRED,
    }

    _session_id_present = field_validator("session_id")(_not_blank)
    _content_present = field_validator("content")(_not_blank)


class StreamQuery(Schema):
    """Query of GET /agents/stream."""

    session_id: str = Field(min_length=1)

    error_messages = {"session_id": STREAM_SESSION_REQUIRED}

    _session_id_present = field_validator("session_id")(_not_blank)


class SessionCreated(BaseModel):
    """The new session's id."""

    session_id: str


class MessageAccepted(BaseModel):
    """The stored message's id."""

    status: Literal["received"] = "received"
    message_id: str


class MessageOut(BaseModel):
    """One message of a session's history."""

    id: str
    session_id: str
    role: Literal["user", "assistant"]
    content: str
    timestamp: str


class MessageList(BaseModel):
    """A session's kept history, oldest first."""

    session_id: str
    messages: list[MessageOut]
    total: int


class SessionSummary(BaseModel):
    """One session in a list."""

    session_id: str
    created_by: str | None = None
    created_at: str | None = None
    last_activity: str | None = None
    message_count: int


class SessionList(BaseModel):
    """Sessions the caller may see, most recently active first."""

    sessions: list[SessionSummary]
    total: int
