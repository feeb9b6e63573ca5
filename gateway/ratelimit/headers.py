"""The rate-limit headers of a decision: X-RateLimit-Limit/-Remaining/-Reset for the
headline policy (the breached one, else the scarcest), RateLimit-Policy and RateLimit
(draft-ietf-httpapi-ratelimit-headers) for every policy, Retry-After on a refusal.

Flask-Limiter's own header writing (``headers_enabled``) stays off: it describes one
limit, and it would read the window again from storage.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

from flask import Response
from werkzeug.datastructures import Headers

from gateway.ratelimit.decision import Decision
from gateway.ratelimit.policies import Policy

HEADER_LIMIT = "X-RateLimit-Limit"
HEADER_REMAINING = "X-RateLimit-Remaining"
HEADER_RESET = "X-RateLimit-Reset"
HEADER_RETRY_AFTER = "Retry-After"
HEADER_POLICY = "RateLimit-Policy"
HEADER_STATE = "RateLimit"
# A response attribute: [(RateLimit-Policy item, RateLimit item)] of limits decided outside
# the request decision (token quotas, gateway/ratelimit/tokens.py), added to this answer's two
# headers. On the response, not in ``g``: a getattr costs every limited request ~20x less.
EXTRA_ITEMS = "extra_rate_limit_items"


Append = Callable[[Headers, list[tuple[str, str]]], None]


def header_items(decision: Decision) -> list[tuple[str, str]]:
    """The rate-limit headers of ``decision``, in order (built on every limited answer)."""
    policies, resets = decision.policies, decision.resets
    left = decision.left()
    i = decision.headline(left)
    state = [f'"{p.name}";r={left[n]};t={math.ceil(resets[n])}' for n, p in enumerate(policies)]
    items = [
        (HEADER_LIMIT, str(policies[i].item.amount)),
        (HEADER_REMAINING, str(left[i])),
        (HEADER_RESET, str(math.ceil(time.time() + resets[i]))),
        (HEADER_POLICY, _policy_header(policies)),
        (HEADER_STATE, ", ".join(state)),
    ]
    if decision.breached is not None:
        items.append((HEADER_RETRY_AFTER, str(decision.retry_after())))
    return items


def headers(decision: Decision) -> dict[str, str]:
    return dict(header_items(decision))


@functools.lru_cache(maxsize=4096)
def _policy_header(policies: tuple[Policy, ...]) -> str:
    """The RateLimit-Policy value of a policy tuple (fixed per tuple, and tuples are cached)."""
    return ", ".join([p.ietf for p in policies])


def add_headers(response: Response, decision: Decision, *, append: Append | None = None) -> None:
    """Add the headers of a granted request's decision to ``response`` (``append``: the
    fast path's, when it is on)."""
    items = header_items(decision)
    extra = getattr(response, EXTRA_ITEMS, None)
    if extra:
        items = with_extra_items(items, extra)
    if append is not None:
        append(response.headers, items)
    else:  # one extend, not one set() per header
        response.headers.extend(items)


def with_extra_items(items: list[tuple[str, str]], extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``items`` with the ``extra`` policies appended to RateLimit-Policy and RateLimit."""
    policy = ", ".join(p for p, _ in extra)
    state = ", ".join(s for _, s in extra)
    more = {HEADER_POLICY: policy, HEADER_STATE: state}
    return [(name, f"{value}, {more[name]}" if name in more else value) for name, value in items]
