"""Rate limits and quotas: every limit of a request decided, and its headers read, in ONE Redis
call, or in none while the worker holds a lease on a large limit (gateway/leases.py).

Who is counted (CONTRACT section 5):

* an API key by its id, an admin user by its id: the key's ``rate_limit`` (else
  ``RATELIMIT_DEFAULT``) and its ``quota`` both hold;
* everyone else by client IP (as ProxyFix leaves it after ``TRUSTED_PROXY_COUNT``
  hops) under ``RATELIMIT_ANONYMOUS``: public routes, requests without
  credentials and requests with a wrong key, so guessing keys runs into it;
* ``/auth/login`` additionally per IP and per email (:func:`login_limit`).

Why not Flask-Limiter's request hooks: it evaluates each limit with its own
storage call and then reads the window again for its headers (three round trips
for one limit, five for a rate plus a quota), its storage belongs to one module
level object shared by every app, and its in-memory fallback would relax the
login limit too. The gateway keeps Flask-Limiter's engine, the ``limits``
package (limit strings, ``RateLimitItem``, the in-memory storage used when Redis
is down), and replaces the hooks with one Lua script: it reads every counter of
the request, refuses when any is spent, otherwise increments them all, and
returns each count and time-to-reset, which is what the headers need.

Fixed windows: a window starts with its first hit and lasts the limit's period.
Each policy has a counter of its own, named by subject, kind, amount and window
(``gw:ratelimit:fw:key:<id>:quota:100:3600``): a rate and a quota of the same
window, or two amounts of one window, are counted apart, so each holds exactly.
A changed limit is a new policy and starts a counter of its own (the old one
runs out with its window). The strategy name is part of the key, so a future
strategy never reads a counter of another shape.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from flask import Flask, Response, current_app, g, request
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage

from auth import users
from auth.access import access_for
from auth.identity import Identity, current_identity
from auth.loaders import presented_key
from core import forks
from core.errors import APIError
from core.extensions import get_redis
from core.redis import REDIS_UNAVAILABLE, key
from gateway import leases
from gateway.health import HEALTH_ENDPOINTS
from gateway.metrics import recorder

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

EXTENSION_KEY = "gateway.ratelimit"
STRATEGY = "fw"  # fixed window; part of every counter's key name
# Idle connections the limiter keeps per worker (the rest go back to the shared pool).
MAX_IDLE_CONNECTIONS = 32
# Failing open, how often the limiter looks whether Redis is back.
RECHECK_SECONDS = 1.0

# Header names (draft-ietf-httpapi-ratelimit-headers for the last two).
HEADER_LIMIT = "X-RateLimit-Limit"
HEADER_REMAINING = "X-RateLimit-Remaining"
HEADER_RESET = "X-RateLimit-Reset"
HEADER_RETRY_AFTER = "Retry-After"
HEADER_POLICY = "RateLimit-Policy"
HEADER_STATE = "RateLimit"

# KEYS[i]: counter i. ARGV: cost, commit (1 = take, 0 = only look), lease_max, lease_share,
# then amount_i, window_ms_i. Taking, it takes ``cost`` units, or a lease of up to lease_max
# when every limit has many left (gateway/leases.py), never more than any limit has left.
# Returns {breached index (0: none), units taken, count_1, pttl_1, count_2, pttl_2, ...}.
_DECIDE_LUA = """
local cost = tonumber(ARGV[1])
local commit = ARGV[2] == '1'
local lease_max, share = tonumber(ARGV[3]), tonumber(ARGV[4])
local counts, ttls, breached, spare = {}, {}, 0, nil
for i = 1, #KEYS do
  local amount = tonumber(ARGV[3 + 2 * i])
  local ttl = redis.call('PTTL', KEYS[i])
  -- A counter without expiry, or a key of another shape, is replaced rather than trusted or failed on.
  if ttl == -1 or (ttl >= 0 and redis.call('TYPE', KEYS[i]).ok ~= 'string') then
    redis.call('DEL', KEYS[i]); ttl = -2
  end
  local count = 0
  if ttl == -2 then ttl = tonumber(ARGV[4 + 2 * i]) else count = tonumber(redis.call('GET', KEYS[i])) end
  counts[i], ttls[i] = count, ttl
  if breached == 0 and count + cost > amount then breached = i end
  if spare == nil or amount - count < spare then spare = amount - count end
