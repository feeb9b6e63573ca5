"""Route limits declared through Flask-Limiter: login, stream opens, the operator's
``RATELIMIT_ROUTES``, and the exemption of static files.

Limit values are callables reading the current app's config, so one decoration made at
import serves every app with its own settings.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request

from auth import users
from auth.access import access_for
from config import ConfigError
from gateway.ratelimit.hook import BODY_KEYS, client_ip, limiter

F = TypeVar("F", bound=Callable[..., Any])


def _failed(response: Response) -> bool:
    """deduct_when of the login limits: only failed attempts count (an error answer is one)."""
    return response.status_code >= 400


def _login_email_digest() -> str | None:
    """The attempt's email, normalized and hashed (counter names carry no address), or None."""
    if "login_email_digest" not in g:
        g.login_email_digest = _read_login_email()
    return g.login_email_digest  # type: ignore[no-any-return]


def _read_login_email() -> str | None:
    try:
        data = request.get_json(silent=True) if request.is_json else request.form
    except (ValueError, RecursionError):  # hostile JSON: the view answers its 400
        return None
    email = data.get("email") if hasattr(data, "get") else None
    if not isinstance(email, str) or not users.normalize_email(email):
        return None
    return hashlib.sha256(users.normalize_email(email).encode()).hexdigest()[:32]


def _login_ip_key() -> str:
    return f"login-ip:{client_ip()}"


def _login_email_ip_key() -> str:
    return f"login-email-ip:{_login_email_digest() or ''}:{client_ip()}"


def _login_email_key() -> str:
    return f"login-email:{_login_email_digest() or ''}"


def _no_email() -> bool:
    return _login_email_digest() is None


BODY_KEYS.update({_login_email_ip_key, _login_email_key})


def _config(name: str) -> Callable[[], str]:
    return lambda: current_app.config[name]  # type: ignore[no-any-return]


_LOGIN_LIMITS = (
    ("RATELIMIT_LOGIN", "login", _login_ip_key),
    ("RATELIMIT_LOGIN", "login-email-ip", _login_email_ip_key),
    ("RATELIMIT_LOGIN_EMAIL", "login-email", _login_email_key),
)


def login_limit(view: F) -> F:
    """Failed logins: RATELIMIT_LOGIN per client IP and per (email, IP), RATELIMIT_LOGIN_EMAIL
    per email across IPs (CONTRACT section 5). Closed (503) when Redis is down.

    Every attempt reserves a unit of each limit before the password is checked, and an
    answer under 400 gives it back (``deduct_when``): only failures stay counted, exactly,
    however many attempts run at once, and an attempt over a limit is refused unchecked.
    """
    for setting, scope, key_func in _LOGIN_LIMITS:
        exempt_when = None if key_func is _login_ip_key else _no_email
        view = limiter.shared_limit(
            _config(setting), scope, key_func=key_func, deduct_when=_failed, exempt_when=exempt_when
        )(view)
    return view


def stream_opens() -> str:
    """RATELIMIT_STREAM_OPENS: opens of GET /agents/stream per identity."""
    return current_app.config["RATELIMIT_STREAM_OPENS"]  # type: ignore[no-any-return]


stream_opens_limit = limiter.shared_limit(stream_opens, "stream-opens")


@functools.cache
def _route_limit(endpoint: str) -> Callable[[], str]:
    # One provider per endpoint: a second app's wrapping then adds an equal limit, not another.
    return lambda: current_app.config["RATELIMIT_ROUTES"].get(endpoint, "")


def apply_route_limits(app: Flask) -> None:
    """RATELIMIT_ROUTES: wrap each named view with ``limiter.limit`` (after the blueprints)."""
    for endpoint in app.config["RATELIMIT_ROUTES"]:
        view = app.view_functions.get(endpoint)
        if view is None:
            known = ", ".join(sorted(e for e in app.view_functions if e != "static"))
            raise ConfigError(f"RATELIMIT_ROUTES names an unknown endpoint {endpoint!r} (known: {known})")
        app.view_functions[endpoint] = limiter.limit(_route_limit(endpoint), override_defaults=False)(view)


def exempt(app: Flask, endpoint: str) -> None:
    """Never limit ``endpoint`` (``limiter.exempt`` on its view); for public endpoints only.

    An exempt endpoint must be public: a guarded one would let key guesses past the IP limit.
    """
    with app.app_context():
        public = access_for(endpoint).public
    if not public:
        raise ValueError(f"only public endpoints can be exempt from rate limits, not {endpoint!r}")
    limiter.exempt(app.view_functions[endpoint])
