"""The life of one /agents/stream response.

A *source* produces frames: :class:`LiveSource` runs the agent backend (in a
background thread, a greenlet under the gevent worker, when it may block for
long; inline when its pauses are short) and turns its deltas into frames;
:class:`FollowSource` replays a kept stream after ``Last-Event-ID`` and follows
it while it is still being produced elsewhere. :class:`AgentStream` pumps a
source to the client and, between frames:

* writes a heartbeat comment when nothing was written for
  ``STREAM_HEARTBEAT_SECONDS`` (proxies and clients keep the connection open);
* at most once per ``CHECK_INTERVAL`` (and at least that often when idle) runs
  the *stop checks*, a plain list of callables returning a stop reason or None
  (lifetime, key revocation, quota, the admin's session; append more in
  :func:`default_stop_checks`); a reason ends the stream with a final
  ``event: error``;
* writes new frames to Redis for resuming within ``FLUSH_INTERVAL``, and marks
  the stream alive at least every ``ALIVE_INTERVAL`` (a follower on another
  worker takes a silent log for a dead producer after ``STALE_AFTER``);
* every ``SLOT_REFRESH_SECONDS`` renews its per-identity slot and its reply claim,
  both booked for seconds only: a SIGKILLed worker's slots and claims lapse on
  their own within ``SLOT_TTL_SECONDS``.

One reply per user message: a stream that generates first *claims* the message
(:class:`ReplyClaim`, one Redis key per message naming the stream); a second
open follows the claimed stream, a reopen after the reply was stored replays it
(:class:`ReplaySource`). The claim is kept with the reply, released when the
attempt ends without one (error, client gone, restart) so the next open retries.

When the server drains (gunicorn's SIGTERM, see :func:`watch_shutdown`) a
stream gets ``SHUTDOWN_GRACE`` to finish, then ends with ``event: error``
(``server_restarting``) carrying a ``retry:`` hint; reconnecting with its id
starts a new attempt on a live worker.

When the client goes away the WSGI server closes the response (GeneratorExit at
the ``yield``, or ``close()`` after a failed write under gevent): the backend is
stopped (an inline iterator is closed at once; a background thread stops at its
next delta, or at the upstream read timeout) and the partial reply is not
stored. The per-identity stream slot and the open-streams gauge are released in
``close()``, which the WSGI server calls however the response ends.
"""

from __future__ import annotations

import logging
import math
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask, has_app_context

from auth.identity import Identity, ip_allowed
from auth.keys import get_key, key_status
from auth.loaders import identity_from_record
from auth.scopes import AGENTS_WRITE
from auth.sessions import session_key
from core.errors import APIError
from core.redis import KEYS, REDIS_UNAVAILABLE, LuaScript
from gateway.agents.backends import AgentBackend, AgentBackendError, Message, UsageMeter
from gateway.agents.sse import (
    ABORTED,
    DONE,
    ENDED,
    ERROR,
    HEARTBEAT,
    OPENING,
    RESTARTED,
    RUNNING,
    FrameLog,
    dumps,
    encode_frame,
)
from gateway.metrics import recorder
from gateway.ratelimit import quota_exhausted
from gateway.ratelimit.tokens import Reservation

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # stop checks: at most this often while frames flow, at least this often
# A frame reaches Redis (for resuming elsewhere) at most this long after it was made: what a
# crash can lose. Batched, so a thousand streams make a few thousand round trips a second.
FLUSH_INTERVAL = 0.25
ALIVE_INTERVAL = 1.0  # a quiet live stream marks its log alive this often
FOLLOW_POLL = 0.2  # how often a resumed stream looks for new frames of a live one
STALE_AFTER = 5.0  # a live stream whose log was not refreshed this long has lost its producer
# Slots and reply claims are leases renewed by the stream itself: a worker that dies
# without releasing them (SIGKILL, OOM) frees them within SLOT_TTL_SECONDS.
SLOT_TTL_SECONDS = 10
SLOT_REFRESH_SECONDS = 3.0
RESTART_RETRY_MS = 1000  # retry: hint after server_restarting, plus up to as much again (spread)
REPLY_COMPACT_EVERY = 16  # join the kept reply deltas into one string this often

StopCheck = Callable[[], "str | None"]
REDIS_ERRORS = (*REDIS_UNAVAILABLE, redis.RedisError)