end
local take = 0
if breached == 0 and commit then
  take = math.max(cost, math.min(lease_max, math.floor(spare / share)))
  for i = 1, #KEYS do
    counts[i] = redis.call('INCRBY', KEYS[i], take)
    if counts[i] == take then redis.call('PEXPIRE', KEYS[i], ttls[i]) end
  end
end
local out = {breached, take}
for i = 1, #KEYS do out[#out + 1] = counts[i]; out[#out + 1] = ttls[i] end
return out
"""
_DECIDE_SHA = hashlib.sha1(_DECIDE_LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1


# eq=False: policies are made once and cached, so identity is equality, and a tuple of
# them hashes by object ids (the lease book's key) instead of by every field.
@dataclass(frozen=True, eq=False)
class Policy:
    """One limit on one subject: ``kind`` is rate, quota, anonymous or login."""

    name: str
    kind: str
    item: RateLimitItem
    subject: str
    window: int  # seconds
    redis_key: str
    ietf: str  # this policy's item of the RateLimit-Policy header (fixed, so made once)

    @classmethod
    def build(cls, name: str, kind: str, item: RateLimitItem, subject: str) -> Policy:
        window = int(item.get_expiry())
        redis_key = counter_key(subject, kind, item.amount, window)
        return cls(name, kind, item, subject, window, redis_key, f'"{name}";q={item.amount};w={window}')


def counter_key(subject: str, kind: str, amount: int, window: int) -> str:
    """The Redis key counting one policy: which policy it is, not only which window, so
    policies never share a counter."""
    return key("ratelimit", STRATEGY, subject, kind, amount, window)


@dataclass(slots=True)  # one per request: a frozen dataclass's __init__ is slower
class Decision:
    """Every policy of a request with its count and seconds to reset; ``breached`` indexes one."""

    policies: tuple[Policy, ...]
    counts: tuple[int, ...]
    resets: tuple[float, ...]
    breached: int | None

    def left(self) -> list[int]:
        """Each policy's remaining requests."""
        return [max(0, p.item.amount - c) for p, c in zip(self.policies, self.counts, strict=True)]

    def headline(self, left: list[int] | None = None) -> int:
        """The policy the X-RateLimit-* headers describe: the breached one, else the scarcest."""
        if self.breached is not None:
            return self.breached
        left = self.left() if left is None else left
        return left.index(min(left))

    def retry_after(self) -> int:
        return max(1, math.ceil(self.resets[self.headline()]))

    def headers(self) -> dict[str, str]:
        return dict(self.header_items())

    def header_items(self) -> list[tuple[str, str]]:
        """The rate-limit headers of this decision, in order (built on every limited answer)."""
        policies, resets = self.policies, self.resets
        left = self.left()
        i = self.headline(left)
        state = [f'"{p.name}";r={left[n]};t={math.ceil(resets[n])}' for n, p in enumerate(policies)]
        items = [
            (HEADER_LIMIT, str(policies[i].item.amount)),
            (HEADER_REMAINING, str(left[i])),
            (HEADER_RESET, str(math.ceil(time.time() + resets[i]))),
            (HEADER_POLICY, _policy_header(policies)),
            (HEADER_STATE, ", ".join(state)),
        ]
        if self.breached is not None:
            items.append((HEADER_RETRY_AFTER, str(self.retry_after())))
        return items


@functools.lru_cache(maxsize=4096)
def _policy_header(policies: tuple[Policy, ...]) -> str:
    """The RateLimit-Policy value of a policy tuple (fixed per tuple, and tuples are cached)."""
    return ", ".join([p.ietf for p in policies])


