"""The Flask side: Flask-Limiter's ``limiter`` declares route limits and exemptions; the
gateway's before_request decides every limit of a request in one atomic call.

Flask-Limiter evaluates limits one at a time, inside the view's wrapper, after every
before_request. The gateway's hook runs first (registered before Flask-Limiter's) and
gathers every limit of the request: the identity's (policies.py) and those Flask-Limiter
declares for the endpoint (``limiter.limit_manager.resolve_limits``). One decision takes
a unit of each or, when any is spent, none of any, and answers the 429. Flask-Limiter's
own pass then meets that decision through the ``gateway-fixed-window`` strategy
(backend.py) with no further round trip; its middleware pass, which has nothing to
evaluate here (no default or application limits), is skipped by a ``request_filter``.

A limit with ``deduct_when`` (login: failures only) is reserved by the decision and,
after the response, given back when ``deduct_when(response)`` is false: exact, however
many attempts race. Its key may read the body: such limits are looked at (taking
nothing) only after the others, so a spent IP is refused before the body is parsed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Request, Response, current_app, g, request
from flask_limiter import ExemptionScope, Limit, Limiter

from auth.access import access_for
from auth.credentials import presented_key
from auth.identity import Identity, current_identity, loaded_identity, refuse_outside_allowed_ips
from core.errors import APIError
from core.redis import REDIS_UNAVAILABLE
from gateway import fastpath
from gateway.metrics import recorder
from gateway.ratelimit import admission, crossings, headers
from gateway.ratelimit.backend import EXTENSION_KEY, REQUEST_STATE, STORAGE_URI, STRATEGY_NAME, decider
from gateway.ratelimit.decision import Decider, Decision
from gateway.ratelimit.policies import Policy, anonymous_policies, declared_policies, identity_policies

log = logging.getLogger(__name__)
SKIP_MIDDLEWARE = "rate_limits_middleware_skip"  # flask.g: Flask-Limiter's before_request has nothing to add
SUBJECT = "rate_limit_subject"  # flask.g: who the request is counted as (the default limit key)
BODY_KEYS: set[Callable[[], str]] = set()  # key functions that read the request body (login email)


def client_ip() -> str:
    """The client's address after ProxyFix (which trusts exactly TRUSTED_PROXY_COUNT hops)."""
    return request.remote_addr or "unknown"


def request_subject() -> str:
    """Flask-Limiter's key function: the identity the hook counted the request as."""
    subject = g.get(SUBJECT)
    if subject is None:
        subject = _identity_policies(request)[0].subject
    return subject  # type: ignore[no-any-return]


limiter = Limiter(
    request_subject,
    storage_uri=STORAGE_URI,
    strategy=STRATEGY_NAME,
    headers_enabled=False,  # headers.py writes the gateway's, from the one decision
    # The identity's limits (RATELIMIT_DEFAULT, a key's own, its quota, RATELIMIT_ANONYMOUS)
    # are the hook's; an empty default group keeps Flask-Limiter from reading
    # RATELIMIT_DEFAULT (its own name for default limits) as a second one.
    default_limits=[Limit(limit_provider="")],
)


@limiter.request_filter
def _middleware_pass_decided() -> bool:
    # Called first by Flask-Limiter's before_request, right after the hook (one shot: the
    # view's wrapper and `with limiter.limit(...)` blocks still evaluate their limits).
    return bool(g.pop(SKIP_MIDDLEWARE, False))


@dataclass(slots=True)
class RequestLimits:
    """The hook's decision, and where Flask-Limiter's declared limits are in it."""

    decision: Decision
    declared: dict[str, int] = field(default_factory=dict)  # RateLimitItem.key_for(...) -> policy index
    conditional: dict[int, Callable[[Response], bool]] = field(default_factory=dict)  # index -> deduct_when


@dataclass(slots=True)
class _Declared:
    limit: Any  # flask_limiter's RuntimeLimit
    identifiers: tuple[str, ...]
    reads_body: bool


def exempt_request(req: Request) -> bool:
    """Preflights, static files and ``@limiter.exempt`` views: never limited.

    Preflights carry no credentials, health probes must never be throttled, static files
    are cheap and cached. Unmatched URLs (404/405) are limited like any other request:
    exempting them let one client flood the logs for free.
    """
    if req.method == "OPTIONS" or req.endpoint is None:
        return req.method == "OPTIONS"
    return _exempt_endpoint(current_app, req.endpoint)


