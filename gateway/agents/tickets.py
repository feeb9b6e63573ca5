"""Stream tickets: a browser's ``EventSource`` cannot send headers (CONTRACT section 8).

``POST /agents/stream/ticket`` hands the caller a ticket for one of its sessions; the
stream then takes it as ``?ticket=`` instead of a key, once. So no key ever has to go
into a URL (where proxies, browser history and access logs keep it).

* A ticket is 256 random bits (``gwt_`` + 43 URL-safe characters). Redis keeps only
  its HMAC-SHA256 under the server pepper, so a copy of Redis redeems nothing.
* It lives under the session's hash tag (``KEYS.agent_stream_ticket``): the stream's
  query names the session, so the ticket is found without knowing who asks, a ticket
  for another session is simply not there, and ``GETDEL`` consumes it atomically on
  one shard, whichever worker or instance asks first.
* It expires after ``STREAM_TICKET_SECONDS`` (60 by default, never above 120).
* It names the identity that asked: ``api_key:<id>``, or ``user:<id>`` with the login
  session. That session's id is a secret (the cookie), so it is stored sealed with a
  keystream derived from the ticket itself: only the ticket's holder, presenting it,
  unseals it, and only once. auth.loaders loads the identity fresh from its record when
  the ticket is redeemed, so a revoked key or a logged-out user gets 401.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Any

import redis
from flask import Request
from pydantic import BaseModel, Field, field_validator

from auth.credentials import TicketGrant
from auth.identity import Identity
from auth.loaders import pepper
from core.extensions import get_redis
from core.redis import KEYS
from core.schemas import Schema
from gateway.agents.schemas import SESSION_ID_REQUIRED

PREFIX = "gwt_"
_TOKEN_CHARS = 43  # secrets.token_urlsafe(32): 256 bits
MAX_SECONDS = 120  # the contract's bound, whatever STREAM_TICKET_SECONDS says
DEFAULT_SECONDS = 60


class TicketIn(Schema):
    """The session a ticket is for (one the caller may stream)."""

    session_id: str = Field(min_length=1)

    error_messages = {"session_id": SESSION_ID_REQUIRED}

    @field_validator("session_id")
    @classmethod
    def _present(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("blank")
        return value


class TicketOut(BaseModel):
    """A single-use ticket for ``GET /agents/stream?session_id=&ticket=``."""

    ticket: str
    expires_in: int


def ticket_seconds(config: Mapping[str, Any]) -> int:
    """How long a new ticket lives: STREAM_TICKET_SECONDS, held to 1..120 s."""
    return max(1, min(int(config.get("STREAM_TICKET_SECONDS", DEFAULT_SECONDS)), MAX_SECONDS))


def _digest(ticket: str, key: bytes) -> str:
    return hmac.new(key, ticket.encode(), hashlib.sha256).hexdigest()


def _keystream(ticket: str, size: int) -> bytes:
    # A one-time pad: the ticket is 256 random bits and is used once.
    return hashlib.shake_256(b"gw-stream-ticket:login-sid:" + ticket.encode()).digest(size)


def _seal(ticket: str, sid: str) -> str:
    raw = sid.encode()
    return bytes(a ^ b for a, b in zip(raw, _keystream(ticket, len(raw)), strict=True)).hex()


def _unseal(ticket: str, sealed: str) -> str | None:
    try:
        raw = bytes.fromhex(sealed)
        return bytes(a ^ b for a, b in zip(raw, _keystream(ticket, len(raw)), strict=True)).decode()
    except ValueError:  # not hex, or not text once unsealed: no grant
        return None


def issue(
    r: redis.Redis, *, key: bytes, identity: Identity, session_id: str, ttl: int, auth_epoch: str | None
) -> str:
    """A new ticket for ``identity`` to stream ``session_id`` once within ``ttl`` seconds."""
    ticket = PREFIX + secrets.token_urlsafe(32)
    record: dict[str, Any] = {"owner": identity.owner, "session_id": session_id}
    if identity.type == "user" and identity.session_id:
        record["login_sid"] = _seal(ticket, identity.session_id)
        record["auth_epoch"] = str(auth_epoch or "0")
    r.set(KEYS.agent_stream_ticket(session_id, _digest(ticket, key)), json.dumps(record), ex=ttl)
    return ticket


def looks_valid(ticket: str) -> bool:
    """The ticket's shape, checked offline (no Redis call for garbage)."""
    body = ticket[len(PREFIX) :]
    return (
        ticket.startswith(PREFIX)
        and len(body) == _TOKEN_CHARS
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in body)
    )


def consume(r: redis.Redis, *, key: bytes, ticket: str, session_id: str) -> TicketGrant | None:
    """Redeem ``ticket`` for ``session_id`` (atomic, single use); None when it is not there."""
    if not session_id or not looks_valid(ticket):
        return None
    raw = r.getdel(KEYS.agent_stream_ticket(session_id, _digest(ticket, key)))
    if raw is None:
        return None  # unknown, used, expired, or issued for another session
    record = json.loads(raw)
    if record.get("session_id") != session_id:
        return None
    sealed = record.get("login_sid")
    login_sid = _unseal(ticket, sealed) if sealed else None
    return TicketGrant(owner=str(record["owner"]), login_sid=login_sid, auth_epoch=record.get("auth_epoch"))


def redeem(req: Request, ticket: str) -> TicketGrant | None:
    """auth.credentials' redeemer for ``GET /agents/stream?session_id=&ticket=``."""
    return consume(get_redis(), key=pepper(), ticket=ticket, session_id=req.args.get("session_id", ""))