@functools.lru_cache(maxsize=1024)
def parse_limit_items(value: str) -> tuple[RateLimitItem, ...]:
    """``"100/minute;10000/day"`` as limit items (cached: the same few strings recur)."""
    return tuple(parse_many(value))


def _build_policies(kind: str, value: str, subject: str) -> tuple[Policy, ...]:
    """The policies of one limit string on one subject."""
    # A limit written twice is one policy (its counter would otherwise be taken twice).
    items = list({(i.amount, int(i.get_expiry())): i for i in parse_limit_items(value)}.values())
    if len(items) == 1:
        return (Policy.build(kind, kind, items[0], subject),)
    windows = [int(item.get_expiry()) for item in items]
    return tuple(Policy.build(_policy_name(kind, item, windows), kind, item, subject) for item in items)


_policies = functools.lru_cache(maxsize=4096)(_build_policies)  # cached: the hot path rebuilds none


def _policy_name(kind: str, item: RateLimitItem, windows: list[int]) -> str:
    # Named by window, and by amount too where one window has two amounts (headers tell them apart).
    window = int(item.get_expiry())
    return f"{kind}-{window}s" if windows.count(window) == 1 else f"{kind}-{item.amount}-{window}s"


def _anonymous_policies() -> Sequence[Policy]:
    return _policies("anonymous", current_app.config["RATELIMIT_ANONYMOUS"], f"ip:{client_ip()}")


def policies_for(identity: Identity) -> tuple[Policy, ...]:
    """The identity's rate (its own or RATELIMIT_DEFAULT) and its quota, if it has one."""
    default = current_app.config["RATELIMIT_DEFAULT"]
    return _identity_policies(identity.type, identity.id, identity.rate_limit, identity.quota, default)


@functools.lru_cache(maxsize=4096)
def _identity_policies(
    kind: str, identity_id: str, rate_limit: str | None, quota: str | None, default: str
) -> tuple[Policy, ...]:
    # Cached: an identity's limits change rarely, and a change is a new cache entry.
    subject = f"{'key' if kind == 'api_key' else 'user'}:{identity_id}"
    try:
        policies = _policies("rate", rate_limit or default, subject)
        if quota:
            policies = tuple(sorted(policies + _policies("quota", quota, subject), key=_by_window))
    except ValueError:
        # A stored limit that no longer parses must not turn every request into a 500.
        log.warning("unparsable limit on %s:%s; using RATELIMIT_DEFAULT", kind, identity_id)
        policies = _policies("rate", default, subject)
    return policies


def _by_window(policy: Policy) -> int:
    return policy.window


def client_ip() -> str:
    """The client's address after ProxyFix (which trusts exactly TRUSTED_PROXY_COUNT hops)."""
    return request.remote_addr or "unknown"


