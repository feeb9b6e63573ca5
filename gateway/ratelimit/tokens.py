"""Token quotas: reserve when a reply starts, extend as it grows, settle at its end.

A key's ``token_quota`` (``N/period``, e.g. ``100000/day``) bounds the tokens of its agent
replies (``total_tokens``: prompt and completion) per fixed window, which starts with the
window's first reservation. The cost of a reply is known only at its end, so a reply first
*reserves* ``min(AGENT_TOKEN_RESERVE, remaining)``, *extends* its reservation in steps of
that size as it outgrows it, and *settles* the real count at the end, giving back the rest.

Everything happens in ONE Lua script (one call per step) on three keys of the key's own
hash tag (``{k:<id>}``, the slot of its record and request counters):

* ``...:used``: a string, the tokens settled in this window (PEXPIRE: the window);
* ``...:book``: a hash, ``held`` (the sum of live reservations) and per reservation
  ``r:<id>`` (tokens reserved) and ``c:<id>`` (tokens its reply reported as sent);
* ``...:deadlines``: a sorted set, reservation id -> deadline (ms, Redis's clock).

The script grants only from ``limit - used - held``, so ``used + held`` never exceeds the
limit however many streams and workers reserve at once. A reservation lives
``AGENT_TOKEN_RESERVATION_SECONDS`` unless renewed (its stream renews it every few seconds,
reporting what it sent). Every call first sweeps the reservations past their deadline: a
killed worker's reservation is settled for what it last reported as sent, and the rest
goes back. Nothing leaks for longer than one reservation lifetime.

The settled counts are announced with ``core.signals.tokens_counted`` and
``core.signals.quota_window_used`` (kind ``tokens``), from :meth:`Reservation.settle` only.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask, Response, after_this_request, current_app, has_app_context

from auth.identity import Identity
from core import signals
from core.errors import APIError
from core.extensions import get_redis
from core.redis import KEYS, LuaScript, owner_tag
from gateway.ratelimit.headers import EXTRA_ITEMS
from gateway.ratelimit.policies import parse_limit_items

log = logging.getLogger(__name__)

POLICY_NAME = "tokens"  # its name in RateLimit-Policy / RateLimit
DEFAULT_RESERVE = 1024
DEFAULT_RESERVATION_SECONDS = 60

# KEYS: used, book, deadlines. ARGV: limit, window_ms, ttl_ms, op, id, a, b.
# op reserve (a: tokens wanted) -> {granted, ...}; extend (a: tokens to cover, b: tokens sent)
# -> {reserved now, -1 when the reservation is gone}; settle (a: real count) -> {charged, ...};
# peek -> {remaining, ...}. Every reply: {value, used, held, pttl of the window, now_ms, used before}.
TOKENS_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window_ms, ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local op, id = ARGV[4], ARGV[5]
local function charge(n)
  if n <= 0 then return end
  if redis.call('PTTL', KEYS[1]) < 0 then
    redis.call('SET', KEYS[1], n, 'PX', window_ms)  -- a new window (or a counter of another shape)
  else
    redis.call('INCRBY', KEYS[1], n)
  end
end
-- Reservations past their deadline belong to a stream or job that died: what they last
-- reported as sent is counted, the rest goes back.
local held = tonumber(redis.call('HGET', KEYS[2], 'held') or '0')
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms)
for _, d in ipairs(dead) do
  local r = tonumber(redis.call('HGET', KEYS[2], 'r:' .. d) or '0')
  local c = tonumber(redis.call('HGET', KEYS[2], 'c:' .. d) or '0')
  held = held - r
  charge(math.min(c, r))
  redis.call('HDEL', KEYS[2], 'r:' .. d, 'c:' .. d)
end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms) end
if held < 0 then held = 0 end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local before = used
local avail = math.max(0, limit - used - held)
local value = 0
if op == 'reserve' then
  value = math.min(tonumber(ARGV[6]), avail)
  if value > 0 then
    redis.call('HSET', KEYS[2], 'r:' .. id, value, 'c:' .. id, 0)
    redis.call('ZADD', KEYS[3], now_ms + ttl_ms, id)
    held = held + value
    -- The window starts with its first reservation, so the headers can tell when it ends.
    if redis.call('PTTL', KEYS[1]) < 0 then redis.call('SET', KEYS[1], used, 'PX', window_ms) end
  end
elseif op == 'extend' then
  local r = redis.call('HGET', KEYS[2], 'r:' .. id)
  if not r then
    value = -1
  else
    r = tonumber(r)
    local want = tonumber(ARGV[6])
    if want > r then
      local grant = math.min(want - r + tonumber(ARGV[7]), avail)
      r = r + grant
      held = held + grant
    end
    redis.call('HSET', KEYS[2], 'r:' .. id, r, 'c:' .. id, math.min(tonumber(ARGV[8]), r))
    redis.call('ZADD', KEYS[3], now_ms + ttl_ms, id)
    value = r
  end
elseif op == 'settle' then
  local r = redis.call('HGET', KEYS[2], 'r:' .. id)
  if not r then
    value = -1  -- swept already: what it reported was counted then
  else
    held = math.max(0, held - tonumber(r))
    value = math.min(tonumber(ARGV[6]), math.max(0, limit - used - held))
    if redis.call('PTTL', KEYS[1]) < 0 then before = 0 end
    charge(value)
    used = before + value
    redis.call('HDEL', KEYS[2], 'r:' .. id, 'c:' .. id)
    redis.call('ZREM', KEYS[3], id)
  end
else
  value = avail
end
redis.call('HSET', KEYS[2], 'held', held)
-- The book outlives every deadline in it (a lapsed reservation is still swept and counted).
redis.call('PEXPIRE', KEYS[2], window_ms + 2 * ttl_ms)
redis.call('PEXPIRE', KEYS[3], window_ms + 2 * ttl_ms)
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 then pttl = window_ms end
return {value, used, held, pttl, now_ms, before}
"""
_SCRIPT = LuaScript(TOKENS_LUA)


