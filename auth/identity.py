"""Who is calling: an API key or an admin user, as one Flask-Login user object.

The identity of a request is resolved once, on first ask (the limiter, the access
guard, the view and the access log all ask), and kept on ``flask.g`` for the rest
of the request. Flask-Login is used through its public API only: the loaders that
auth.loaders registers, ``current_user``, and its login and logout signals.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from flask import Flask, g, has_request_context, request
from flask_login import LoginManager, UserMixin, current_user, user_logged_in, user_logged_out

from auth.credentials import presented_key
from auth.errors import Forbidden
from auth.scopes import grants

IdentityType = Literal["api_key", "user"]
# flask.g attribute holding this request's identity (None: resolved, and there is none).
IDENTITY_ATTR = "auth_identity"
_UNRESOLVED: Any = object()


@dataclass(frozen=True)
class Identity(UserMixin):
    """The caller of the current request. ``owner`` is what stored records point at."""

    type: IdentityType
    id: str
    name: str
    scopes: frozenset[str]
    rate_limit: str | None = None
    quota: str | None = None
    token_quota: str | None = None  # tokens of agent replies, "N/period"
    allowed_ips: tuple[str, ...] = ()  # CIDRs; empty: any client IP
    # Server-side session id for users (None for API keys); lets logout delete it.
    session_id: str | None = field(default=None, compare=False)

    def has_scope(self, scope: str) -> bool:
        return grants(self.scopes, scope)

    @property
    def owner(self) -> str:
        return f"{self.type}:{self.id}"

    def get_id(self) -> str:
        return self.owner

    def as_json(self) -> dict[str, object]:
        return {"type": self.type, "id": self.id, "name": self.name, "scopes": sorted(self.scopes)}


OUTSIDE_ALLOWED_IPS = "This API key may not be used from this client IP address."
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)
def _networks(cidrs: tuple[str, ...]) -> tuple[_Network, ...]:
    # Parsed once per allow-list and process: the check then costs a few comparisons.
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def ip_allowed(identity: Identity, client_ip: str) -> bool:
    """True when ``identity`` may be used from ``client_ip`` (an empty allow-list: any IP).

    An IPv4 client seen as IPv4-mapped IPv6 (``::ffff:203.0.113.9``, dual-stack sockets) is
    matched as the IPv4 address it is. An unparsable address never matches a list.
    """
    if not identity.allowed_ips:
        return True
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(identity.allowed_ips))


def refuse_outside_allowed_ips(identity: Identity | None, client_ip: str) -> None:
    """403 (auth.errors.Forbidden) for a key used from outside its ``allowed_ips``.

    Called before any limit or quota is counted (gateway.ratelimit), so a key used from
    the wrong network cannot spend its owner's allowance.
    """
    if identity is not None and not ip_allowed(identity, client_ip):
        raise Forbidden(OUTSIDE_ALLOWED_IPS)


login_manager = LoginManager()  # bound by init_app; auth.loaders registers its loaders


def current_identity() -> Identity | None:
    """The authenticated identity of this request, or None."""
    if not has_request_context():
        return None
    identity = g.get(IDENTITY_ATTR, _UNRESOLVED)
    if identity is _UNRESOLVED:
        identity = _resolve()
        setattr(g, IDENTITY_ATTR, identity)
    return identity  # type: ignore[no-any-return]


def loaded_identity() -> Identity | None:
    """The identity if this request has resolved it already, else None; never loads one.

    For error pages and access lines, which must not go to Redis (it may be the error).
    """
    return g.get(IDENTITY_ATTR) if has_request_context() else None


def admit_identity(identity: Identity | None) -> None:
    """Record who this request is, resolved elsewhere from the presented key.

    The limiter's admission step (gateway.ratelimit.admission) checks the key and every
    limit in one Redis call; what it found is this request's identity, so that nothing
    asks Redis about the key a second time. Only for a request presenting a key.
    """
    setattr(g, IDENTITY_ATTR, identity)


def _resolve() -> Identity | None:
    if presented_key(request) is not None:
        # A key decides alone, through the request loader: Flask-Login's general path
        # would let a session or a remember-me cookie go first.
        loader = login_manager.request_callback
        user = loader(request) if loader is not None else None
    else:
        # The real object, not the proxy: it is kept for the rest of the request.
        user = current_user._get_current_object()
    return user if isinstance(user, Identity) and user.is_authenticated else None


def _logged_in(sender: Flask, user: Any, **extra: Any) -> None:
    # login_user() changes who this request is: the next ask must see the new identity.
    setattr(g, IDENTITY_ATTR, user if isinstance(user, Identity) else None)


def _logged_out(sender: Flask, user: Any = None, **extra: Any) -> None:
    setattr(g, IDENTITY_ATTR, None)


def init_app(app: Flask) -> None:
    """Bind Flask-Login to ``app``; the loaders come from auth.loaders."""
    # Session ids are random, regenerated at login and revocable server-side;
    # binding them to IP and user agent would log out mobile users for nothing.
    login_manager.session_protection = None
    # No template reads current_user, and its context processor would load the identity
    # (a Redis read) for every page rendered, error pages included.
    login_manager.init_app(app, add_context_processor=False)
    user_logged_in.connect(_logged_in)
    user_logged_out.connect(_logged_out)