class _Connections:
    """The limiter's own free-list of connections from the app's Redis client.

    Measured under gunicorn's gevent workers, a command through redis-py's client
    costs about 90 us of CPU, of which a bare round trip is about 20: the rest is
    the pool's locks and liveness checks and the retry wrapper, paid on every
    command. The limiter makes one call on every request, so it checks connections
    out of the client's pool once and keeps them in a list; under gevent a list's
    pop and append cannot interleave, and under threads they are atomic. The
    connections are the client's own (same URL, TLS, timeouts); one that fails is
    disconnected and handed back to the pool, and a stale one is retried once.
    """

    def __init__(self) -> None:
        self.free: list[Any] = []
        self.pid = forks.pid()

    def call(self, *args: Any) -> Any:
        return _unwrap(self.pipeline([args])[0])

    def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write and read their replies (each a value or a ResponseError)."""
        if self.pid != forks.pid():  # a forked child must not share its parent's sockets
            self.free, self.pid = [], forks.pid()
        for attempt in (1, 2):
            reused = bool(self.free)
            conn = self.free.pop() if reused else get_redis().connection_pool.get_connection()
            try:
                conn.send_packed_command(conn.pack_commands(commands))
                replies = [_read_reply(conn) for _ in commands]
            except BaseException as exc:
                conn.disconnect()
                get_redis().connection_pool.release(conn)
                if attempt == 1 and reused and isinstance(exc, REDIS_UNAVAILABLE):
                    continue  # the server may have closed an idle connection: one fresh try
                raise
            if len(self.free) < MAX_IDLE_CONNECTIONS:
                self.free.append(conn)  # an error reply leaves the connection usable
            else:  # after a burst, give the pool back what the limiter no longer needs
                get_redis().connection_pool.release(conn)
            return replies
        raise AssertionError("unreachable")


def _read_reply(conn: Any) -> Any:
    try:
        return conn.read_response()
    except redis.ResponseError as exc:
        return exc


def _unwrap(reply: Any) -> Any:
    if isinstance(reply, BaseException):
        raise reply
    return reply


class _Coalescer:
    """Sends the limiter calls that greenlets of one gevent worker make in the same turn
    of the event loop as ONE pipeline, on one connection.

    The first caller of a turn leads: it yields once (``gevent.sleep(0)``) so the other
    greenlets that are ready in this turn can add their calls, then writes them all at
    once, reads the replies in order and wakes each caller with its own. Each call is
    still its own EVALSHA, atomic in Redis, so every decision stays exact; only the
    round trip and its system calls (in the worker and in Redis) are shared. Outside
    gevent (threads, tests, the CLI) every call goes straight to Redis.
    """

    def __init__(self, connections: _Connections, cooperative: bool) -> None:
        self.connections = connections
        self.cooperative = cooperative
        self.batch: list[tuple[tuple[Any, ...], Any]] | None = None

    def call(self, *args: Any) -> Any:
        if not self.cooperative:
            return self.connections.call(*args)
        from gevent import sleep
        from gevent.hub import Waiter

        if self.batch is not None:  # a leader is collecting this turn's calls: join it
            waiter = Waiter()
            self.batch.append((args, waiter))
            return _unwrap(waiter.get())
        batch = self.batch = [(args, None)]
        try:
            sleep(0)
        except BaseException:
            self.batch = None
            self._send(batch[1:])  # the leader was interrupted: the others still get answers
            raise
        self.batch = None
        return _unwrap(self._send(batch)[0])

    def _send(self, batch: list[tuple[tuple[Any, ...], Any]]) -> list[Any]:
        from gevent import get_hub

        if not batch:
            return []
        try:
            replies = self.connections.pipeline([args for args, _ in batch])
        except Exception as exc:
            replies = [exc] * len(batch)
        except BaseException:  # the leader itself is being killed: the others see a failed call
            self._wake(batch, [redis.ConnectionError("rate-limit call interrupted")] * len(batch), get_hub())
            raise
        self._wake(batch, replies, get_hub())
        return replies

    @staticmethod
    def _wake(batch: list[tuple[tuple[Any, ...], Any]], replies: list[Any], hub: Any) -> None:
        for (_, waiter), reply in zip(batch, replies, strict=True):
            if waiter is not None:  # a Waiter is switched to from the hub, hence the callback
                hub.loop.run_callback(waiter.switch, reply)


def _gevent_patched() -> bool:
    """True in a gunicorn gevent worker (sockets cooperative), where calls can be coalesced."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("socket"))