@dataclass(frozen=True)
class TokenPolicy:
    """One key's token quota: ``limit`` tokens per ``window`` seconds."""

    key_id: str
    limit: int
    window: int

    def redis_keys(self) -> list[str]:
        name = ("tokens", f"key:{self.key_id}", self.limit, self.window)
        tag = owner_tag(f"key:{self.key_id}")
        return [KEYS.rate_counter(tag, *name, part) for part in ("used", "book", "deadlines")]

    @property
    def ietf(self) -> str:
        return f'"{POLICY_NAME}";q={self.limit};w={self.window}'


@dataclass(frozen=True)
class Window:
    """A call's view of the window: what is left, settled and held, and seconds to its end."""

    value: int
    used: int
    held: int
    reset_seconds: float
    now_ms: int
    before: int

    @property
    def remaining(self) -> int:
        """For ``peek``: the tokens a new reservation could take."""
        return max(0, self.value)


class TokenQuotaError(Exception):
    """A token quota stopped a reply; ``str(exc)`` is a sentence safe to show clients."""


class TokenQuotaExhausted(TokenQuotaError):
    """Nothing left of the key's token quota (settled, or held by replies under way)."""

    def __init__(self, policy: TokenPolicy, retry_after: int, window: Window) -> None:
        super().__init__(
            f"The token quota of this key ({policy.limit} tokens per {policy.window} seconds) is used "
            f"up; retry in {retry_after} seconds."
        )
        self.policy, self.retry_after, self.window = policy, retry_after, window


class TokenQuotaRanOut(TokenQuotaError):
    """The quota ran out while a reply was being generated (what was sent is counted)."""

    def __init__(self, policy: TokenPolicy, counted: int) -> None:
        super().__init__(
            f"The token quota of this key ({policy.limit} tokens per {policy.window} seconds) ran out "
            f"during the reply; the {counted} tokens generated were counted."
        )
        self.policy = policy


def token_policy(key_id: str | None, token_quota: str | None) -> TokenPolicy | None:
    """The policy of a key's ``token_quota`` string; None without one (or unparsable: logged)."""
    if not key_id or not token_quota:
        return None
    try:
        items = parse_limit_items(token_quota)
    except ValueError:
        log.warning("unparsable token_quota on key %s; not enforced", key_id)
        return None
    if not items:
        return None
    item = min(items, key=lambda i: i.amount / i.get_expiry())  # several: the strictest rate
    return TokenPolicy(key_id, int(item.amount), int(item.get_expiry()))


