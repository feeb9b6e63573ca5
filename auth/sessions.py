"""Server-side sessions in Redis for admin users (a Flask SessionInterface).

A signed cookie alone cannot be revoked, so the cookie carries only a random
session id (256 bits) and the data lives in Redis under the SHA-256 of that id
(a dump of Redis yields no usable cookie). Login issues a new id (no session
fixation); logout and expiry delete the record, so a copied cookie stops
working. Idle and absolute timeouts are enforced inside Redis by one script
that reads the session and slides its TTL in the same round trip.

Saving is conditional: a session is created with ``SET NX`` and only ever
updated with ``SET XX``, so a request that loaded a session before a logout (or
a "log out everywhere") deleted it cannot write it back. Each user's sessions
are indexed per user (``KEYS.user_sessions``: a set of the hashed ids), so
ending all of them is exact and needs no SCAN.

Requests that present an API key never read or write a session and never get
a cookie; requests without a cookie never touch Redis for it; the record is
loaded lazily, so public routes such as /healthz do not depend on Redis even
when a browser sends its cookie.

Why not Flask-Session: it would add a dependency (and its pickle serializer)
for ~150 lines we need to control anyway (API-key exemption, hashed ids,
timeouts enforced in Redis).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Flask, Request, Response, session
from flask.sessions import SessionInterface, SessionMixin

from auth.credentials import presented_key
from core.extensions import RedisStore
from core.redis import KEYS, LuaScript

_SID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)

# KEYS[1] session record; ARGV[1] idle seconds, ARGV[2] absolute seconds.
# Returns the JSON record and slides the idle TTL (never past the absolute end),
# or nil (and deletes it) when it is missing, corrupt or past its absolute end.
_LOAD_SCRIPT = LuaScript(
    """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local ok, rec = pcall(cjson.decode, raw)
if not ok or type(rec) ~= 'table' or tonumber(rec['created']) == nil then
  redis.call('DEL', KEYS[1])
  return false
end
local now = tonumber(redis.call('TIME')[1])
local left = math.floor(tonumber(rec['created']) + tonumber(ARGV[2]) - now)
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return false
end
redis.call('EXPIRE', KEYS[1], math.min(tonumber(ARGV[1]), left))
return raw
"""
)


def _hashed(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def session_key(sid: str) -> str:
    return _record_key(_hashed(sid))


def _record_key(hashed: str) -> str:
    return KEYS.login_session(hashed)


def user_sessions_key(user_id: str) -> str:
    """The set of one user's session ids (hashed, like the records' names)."""
    return KEYS.user_sessions(user_id)


def end_user_sessions(r: redis.Redis, user_id: str, *, keep_sid: str | None = None) -> int:
    """Delete every session of ``user_id`` except ``keep_sid``; returns how many ended."""
    keep = _hashed(keep_sid) if keep_sid else None
    doomed = [hashed for hashed in r.smembers(user_sessions_key(user_id)) if hashed != keep]
    if not doomed:
        return 0
    pipe = r.pipeline(transaction=False)  # one key per command: fine on a cluster too
    for hashed in doomed:
        pipe.delete(_record_key(hashed))
    pipe.srem(user_sessions_key(user_id), *doomed)
    return sum(pipe.execute()[:-1])


def count_user_sessions(r: redis.Redis, user_id: str) -> int:
    """How many of the user's indexed sessions are still live."""
    members = list(r.smembers(user_sessions_key(user_id)))
    if not members:
        return 0
    pipe = r.pipeline(transaction=False)
    for hashed in members:
        pipe.exists(_record_key(hashed))
    return sum(pipe.execute())