class _State:
    """Per app: the Lua script's digest, the limiter's connections, leases, the fallback counters."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.fail_open: bool = app.config["RATELIMIT_FAIL_OPEN"]
        self.lease_max: int = max(1, app.config["RATELIMIT_LEASE_MAX"])
        self.connections = _Connections()
        self.calls = _Coalescer(self.connections, _gevent_patched())
        self.leases = leases.LeaseBook(self.give_back)
        self.memory = MemoryStorage()
        self.memory_lock = threading.Lock()
        self.degraded = False
        self.recheck_at = 0.0  # time.monotonic() before which a degraded limiter skips Redis
        self.exempt: set[str] = set(HEALTH_ENDPOINTS)  # endpoints never limited (see exempt())

    def _evalsha(self, keys: list[str], args: list[int]) -> Any:
        try:
            return self.calls.call("EVALSHA", _DECIDE_SHA, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:  # first call on this server, or after a restart
            self.connections.call("SCRIPT", "LOAD", _DECIDE_LUA)
            return self.connections.call("EVALSHA", _DECIDE_SHA, len(keys), *keys, *args)

    def decide_in_redis(
        self, policies: Sequence[Policy], *, commit: bool = True, lease: bool = False
    ) -> Decision:
        lease_max = self.lease_max if commit and lease else 1
        args: list[int] = [1, 1 if commit else 0, lease_max, leases.LEASE_SHARE]
        for policy in policies:
            args += [policy.item.amount, policy.window * 1000]
        keys = [p.redis_key for p in policies]
        out = self._evalsha(keys, args)
        if self.degraded:
            self.degraded = False
            log.warning("rate-limit storage is back: limits are shared through Redis again")
        counts = tuple(int(c) for c in out[2::2])
        ttls_ms = tuple(int(ms) for ms in out[3::2])
        taken = int(out[1])
        if taken > 1:  # a lease: this request takes one unit, the rest serve the next ones
            now = time.monotonic()
            expiry = leases.lease_expiry(now, ttls_ms)
            self.leases.add(policies, leases.Lease(tuple(keys), taken - 1, counts, ttls_ms, now, expiry))
            counts = tuple(count - (taken - 1) for count in counts)
        resets = tuple(ms / 1000 for ms in ttls_ms)
        return Decision(tuple(policies), counts, resets, int(out[0]) - 1 if out[0] else None)

    def give_back(self, spent: list[leases.Lease]) -> None:
        """The lease book's sweeper: return unused units to the windows they came from, in one pipeline."""
        now = time.monotonic()
        commands = []
        for lease in spent:
            keys, args = lease.return_args(now)
            commands.append(("EVAL", leases.RETURN_LUA, len(keys), *keys, *args))
        with self.app.app_context():
            for reply in self.connections.pipeline(commands):
                _unwrap(reply)

    def give_back_one(self, decision: Decision, taken_at: float) -> None:
        """Return the one unit ``decision`` took (at ``taken_at``) to the windows it came from."""
        elapsed_ms = (time.monotonic() - taken_at) * 1000
        keys = [p.redis_key for p in decision.policies]
        expected = [int(reset * 1000 - elapsed_ms) for reset in decision.resets]
        args = [1, *expected, leases.RETURN_TOLERANCE_MS]
        self.connections.call("EVAL", leases.RETURN_LUA, len(keys), *keys, *args)

    def decide_in_memory(self, policies: Sequence[Policy], *, commit: bool = True) -> Decision:
        if not self.degraded:
            self.degraded = True
            log.warning("rate-limit storage unreachable: falling back to per-process limits")
        keys = [p.redis_key for p in policies]
        with self.memory_lock:
            counts = [self.memory.get(k) for k in keys]
            breached = next((i for i, p in enumerate(policies) if counts[i] + 1 > p.item.amount), None)
            if breached is None and commit:
                counts = [self.memory.incr(k, p.window) for k, p in zip(keys, policies, strict=True)]
            now = time.time()
            resets = tuple(
                max(0.0, self.memory.get_expiry(k) - now) or p.window
                for k, p in zip(keys, policies, strict=True)
            )
        return Decision(tuple(policies), tuple(counts), resets, breached)

    def decide(self, policies: Sequence[Policy], *, commit: bool = True, closed: bool = False) -> Decision:
        """A live lease first; then Redis; when it is unreachable, per-process counters if
        failing open (never for login, which is ``closed`` and never leased)."""
        lease = commit and not closed and self.lease_max > 1
        if lease:
            served = self.leases.serve(policies)
            if served is not None:
                return Decision(tuple(policies), served[0], served[1], None)
        fallback = self.fail_open and not closed
        # While degraded, Redis is tried again only every RECHECK_SECONDS: a stalled
        # server would otherwise cost every request its connect timeout.
        if fallback and time.monotonic() < self.recheck_at:
            return self.decide_in_memory(policies, commit=commit)
        try:
            return self.decide_in_redis(policies, commit=commit, lease=lease)
        except REDIS_UNAVAILABLE:
            if not fallback:
                raise
            self.recheck_at = time.monotonic() + RECHECK_SECONDS
            return self.decide_in_memory(policies, commit=commit)