def policy_of(identity: Identity | None) -> TokenPolicy | None:
    if identity is None or identity.type != "api_key":
        return None  # token quotas are a key's (admin users have none)
    return token_policy(identity.id, identity.token_quota)


def _call(r: redis.Redis, policy: TokenPolicy, ttl_ms: int, op: str, rid: str = "", *extra: int) -> Window:
    args: list[Any] = [policy.limit, policy.window * 1000, ttl_ms, op, rid, *extra]
    out = _SCRIPT(r, policy.redis_keys(), args)
    value, used, held, pttl, now_ms, before = (int(x) for x in out)
    return Window(value, used, held, pttl / 1000, now_ms, before)


def _retry_after(policy: TokenPolicy, window: Window, ttl_seconds: int) -> int:
    # Settled to the limit: wait for the window. Held by replies under way: they settle (or
    # lapse) within a reservation's lifetime, often much sooner.
    seconds = window.reset_seconds
    if window.used < policy.limit:
        seconds = min(seconds, ttl_seconds)
    return max(1, math.ceil(seconds))


def peek(r: redis.Redis, policy: TokenPolicy, *, ttl_seconds: int = DEFAULT_RESERVATION_SECONDS) -> Window:
    """The window as it is (expired reservations swept), taking nothing."""
    return _call(r, policy, ttl_seconds * 1000, "peek")


def reserve(
    r: redis.Redis,
    policy: TokenPolicy,
    *,
    owner: str,
    app: Flask,
    step: int = DEFAULT_RESERVE,
    ttl_seconds: int = DEFAULT_RESERVATION_SECONDS,
) -> Reservation:
    """Reserve ``min(step, remaining)`` tokens, or raise TokenQuotaExhausted."""
    rid = uuid.uuid4().hex
    window = _call(r, policy, ttl_seconds * 1000, "reserve", rid, step)
    if window.value <= 0:
        raise TokenQuotaExhausted(policy, _retry_after(policy, window, ttl_seconds), window)
    return Reservation(r, policy, rid, window, owner=owner, app=app, step=step, ttl_seconds=ttl_seconds)


