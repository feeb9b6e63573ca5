"""Policies: which limits hold for a request, parsed from limit strings, and the Redis
counter each one is counted in.

Who is counted (CONTRACT section 5):

* an API key by its id, an admin user by its id: the key's ``rate_limit`` (else
  ``RATELIMIT_DEFAULT``) and its ``quota`` both hold;
* everyone else by client IP (as ProxyFix leaves it after ``TRUSTED_PROXY_COUNT``
  hops) under ``RATELIMIT_ANONYMOUS``: public routes, requests without
  credentials and requests with a wrong key, so guessing keys runs into it;
* a route's own limits, declared with ``@limiter.limit`` (login, stream opens, the
  operator's ``RATELIMIT_ROUTES``): counted per the limit's key (the identity, by
  default) and the route, on top of the identity's.

Fixed windows: a window starts with its first hit and lasts the limit's period. Each
policy has a counter of its own, named by subject, kind, amount and window
(``gw:ratelimit:{k:<id>}:fw:key:<id>:quota:100:3600``): a rate and a quota of the same
window, or two amounts of one window, are counted apart, so each holds exactly. A changed
limit is a new policy and starts a counter of its own (the old one runs out with its
window). The strategy name is part of the names, so a future strategy never reads a
counter of another shape. The hash tag is the limit key's (core.redis.subject_tag): an
identity's counters sit in its key record's slot, an IP's together, so on a Redis Cluster
a request's limits are one or two slot groups (decision.py). Counters of the untagged
names of earlier releases are not migrated: they run out with their windows.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from limits import RateLimitItem, parse_many

from auth.identity import Identity
from core.redis import KEYS, subject_tag

log = logging.getLogger(__name__)

STRATEGY = "fw"  # fixed window; part of every counter's key name
ROUTE = "route"  # the kind of a limit declared on a route (other than the named ones below)
LOGIN = "login"  # failed logins: closed when Redis is down, never leased
# Shared scopes of the login and stream-open limits: each is a kind and a header name of its own, with the
# counter names of earlier releases (the limit's key alone is the subject).
NAMED_SCOPES: dict[str, tuple[str, str]] = {
    "login": (LOGIN, "login"),
    "login-email-ip": (LOGIN, "login-email-ip"),
    "login-email": (LOGIN, "login-email"),
    "stream-opens": ("stream", "stream-opens"),
}


# eq=False: policies are made once and cached, so identity is equality, and a tuple of
# them hashes by object ids (the lease book's key) instead of by every field.
@dataclass(frozen=True, eq=False)
class Policy:
    """One limit on one subject: ``kind`` is rate, quota, anonymous, login or route."""

    name: str
    kind: str
    item: RateLimitItem
    subject: str
    window: int  # seconds
    redis_key: str
    ietf: str  # this policy's item of the RateLimit-Policy header (fixed, so made once)

    @classmethod
    def build(cls, name: str, kind: str, item: RateLimitItem, subject: str, tag: str | None = None) -> Policy:
        window = int(item.get_expiry())
        redis_key = counter_key(subject, kind, item.amount, window, tag=tag)
        return cls(name, kind, item, subject, window, redis_key, f'"{name}";q={item.amount};w={window}')

    @property
    def closed(self) -> bool:
        """Never served from the per-process fallback nor from a lease (brute-force protection)."""
        return self.kind == LOGIN


def counter_key(
    subject: str, kind: str, amount: int | str, window: int | str, *, tag: str | None = None
) -> str:
    """The Redis key counting one policy: which policy it is, not only which window, so
    policies never share a counter. ``tag``: the subject's (a route limit's subject adds its
    scope to the limit key: the tag is the limit key's, given by the caller)."""
    return KEYS.rate_counter(tag or subject_tag(subject), STRATEGY, subject, kind, amount, window)


@functools.lru_cache(maxsize=1024)
def parse_limit_items(value: str) -> tuple[RateLimitItem, ...]:
    """``"100/minute;10000/day"`` as limit items (cached: the same few strings recur)."""
    return tuple(parse_many(value))


