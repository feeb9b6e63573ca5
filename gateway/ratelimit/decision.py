"""The atomic decision: every limit of a request decided, and its headers' figures read,
in ONE Redis call, or in none while the worker holds a lease (leases.py).

One Lua script reads every counter of the request, refuses when any is spent (then it
takes nothing from any limit), otherwise increments them all, and returns each count
and time-to-reset, which is what the headers need. It is registered with redis-py's
``register_script`` (which loads it again after a NOSCRIPT) on the app's client; with
``GATEWAY_FASTPATH`` on, gateway.fastpath.redis sends the same script on connections
of its own (see there for why and what it saves).

On a Redis Cluster a script's keys must share a slot. An identity's limits do (they carry
its tag, core.redis.KEYS), and so do one IP's; a request whose limits span subjects (the
identity and a login limit by e-mail or IP, say) is decided per slot group, one call each,
in order: when a later group refuses, the units the earlier groups took are given back
(RETURN_LUA), so what is lost of all-or-nothing is only a concurrent request of the same
subject seeing those units taken for the moment in between. Such requests take no lease.
The give-backs there run one call per slot group, not as EVALSHAs in a cluster pipeline.
On one server (standalone, Sentinel) nothing of this applies: one call, one pipeline.

Redis unreachable: with ``RATELIMIT_FAIL_OPEN`` the worker counts in a per-process
``limits`` MemoryStorage until Redis answers again (tried every RECHECK_SECONDS);
otherwise the error reaches the error layer (503). Closed policies (login) never
fall back and are never leased.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from flask import Flask
from limits.storage import MemoryStorage
from redis.cluster import key_slot

from core.extensions import get_redis
from core.redis import REDIS_UNAVAILABLE, LuaScript, is_cluster
from gateway import fastpath
from gateway.ratelimit import leases
from gateway.ratelimit.policies import Policy

log = logging.getLogger(__name__)

# Failing open, how often the limiter looks whether Redis is back.
RECHECK_SECONDS = 1.0

# The decision as a Lua function, so that the admission scripts (admission.py) run it in
# the same call as their check of the caller's key. decide(k, a): the counters are
# KEYS[k + 1 ..], and its ARGV start after ARGV[a]: cost, commit (1 = take, 0 = only
# look), lease_max, lease_share, then amount_i, window_ms_i. Taking, it takes ``cost``
# units, or a lease of up to lease_max when every limit has many left (leases.py),
# never more than any limit has left.
# Returns {breached index (0: none), units taken, count_1, pttl_1, count_2, pttl_2, ...}.
DECIDE_FUNCTION = """
local function decide(k, a)
  local cost = tonumber(ARGV[a + 1])
  local commit = ARGV[a + 2] == '1'
  local lease_max, share = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local counts, ttls, breached, spare = {}, {}, 0, nil
  local n = #KEYS - k
  for i = 1, n do
    local key = KEYS[k + i]
    local amount = tonumber(ARGV[a + 3 + 2 * i])
    local ttl = redis.call('PTTL', key)
    -- A counter without expiry, or a key of another shape, is replaced rather than trusted or failed on.
    if ttl == -1 or (ttl >= 0 and redis.call('TYPE', key).ok ~= 'string') then
      redis.call('DEL', key); ttl = -2
    end
    local count = 0
    if ttl == -2 then ttl = tonumber(ARGV[a + 4 + 2 * i]) else count = tonumber(redis.call('GET', key)) end
    counts[i], ttls[i] = count, ttl
    if breached == 0 and count + cost > amount then breached = i end
    if spare == nil or amount - count < spare then spare = amount - count end
  end
  local take = 0
  if breached == 0 and commit then
    take = math.max(cost, math.min(lease_max, math.floor(spare / share)))
    for i = 1, n do
      counts[i] = redis.call('INCRBY', KEYS[k + i], take)
      if counts[i] == take then redis.call('PEXPIRE', KEYS[k + i], ttls[i]) end
    end
  end
  local out = {breached, take}
  for i = 1, n do out[#out + 1] = counts[i]; out[#out + 1] = ttls[i] end
  return out
end
"""
# KEYS: the counters; ARGV: decide's.
DECIDE_LUA = DECIDE_FUNCTION + "return decide(0, 0)"


@dataclass(slots=True)  # one per request: a frozen dataclass's __init__ is slower
class Decision:
    """Every policy of a request with its count and seconds to reset; ``breached`` indexes one."""

    policies: tuple[Policy, ...]
    counts: tuple[int, ...]
    resets: tuple[float, ...]
    breached: int | None
    taken_at: float = 0.0  # time.monotonic() of the call, for giving units back
    checked: bool = False  # made in the call that checked the caller's key record (admission.py)

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


class Transport(Protocol):
    """How the decision reaches Redis: redis-py's public client, or gateway.fastpath.redis."""

    def run(self, source: str, keys: list[str], args: list[Any]) -> Any: ...

    def give_back(self, calls: list[tuple[list[str], list[int]]]) -> None: ...


class ScriptTransport:
    """The decision and the give-backs through ``core.redis.LuaScript`` on the app's client
    (register_script: EVALSHA, NOSCRIPT handled by redis-py); give-backs in one pipeline."""

    return_script = LuaScript(leases.RETURN_LUA)

    def __init__(self) -> None:
        self.scripts: dict[str, LuaScript] = {}

    def run(self, source: str, keys: list[str], args: list[Any]) -> Any:
        script = self.scripts.get(source)
        if script is None:
            script = self.scripts[source] = LuaScript(source)
        return script(get_redis(), keys, args)

    def give_back(self, calls: list[tuple[list[str], list[int]]]) -> None:
        r = get_redis()
        if is_cluster(r):  # no EVALSHA in a cluster pipeline: one call per slot group
            for keys, args in calls:
                for group_keys, group_args in split_return(keys, args):
                    self.return_script(r, group_keys, group_args)
            return
        pipe = r.pipeline(transaction=False)
        for keys, args in calls:
            self.return_script(pipe, keys, args)
        pipe.execute()


def slot_groups(keys: Sequence[str]) -> list[list[int]]:
    """Indexes of ``keys`` grouped by cluster slot, groups in order of their first key."""
    groups: dict[int, list[int]] = {}
    for i, name in enumerate(keys):
        groups.setdefault(key_slot(name.encode()), []).append(i)
    return list(groups.values())


def split_return(keys: list[str], args: list[int]) -> list[tuple[list[str], list[int]]]:
    """RETURN_LUA's KEYS and ARGV (units, expected ttl per key, tolerance) per slot group."""
    units, expected, tolerance = args[0], args[1:-1], args[-1]
    return [([keys[i] for i in g], [units, *(expected[i] for i in g), tolerance]) for g in slot_groups(keys)]


def _transport(app: Flask) -> Transport:
    if fastpath.redis_enabled(app.config):  # standalone only: it drives a pool's raw connections
        from gateway.fastpath.redis import FastTransport

        return FastTransport(leases.RETURN_LUA)
    return ScriptTransport()


def _header_appender(app: Flask) -> Any:
    if not fastpath.enabled(app.config):
        return None  # Werkzeug's Headers.extend
    from gateway.fastpath.headers import append_built_headers

    return append_built_headers


class Decider:
    """Per app: how the decision reaches Redis, the worker's leases, the fallback counters."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.fail_open: bool = app.config["RATELIMIT_FAIL_OPEN"]
        self.lease_max: int = max(1, app.config["RATELIMIT_LEASE_MAX"])
        self.transport = _transport(app)
        self.leases = leases.LeaseBook(self.give_back_leases)
        self.memory = MemoryStorage()
        self.memory_lock = threading.Lock()
        self.degraded = False
        self.recheck_at = 0.0  # time.monotonic() before which a degraded limiter skips Redis
        # Per-endpoint facts the Flask hook caches (exempt? any declared limits?), keyed with the view.
        self.endpoints: dict[tuple[str, str], tuple[Any, bool]] = {}
        self.append_headers = _header_appender(app)

    def decide(self, policies: Sequence[Policy], *, commit: bool = True) -> Decision:
        """A live lease first; then Redis; when it is unreachable, per-process counters if
        failing open (never for a closed policy, which is never leased either)."""
        lease = commit and self.leasable(policies)
        if lease:
            served = self.serve_lease(policies)
            if served is not None:
                return served
        return self.in_redis_or_memory(policies, DECIDE_LUA, [], [], commit=commit, lease=lease)

    def leasable(self, policies: Sequence[Policy]) -> bool:
        return self.lease_max > 1 and not any(p.closed for p in policies)

    def serve_lease(self, policies: Sequence[Policy]) -> Decision | None:
        """A unit from this worker's live lease of ``policies`` (no round trip), if it has one."""
        served = self.leases.serve(policies)
        return None if served is None else Decision(tuple(policies), served[0], served[1], None)

    def in_redis_or_memory(
        self,
        policies: Sequence[Policy],
        source: str,
        keys: list[str],
        args: list[Any],
        *,
        commit: bool = True,
        lease: bool = False,
        memory_ok: bool = True,
    ) -> Any:
        """``source``'s reply (see call), or, when Redis is unreachable and the policies may
        fail open, a decision from per-process counters."""
        fallback = memory_ok and self.fail_open and not any(p.closed for p in policies)
        # While degraded, Redis is tried again only every RECHECK_SECONDS: a stalled
        # server would otherwise cost every request its connect timeout.
        if fallback and time.monotonic() < self.recheck_at:
            return self.decide_in_memory(policies, commit=commit)
        try:
            return self.call(policies, source, keys, args, commit=commit, lease=lease)
        except REDIS_UNAVAILABLE:
            if not fallback:
                raise
            self.recheck_at = time.monotonic() + RECHECK_SECONDS
            return self.decide_in_memory(policies, commit=commit)

    def call(
        self,
        policies: Sequence[Policy],
        source: str,
        keys: list[str],
        args: list[Any],
        *,
        commit: bool = True,
        lease: bool = False,
    ) -> Any:
        """Run ``source`` on ``policies``' counters, placed after ``keys`` (and their ARGV after
        ``args``). A script with keys of its own checks them first (admission.py) and
        answers ``{1, decision...}`` when it went on to decide, else a reply of its own,
        returned as it is; DECIDE_LUA answers the decision alone."""
        lease_max = self.leases.wanted(policies, self.lease_max) if commit and lease else 1
        decide_args: list[int] = [1, 1 if commit else 0, lease_max, leases.LEASE_SHARE]
        for policy in policies:
            decide_args += [policy.item.amount, policy.window * 1000]
        counters = [p.redis_key for p in policies]
        if not keys and len(counters) > 1 and is_cluster(get_redis()):
            groups = slot_groups(counters)
            if len(groups) > 1:
                return self.decide_by_slot(policies, counters, groups, commit=commit)
        taken_at = time.monotonic()
        out = self.transport.run(source, keys + counters, args + decide_args)
        if self.degraded:
            self.degraded = False
            log.warning("rate-limit storage is back: limits are shared through Redis again")
        if keys:
            if int(out[0]) != 1:
                return out  # the check failed: nothing was decided
            out = out[1:]
        return self.decision_from(policies, counters, out, taken_at, checked=bool(keys))

    def decision_from(
        self,
        policies: Sequence[Policy],
        counters: list[str],
        out: list[Any],
        taken_at: float,
        *,
        checked: bool,
    ) -> Decision:
        counts = tuple(int(c) for c in out[2::2])
        ttls_ms = tuple(int(ms) for ms in out[3::2])
        taken = int(out[1])
        if taken > 1:  # a lease: this request takes one unit, the rest serve the next ones
            expiry = leases.lease_expiry(taken_at, ttls_ms)
            self.leases.add(
                policies, leases.Lease(tuple(counters), taken - 1, counts, ttls_ms, taken_at, expiry)
            )
            counts = tuple(count - (taken - 1) for count in counts)
        resets = tuple(ms / 1000 for ms in ttls_ms)
        breached = int(out[0]) - 1 if out[0] else None
        return Decision(tuple(policies), counts, resets, breached, taken_at, checked)

    def decide_by_slot(
        self, policies: Sequence[Policy], counters: list[str], groups: list[list[int]], *, commit: bool
    ) -> Decision:
        """A cluster's decision on limits of several slots: one DECIDE_LUA per group, in order;
        after a refusal the later groups are only looked at and the earlier ones given back."""
        n = len(policies)
        counts, ttls, breached, took = [0] * n, [0] * n, None, []
        taken_at = time.monotonic()
        for group in groups:
            take = commit and breached is None
            args: list[int] = [1, 1 if take else 0, 1, leases.LEASE_SHARE]
            for i in group:
                args += [policies[i].item.amount, policies[i].window * 1000]
            out = self.transport.run(DECIDE_LUA, [counters[i] for i in group], args)
            if int(out[0]) and breached is None:
                breached = group[int(out[0]) - 1]
            elif take:
                took.append(group)
            for j, i in enumerate(group):
                counts[i], ttls[i] = int(out[2 + 2 * j]), int(out[3 + 2 * j])
        if breached is not None and took:
            self.transport.give_back(
                [
                    ([counters[i] for i in g], [1, *(ttls[i] for i in g), leases.RETURN_TOLERANCE_MS])
                    for g in took
                ]
            )
            for i in (i for g in took for i in g):
                counts[i] -= 1
        resets = tuple(ms / 1000 for ms in ttls)
        return Decision(tuple(policies), tuple(counts), resets, breached, taken_at)

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
        return Decision(tuple(policies), tuple(counts), resets, breached, time.monotonic())

    def give_back_leases(self, spent: list[leases.Lease]) -> None:
        """The lease book's sweeper: return unused units to the windows they came from, in one call."""
        now = time.monotonic()
        with self.app.app_context():
            self.transport.give_back([lease.return_args(now) for lease in spent])

    def give_back(self, decision: Decision, indices: Sequence[int]) -> None:
        """Return the one unit ``decision`` took from the policies at ``indices``."""
        elapsed_ms = (time.monotonic() - decision.taken_at) * 1000
        keys = [decision.policies[i].redis_key for i in indices]
        expected = [int(decision.resets[i] * 1000 - elapsed_ms) for i in indices]
        self.transport.give_back([(keys, [1, *expected, leases.RETURN_TOLERANCE_MS])])
