"""/agents/*: sessions, messages and the streamed reply (CONTRACT sections 3 and 7).

Views parse, check ownership and answer; the work lives in ``service`` (Redis
records) and ``streaming`` (the SSE response).
"""

from __future__ import annotations

import uuid
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from flask import session as login_session
from flask.blueprints import BlueprintSetupState

from auth import current_identity, require_scope
from auth.credentials import accept_tickets
from auth.identity import Identity
from auth.loaders import pepper
from auth.scopes import ADMIN, AGENTS_READ, AGENTS_WRITE
from auth.users import SESSION_EPOCH
from core.errors import APIError
from core.extensions import get_redis
from core.redis import KEYS
from core.schemas import endpoint, parse_json, parse_query
from gateway.agents import schemas, service, streaming, tickets
from gateway.agents.backends import backend_from_config
from gateway.agents.sse import (
    DONE,
    RUNNING,
    FrameLog,
    MalformedEventId,
    ResumePoint,
    find_resume_point,
    new_stream_id,
)
from gateway.ratelimit import client_ip, stream_opens_limit, tokens

bp = Blueprint("agents", __name__, url_prefix="/agents")
TAGS = ("agents",)
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
NOTHING_LEFT = object()  # a resume with nothing to send: 204


def _identity() -> Identity:
    identity = current_identity()
    if identity is None:  # the access guard runs first; this only keeps types honest
        raise APIError(401, "Unauthorized")
    return identity


def _visible_session(session_id: str) -> dict[str, str]:
    """The session if the caller may see it; 404 otherwise (never 403: ids stay private)."""
    identity = _identity()
    try:
        return service.get_session(
            get_redis(), session_id=session_id, owner=identity.owner, see_all=identity.has_scope(ADMIN)
        )
    except service.SessionNotFound:
        raise APIError(404, schemas.SESSION_NOT_FOUND) from None


@bp.post("/session")
@require_scope(AGENTS_WRITE)
@endpoint(
    "Create an agent session owned by the caller",
    tags=TAGS,
    responses={201: schemas.SessionCreated, 409: "The caller already keeps AGENT_SESSIONS_MAX sessions"},
)
def create_session() -> tuple[Response, int]:
    """Create a session; it expires after 7 days without activity."""
    limit = current_app.config["AGENT_SESSIONS_MAX"]
    try:
        session_id = service.create_session(get_redis(), owner=_identity().owner, max_sessions=limit)
    except service.SessionLimitReached as exc:
        raise APIError(
            409,
            "Session limit reached",
            f"This identity already keeps {exc.limit} agent sessions (AGENT_SESSIONS_MAX); "
            "a session is removed after 7 days without activity.",
        ) from None
    return jsonify({"session_id": session_id}), 201


@bp.post("/message")
@require_scope(AGENTS_WRITE)
@endpoint(
    "Add a message to a session's history",
    tags=TAGS,
    body=schemas.MessageIn,
    responses={200: schemas.MessageAccepted, 404: schemas.SESSION_NOT_FOUND},
)
def post_message() -> Response:
    """Append a user or assistant message to a session the caller owns."""
    body = parse_json(schemas.MessageIn)
    session = _visible_session(body.session_id)
    message = service.add_message(get_redis(), session=session, role=body.role, content=body.content)
    return jsonify({"status": "received", "message_id": message["id"]})


@bp.get("/sessions")
@require_scope(AGENTS_READ)
@endpoint("List the caller's sessions (admin: all)", tags=TAGS, responses={200: schemas.SessionList})
def list_sessions() -> Response:
    """Sessions the caller may see, most recently active first."""
    identity = _identity()
    sessions, total = service.list_sessions(
        get_redis(), owner=identity.owner, see_all=identity.has_scope(ADMIN)
    )
    return jsonify({"sessions": sessions, "total": total})


@bp.get("/session/<session_id>/messages")
@require_scope(AGENTS_READ)
@endpoint(
    "A session's history, oldest first",
    tags=TAGS,
    responses={200: schemas.MessageList, 404: schemas.SESSION_NOT_FOUND},
)
def session_messages(session_id: str) -> Response:
    """The kept messages of a session (at least its last 1,000)."""
    session = _visible_session(session_id)
    messages = service.list_messages(get_redis(), session_id=session["id"])
    return jsonify({"session_id": session["id"], "messages": messages, "total": len(messages)})