def _state() -> _State:
    return current_app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]


def _too_many(decision: Decision) -> APIError:
    assert decision.breached is not None
    policy = decision.policies[decision.breached]
    recorder.record_rate_limited(policy.kind)
    retry_after = decision.retry_after()
    return APIError(
        429,
        "Too Many Requests",
        f"The {policy.kind} limit of {policy.item.amount} per {policy.window} seconds is spent; "
        f"retry after {retry_after} seconds.",
        headers=decision.headers(),
        extra={"retry_after": retry_after},
    )


def _exempt(exempt: frozenset[str] | set[str]) -> bool:
    # Preflights carry no credentials, health probes must never be throttled, and static
    # files are cheap and cached (exempt()). Requests that match no route (404/405) are
    # limited like any other: exempting them let one client flood the logs for free.
    req = request._get_current_object()  # type: ignore[attr-defined]
    return req.method == "OPTIONS" or req.endpoint in exempt


def _presents_credentials(req: Any) -> bool:
    """An API key or a session cookie: the request may have an identity of its own."""
    if presented_key(req) is not None:
        return True
    return current_app.session_interface.get_cookie_name(current_app) in req.cookies


def _public_policies(req: Any) -> Sequence[Policy]:
    # A public route is counted per IP, unless the caller brings credentials: a logged-in
    # admin browsing the console (or a key calling /docs) is limited as itself.
    if not _presents_credentials(req):
        return _anonymous_policies()
    try:
        identity = current_identity()
    except REDIS_UNAVAILABLE:  # sessions unreadable: a public page is still served (per IP)
        return _anonymous_policies()
    return policies_for(identity) if identity is not None else _anonymous_policies()


def _request_policies() -> Sequence[Policy]:
    req = request._get_current_object()  # type: ignore[attr-defined]
    # An unmatched URL has no view to guard: it is counted as a public route is.
    if req.routing_exception is not None or access_for(req.endpoint).public:
        return _public_policies(req)
    # Resolving the identity here (before the access guard) lets a wrong key fall
    # through to the per-IP limit, so its 401s are counted.
    identity = current_identity()
    return policies_for(identity) if identity is not None else _anonymous_policies()


def check_request_limit() -> None:
    """before_request: take one request from every limit of this request, or answer 429."""
    state = _state()
    if _exempt(state.exempt):
        return
    decision = state.decide(_request_policies())
    g.rate_limit_decision = decision
    if decision.breached is not None:
        raise _too_many(decision)


def add_headers(response: Response) -> Response:
    """after_request: the limit state taken in before_request (no further Redis call)."""
    decision: Decision | None = g.get("rate_limit_decision")
    # A 429 already carries them (it was built from the same decision).
    if decision is not None and decision.breached is None:
        # Appended in one step: names are constants and values are numbers and policy
        # names, so Werkzeug's per-header validation has nothing to find.
        response.headers._list.extend(decision.header_items())
    return response


def quota_exhausted(identity: Identity, *, kinds: tuple[str, ...] = ("rate", "quota")) -> bool:
    """True when one of the identity's limits of these kinds has no request left (looks, takes nothing)."""
    policies = tuple(p for p in policies_for(identity) if p.kind in kinds)
    return bool(policies) and _state().decide(policies, commit=False).breached is not None


def _login_email() -> str | None:
    """The attempt's email, normalized, or None (an unreadable body has none)."""
    try:
        data = request.get_json(silent=True) if request.is_json else request.form
    except (ValueError, RecursionError):  # hostile JSON: the view answers its 400
        return None
    email = data.get("email") if hasattr(data, "get") else None
    if not isinstance(email, str):
        return None
    return users.normalize_email(email) or None


def _login_ip_policies() -> tuple[Policy, ...]:
    # Built fresh, not cached: subjects chosen by strangers must not evict the API's cached policies.
    return _build_policies("login", current_app.config["RATELIMIT_LOGIN"], f"login-ip:{client_ip()}")


