"""The gateway's decision as a ``limits`` storage and strategy, so Flask-Limiter's engine
runs on it: ``gateway://`` (the app's Redis client) and ``gateway-fixed-window``.

Flask-Limiter asks a strategy about one limit at a time (``hit``, ``test``,
``get_window_stats``). A limit the gateway's hook has already decided for this request,
together with every other limit of the request in one atomic call, is answered from
that decision without a round trip. Any other limit (asked outside a request, or added
at run time, e.g. ``with limiter.limit(...)`` in a view) gets an atomic call of its own
through the same script, so the strategy is correct on its own.
"""

from __future__ import annotations

import time
from typing import Any

from flask import current_app, g, has_request_context
from limits import RateLimitItem
from limits.storage import Storage
from limits.strategies import STRATEGIES, RateLimiter
from limits.util import WindowStats

from core.extensions import get_redis
from core.redis import REDIS_UNAVAILABLE
from gateway.ratelimit.decision import Decider
from gateway.ratelimit.policies import declared_policies

EXTENSION_KEY = "gateway.ratelimit"
STORAGE_URI = "gateway://"
STRATEGY_NAME = "gateway-fixed-window"
REQUEST_STATE = "rate_limits"  # flask.g attribute: the hook's RequestLimits


def decider() -> Decider:
    return current_app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]


def decided(item: RateLimitItem, identifiers: tuple[str, ...]) -> tuple[Any, int] | None:
    """The hook's decision of this request and the index of this limit's policy in it, if decided."""
    if not has_request_context():
        return None
    state = g.get(REQUEST_STATE)
    if state is None:
        return None
    index = state.declared.get(item.key_for(*identifiers))
    return None if index is None else (state.decision, index)


class GatewayStorage(Storage):
    """Fixed-window counters in the app's Redis (the client of core.extensions)."""

    STORAGE_SCHEME = ["gateway"]

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return REDIS_UNAVAILABLE

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        pipe = get_redis().pipeline()
        pipe.incrby(key, amount)
        pipe.expire(key, int(expiry), nx=True)
        return int(pipe.execute()[0])

    def get(self, key: str) -> int:
        return int(get_redis().get(key) or 0)

    def get_expiry(self, key: str) -> float:
        return time.time() + max(0, get_redis().pttl(key)) / 1000

    def check(self) -> bool:
        try:
            return bool(get_redis().ping())
        except REDIS_UNAVAILABLE:
            return False

    def reset(self) -> int | None:
        raise NotImplementedError("the gateway's counters are not reset wholesale")

    def clear(self, key: str) -> None:
        get_redis().delete(key)


class GatewayStrategy(RateLimiter):
    """Fixed windows, decided by the gateway's atomic script (one call for every limit of a request)."""

    def hit(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        # A decided limit was taken by the hook (a breach never reaches Flask-Limiter).
        known = decided(item, identifiers)
        if known is not None:
            return known[0].breached != known[1]
        return self._own(item, identifiers, commit=True).breached is None

    def test(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        known = decided(item, identifiers)
        if known is not None:
            return known[0].breached != known[1]
        return self._own(item, identifiers, commit=False).breached is None

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        known = decided(item, identifiers)
        decision, index = known if known is not None else (self._own(item, identifiers, commit=False), 0)
        return WindowStats(time.time() + decision.resets[index], decision.left()[index])

    def clear(self, item: RateLimitItem, *identifiers: str) -> None:
        for policy in declared_policies([item], identifiers):
            get_redis().delete(policy.redis_key)

    @staticmethod
    def _own(item: RateLimitItem, identifiers: tuple[str, ...], *, commit: bool) -> Any:
        return decider().decide(declared_policies([item], identifiers), commit=commit)


# Where Flask-Limiter looks strategies up (``strategy=``/RATELIMIT_STRATEGY); the storage
# registered itself under its STORAGE_SCHEME when the class was made.
STRATEGIES[STRATEGY_NAME] = GatewayStrategy  # type: ignore[assignment]