@bp.get("/stream")
@stream_opens_limit  # RATELIMIT_STREAM_OPENS per identity (flask_limiter)
@require_scope(AGENTS_WRITE)
@endpoint(
    "Stream the agent's reply to the session as server-sent events",
    tags=TAGS,
    query=schemas.StreamQuery,
    content_type="text/event-stream",
    responses={
        200: "`event: message` frames with JSON data (`delta`, then `done`); failures as `event: error`. "
        "Every frame has an `id:`; reconnect with `Last-Event-ID` to get only the missing frames.",
        204: "Resumed with the id of a finished stream's last frame, or with an id no longer kept "
        "once the reply is stored: nothing left to send.",
        400: "`Last-Event-ID` is not an id this gateway sends.",
        404: schemas.SESSION_NOT_FOUND,
        409: "`Last-Event-ID` names no kept stream of this session and the reply is not stored: "
        "open the stream without it.",
        429: "Too many streams open for this identity (STREAM_MAX_CONCURRENT_PER_KEY).",
        503: "Streaming is disabled (ENABLE_STREAMING=false) or Redis is unavailable.",
    },
)
def stream() -> Response:
    """Stream the reply to the session's latest user message; keep it as an assistant message.

    One reply per user message: a reopen replays the stored reply, a concurrent open follows
    the stream that answers, an unknown ``Last-Event-ID`` never starts a reply."""
    config = current_app.config
    if not config["ENABLE_STREAMING"]:
        raise APIError(503, "Service Unavailable", "Streaming is disabled on this gateway.")
    query = parse_query(schemas.StreamQuery)
    session = _visible_session(query.session_id)
    r, identity = get_redis(), _identity()
    settings = streaming.StreamSettings.from_config(config)
    history = service.list_messages(r, session_id=session["id"])
    resume = _resume_point(r, session, history, settings)
    if resume is NOTHING_LEFT or (isinstance(resume, ResumePoint) and resume.complete):
        return Response(status=204)  # tells an EventSource not to reconnect again
    assert resume is None or isinstance(resume, ResumePoint)
    slot = streaming.StreamSlot.acquire(
        r, owner=identity.owner, connection_id=uuid.uuid4().hex, settings=settings
    )
    try:
        agent_stream = _agent_stream(session, history, resume, slot, settings)
    except BaseException:
        slot.release()
        raise
    # The body goes to the server as it is (bytes, no werkzeug wrapper around it); its close()
    # ends the stream. call_on_close covers the answers without a body (HEAD).
    body = streaming.StreamBody(agent_stream)
    response = Response(body, mimetype="text/event-stream", headers=SSE_HEADERS, direct_passthrough=True)
    response.call_on_close(agent_stream.close)
    return response


def _resume_point(
    r: redis.Redis, session: dict[str, str], history: list[dict[str, Any]], settings: streaming.StreamSettings
) -> ResumePoint | object | None:
    """Where ``Last-Event-ID`` resumes; None without one. An id that names no kept stream of
    this session is 204 once the reply is stored, else 409: it never starts a reply itself."""
    last_event_id = request.headers.get("Last-Event-ID", "").strip()
    if not last_event_id:
        return None
    try:
        resume = find_resume_point(r, last_event_id, session_id=session["id"], ttl=settings.resume_seconds)
    except MalformedEventId:
        raise APIError(
            400, "Invalid Last-Event-ID", "Last-Event-ID is not an id this gateway sent (<stream>:<n>)."
        ) from None
    if resume is not None:
        return resume
    _, replies = streaming.latest_turn(history)
    if replies:
        return NOTHING_LEFT
    raise APIError(
        409,
        "Unknown Last-Event-ID",
        "That stream is no longer kept (expired, or from another session) and the reply is not "
        "stored; open the stream without Last-Event-ID to get it.",
    )


def _agent_stream(
    session: dict[str, str],
    history: list[dict[str, Any]],
    resume: ResumePoint | None,
    slot: streaming.StreamSlot,
    settings: streaming.StreamSettings,
) -> streaming.AgentStream:
    if resume is not None and not resume.starts_over:
        source: streaming.LiveSource | streaming.FollowSource = streaming.FollowSource(
            frame_log=resume.log, seq=resume.seq
        )
    else:
        source = _answer_source(session, history, settings)
    return streaming.AgentStream(
        app=current_app._get_current_object(),  # type: ignore[attr-defined]
        source=source,
        checks=streaming.default_stop_checks(
            r=get_redis(), identity=_identity(), settings=settings, client_ip=client_ip()
        ),
        settings=settings,
        slot=slot,
    )