# Sentences for the ``message`` of a final ``event: error``, by reason.
STOP_MESSAGES: dict[str, str] = {
    "max_lifetime": "The stream reached its maximum lifetime and was closed.",
    "key_revoked": "The API key was revoked; the stream was closed.",
    "key_expired": "The API key expired; the stream was closed.",
    "key_scope_removed": "The API key no longer has the agents:write scope; the stream was closed.",
    "key_ip_not_allowed": "The API key may no longer be used from this client IP address; "
    "the stream was closed.",
    "quota_exhausted": "The rate limit or quota of this key ran out; the stream was closed.",
    "token_quota_exhausted": "The token quota of this key ran out during the reply; the tokens "
    "sent were counted and the stream was closed.",
    "session_ended": "The admin session ended (logout or expiry); the stream was closed.",
    "no_user_message": "The session has no user message to answer: POST /agents/message first.",
    "stream_interrupted": "The stream was interrupted before it finished; open a new stream.",
    "server_restarting": "The server is restarting; reconnect with Last-Event-ID to get the reply.",
    "upstream_error": "The agent backend failed.",
    "internal_error": "The stream failed unexpectedly; open a new stream.",
}


@dataclass(frozen=True)
class StreamSettings:
    heartbeat_seconds: float
    max_seconds: float
    resume_seconds: int
    max_per_identity: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StreamSettings:
        return cls(
            heartbeat_seconds=config["STREAM_HEARTBEAT_SECONDS"],
            max_seconds=config["STREAM_MAX_SECONDS"],
            resume_seconds=config["STREAM_RESUME_SECONDS"],
            max_per_identity=config["STREAM_MAX_CONCURRENT_PER_KEY"],
        )


@dataclass(frozen=True)
class Chunk:
    """Text for the client; ``final`` ends the stream after it."""

    text: str
    final: bool = False


def error_data(reason: str, session_id: str, message: str | None = None) -> dict[str, str]:
    return {
        "type": "error",
        "error": reason,
        "reason": reason,
        "message": message or STOP_MESSAGES.get(reason, "The stream was stopped."),
        "session_id": session_id,
    }


def restart_retry_ms() -> int:
    # Spread: every client of a restarting worker reconnects at once otherwise.
    return RESTART_RETRY_MS + secrets.randbelow(RESTART_RETRY_MS + 1)


# ---- stop checks -------------------------------------------------------------------


def lifetime_check(max_seconds: float, clock: Callable[[], float] = time.monotonic) -> StopCheck:
    deadline = clock() + max_seconds
    return lambda: "max_lifetime" if clock() >= deadline else None


def key_revocation_check(r: redis.Redis, key_id: str, client_ip: str | None = None) -> StopCheck:
    """Stops the stream once the key is revoked, expired or deleted, or is edited so that it
    no longer allows it: the stream route's ``agents:write`` scope removed, or ``client_ip``
    taken off its allow-list (one HGETALL per check)."""

    def check() -> str | None:
        record = get_key(r, key_id)
        if record is None:
            return "key_revoked"
        status = key_status(record)
        if status != "active":
            return f"key_{status}"
        edited = identity_from_record(record)
        if not edited.has_scope(AGENTS_WRITE):
            return "key_scope_removed"
        if client_ip is not None and not ip_allowed(edited, client_ip):
            return "key_ip_not_allowed"
        return None

    return check


def quota_check(identity: Identity) -> StopCheck | None:
    """Stops the stream when other requests spend the identity's quota while it is open.

    Only the quota (e.g. 10000/day) ends a stream, not the per-minute rate: the rate
    governs how often requests start. A stream whose own request took the last unit
    of quota was granted, so it is left to finish.
    """
    if not identity.quota or quota_exhausted(identity, kinds=("quota",)):
        return None

    def check() -> str | None:
        return "quota_exhausted" if quota_exhausted(identity, kinds=("quota",)) else None

    return check


def session_check(r: redis.Redis, sid: str) -> StopCheck:
    """Stops an admin user's stream once the server-side session is gone (logout, expiry)."""

    def check() -> str | None:
        return None if r.exists(session_key(sid)) else "session_ended"

    return check


class _Shutdown:
    """Whether this process is stopping (set by the server, see :func:`watch_shutdown`)."""

    def __init__(self) -> None:
        self.stopping: Callable[[], bool] = lambda: False
        self.grace = 0.0
        self.since: float | None = None

    def reason(self) -> str | None:
        if not self.stopping():
            return None
        if self.since is None:
            self.since = time.monotonic()  # the first stream to notice starts the grace
        return "server_restarting" if time.monotonic() - self.since >= self.grace else None