class ServerSession(SessionMixin):
    """A session whose data is fetched from Redis on first use."""

    def __init__(self, sid: str | None = None, loader: Callable[[], dict[str, Any] | None] | None = None):
        self.sid = sid
        self.created: int | None = None
        self._loader = loader
        self._data: dict[str, Any] | None = None if loader else {}
        self.detached = False  # API-key request: never saved
        self.stale = False  # a cookie came in but names no live session
        self.destroyed = False
        self.replaced_sid: str | None = None  # deleted at save (login regenerates the id)
        self.modified = False
        self.accessed = False

    @classmethod
    def for_api_key(cls) -> ServerSession:
        session = cls()
        session.detached = True
        return session

    def _load(self) -> dict[str, Any]:
        self.accessed = True
        if self._data is None:
            stored = self._loader() if self._loader else None
            if stored is None:
                self.stale, self.sid, self._data = self.sid is not None, None, {}
            else:
                self.created, self._data = int(stored["created"]), dict(stored["data"])
        return self._data

    def __getitem__(self, name: str) -> Any:
        return self._load()[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._load()[name] = value
        self.modified = True

    def __delitem__(self, name: str) -> None:
        del self._load()[name]
        self.modified = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def regenerate(self) -> None:
        """Start over under a new id (at login): the old record is deleted at save."""
        self._load()
        if self.sid:
            self.replaced_sid = self.sid
        self.sid, self.created, self._data = None, None, {}
        self.modified = True

    def settle(self) -> None:
        """The answer is made: a session nothing has read stays unread, and is not saved."""
        if self._data is None:
            self._loader, self._data, self.detached = None, {}, True

    def destroy(self) -> None:
        """End the session: its record is deleted and the cookie cleared at save."""
        self._load()
        self._data = {}
        self.destroyed = self.modified = True


def settle_unread_session(response: Response) -> Response:
    """after_request, run before Flask-Login's: a session the request never read stays unread.

    Flask-Login's hook (it keeps a remember-me cookie, which the gateway never issues)
    asks the session for a key on every request. For a lazily loaded session that
    question is a Redis round trip, on /healthz and public pages too, and a failure
    there when Redis is down. Settled first, the session answers it empty.
    """
    if isinstance(session, ServerSession):
        session.settle()
    return response


class RedisSessionInterface(SessionInterface):
    """Sessions stored in Redis; see the module docstring for the rules."""

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        if presented_key(request) is not None:
            return ServerSession.for_api_key()
        sid = request.cookies.get(self.get_cookie_name(app))
        if not sid:
            return ServerSession()
        if not _SID_PATTERN.match(sid):
            session = ServerSession()
            session.stale = True
            return session
        r = RedisStore.client(app)
        return ServerSession(sid, lambda: self._fetch(app, r, sid))

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, ServerSession) or session.detached:
            return
        r = RedisStore.client(app)
        if session.replaced_sid:
            r.delete(session_key(session.replaced_sid))
        if session.destroyed or (session.modified and not session._data):
            self._end(app, r, session, response)
        elif session.modified:
            self._store(app, r, session, response)
        elif session.stale:
            self._clear_cookie(app, response)

    def _fetch(self, app: Flask, r: redis.Redis, sid: str) -> dict[str, Any] | None:
        raw = _LOAD_SCRIPT(r, [session_key(sid)], [_idle(app), _absolute(app)])
        return json.loads(raw) if raw else None

    def _store(self, app: Flask, r: redis.Redis, session: ServerSession, response: Response) -> None:
        creating = session.sid is None
        session.sid = session.sid or secrets.token_urlsafe(32)
        session.created = session.created or int(time.time())
        left = session.created + _absolute(app) - int(time.time())
        record = json.dumps({"created": session.created, "data": session._data})
        ttl = max(1, min(_idle(app), left))
        # NX at creation, XX after: a session deleted while this request ran stays deleted.
        if not r.set(session_key(session.sid), record, ex=ttl, nx=creating, xx=not creating):
            session.sid = None
            self._clear_cookie(app, response)
            return
        if creating:
            self._index(app, r, session)
        response.set_cookie(
            self.get_cookie_name(app),
            session.sid,
            expires=datetime.fromtimestamp(session.created + _absolute(app), UTC),
            httponly=self.get_cookie_httponly(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            samesite=self.get_cookie_samesite(app),
        )
        response.vary.add("Cookie")

    def _index(self, app: Flask, r: redis.Redis, session: ServerSession) -> None:
        # Flask-Login's field: "user:<id>" once an admin user is logged in (login creates the session).
        kind, _, user_id = str((session._data or {}).get("_user_id", "")).partition(":")
        if kind != "user" or not user_id or session.sid is None:
            return
        pipe = r.pipeline(transaction=False)
        pipe.sadd(user_sessions_key(user_id), _hashed(session.sid))
        # No session outlives the absolute lifetime, so neither does the index of the latest login.
        pipe.expire(user_sessions_key(user_id), _absolute(app))
        pipe.execute()

    def _end(self, app: Flask, r: redis.Redis, session: ServerSession, response: Response) -> None:
        if session.sid:
            r.delete(session_key(session.sid))
        session.sid = None
        self._clear_cookie(app, response)

    def _clear_cookie(self, app: Flask, response: Response) -> None:
        response.delete_cookie(
            self.get_cookie_name(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            httponly=self.get_cookie_httponly(app),
            samesite=self.get_cookie_samesite(app),
        )
        response.vary.add("Cookie")


def _idle(app: Flask) -> int:
    return int(app.config["SESSION_IDLE_MINUTES"]) * 60


def _absolute(app: Flask) -> int:
    return int(app.config["SESSION_ABSOLUTE_HOURS"]) * 3600