def _exempt_endpoint(app: Flask, endpoint: str) -> bool:
    view = app.view_functions.get(endpoint)
    cache = decider().endpoints
    known = cache.get(("exempt", endpoint))
    if known is not None and known[0] is view:
        return known[1]
    blueprint = endpoint.rpartition(".")[0] or None
    scope = limiter.limit_manager.exemption_scope(app, endpoint, blueprint)
    exempt = endpoint == "static" or endpoint.endswith(".static") or bool(scope & ExemptionScope.DEFAULT)
    cache[("exempt", endpoint)] = (view, exempt)  # keyed by the view too: re-wrapping a view re-reads it
    return exempt


def _presents_credentials(req: Request) -> bool:
    """An API key or a session cookie: the request may have an identity of its own."""
    if presented_key(req) is not None:
        return True
    return current_app.session_interface.get_cookie_name(current_app) in req.cookies


def _of(identity: Identity | None) -> tuple[Policy, ...]:
    config = current_app.config
    if identity is None:
        return anonymous_policies(config["RATELIMIT_ANONYMOUS"], client_ip())
    return identity_policies(identity, config["RATELIMIT_DEFAULT"])


def _identity_policies(req: Request) -> tuple[Policy, ...]:
    # An unmatched URL has no view to guard: it is counted as a public route is.
    if req.routing_exception is None and not access_for(req.endpoint).public:
        # Resolving the identity here (before the access guard) lets a wrong key fall
        # through to the per-IP limit, so its 401s are counted.
        return _of(current_identity())
    # A public route is counted per IP, unless the caller brings credentials: a logged-in
    # admin browsing the console (or a key calling /docs) is limited as itself.
    if not _presents_credentials(req):
        return _of(None)
    try:
        return _of(current_identity())
    except REDIS_UNAVAILABLE:  # sessions unreadable: a public page is still served (per IP)
        return _of(None)


def _declared(app: Flask, req: Request) -> list[_Declared]:
    """The limits Flask-Limiter declares for this request's endpoint (none for most routes)."""
    endpoint = req.endpoint
    if endpoint is None:
        return []
    view = app.view_functions.get(endpoint)
    cache = decider().endpoints
    known = cache.get(("declared", endpoint))
    if known is not None and known[0] is view and not known[1]:
        return []  # resolving costs a parse per limit: skipped while the view has none
    _, limits = limiter.limit_manager.resolve_limits(app, endpoint, req.blueprint)
    cache[("declared", endpoint)] = (view, bool(limits))
    declared = []
    for lim in limits:
        if lim.method_exempt:
            continue
        reads_body = lim.key_func in BODY_KEYS
        if not reads_body and lim.is_exempt:
            continue
        declared.append(_Declared(lim, (lim.key_func, lim.scope_for(endpoint, req.method)), reads_body))
    return declared


def _policies_of(declared: Sequence[_Declared], state: RequestLimits, offset: int) -> list[Policy]:
    """Policies of declared limits (grouped by key, so one limit string's windows get named apart),
    noting where each limit's policy sits in the decision (from ``offset``)."""
    groups: dict[tuple[str, ...], list[Any]] = {}
    for one in declared:
        key_func, scope = one.identifiers
        identifiers = (key_func(), scope)
        if all(identifiers):
            groups.setdefault(identifiers, []).append(one.limit)
    policies: list[Policy] = []
    for identifiers, limits in groups.items():
        made = declared_policies([lim.limit for lim in limits], identifiers)
        where = {(p.item.amount, p.window): offset + len(policies) + n for n, p in enumerate(made)}
        for lim in limits:
            index = where[(lim.limit.amount, int(lim.limit.get_expiry()))]
            state.declared[lim.limit.key_for(*identifiers)] = index
            if lim.deduct_when is not None:
                state.conditional[index] = lim.deduct_when
        policies += made
    return policies


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
        headers=headers.headers(decision),
        extra={"retry_after": retry_after},
    )