_shutdown = _Shutdown()


def watch_shutdown(stopping: Callable[[], bool], *, grace_seconds: float) -> None:
    """Open streams end with ``server_restarting`` ``grace_seconds`` after ``stopping()``
    turns true (gunicorn.conf.py passes ``not worker.alive``). The grace lets a reply that
    is nearly done finish; it must stay well inside the server's graceful timeout."""
    _shutdown.stopping, _shutdown.grace, _shutdown.since = stopping, grace_seconds, None


def shutdown_check() -> str | None:
    return _shutdown.reason()


def default_stop_checks(
    *, r: redis.Redis, identity: Identity, settings: StreamSettings, client_ip: str | None = None
) -> list[StopCheck]:
    """The checks every open stream runs: server shutdown, lifetime; revocation and quota for
    API keys, the server-side session for admin users."""
    checks = [shutdown_check, lifetime_check(settings.max_seconds)]
    if identity.type == "user" and identity.session_id:
        checks.append(session_check(r, identity.session_id))
    if identity.type == "api_key":
        checks.append(key_revocation_check(r, identity.id, client_ip))
        quota = quota_check(identity)
        if quota is not None:
            checks.append(quota)
    return checks


# ---- per-identity cap on open streams ----------------------------------------------

# A slot is a member scored by its expiry; the stream renews it every SLOT_REFRESH_SECONDS.
# Expired members (a worker that died without releasing) are dropped before counting, so a
# crash leaks a slot for SLOT_TTL_SECONDS at most. TIME keeps every worker and instance on
# Redis's clock.
_ACQUIRE_SLOT = LuaScript(
    """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
)
_RENEW_SLOT = LuaScript(
    """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""
)


class StreamSlot:
    """One open stream counted against its identity's STREAM_MAX_CONCURRENT_PER_KEY."""

    def __init__(self, r: redis.Redis, owner: str, connection_id: str) -> None:
        self.r, self.key, self.member = r, KEYS.agent_stream_slots(owner), connection_id
        self.counted = False

    @classmethod
    def acquire(
        cls, r: redis.Redis, *, owner: str, connection_id: str, settings: StreamSettings
    ) -> StreamSlot:
        """Take a slot or raise a 429 APIError when the identity has all its streams open."""
        slot = cls(r, owner, connection_id)
        if settings.max_per_identity <= 0:
            return slot  # 0 switches the cap off
        taken = _ACQUIRE_SLOT(r, [slot.key], [settings.max_per_identity, SLOT_TTL_SECONDS, connection_id])
        if not taken:
            raise APIError(
                429,
                "Too Many Requests",
                f"At most {settings.max_per_identity} streams may be open at once for this identity; "
                "close one and retry.",
                headers={"Retry-After": "5"},
                extra={"retry_after": 5},
            )
        slot.counted = True
        return slot

    def renew(self) -> None:
        """Push the slot's expiry forward (the stream's own heartbeat)."""
        if self.counted:
            _RENEW_SLOT(self.r, [self.key], [SLOT_TTL_SECONDS, self.member])

    def release(self) -> None:
        self.counted = False
        self.r.zrem(self.key, self.member)


# ---- one reply per user message ------------------------------------------------------

# Compare-and-set scripts: only the stream named in the claim may renew, keep or drop it.
_RENEW_CLAIM = LuaScript(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
)
_RELEASE_CLAIM = LuaScript(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""
)


