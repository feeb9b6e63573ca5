"""``agent.run`` in the job worker: one prompt answered, its tokens counted on the key's quota.

The same reserve / cover / settle as a stream (gateway/ratelimit/tokens.py): the reply
reserves before the backend is called (nothing left: the job fails at once, not retried,
with a clear error), extends as it grows, and settles its usage however it ends. When the
quota runs out mid-reply the job fails with TokenQuotaRanOut; what was generated up to
there is counted. The result is ``{"reply", "usage"}``.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask

from auth.keys import get_key
from core.extensions import get_redis
from gateway.agents.backends import UsageMeter, backend_from_config
from gateway.ratelimit import tokens


def _reservation(app: Flask, owner: str) -> tokens.Reservation | None:
    kind, _, key_id = owner.partition(":")
    if kind != "api_key" or not key_id:
        return None  # token quotas are a key's
    r = get_redis()
    record = get_key(r, key_id) or {}
    policy = tokens.token_policy(key_id, record.get("token_quota"))
    if policy is None:
        return None
    return tokens.reserve(
        r,
        policy,
        owner=owner,
        app=app,
        step=app.config["AGENT_TOKEN_RESERVE"],
        ttl_seconds=app.config["AGENT_TOKEN_RESERVATION_SECONDS"],
    )


def run_prompt(app: Flask, prompt: str, *, owner: str) -> dict[str, Any]:
    """The reply to ``prompt`` and its usage; TokenQuotaError when the owner's key has no
    tokens left (before the backend is called) or runs out mid-reply."""
    reservation = _reservation(app, owner)  # raises TokenQuotaExhausted
    meter, parts = UsageMeter(), []
    renew_every = app.config["AGENT_TOKEN_RESERVATION_SECONDS"] / 3
    next_renew = time.monotonic() + renew_every
    deltas = backend_from_config(app.config).stream_reply([{"role": "user", "content": prompt}], meter)
    try:
        for delta in deltas:
            if reservation is not None:
                if not reservation.cover(meter.sent(delta), sent=meter.sent()):
                    raise tokens.TokenQuotaRanOut(reservation.policy, meter.sent())
                if time.monotonic() >= next_renew:  # a long reply keeps its reservation alive
                    next_renew = time.monotonic() + renew_every
                    reservation.renew(sent=meter.sent())
            meter.add(delta)
            parts.append(delta)
    finally:
        close = getattr(deltas, "close", None)
        if close is not None:
            close()
        if reservation is not None:
            reservation.settle(meter.usage())
    return {"reply": "".join(parts), "usage": meter.usage()}