def _login_email_policies() -> tuple[Policy, ...]:
    email = _login_email()
    if not email:
        return ()
    # Hashed: the counter's name should not carry an address in clear.
    digest = hashlib.sha256(email.encode()).hexdigest()[:32]
    config = current_app.config
    pair = _build_policies("login", config["RATELIMIT_LOGIN"], f"login-email-ip:{digest}:{client_ip()}")
    wide = _build_policies("login", config["RATELIMIT_LOGIN_EMAIL"], f"login-email:{digest}")
    return _renamed(pair, "login-email-ip") + _renamed(wide, "login-email")


def _renamed(policies: tuple[Policy, ...], name: str) -> tuple[Policy, ...]:
    """The same policies under header names of their own (``login-ip`` is the plain ``login``)."""
    return tuple(Policy.build(name + p.name[len(p.kind) :], p.kind, p.item, p.subject) for p in policies)


def _reserve_login_attempt() -> tuple[Decision, float]:
    """Take one unit of every login limit for this attempt, or answer 429 (or 503).

    The per-IP limit is looked at first, before the body is read: a spent IP is refused
    without parsing anything. Then one atomic call takes a unit from every limit, or none.
    """
    state = _state()
    taken_at = time.monotonic()
    try:
        ip_policies = _login_ip_policies()
        decision = state.decide(ip_policies, commit=False, closed=True)
        if decision.breached is None:
            taken_at = time.monotonic()
            decision = state.decide(ip_policies + _login_email_policies(), closed=True)
    except REDIS_UNAVAILABLE:
        raise APIError(
            503,
            "Service Unavailable",
            "Login is unavailable while the rate-limit store is unreachable; retry shortly.",
            headers={HEADER_RETRY_AFTER: "1"},
        ) from None
    if decision.breached is not None:
        raise _too_many(decision)
    return decision, taken_at


def _settle_login_attempt(decision: Decision, taken_at: float, *, failed: bool) -> None:
    """A failure keeps its units (and its headers); a success gives them back."""
    if failed:
        g.rate_limit_decision = decision
        return
    try:
        _state().give_back_one(decision, taken_at)
    except REDIS_UNAVAILABLE:  # the login stands; the unit runs out with its window
        log.warning("could not give back the login limits' unit of a successful login")


def login_limit(view: F) -> F:
    """Failed logins: RATELIMIT_LOGIN per client IP and per (email, IP), RATELIMIT_LOGIN_EMAIL
    per email across IPs (CONTRACT section 5). Closed (503) when Redis is down.

    Every attempt reserves a unit of each limit before the password is checked, and a
    successful one gives it back: only failures stay counted, exactly, however many
    attempts run at once, and an attempt over a limit is refused without a password check.
    """

    @functools.wraps(view)
    def limited(*args: Any, **kwargs: Any) -> Any:
        decision, taken_at = _reserve_login_attempt()
        failed = True  # an exception (400, 401, 503, ...) is a failed attempt
        try:
            response = current_app.make_response(view(*args, **kwargs))
            failed = response.status_code >= 400
            return response
        finally:
            _settle_login_attempt(decision, taken_at, failed=failed)

    return limited  # type: ignore[return-value]


def exempt(app: Flask, endpoint: str) -> None:
    """Never limit ``endpoint``: for static files only (cheap, cacheable, no Redis behind them).

    An exempt endpoint must be public: a guarded one would let key guesses past the IP limit.
    """
    with app.app_context():
        public = access_for(endpoint).public
    if not public:
        raise ValueError(f"only public endpoints can be exempt from rate limits, not {endpoint!r}")
    app.extensions[EXTENSION_KEY].exempt.add(endpoint)


def init_app(app: Flask) -> None:
    """Register the limiter's hooks; call after security.init_app and before auth.init_app."""
    app.extensions[EXTENSION_KEY] = _State(app)
    app.before_request(check_request_limit)
    app.after_request(add_headers)