class ReplyClaim:
    """Which stream answers one user message: a key naming the stream, leased like a slot.

    Taken (SET NX) before generating, renewed by the stream, kept for the resume window
    once the reply is stored (a racing open then follows and replays that stream), dropped
    when the attempt ends without a reply.
    """

    def __init__(self, r: redis.Redis, session_id: str, message_id: str) -> None:
        self.r, self.key = r, KEYS.agent_reply_claim(session_id, message_id)

    def take(self, stream_id: str) -> str | None:
        """None when ``stream_id`` now holds the claim; else the id of the stream holding it."""
        for _ in range(5):  # the holder may drop it between our SET and GET: try again
            if self.r.set(self.key, stream_id, nx=True, ex=SLOT_TTL_SECONDS):
                return None
            holder = self.holder()
            if holder:
                return holder
        return ""  # names no stream: the caller's follower ends with stream_interrupted

    def holder(self) -> str | None:
        value = self.r.get(self.key)
        return str(value) if value else None

    def renew(self, stream_id: str) -> bool:
        return bool(_RENEW_CLAIM(self.r, [self.key], [stream_id, SLOT_TTL_SECONDS]))

    def keep(self, stream_id: str, seconds: int) -> bool:
        """Keep the claim with the stored reply; False when ``stream_id`` lost it (never store then)."""
        return bool(_RENEW_CLAIM(self.r, [self.key], [stream_id, max(seconds, SLOT_TTL_SECONDS)]))

    def release(self, stream_id: str) -> None:
        _RELEASE_CLAIM(self.r, [self.key], [stream_id])