def build_policies(
    name: str, kind: str, items: Iterable[RateLimitItem], subject: str, tag: str | None = None
) -> tuple[Policy, ...]:
    """The policies of some limit items on one subject, named ``name`` (by window where several)."""
    # A limit written twice is one policy (its counter would otherwise be taken twice).
    unique = list({(i.amount, int(i.get_expiry())): i for i in items}.values())
    if len(unique) == 1:
        return (Policy.build(name, kind, unique[0], subject, tag),)
    windows = [int(item.get_expiry()) for item in unique]
    return tuple(Policy.build(_policy_name(name, item, windows), kind, item, subject, tag) for item in unique)


def _policy_name(name: str, item: RateLimitItem, windows: list[int]) -> str:
    # Named by window, and by amount too where one window has two amounts (headers tell them apart).
    window = int(item.get_expiry())
    return f"{name}-{window}s" if windows.count(window) == 1 else f"{name}-{item.amount}-{window}s"


# Sized for the tenants a worker serves (auth.cache keeps up to 50,000 records): at 4,096,
# 10,000 tenants cycled rebuilt nearly every request's policies. ~1 KB per entry.
POLICY_CACHE_SIZE = 65_536


@functools.lru_cache(maxsize=POLICY_CACHE_SIZE)  # cached: the hot path rebuilds none
def limit_policies(kind: str, value: str, subject: str) -> tuple[Policy, ...]:
    """The policies of one limit string on one subject."""
    return build_policies(kind, kind, parse_limit_items(value), subject)


def anonymous_policies(value: str, ip: str) -> tuple[Policy, ...]:
    """RATELIMIT_ANONYMOUS on one client IP."""
    return limit_policies("anonymous", value, ip_subject(ip))


def ip_subject(ip: str) -> str:
    return f"ip:{ip}"


def identity_subject(identity: Identity) -> str:
    return f"{'key' if identity.type == 'api_key' else 'user'}:{identity.id}"


def identity_policies(identity: Identity, default: str) -> tuple[Policy, ...]:
    """The identity's rate (its own or ``default``) and its quota, if it has one."""
    return _identity_policies(identity.type, identity.id, identity.rate_limit, identity.quota, default)


@functools.lru_cache(maxsize=POLICY_CACHE_SIZE)
def _identity_policies(
    kind: str, identity_id: str, rate_limit: str | None, quota: str | None, default: str
) -> tuple[Policy, ...]:
    # Cached: an identity's limits change rarely, and a change is a new cache entry.
    subject = f"{'key' if kind == 'api_key' else 'user'}:{identity_id}"
    try:
        policies = limit_policies("rate", rate_limit or default, subject)
        if quota:
            policies = tuple(sorted(policies + limit_policies("quota", quota, subject), key=_by_window))
    except ValueError:
        # A stored limit that no longer parses must not turn every request into a 500.
        log.warning("unparsable limit on %s:%s; using RATELIMIT_DEFAULT", kind, identity_id)
        policies = limit_policies("rate", default, subject)
    return policies


def _by_window(policy: Policy) -> int:
    return policy.window


def declared_policies(items: Sequence[RateLimitItem], identifiers: tuple[str, ...]) -> tuple[Policy, ...]:
    """The policies of limits Flask-Limiter declared on a route, counted under ``identifiers``
    (its key, then its scope): a named scope keeps its own kind and counter names."""
    scope = identifiers[-1]
    named = NAMED_SCOPES.get(scope)
    if named is not None:
        # Built fresh, not cached: subjects chosen by strangers must not evict cached policies.
        kind, name = named
        return build_policies(name, kind, items, ":".join(identifiers[:-1]), subject_tag(identifiers[0]))
    return _route_policies(tuple(items), ":".join(identifiers), subject_tag(identifiers[0]))


@functools.lru_cache(maxsize=4096)
def _route_policies(items: tuple[RateLimitItem, ...], subject: str, tag: str) -> tuple[Policy, ...]:
    return build_policies(ROUTE, ROUTE, items, subject, tag)
