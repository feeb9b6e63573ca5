"""Admission: who the caller is and every limit of its request, in ONE Redis call.

A gateway's real load is many tenants, each doing a few requests a second. Asking
Redis first for the key's record and then for the limits cost two round trips per
request (the record cache could not stay warm for a tenant's next request), so the
cost grew with the number of tenants. Here the two travel together:

* **A key this worker knows** (auth.cache keeps records for minutes): ADMIT_LUA
  checks that the record's ``version`` is still the one the worker holds, writes
  ``last_used_at`` when it is due (once a minute per key and worker), and decides
  the key's limits, all in one call. A revoked, rotated, edited or swept record has
  a new version: the call counts nothing, the worker reads the record again and
  decides on what it finds. So a change takes effect on every worker on the next
  request of that key.
* **A key it does not know**: UNKNOWN_LUA runs the key look-up (auth.keys) and, when
  no live key has that digest, counts the request against the client IP's limit in
  the same call: guessing keys runs into the per-IP limit at one round trip per guess.
  A live key found there is cached and then admitted as above (two round trips, once
  per key and worker). On a Redis Cluster the look-up's record and the IP's counters sit
  on different shards (and the record's name is known only after the look-up), so there
  it is three calls: GET of the digest's look-up, the record check on the record's shard
  (auth.keys.check_digest), then the IP's decision (or the key's admission) on theirs.
* **A lease**: while the worker's entry is fresh (auth.cache.FRESH_SECONDS) and it
  holds a lease for the key's limits (hot keys only, leases.py), no round trip.

Routes with limits of their own (``@limiter.limit``) take the general path in hook.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from auth import keys
from auth.cache import Entry, KeyCache
from auth.identity import Identity, admit_identity, ip_allowed, refuse_outside_allowed_ips
from auth.loaders import key_cache, remember_record, resolve_key
from core.extensions import get_redis
from core.redis import is_cluster
from gateway.ratelimit.backend import decider
from gateway.ratelimit.decision import DECIDE_FUNCTION, Decider, Decision
from gateway.ratelimit.policies import Policy

PoliciesOf = Callable[[Identity | None], tuple[Policy, ...]]

# KEYS[1]: the key's record; then the counters. ARGV[1]: the record version the worker
# holds; ARGV[2]: last_used_at to write ('': not due); then decide's. Returns {0} when
# the record is gone or changed (nothing counted), else {1, decision...}.
ADMIT_LUA = (
    DECIDE_FUNCTION
    + """
local state = redis.call('HMGET', KEYS[1], 'id', 'version')
if not state[1] or (state[2] or '0') ~= ARGV[1] then return {0} end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'last_used_at', ARGV[2]) end
local out = decide(1, 2)
table.insert(out, 1, 1)
return out
"""
)

# KEYS[1]: the presented digest's look-up; then the client IP's counters. ARGV[1], ARGV[2]:
# the record name's prefix and suffix; ARGV[3]: the digest; then decide's. One server only
# (lookup_key names the record itself): never sent to a cluster (_unknown_reply).
# Returns {0, record} for a live key (nothing counted), else {1, decision...} on the IP's limits.
UNKNOWN_LUA = (
    keys.LOOKUP_LUA
    + DECIDE_FUNCTION
    + """
local record = lookup_key(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
if record then return {0, record} end
local out = decide(1, 3)
table.insert(out, 1, 1)
return out
"""
)


def admit(secret: str, policies_of: PoliciesOf, client_ip: str) -> Decision:
    """The decision on every limit of a request presenting ``secret`` from ``client_ip``; its
    identity (or None) is this request's from now on (auth.identity.admit_identity).

    A key used from outside its ``allowed_ips`` is refused (403) before anything is counted.
    """
    cache = key_cache()
    key_digest = cache.digest(secret)
    entry = cache.known(key_digest)
    if entry is not None:
        decision = _admit_known(cache, key_digest, entry, policies_of, client_ip)
        if decision is not None:
            return decision
        cache.drop(key_digest)  # the record changed (or must be re-read): read again below
    return _admit_unknown(cache, key_digest, secret, policies_of, client_ip)


def _admit_known(
    cache: KeyCache, key_digest: str, entry: Entry, policies_of: PoliciesOf, client_ip: str
) -> Decision | None:
    """The decision for a key this worker holds, or None when its record changed."""
    identity = entry.identity
    fresh = cache.fresh(entry)
    if not ip_allowed(identity, client_ip):
        # Refused only on a record Redis confirmed within FRESH_SECONDS: an older one may
        # predate an edit that widened the list, so it is read again first (nothing counted).
        if not fresh:
            return None
        refuse_outside_allowed_ips(identity, client_ip)
    policies = policies_of(identity)
    limiter = decider()
    lease = limiter.leasable(policies)
    if fresh and lease:
        served = limiter.serve_lease(policies)
        if served is not None:
            admit_identity(identity)
            return served
    touch = keys.now_iso() if cache.should_touch(identity.id) else ""
    args = [entry.version, touch]
    # Only a fresh entry may be decided from per-process counters when Redis is away:
    # an older one cannot be trusted without the version check.
    reply = limiter.in_redis_or_memory(
        policies, ADMIT_LUA, [keys.record_key(identity.id)], args, lease=lease, memory_ok=fresh
    )
    if not isinstance(reply, Decision):
        return None
    if reply.checked:
        cache.confirm(key_digest, entry)
    admit_identity(identity)
    return reply


def _unknown_reply(limiter: Decider, anonymous: tuple[Policy, ...], key_digest: str) -> Decision | list[Any]:
    """UNKNOWN_LUA's reply: the IP's decision, or ``[0, record]`` for a live key."""
    if not is_cluster(get_redis()):
        args = [*keys.record_name_parts(), key_digest]
        return limiter.in_redis_or_memory(
            anonymous, UNKNOWN_LUA, [keys.digest_key(key_digest)], args, memory_ok=False
        )
    # A cluster: the look-up, the record and the IP's counters are on shards of their own.
    r = get_redis()
    flat = keys.check_digest(r, r.get(keys.digest_key(key_digest)) or "", key_digest)
    if flat:
        return [0, flat]
    return limiter.decide(anonymous)


def _admit_unknown(
    cache: KeyCache, key_digest: str, secret: str, policies_of: PoliciesOf, client_ip: str
) -> Decision:
    anonymous = policies_of(None)
    limiter = decider()
    if not keys.looks_valid(secret):  # refused offline: only the IP's limits are asked
        admit_identity(None)
        return limiter.decide(anonymous)
    reply = _unknown_reply(limiter, anonymous, key_digest)
    if isinstance(reply, Decision):
        admit_identity(None)
        return reply
    record = keys.record_from_reply(reply[1])
    if record is not None:
        remember_record(cache, key_digest, record)
        entry = cache.known(key_digest)
        decision = (
            _admit_known(cache, key_digest, entry, policies_of, client_ip) if entry is not None else None
        )
        if decision is not None:
            return decision
    # The app's clock says the key ended, or the record changed between the two calls:
    # the general path (one look-up, one decision) settles it.
    identity = resolve_key(secret)
    admit_identity(identity)
    refuse_outside_allowed_ips(identity, client_ip)
    return limiter.decide(policies_of(identity))