def _closed_unavailable() -> APIError:
    return APIError(
        503,
        "Service Unavailable",
        "Login is unavailable while the rate-limit store is unreachable; retry shortly.",
        headers={headers.HEADER_RETRY_AFTER: "1"},
    )


def _decide(policies: Sequence[Policy], *, commit: bool = True) -> Decision:
    try:
        decision = decider().decide(policies, commit=commit)
    except REDIS_UNAVAILABLE:
        if any(p.closed for p in policies):  # login stays closed, even failing open
            raise _closed_unavailable() from None
        raise
    return _allowed(decision)


def _allowed(decision: Decision) -> Decision:
    if decision.breached is not None:
        raise _too_many(decision)
    return decision


def _guarded_key(req: Request) -> str | None:
    """The key presented to a route that needs an identity (admitted in one call), else None."""
    if req.routing_exception is not None or access_for(req.endpoint).public:
        return None
    return presented_key(req)


def check_request_limit() -> None:
    """before_request: take one unit from every limit of this request, or answer 429."""
    req: Request = request  # type: ignore[assignment]
    if exempt_request(req):
        return
    declared = _declared(current_app, req)
    secret = None if declared else _guarded_key(req)
    if secret is not None:  # the common request: the key and its limits in one call (or a lease)
        decision = admission.admit(secret, _of, client_ip())
        g.setdefault(SUBJECT, decision.policies[0].subject)
        g.setdefault(SKIP_MIDDLEWARE, True)
        g.rate_limits = RequestLimits(_allowed(decision))
        return
    own = _identity_policies(req)
    # A key outside its allow-list: 403 before any limit (its own, a route's) moves.
    refuse_outside_allowed_ips(loaded_identity(), client_ip())
    g.setdefault(SUBJECT, own[0].subject)
    g.setdefault(SKIP_MIDDLEWARE, True)
    if not declared:  # the identity's limits, one call (or a lease)
        g.rate_limits = RequestLimits(_decide(own))
        return
    state = RequestLimits(Decision((), (), (), None))
    # Limits whose key reads the body are asked last: a spent IP is refused unparsed.
    first = own + tuple(_policies_of([d for d in declared if not d.reads_body], state, len(own)))
    if any(d.reads_body for d in declared):
        _decide(first, commit=False)
        body = [d for d in declared if d.reads_body and not d.limit.is_exempt]
        first += tuple(_policies_of(body, state, len(first)))
    state.decision = _decide(first)
    g.rate_limits = state


def settle(response: Response) -> Response:
    """after_request: give back what ``deduct_when`` says this answer does not count; add headers."""
    state: RequestLimits | None = g.get(REQUEST_STATE)
    if state is None:
        return response
    decision = state.decision
    if decision.breached is None:  # a 429 already carries them (built from the same decision)
        if state.conditional:
            _give_back(state, response)
        headers.add_headers(response, decision, append=decider().append_headers)
        crossings.notice(decision)  # arithmetic on the decision's figures; a signal only on a crossing
    return response


def _give_back(state: RequestLimits, response: Response) -> None:
    free = [index for index, counts in state.conditional.items() if not counts(response)]
    if not free:
        return
    try:
        decider().give_back(state.decision, sorted(free))
    except REDIS_UNAVAILABLE:  # the answer stands; the unit runs out with its window
        log.warning("could not give back the rate-limit units of an answer that does not count")


def quota_exhausted(identity: Identity, *, kinds: tuple[str, ...] = ("rate", "quota")) -> bool:
    """True when one of the identity's limits of these kinds has no request left (looks, takes nothing)."""
    policies = tuple(p for p in _of(identity) if p.kind in kinds)
    return bool(policies) and decider().decide(policies, commit=False).breached is not None


def init_app(app: Flask) -> None:
    """Register the hook, then bind Flask-Limiter (whose hooks must run after the gateway's)."""
    app.extensions[EXTENSION_KEY] = Decider(app)
    app.before_request(check_request_limit)
    app.after_request(settle)
    limiter.init_app(app)
    if fastpath.enabled(app.config):
        from gateway.fastpath.limiter import gate_after, gate_middleware

        gate_middleware(app, limiter, _middleware_pass_decided)
        gate_after(app, limiter)
