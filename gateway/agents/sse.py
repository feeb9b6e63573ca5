"""Server-sent event frames and the short-lived Redis log that lets a client resume.

Every frame is ``id: <stream id>:<n>``, ``event: message|error`` and one
``data:`` line of JSON. ``json.dumps`` escapes CR, LF and every non-ASCII
character (U+2028, NEL...), so no content can end the data line early, start a
new field or add a blank line: user text can never add or split frames.

A stream's frames are also appended to a Redis list (batched, within a quarter
of a second) that lives ``STREAM_RESUME_SECONDS`` after the last write. A client
that reconnects with ``Last-Event-ID`` gets only the frames after that id. An id
that does not parse is :class:`MalformedEventId` (400); one that names no kept
stream of the session is answered by the caller (409, or 204 once answered).

States: ``running`` while produced; ``done`` and ``error`` are final; ``aborted``
(the client left: a resume ends with ``stream_interrupted``); ``restarted`` (the
server stopped it for a restart, its last frame says so with a ``retry:``: a
client that saw that frame reconnects to a new attempt at the reply).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from core.redis import KEYS, REDIS_UNAVAILABLE, hash_reply

log = logging.getLogger(__name__)

OPENING = ": connected\n\n"
HEARTBEAT = ": heartbeat\n\n"
RUNNING, DONE, ERROR, ABORTED, RESTARTED = "running", "done", "error", "aborted", "restarted"
TERMINAL = frozenset({DONE, ERROR})
ENDED = TERMINAL | {RESTARTED}  # nothing more will be added to the log
_EVENT_ID = re.compile(r"^([0-9a-f]{32}):([0-9]{1,9})$")


def new_stream_id() -> str:
    return uuid.uuid4().hex


class MalformedEventId(ValueError):
    """A ``Last-Event-ID`` this gateway never sends."""


def encode_frame(frame_id: str, event: str, data_json: str, retry_ms: int | None = None) -> str:
    """One SSE frame; ``data_json`` must come from json.dumps (ASCII, no line breaks).

    ``retry_ms`` sets the client's reconnection delay (EventSource's ``retry:`` field)."""
    retry = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return f"id: {frame_id}\nevent: {event}\n{retry}data: {data_json}\n\n"


def _decode(frame_id: str, entry: str) -> str:
    """A stored entry (``event\\ndata[\\nretry]``) as SSE text; data has no line breaks."""
    event, _, rest = entry.partition("\n")
    data_json, _, retry = rest.partition("\n")
    return encode_frame(frame_id, event, data_json, int(retry) if retry.isdigit() else None)


def dumps(data: Mapping[str, Any]) -> str:
    # ensure_ascii (the default) is what keeps every line separator escaped.
    return json.dumps(data, ensure_ascii=True, separators=(", ", ": "))


class FrameLog:
    """The frames of one stream: numbered here, kept in Redis in batches for resuming."""

    def __init__(
        self, r: redis.Redis, stream_id: str, session_id: str, ttl: int, seq: int = 0, message_id: str = ""
    ) -> None:
        self.r = r
        self.stream_id = stream_id
        self.session_id = session_id
        self.ttl = ttl
        self.seq = seq  # frames numbered so far (the live stream is the only writer)
        self.message_id = message_id  # the user message answered (names its reply claim)
        self.pending: list[str] = []

    def frame_id(self, seq: int) -> str:
        return f"{self.stream_id}:{seq}"

    def add(self, event: str, data: Mapping[str, Any], retry_ms: int | None = None) -> str:
        """Number a frame, queue it for Redis and return its SSE text."""
        data_json = dumps(data)
        self.seq += 1
        entry = f"{event}\n{data_json}" if retry_ms is None else f"{event}\n{data_json}\n{retry_ms}"
        self.pending.append(entry)
        return encode_frame(self.frame_id(self.seq), event, data_json, retry_ms)

    def flush(self, state: str | None = None) -> bool:
        """Write queued frames, the liveness mark and ``state``; keep them queued if Redis fails."""
        frames_key, meta_key = KEYS.agent_stream_frames(self.stream_id), KEYS.agent_stream(self.stream_id)
        meta = {"session_id": self.session_id, "alive": f"{time.time():.3f}"}
        if self.message_id:
            meta["message_id"] = self.message_id
        if state:
            meta["state"] = state
        pipe = self.r.pipeline(transaction=True)
        if self.pending:
            pipe.rpush(frames_key, *self.pending)
        pipe.expire(frames_key, self.ttl)
        pipe.hset(meta_key, mapping=meta)
        pipe.expire(meta_key, self.ttl)
        try:
            pipe.execute()
        except REDIS_UNAVAILABLE as exc:
            log.warning("stream %s: frames not stored (%s)", self.stream_id, type(exc).__name__)
            return False
        self.pending.clear()
        return True

    def discard(self) -> None:
        """Forget a log that was never used (another stream answers the message)."""
        self.r.delete(KEYS.agent_stream(self.stream_id), KEYS.agent_stream_frames(self.stream_id))

    def snapshot(self, after: int) -> tuple[dict[str, str], list[str]]:
        """(meta, SSE texts of the stored frames after ``after``), read atomically."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(KEYS.agent_stream(self.stream_id))
        pipe.lrange(KEYS.agent_stream_frames(self.stream_id), after, -1)
        raw_meta, entries = pipe.execute()
        meta = hash_reply(raw_meta)
        frames = [_decode(self.frame_id(n), entry) for n, entry in enumerate(entries, start=after + 1)]
        return meta, frames


@dataclass(frozen=True)
class ResumePoint:
    """Where a reconnecting client left a stream that is still kept in Redis."""

    log: FrameLog
    seq: int
    state: str
    missing: int

    @property
    def complete(self) -> bool:
        """Nothing left to send: the stream ended and the client saw its last frame."""
        return self.state in TERMINAL and self.missing == 0

    @property
    def starts_over(self) -> bool:
        """The client saw the server stop this attempt for a restart: it gets a new attempt."""
        return self.state == RESTARTED and self.missing == 0


def find_resume_point(r: redis.Redis, last_event_id: str, *, session_id: str, ttl: int) -> ResumePoint | None:
    """The resume point named by ``Last-Event-ID`` for this session; None when no such stream
    of this session is kept (expired, forgotten, another session's). Raises MalformedEventId."""
    match = _EVENT_ID.match(last_event_id.strip())
    if match is None:
        raise MalformedEventId(last_event_id)
    stream_id, seq = match.group(1), int(match.group(2))
    pipe = r.pipeline(transaction=True)
    pipe.hgetall(KEYS.agent_stream(stream_id))
    pipe.llen(KEYS.agent_stream_frames(stream_id))
    raw_meta, stored = pipe.execute()
    meta = hash_reply(raw_meta)
    if not meta or meta.get("session_id") != session_id:
        return None
    # An id past the stored frames is a client that got frames a crashed producer never
    # flushed (or got them before the flush): it is owed the frames after it, if any come.
    message_id = meta.get("message_id", "")
    frame_log = FrameLog(r, stream_id, session_id, ttl, seq=int(stored), message_id=message_id)
    return ResumePoint(frame_log, seq, meta.get("state", RUNNING), max(0, int(stored) - seq))