def _answer_source(
    session: dict[str, str], history: list[dict[str, Any]], settings: streaming.StreamSettings
) -> streaming.LiveSource | streaming.FollowSource:
    """Generate the reply to the latest user message, unless it is stored (replay it) or
    another stream holds its claim (follow that one from its first frame)."""
    r, ttl = get_redis(), settings.resume_seconds
    message, replies = streaming.latest_turn(history)
    if message is None:
        return _live_source(session, history, settings, FrameLog(r, new_stream_id(), session["id"], ttl))
    claim = streaming.ReplyClaim(r, session["id"], message["id"])
    if replies:
        holder = claim.holder()
        if holder and r.hget(KEYS.agent_stream(holder), "state") == DONE:
            # The stream that made the reply is still kept: the very same frames again.
            return streaming.FollowSource(frame_log=FrameLog(r, holder, session["id"], ttl), seq=0)
        frame_log = FrameLog(r, new_stream_id(), session["id"], ttl)
        usage = streaming.stored_usage(history)
        return streaming.ReplaySource(frame_log=frame_log, replies=replies, usage=usage)
    # Token quota: reserved before anything is claimed or sent upstream (429 when none is left).
    reservation = tokens.open_reservation(_identity())
    frame_log = FrameLog(r, new_stream_id(), session["id"], ttl, message_id=message["id"])
    frame_log.flush(state=RUNNING)  # followers find the log as soon as they find the claim
    holder = claim.take(frame_log.stream_id)
    if holder is None:
        return _live_source(session, history, settings, frame_log, claim, reservation)
    frame_log.discard()
    if reservation is not None:
        reservation.settle({"total_tokens": 0})  # following another stream costs nothing
    return streaming.FollowSource(frame_log=FrameLog(r, holder, session["id"], ttl), seq=0)


def _live_source(
    session: dict[str, str],
    history: list[dict[str, Any]],
    settings: streaming.StreamSettings,
    frame_log: FrameLog,
    claim: streaming.ReplyClaim | None = None,
    reservation: tokens.Reservation | None = None,
) -> streaming.LiveSource:
    r = get_redis()

    def keep_reply(reply: str, usage: dict[str, Any]) -> None:
        service.add_message(r, session=session, role="assistant", content=reply, usage=usage)

    return streaming.LiveSource(
        app=current_app._get_current_object(),  # type: ignore[attr-defined]
        backend=backend_from_config(current_app.config),
        messages=service.conversation(history),
        frame_log=frame_log,
        on_reply=keep_reply,
        settings=settings,
        claim=claim,
        tokens=reservation,
    )


# --- Stream tickets (issue 16): an EventSource cannot send headers -------------------------


@bp.post("/stream/ticket")
@require_scope(AGENTS_WRITE)
@endpoint(
    "Get a single-use ticket to open the session's stream without headers (EventSource)",
    tags=TAGS,
    body=tickets.TicketIn,
    responses={201: tickets.TicketOut, 404: schemas.SESSION_NOT_FOUND},
)
def stream_ticket() -> tuple[Response, int]:
    """A ticket for ``GET /agents/stream?session_id=&ticket=``: no header needed, used once,
    expires after ``expires_in`` seconds (at most 120), bound to the session and the caller.

    The stream then runs as the caller (its scopes, limits, quotas and stream slots); a used,
    expired or foreign ticket, or a revoked key, gets 401. Only that route takes a ticket."""
    body = parse_json(tickets.TicketIn)
    session = _visible_session(body.session_id)
    identity = _identity()
    ttl = tickets.ticket_seconds(current_app.config)
    epoch = login_session.get(SESSION_EPOCH) if identity.type == "user" else None
    ticket = tickets.issue(
        get_redis(), key=pepper(), identity=identity, session_id=session["id"], ttl=ttl, auth_epoch=epoch
    )
    response = jsonify({"ticket": ticket, "expires_in": ttl})
    response.headers["Cache-Control"] = "no-store"  # a credential: never kept by a cache
    return response, 201


@bp.record_once
def _stream_takes_tickets(state: BlueprintSetupState) -> None:
    accept_tickets(state.app, f"{bp.name}.{stream.__name__}", tickets.redeem)
