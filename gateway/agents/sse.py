"""Server-sent event frames and the short-lived Redis log that lets a client resume.

Every frame is ``id: <stream id>:<n>``, ``event: message|error`` and one
``data:`` line of JSON. ``json.dumps`` escapes CR, LF and every non-ASCII
character (U+2028, NEL...), so no content can end the data line early, start a
new field or add a blank line: user text can never add or split frames.

A stream's frames are also appended to a Redis list (batched, about once a
second) that lives ``STREAM_RESUME_SECONDS`` after the last write. A client that
reconnects with ``Last-Event-ID`` gets only the frames after that id.
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

from gateway.redis import KEYS, REDIS_UNAVAILABLE

log = logging.getLogger(__name__)

OPENING = ": connected\n\n"
HEARTBEAT = ": heartbeat\n\n"
RUNNING, DONE, ERROR, ABORTED = "running", "done", "error", "aborted"
TERMINAL = frozenset({DONE, ERROR})
_EVENT_ID = re.compile(r"^([0-9a-f]{32}):([0-9]{1,9})$")


def new_stream_id() -> str:
    return uuid.uuid4().hex


def encode_frame(frame_id: str, event: str, data_json: str) -> str:
    """One SSE frame; ``data_json`` must come from json.dumps (ASCII, no line breaks)."""
    return f"id: {frame_id}\nevent: {event}\ndata: {data_json}\n\n"


def dumps(data: Mapping[str, Any]) -> str:
    # ensure_ascii (the default) is what keeps every line separator escaped.
    return json.dumps(data, ensure_ascii=True, separators=(", ", ": "))


class FrameLog:
    """The frames of one stream: numbered here, kept in Redis in batches for resuming."""

    def __init__(self, r: redis.Redis, stream_id: str, session_id: str, ttl: int, seq: int = 0) -> None:
        self.r = r
        self.stream_id = stream_id
        self.session_id = session_id
        self.ttl = ttl
        self.seq = seq  # frames numbered so far (the live stream is the only writer)
        self.pending: list[str] = []

    def frame_id(self, seq: int) -> str:
        return f"{self.stream_id}:{seq}"

    def add(self, event: str, data: Mapping[str, Any]) -> str:
        """Number a frame, queue it for Redis and return its SSE text."""
        data_json = dumps(data)
        self.seq += 1
        self.pending.append(f"{event}\n{data_json}")
        return encode_frame(self.frame_id(self.seq), event, data_json)

    def flush(self, state: str | None = None) -> bool:
        """Write queued frames, the liveness mark and ``state``; keep them queued if Redis fails."""
        frames_key, meta_key = KEYS.agent_stream_frames(self.stream_id), KEYS.agent_stream(self.stream_id)
        meta = {"session_id": self.session_id, "alive": f"{time.time():.3f}"}
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

    def snapshot(self, after: int) -> tuple[dict[str, str], list[str]]:
        """(meta, SSE texts of the stored frames after ``after``), read atomically."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(KEYS.agent_stream(self.stream_id))
        pipe.lrange(KEYS.agent_stream_frames(self.stream_id), after, -1)
        meta, entries = pipe.execute()
        frames = []
        for offset, entry in enumerate(entries, start=after + 1):
            event, _, data_json = entry.partition("\n")
            frames.append(encode_frame(self.frame_id(offset), event, data_json))
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


def find_resume_point(
    r: redis.Redis, last_event_id: str | None, *, session_id: str, ttl: int
) -> ResumePoint | None:
    """The resume point named by ``Last-Event-ID`` for this session, or None to start afresh."""
    match = _EVENT_ID.match((last_event_id or "").strip())
    if match is None:
        return None
    stream_id, seq = match.group(1), int(match.group(2))
    pipe = r.pipeline(transaction=True)
    pipe.hgetall(KEYS.agent_stream(stream_id))
    pipe.llen(KEYS.agent_stream_frames(stream_id))
    meta, stored = pipe.execute()
    # Another session's stream id (or a forgotten one) is ignored rather than replayed.
    if not meta or meta.get("session_id") != session_id or seq > int(stored):
        return None
    frame_log = FrameLog(r, stream_id, session_id, ttl, seq=int(stored))
    return ResumePoint(frame_log, seq, meta.get("state", RUNNING), int(stored) - seq)