def stored_usage(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The usage kept with the latest stored reply (what a replay's ``done`` frame carries)."""
    for message in reversed(history):
        if message["role"] == "user":
            return None
        if message["role"] == "assistant" and isinstance(message.get("usage"), dict):
            return dict(message["usage"])
    return None


def latest_turn(history: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[str]]:
    """(the latest user message or None, the contents of the assistant messages after it)."""
    for index in range(len(history) - 1, -1, -1):
        if history[index]["role"] == "user":
            return history[index], [m["content"] for m in history[index + 1 :] if m["role"] == "assistant"]
    return None, []


# ---- sources ----------------------------------------------------------------------


class LiveSource:
    """Runs the backend and numbers its deltas as frames.

    A backend that may block for long (an upstream read) runs in a background
    thread (a greenlet under gevent) feeding a queue, so heartbeats and stop
    checks go on while it waits. A backend whose pauses are known to be short
    (``max_pause_seconds`` under CHECK_INTERVAL and the heartbeat interval: the
    built-in agent at its usual pacing) is iterated
    inline, which saves a greenlet, a queue and their memory on every stream.
    """

    def __init__(
        self,
        *,
        app: Flask,
        backend: AgentBackend,
        messages: list[Message],
        frame_log: FrameLog,
        on_reply: Callable[[str, dict[str, Any]], None],
        settings: StreamSettings,
        claim: ReplyClaim | None = None,
        tokens: Reservation | None = None,
    ) -> None:
        self.app, self.backend, self.messages = app, backend, messages
        self.log, self.on_reply, self.claim = frame_log, on_reply, claim
        # The reply's tokens (usage in the done frame), and its reservation on the key's token
        # quota: covered before each delta is sent, settled once however the reply ends.
        self.meter, self.tokens = UsageMeter(), tokens
        # Inline only when a pause can delay neither a stop check nor a heartbeat.
        pause = getattr(backend, "max_pause_seconds", None)
        self.inline = pause is not None and pause < min(CHECK_INTERVAL, settings.heartbeat_seconds)
        self.items: queue.Queue[tuple[str, str]] | None = None
        self.stopped: threading.Event | None = None
        self.deltas: Iterator[str] | None = None
        self.refusal: tuple[str, str] | None = None
        self.started = False
        self.parts: list[str] = []
        self.final_state: str | None = None
        self.next_flush = self.next_alive = 0.0

    def start(self) -> None:
        self.started = True
        self.log.flush(state=RUNNING)  # makes the stream resumable from its first frame
        # The backend takes the conversation from here; the stream does not keep its own
        # reference to it (a long history would otherwise stay in memory for the whole stream).
        messages, self.messages = self.messages, []
        if not any(m["role"] == "user" for m in messages):
            self.refusal = ("error", "no_user_message")
        elif self.inline:
            self.deltas = iter(self.backend.stream_reply(messages, self.meter))
        else:
            self.items, self.stopped = queue.Queue(), threading.Event()
            producer = threading.Thread(
                target=self._produce, args=(messages,), name=f"agent-{self.log.stream_id}", daemon=True
            )
            producer.start()

    def _produce(self, messages: list[Message]) -> None:
        assert self.items is not None and self.stopped is not None
        with self.app.app_context():
            deltas = self.backend.stream_reply(messages, self.meter)
            try:
                for delta in deltas:
                    if self.stopped.is_set():
                        return  # the client went away: stop generating
                    if delta:
                        self.items.put(("delta", delta))
                self.items.put(("end", ""))
            except Exception as exc:
                self.items.put(self._failure(exc))
            finally:
                _close(deltas)

    def _failure(self, exc: Exception) -> tuple[str, str]:
        if isinstance(exc, AgentBackendError):
            return ("upstream_error", str(exc))
        log.error("agent backend %s failed unexpectedly", self.backend.name, exc_info=exc)
        return ("error", "internal_error")

    def _item(self, timeout: float) -> tuple[str, str] | None:
        if self.refusal is not None:
            return self.refusal
        if self.deltas is not None:
            try:
                return ("delta", next(self.deltas))
            except StopIteration:
                return ("end", "")
            except Exception as exc:
                return self._failure(exc)
        assert self.items is not None
        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            return None

    def _keep(self, delta: str) -> None:
        """Collect the reply to store at the end, compacting as it grows: a list of word-sized
        strings costs ~60 bytes per word, one string ~1 byte per character."""
        self.parts.append(delta)
        if len(self.parts) >= REPLY_COMPACT_EVERY:
            self.parts[:] = ["".join(self.parts)]

    def next(self, timeout: float) -> Chunk | None:
        if not self.started:
            self.start()
        item = self._item(timeout)
        if item is None:
            return None
        kind, value = item
        session_id = self.log.session_id
        if kind == "delta":
            if not value:
                return None
            if not self._covered(value):
                return self.finish("error", error_data("token_quota_exhausted", session_id))
            self.meter.add(value)
            self._keep(value)
            data = {"type": "delta", "content": value, "session_id": session_id}
            return Chunk(self.log.add("message", data))
        if kind == "end":
            usage = self.meter.usage()
            self._store("".join(self.parts), usage)
            return self.finish("message", {"type": "done", "session_id": session_id, "usage": usage})
        if kind == "upstream_error":
            return self.finish("error", error_data("upstream_error", session_id, value))
        return self.finish("error", error_data(value, session_id))

    def _covered(self, delta: str) -> bool:
        """Whether the reservation covers the reply with ``delta`` (extending it if need be)."""
        if self.tokens is None:
            return True
        return self.tokens.cover(self.meter.sent(delta), sent=self.meter.sent())

    def _settle(self) -> None:
        """Count the reply's tokens on the quota and give back the rest (once)."""
        if self.tokens is not None and not self.tokens.settled:
            try:
                self.tokens.settle(self.meter.usage())
            except REDIS_ERRORS as exc:  # it lapses on its own, counted for what it reported
                self.tokens.settled = True
                log.warning("token reservation not settled: redis unavailable (%s)", type(exc).__name__)

    def _store(self, reply: str, usage: dict[str, Any]) -> None:
        """Keep the reply, unless this stream lost the message's claim (then another stream
        answers it, and a second stored reply is exactly what the claim prevents)."""
        if not reply:
            return
        if self.claim is not None and not self.claim.keep(self.log.stream_id, self.log.ttl):
            log.warning("stream %s lost its reply claim; the reply is not stored", self.log.stream_id)
            return
        self.on_reply(reply, usage)

    def finish(
        self, event: str, data: dict[str, Any], *, state: str | None = None, retry_ms: int | None = None
    ) -> Chunk:
        """The last frame, stored with the stream's final state before it is sent."""
        self._settle()
        frame = self.log.add(event, data, retry_ms)
        self.final_state = state or (DONE if event == "message" else ERROR)
        self.log.flush(state=self.final_state)
        if self.final_state != DONE:
            self._release_claim()  # no reply was stored: the next open tries again
        return Chunk(frame, final=True)

    def stop_frame(self, reason: str) -> str:
        data = error_data(reason, self.log.session_id)
        if reason == "server_restarting":
            return self.finish("error", data, state=RESTARTED, retry_ms=restart_retry_ms()).text
        return self.finish("error", data).text

    def due(self) -> float:
        """When :meth:`tick` has work next (monotonic clock)."""
        return self.next_flush if self.log.pending else self.next_alive

    def tick(self) -> None:
        # Batching frames (one Redis round trip per FLUSH_INTERVAL, not one per delta) keeps a
        # thousand open streams from queueing on the connection pool; the first frame after a
        # pause goes at once. A quiet stream still marks itself alive for its followers.
        now = time.monotonic()
        if now >= self.due():
            self.next_flush, self.next_alive = now + FLUSH_INTERVAL, now + ALIVE_INTERVAL
            self.log.flush()

    def renew(self) -> None:
        if self.claim is not None and self.final_state is None:
            self.claim.renew(self.log.stream_id)
        if self.tokens is not None and self.final_state is None:
            self.tokens.renew(sent=self.meter.sent())

    def _release_claim(self) -> None:
        if self.claim is not None:
            self.claim.release(self.log.stream_id)

    def close(self) -> None:
        if self.stopped is not None:
            self.stopped.set()
        if self.deltas is not None:
            _close(self.deltas)  # GeneratorExit inside the backend: it stops generating
        self._settle()  # a client gone mid-reply: what was sent counts
        if self.final_state is None:
            # Never iterated (HEAD) or cut short: resumes will end with stream_interrupted.
            self.final_state = ABORTED
            self.log.flush(state=ABORTED)
            self._release_claim()
        elif self.log.pending:
            self.log.flush(state=self.final_state)


class FollowSource:
    """Replays a kept stream after the client's last frame and follows it while it runs."""

    def __init__(self, *, frame_log: FrameLog, seq: int) -> None:
        self.log, self.seq = frame_log, seq
        self.session_id = frame_log.session_id

    def next(self, timeout: float) -> Chunk | None:
        deadline = time.monotonic() + timeout
        while True:
            meta, frames = self.log.snapshot(self.seq)
            state = meta.get("state", RUNNING)
            if frames:
                self.seq += len(frames)
                return Chunk("".join(frames), final=state in ENDED)
            if state in ENDED:
                return Chunk("", final=True)
            if state == ABORTED or time.time() - float(meta.get("alive") or 0) > STALE_AFTER:
                return self.interrupted(meta)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(FOLLOW_POLL, left))

    def interrupted(self, meta: Mapping[str, str]) -> Chunk:
        """The producer is gone: store a final error so later resumes end the same way, and
        free the message's claim if the dead producer still holds it (the next open retries)."""
        self.log.seq = self.seq
        frame = self.log.add("error", error_data("stream_interrupted", self.session_id))
        self.log.flush(state=ERROR)
        self.seq = self.log.seq
        message_id = meta.get("message_id") or self.log.message_id
        if message_id:
            ReplyClaim(self.log.r, self.session_id, message_id).release(self.log.stream_id)
        return Chunk(frame, final=True)

    def stop_frame(self, reason: str) -> str:
        # Not stored (the stream may still be produced elsewhere); it repeats the id of the
        # last frame this client got, so a later resume continues from the right place.
        retry = restart_retry_ms() if reason == "server_restarting" else None
        data = dumps(error_data(reason, self.session_id))
        return encode_frame(self.log.frame_id(self.seq), "error", data, retry)

    def due(self) -> float:
        return math.inf

    def tick(self) -> None:
        """Nothing to write: the producer keeps the log fresh."""

    def renew(self) -> None:
        """Nothing leased beyond the slot."""

    def close(self) -> None:
        """Nothing to release beyond the slot."""


class ReplaySource(FollowSource):
    """The stored reply to the session's latest user message, sent again, never generated again.

    Its frames are written to a new kept log first, so the replay resumes like any stream.
    """

    def __init__(
        self, *, frame_log: FrameLog, replies: list[str], usage: dict[str, Any] | None = None
    ) -> None:
        super().__init__(frame_log=frame_log, seq=0)
        self.replies, self.usage = replies, usage

    def next(self, timeout: float) -> Chunk | None:
        if self.replies:
            session_id = self.log.session_id
            for reply in self.replies:
                self.log.add("message", {"type": "delta", "content": reply, "session_id": session_id})
            done: dict[str, Any] = {"type": "done", "session_id": session_id}
            if self.usage is not None:  # the stored reply's own count: a replay counts nothing
                done["usage"] = self.usage
            self.log.add("message", done)
            self.log.flush(state=DONE)
            self.replies = []
        return super().next(timeout)


# ---- the response --------------------------------------------------------------------


class AgentStream:
    """Pumps a source to the client with heartbeats and stop checks; ``close()`` cleans up."""

    def __init__(
        self,
        *,
        app: Flask,
        source: LiveSource | FollowSource,
        checks: list[StopCheck],  # FollowSource includes ReplaySource
        settings: StreamSettings,
        slot: StreamSlot,
    ) -> None:
        self.app, self.source, self.checks = app, source, checks
        self.settings, self.slot = settings, slot
        self.closed = self.ended = False
        self.next_beat = self.next_check = self.next_renew = 0.0
        recorder.stream_opened()

    def events(self) -> Iterator[bytes]:
        """The response body: frames, heartbeats and, when a check says so, a final error.

        One generator calling plain methods, not a chain of generators: a sleeping
        stream's greenlet keeps a copy of its C stack, and every generator level in
        the chain adds to it (and to the frames kept alive) on each of a thousand streams.
        """
        try:
            yield OPENING.encode()
            now = time.monotonic()
            self.next_beat, self.next_check = now + self.settings.heartbeat_seconds, now + CHECK_INTERVAL
            self.next_renew = now + SLOT_REFRESH_SECONDS
            while not self.ended:
                text = self._guarded_step()
                if text:
                    yield text.encode()
        finally:
            self.close()

    def _guarded_step(self) -> str:
        try:
            return self._step()
        except REDIS_ERRORS as exc:
            log.warning("stream ended: redis unavailable (%s)", type(exc).__name__)
        except Exception:
            log.exception("stream failed")
        self.ended = True
        return self._failure_frame()

    def _step(self) -> str:
        """One turn: the source's next text, then (when due) the stop checks and a heartbeat.

        Returns what to write ('' for nothing) and sets ``ended`` after the last frame.
        """
        clock = time.monotonic
        wake = min(self.next_beat, self.next_check, self.source.due())
        chunk = self.source.next(max(0.0, wake - clock()))
        text = chunk.text if chunk is not None else ""
        if chunk is not None and chunk.final:
            self.ended = True
            return text
        if clock() >= self.next_check:
            self.next_check = clock() + CHECK_INTERVAL
            reason = self._stop_reason()
            if reason:
                self.ended = True
                return text + self.source.stop_frame(reason)
            if clock() >= self.next_renew:
                self.next_renew = clock() + SLOT_REFRESH_SECONDS
                self.slot.renew()
                self.source.renew()
        self.source.tick()
        if not text and clock() >= self.next_beat:
            text = HEARTBEAT
        if text:
            self.next_beat = clock() + self.settings.heartbeat_seconds
        return text

    def _stop_reason(self) -> str | None:
        # Checks get an app context (a quota check may need the app's config or
        # extensions); it is pushed for the checks only, never across a yield, where
        # it would be shared by whatever runs next in this thread or greenlet.
        with self.app.app_context():
            return self._first_reason()

    def _first_reason(self) -> str | None:
        for check in self.checks:
            try:
                reason = check()
            except Exception as exc:  # a failing check must not end a healthy stream
                log.warning("stream stop check failed: %s", type(exc).__name__)
                continue
            if reason:
                return reason
        return None

    def _failure_frame(self) -> str:
        try:
            return self.source.stop_frame("internal_error")
        except Exception:  # Redis may be the thing that failed
            frame_log = self.source.log
            data = error_data("internal_error", frame_log.session_id)
            return encode_frame(frame_log.frame_id(frame_log.seq + 1), "error", dumps(data))

    def close(self) -> None:
        """Stop generation, mark the log, free the slot, count the stream closed (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if has_app_context():
            self._release()
        else:
            with self.app.app_context():
                self._release()

    def _release(self) -> None:
        for step in (self.source.close, self.slot.release):
            try:
                step()
            except REDIS_ERRORS as exc:
                log.warning("stream clean-up incomplete: redis unavailable (%s)", type(exc).__name__)
        recorder.stream_closed()


class StreamBody:
    """The WSGI body of a stream, given to the server as it is (``direct_passthrough``).

    Iterating it is iterating :meth:`AgentStream.events` itself, so the server
    resumes that generator directly; werkzeug's default body (a ClosingIterator
    over an encoding generator) would add two more levels to every open stream.
    ``close()`` is what the WSGI server calls however the response ends, even when
    the body was never iterated.
    """

    def __init__(self, stream: AgentStream) -> None:
        self.stream = stream
        self.body = stream.events()

    def __iter__(self) -> Iterator[bytes]:
        return self.body

    def close(self) -> None:
        self.body.close()  # GeneratorExit at its yield: its finally closes the stream
        self.stream.close()  # idempotent; the one that counts when the body never started


def _close(deltas: Iterator[str]) -> None:
    close = getattr(deltas, "close", None)
    if close is not None:
        close()