class Reservation:
    """One reply's live reservation: :meth:`cover` before sending, :meth:`settle` once at the end."""

    def __init__(
        self,
        r: redis.Redis,
        policy: TokenPolicy,
        rid: str,
        window: Window,
        *,
        owner: str,
        app: Flask,
        step: int,
        ttl_seconds: int,
    ) -> None:
        self.r, self.policy, self.id, self.window = r, policy, rid, window
        self.reserved = window.value
        self.owner, self.app, self.step, self.ttl_ms = owner, app, step, ttl_seconds * 1000
        self.settled = False

    def remaining_after_reserve(self) -> int:
        return max(0, self.policy.limit - self.window.used - self.window.held)

    def cover(self, tokens: int, *, sent: int) -> bool:
        """True when ``tokens`` (the reply's total so far, with what is about to be sent) fit in
        the reservation, extending it by a step when they do not; False: the quota ran out."""
        if tokens <= self.reserved:
            return True
        window = _call(self.r, self.policy, self.ttl_ms, "extend", self.id, tokens, self.step, sent)
        if window.value < 0:
            log.warning("token reservation %s lapsed while its reply was live", self.id)
            return False
        self.reserved = window.value
        return tokens <= self.reserved

    def renew(self, *, sent: int) -> None:
        """Push the deadline forward and record what was sent (what a crash is counted for)."""
        if not self.settled:
            _call(self.r, self.policy, self.ttl_ms, "extend", self.id, 0, 0, sent)

    def settle(self, usage: dict[str, Any]) -> int:
        """Count the reply's ``total_tokens`` (at most what the quota allows), give back the
        rest, announce the counts. Once: later calls do nothing. Returns the tokens counted."""
        if self.settled:
            return 0
        self.settled = True
        total = max(0, int(usage.get("total_tokens", 0)))
        window = _call(self.r, self.policy, self.ttl_ms, "settle", self.id, total)
        if window.value < 0:
            return 0  # lapsed: what it reported was counted by the sweep
        self._announce(usage, window)
        return window.value

    def release(self, *, sent: int = 0) -> int:
        """Settle a reply that did not finish: its ``sent`` tokens are counted (estimated)."""
        return self.settle(
            {"prompt_tokens": 0, "completion_tokens": sent, "total_tokens": sent, "estimated": True}
        )

    def _announce(self, usage: dict[str, Any], window: Window) -> None:
        if not (signals.tokens_counted.receivers or signals.quota_window_used.receivers):
            return  # nobody listens: not even the dicts below
        if window.value == 0 and not usage.get("total_tokens"):
            return  # nothing was counted (a reservation given back whole)
        counted = {k: int(usage.get(k, 0)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        window_start = (window.now_ms + int(window.reset_seconds * 1000)) // 1000 - self.policy.window
        if has_app_context():
            self._send(counted, usage, window, window_start)
        else:
            with self.app.app_context():
                self._send(counted, usage, window, window_start)

    def _send(self, counted: dict[str, int], usage: dict[str, Any], window: Window, start: int) -> None:
        try:
            signals.tokens_counted.send(
                self.app,
                key_id=self.policy.key_id,
                owner=self.owner,
                usage=counted,
                estimated=bool(usage.get("estimated")),
            )
            signals.quota_window_used.send(
                self.app,
                key_id=self.policy.key_id,
                kind="tokens",
                limit=self.policy.limit,
                window_seconds=self.policy.window,
                window_start=start,
                before=window.before,
                after=window.used,
            )
        except Exception:  # a listener's failure must not fail the reply that was counted
            log.exception("a token-count listener failed")


# ---- HTTP: the 429 and the headers ----------------------------------------------------


def open_reservation(identity: Identity) -> Reservation | None:
    """The reservation of a reply about to start for ``identity`` (None without a token
    quota); a 429 APIError when nothing is left. Adds the token policy to the answer's
    RateLimit-Policy / RateLimit headers."""
    policy = policy_of(identity)
    if policy is None:
        return None
    config = current_app.config
    try:
        reservation = reserve(
            get_redis(),
            policy,
            owner=identity.owner,
            app=current_app._get_current_object(),  # type: ignore[attr-defined]
            step=config.get("AGENT_TOKEN_RESERVE", DEFAULT_RESERVE),
            ttl_seconds=config.get("AGENT_TOKEN_RESERVATION_SECONDS", DEFAULT_RESERVATION_SECONDS),
        )
    except TokenQuotaExhausted as exc:
        note_headers(policy, 0, exc.window.reset_seconds)
        raise too_many(exc) from None
    note_headers(policy, reservation.remaining_after_reserve(), reservation.window.reset_seconds)
    return reservation


def check_remaining(identity: Identity) -> None:
    """Before work that will reserve later (a job): 429 when nothing is left, else the
    token policy in the headers. Takes nothing."""
    policy = policy_of(identity)
    if policy is None:
        return
    ttl = current_app.config.get("AGENT_TOKEN_RESERVATION_SECONDS", DEFAULT_RESERVATION_SECONDS)
    window = peek(get_redis(), policy, ttl_seconds=ttl)
    note_headers(policy, window.remaining, window.reset_seconds)
    if window.remaining <= 0:
        raise too_many(TokenQuotaExhausted(policy, _retry_after(policy, window, ttl), window))


def too_many(exc: TokenQuotaExhausted) -> APIError:
    policy = exc.policy
    return APIError(
        429,
        "Too Many Requests",
        f"The token quota of this key ({policy.limit} tokens per {policy.window} seconds) is used up "
        "or held by replies under way; retry later.",
        headers={"Retry-After": str(exc.retry_after)},
        extra={"retry_after": exc.retry_after, "reason": "token_quota_exhausted"},
    )


def note_headers(policy: TokenPolicy, remaining: int, reset_seconds: float) -> None:
    """Have this answer's RateLimit-Policy / RateLimit carry the token policy (headers.py)."""
    item = (policy.ietf, f'"{POLICY_NAME}";r={remaining};t={math.ceil(reset_seconds)}')

    # after_this_request runs before the app's after_request hooks (the rate-limit headers are
    # written in one of them), for error answers too.
    @after_this_request
    def attach(response: Response) -> Response:
        setattr(response, EXTRA_ITEMS, [*getattr(response, EXTRA_ITEMS, ()), item])
        return response
