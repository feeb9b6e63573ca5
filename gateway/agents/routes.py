"""/agents/*: sessions, messages and the streamed reply (CONTRACT sections 3 and 7).

Views parse, check ownership and answer; the work lives in ``service`` (Redis
records) and ``streaming`` (the SSE response).
"""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, current_app, jsonify, request

from auth import current_identity, require_scope
from auth.identity import Identity
from auth.scopes import ADMIN, AGENTS_READ, AGENTS_WRITE
from gateway.agents import schemas, service, streaming
from gateway.agents.backends import backend_from_config
from gateway.agents.sse import FrameLog, ResumePoint, find_resume_point, new_stream_id
from gateway.api import endpoint, parse_json, parse_query
from gateway.errors import APIError
from gateway.extensions import get_redis

bp = Blueprint("agents", __name__, url_prefix="/agents")
TAGS = ("agents",)
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


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
@require_scope(AGENTS_WRITE)
@endpoint(
    "Stream the agent's reply to the session as server-sent events",
    tags=TAGS,
    query=schemas.StreamQuery,
    content_type="text/event-stream",
    responses={
        200: "`event: message` frames with JSON data (`delta`, then `done`); failures as `event: error`. "
        "Every frame has an `id:`; reconnect with `Last-Event-ID` to get only the missing frames.",
        204: "Resumed with the id of a finished stream's last frame: nothing left to send.",
        404: schemas.SESSION_NOT_FOUND,
        429: "Too many streams open for this identity (STREAM_MAX_CONCURRENT_PER_KEY).",
        503: "Streaming is disabled (ENABLE_STREAMING=false) or Redis is unavailable.",
    },
)
def stream() -> Response:
    """Stream the reply to the session's latest user message; keep it as an assistant message."""
    config = current_app.config
    if not config["ENABLE_STREAMING"]:
        raise APIError(503, "Service Unavailable", "Streaming is disabled on this gateway.")
    query = parse_query(schemas.StreamQuery)
    session = _visible_session(query.session_id)
    r, identity = get_redis(), _identity()
    settings = streaming.StreamSettings.from_config(config)
    resume = find_resume_point(
        r, request.headers.get("Last-Event-ID"), session_id=session["id"], ttl=settings.resume_seconds
    )
    if resume is not None and resume.complete:
        return Response(status=204)  # tells an EventSource not to reconnect again
    slot = streaming.StreamSlot.acquire(
        r, owner=identity.owner, connection_id=uuid.uuid4().hex, settings=settings
    )
    try:
        agent_stream = _agent_stream(session, resume, slot, settings)
    except BaseException:
        slot.release()
        raise
    # The body goes to the server as it is (bytes, no werkzeug wrapper around it); its close()
    # ends the stream. call_on_close covers the answers without a body (HEAD).
    body = streaming.StreamBody(agent_stream)
    response = Response(body, mimetype="text/event-stream", headers=SSE_HEADERS, direct_passthrough=True)
    response.call_on_close(agent_stream.close)
    return response


def _agent_stream(
    session: dict[str, str],
    resume: ResumePoint | None,
    slot: streaming.StreamSlot,
    settings: streaming.StreamSettings,
) -> streaming.AgentStream:
    source = (
        streaming.FollowSource(frame_log=resume.log, seq=resume.seq)
        if resume is not None
        else _live_source(session, settings)
    )
    return streaming.AgentStream(
        app=current_app._get_current_object(),  # type: ignore[attr-defined]
        source=source,
        checks=streaming.default_stop_checks(r=get_redis(), identity=_identity(), settings=settings),
        settings=settings,
        slot=slot,
    )


def _live_source(session: dict[str, str], settings: streaming.StreamSettings) -> streaming.LiveSource:
    r = get_redis()
    history = service.list_messages(r, session_id=session["id"])

    def keep_reply(reply: str) -> None:
        service.add_message(r, session=session, role="assistant", content=reply)

    return streaming.LiveSource(
        app=current_app._get_current_object(),  # type: ignore[attr-defined]
        backend=backend_from_config(current_app.config),
        messages=service.conversation(history),
        frame_log=FrameLog(r, new_stream_id(), session["id"], settings.resume_seconds),
        on_reply=keep_reply,
        settings=settings,
    )
