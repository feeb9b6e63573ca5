"""Quota windows crossing a threshold, told from the decision's own figures (no Redis call).

After each granted request the decision holds every quota counter's value as the call (or
the lease) returned it. This process remembers the last value it saw per window; when a
value passes an alert threshold (80 %, 100 %) since the last one, it sends
``core.signals.quota_window_used`` (kind "requests"), so the listener, which deduplicates
across processes in Redis, is reached only on a crossing, never per request. A lease takes
units in blocks: the crossing is then told when the block is taken, slightly early.
"""

from __future__ import annotations

import math
import threading
import time

from flask import current_app

from core import signals
from gateway.ratelimit.decision import Decision

THRESHOLDS = (0.8, 1.0)
QUOTA = "quota"
# Windows remembered per process (the policy caches' size). Past it the expired ones go, and if
# that is not enough, all: a forgotten window only costs its next crossing a repeated signal,
# which the listener's SET NX answers; scanning a full table on every request would not do.
_MAX_WINDOWS = 65_536

_seen: dict[str, tuple[float, int]] = {}  # counter key -> (window end, last count seen)
_lock = threading.Lock()


def _key_id(subject: str) -> str:
    """``key:<id>`` -> the key id; an admin user's ``user:<id>`` stays whole (as in usage)."""
    kind, _, rest = subject.partition(":")
    return rest if kind == "key" else subject


def _crossed(before: int, after: int, limit: int) -> bool:
    return any(before < math.ceil(t * limit) <= after for t in THRESHOLDS)


def notice(decision: Decision) -> None:
    """Send quota_window_used for each quota window of ``decision`` that crossed a threshold."""
    for policy, count, reset in zip(decision.policies, decision.counts, decision.resets, strict=True):
        if policy.kind != QUOTA:
            continue
        now = time.time()
        with _lock:
            window_end, before = _seen.get(policy.redis_key, (0.0, 0))
            if now >= window_end:  # a new window: nothing seen in it yet
                before = 0
            _seen[policy.redis_key] = (now + reset, max(before, count))
            if len(_seen) > _MAX_WINDOWS:
                _prune(now)
        limit = policy.item.amount
        if count > before and _crossed(before, count, limit):
            signals.quota_window_used.send(
                current_app._get_current_object(),  # type: ignore[attr-defined]
                key_id=_key_id(policy.subject),
                kind="requests",
                limit=limit,
                window_seconds=policy.window,
                window_start=int(now + reset) - policy.window,
                before=before,
                after=count,
            )


def _prune(now: float) -> None:
    for name in [name for name, (end, _) in _seen.items() if end <= now]:
        del _seen[name]
    if len(_seen) > _MAX_WINDOWS // 2:
        _seen.clear()
