"""Rate limits and quotas: every limit of a request decided, and its headers read, in ONE
Redis call, or in none while the worker holds a lease on a large limit.

Flask-Limiter is the face Flask code sees: ``limiter`` (a ``flask_limiter.Limiter``)
declares route limits with ``@limiter.limit`` and exemptions with ``@limiter.exempt``;
behind it the gateway's hook decides every limit of a request atomically (a refused
request takes nothing from any limit) and answers Flask-Limiter's questions from that
decision. The parts:

* policies.py: limit strings, per-identity and per-route policies, counter names;
* decision.py: the one atomic Lua decision, leases and the fail-open fallback;
* leases.py: units a worker takes ahead for a busy identity;
* headers.py: X-RateLimit-*, RateLimit-Policy, RateLimit, Retry-After;
* backend.py: the decision as a ``limits`` storage (``gateway://``) and strategy;
* hook.py: the Flask hooks and ``limiter``;
* routes.py: login, stream-open and RATELIMIT_ROUTES limits, exemptions.
"""

from __future__ import annotations

from flask import Flask

from gateway.ratelimit.decision import RECHECK_SECONDS, Decision
from gateway.ratelimit.hook import client_ip, limiter, quota_exhausted
from gateway.ratelimit.policies import Policy, counter_key
from gateway.ratelimit.routes import apply_route_limits, exempt, login_limit, stream_opens_limit

__all__ = [
    "RECHECK_SECONDS",
    "Decision",
    "Policy",
    "apply_route_limits",
    "client_ip",
    "counter_key",
    "exempt",
    "give_back_leases",
    "init_app",
    "limiter",
    "login_limit",
    "quota_exhausted",
    "stream_opens_limit",
]


def init_app(app: Flask) -> None:
    """Register the limiter; call after security.init_app and before auth.init_app."""
    from gateway.ratelimit import hook

    hook.init_app(app)


def give_back_leases(app: Flask, *, everything: bool = False) -> None:
    """Give back the unused units of this worker's ended leases now (all of them with
    ``everything``, as at exit): what the background sweeper does every half second."""
    from gateway.ratelimit.backend import EXTENSION_KEY

    app.extensions[EXTENSION_KEY].leases.sweep(everything=everything)
