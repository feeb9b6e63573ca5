"""Key and user management shared by the CLI and the admin API: validate, change, audit.

Both front ends call these functions, so a key made with ``flask keys create``
and one made with ``POST /admin/keys`` pass the same checks and leave the same
audit entry. Validation errors are ValueError with a sentence for a person.

Revoking or rotating a key also makes the workers forget it: the one that made
the change drops its cached look-ups at once (``cache``); every other worker of
every instance sees the record's new version on its next round trip for that key,
and requests served without one (auth.cache) stop within auth.cache.FRESH_SECONDS,
inside the one-second promise of CONTRACT section 6.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from limits import parse_many

from auth import audit, keys, sessions, users
from auth.audit import Actor
from auth.cache import KeyCache
from auth.scopes import validate_scopes
from core.echo import clip
from core.redis import acknowledged

MAX_NAME_LENGTH = 100
MAX_EXPIRES_IN_DAYS = 3650
MAX_GRACE_SECONDS = 7 * 86400
# Kong's ip-restriction and Unkey put no small cap on a list; 100 entries cover an office, a
# VPN and a cloud region's ranges while keeping the per-request check a short loop.
MAX_ALLOWED_IPS = 100


def validate_name(name: str) -> str:
    value = name.strip()
    if not value or len(value) > MAX_NAME_LENGTH or not value.isprintable():
        raise ValueError(f"name must be 1 to {MAX_NAME_LENGTH} printable characters")
    return value


def validate_limit(field: str, value: str | None) -> str | None:
    """A limit string such as ``100/minute`` (several joined by ``;``), or None."""
    if value is None or not value.strip():
        return None
    try:
        if parse_many(value.strip()):
            return value.strip()
    except ValueError:
        pass
    raise ValueError(f"{field} must be a limit such as '100/minute' or '10000/day', got {clip(value)!r}")


def validate_allowed_ips(values: Iterable[Any] | None) -> list[str]:
    """IPv4/IPv6 CIDRs or bare addresses, normalised (``10.0.0.1`` -> ``10.0.0.1/32``), deduplicated.

    A CIDR with host bits set (``10.0.0.7/24``) is refused rather than widened to its network,
    as Python's ``ipaddress`` does by default: the typist meant either one host or a range, and
    silently allowing 256 addresses when one was meant is the wrong way to guess.
    """
    if values is None:
        return []
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ValueError("allowed_ips must be a list of IP addresses or CIDRs")
    items = list(values)
    if len(items) > MAX_ALLOWED_IPS:
        raise ValueError(f"allowed_ips holds at most {MAX_ALLOWED_IPS} entries")
    networks: list[str] = []
    for item in items:
        network = _network(item)
        if network not in networks:
            networks.append(network)
    return networks


def _network(item: Any) -> str:
    if not isinstance(item, str) or not item.strip():
        raise ValueError("allowed_ips entries must be IP addresses or CIDRs such as '203.0.113.0/24'")
    text = item.strip()
    try:
        return ipaddress.ip_network(text).with_prefixlen
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False).with_prefixlen
    except ValueError:
        raise ValueError(
            f"allowed_ips: {clip(text)!r} is not an IPv4 or IPv6 address or CIDR (such as '203.0.113.0/24')"
        ) from None
    raise ValueError(f"allowed_ips: {clip(text)!r} has host bits set; did you mean {loose!r}?")


def validate_key_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The same checks for every field of a key, at creation and at an edit (None clears)."""
    checks = {
        "name": validate_name,
        "scopes": lambda v: list(validate_scopes(list(v or ()))),
        "rate_limit": lambda v: validate_limit("rate_limit", v),
        "quota": lambda v: validate_limit("quota", v),
        "token_quota": lambda v: validate_limit("token_quota", v),
        "allowed_ips": validate_allowed_ips,
        "expires_in_days": validate_expires_in_days,
    }
    unknown = sorted(set(fields) - set(checks))
    if unknown:
        raise ValueError(f"{clip(unknown[0])} is not a field of a key")
    if "name" in fields and fields["name"] is None:
        raise ValueError("name cannot be cleared")
    return {name: checks[name](value) for name, value in fields.items()}


def validate_expires_in_days(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= MAX_EXPIRES_IN_DAYS:
        raise ValueError(f"expires_in_days must be between 1 and {MAX_EXPIRES_IN_DAYS}")
    return value


def validate_grace_seconds(value: int) -> int:
    if not 0 <= value <= MAX_GRACE_SECONDS:
        raise ValueError(f"grace_seconds must be between 0 and {MAX_GRACE_SECONDS}")
    return value


@acknowledged
def create_key(
    r: redis.Redis,
    *,
    pepper: bytes,
    actor: Actor,
    name: str,
    scopes: Iterable[str],
    rate_limit: str | None = None,
    quota: str | None = None,
    token_quota: str | None = None,
    allowed_ips: Iterable[str] | None = None,
    expires_in_days: int | None = None,
) -> tuple[dict[str, Any], str]:
    """Validate, store and audit a new key; returns (record, secret)."""
    fields = validate_key_fields(
        {
            "name": name,
            "scopes": scopes,
            "rate_limit": rate_limit,
            "quota": quota,
            "token_quota": token_quota,
            "allowed_ips": allowed_ips,
            "expires_in_days": expires_in_days,
        }
    )
    record, secret = keys.create_key(r, pepper=pepper, created_by=actor.owner, **fields)
    details = {"name": record["name"], "scopes": record["scopes"], "expires_at": record["expires_at"]}
    if record["allowed_ips"]:
        details["allowed_ips"] = record["allowed_ips"]
    audit.record(r, actor, "key.create", key_id=record["id"], details=details)
    return record, secret


@acknowledged
def revoke_key(r: redis.Redis, *, actor: Actor, key_id: str, cache: KeyCache | None) -> dict[str, Any] | None:
    """Revoke, audit and forget the key; None for an unknown key.

    ``cache`` is the calling worker's key cache; None where no requests are served (the CLI).
    """
    record = keys.revoke_key(r, key_id)
    if record is not None:
        audit.record(r, actor, "key.revoke", key_id=key_id, details={"name": record["name"]})
        _forget(cache, key_id)
    return record


@acknowledged
def rotate_key(
    r: redis.Redis,
    *,
    pepper: bytes,
    actor: Actor,
    key_id: str,
    cache: KeyCache | None,
    grace_seconds: int = 0,
) -> tuple[dict[str, Any], str] | None:
    """Rotate, audit and forget the old look-ups; None for an unknown key, KeyStateError for
    a revoked or expired one. ``cache`` as for :func:`revoke_key`."""
    grace = validate_grace_seconds(grace_seconds)
    rotated = keys.rotate_key(r, key_id, pepper=pepper, grace_seconds=grace)
    if rotated is not None:
        details = {"name": rotated[0]["name"], "grace_seconds": grace}
        audit.record(r, actor, "key.rotate", key_id=key_id, details=details)
        _forget(cache, key_id)
    return rotated


# What an edit's audit entry shows of each changed field (the record's stored names).
_SHOWN = {"expires_in_days": "expires_at"}


@acknowledged
def update_key(
    r: redis.Redis, *, actor: Actor, key_id: str, cache: KeyCache | None, changes: dict[str, Any]
) -> dict[str, Any] | None:
    """Validate, apply and audit an edit (the secret stays); returns the new record.

    None for an unknown key, KeyStateError for a revoked one, ValueError for a bad value (the
    same sentences as at creation). ``changes`` holds only the fields to change; None clears an
    optional one. The record's version is bumped with the change (auth.keys.update_key), so
    every worker re-reads it on its next request of this key; ``cache`` as for revoke_key.
    """
    updated = keys.update_key(r, key_id, validate_key_fields(changes))
    if updated is None:
        return None
    before, after = updated
    changed = {}
    for name in changes:
        shown = _SHOWN.get(name, name)
        if before.get(shown) != after.get(shown):
            changed[shown] = {"before": before.get(shown), "after": after.get(shown)}
    audit.record(r, actor, "key.update", key_id=key_id, details={"name": after["name"], "changes": changed})
    _forget(cache, key_id)
    return after


def _forget(cache: KeyCache | None, key_id: str) -> None:
    # This worker at once; the others when their entries reach the cache TTL.
    if cache is not None:
        cache.discard(key_id)


@acknowledged
def create_user(r: redis.Redis, *, actor: Actor, email: str, password: str) -> dict[str, Any]:
    """Create and audit an admin user (never the password)."""
    user = users.create_user(r, email=email, password=password, created_by=actor.owner)
    audit.record(r, actor, "user.create", target=f"user:{user['id']}", details={"email": user["email"]})
    return user


@dataclass(frozen=True)
class UserChange:
    """What a lifecycle action did: the user as people may see it, and how many sessions ended."""

    user: dict[str, Any]
    sessions_ended: int = 0
    epoch: int | None = None  # the user's new auth epoch, when the action started one


def user_view(r: redis.Redis, record: dict[str, Any]) -> dict[str, Any]:
    """A user as people may see it, with the count of their live sessions (never a hash)."""
    return {**users.public_view(record), "active_sessions": sessions.count_user_sessions(r, record["id"])}


def list_users(r: redis.Redis) -> list[dict[str, Any]]:
    return [user_view(r, record) for record in users.list_users(r)]


def _audit_user(r: redis.Redis, actor: Actor, action: str, record: dict[str, Any], **details: Any) -> None:
    details = {"email": record["email"], **details}
    audit.record(r, actor, action, target=f"user:{record['id']}", details=details)


@acknowledged
def change_password(
    r: redis.Redis, *, actor: Actor, email: str, password: str, keep_sid: str | None = None
) -> UserChange:
    """New password; every session of the user ends but ``keep_sid`` (the caller's own, if theirs).

    UnknownUserError for an unknown email, ValueError for a password that is too short or long.
    """
    record = users.get_user_by_email(r, email)
    epoch = users.set_password(r, record["id"], password)
    ended = sessions.end_user_sessions(r, record["id"], keep_sid=keep_sid)
    _audit_user(r, actor, "user.password", record, sessions_ended=ended)
    return UserChange(user_view(r, users.get_user(r, record["id"]) or record), ended, epoch)


@acknowledged
def disable_user(r: redis.Redis, *, actor: Actor, email: str) -> UserChange:
    """Disable and log out everywhere at once; LastEnabledUserError when none would be left."""
    record = users.get_user_by_email(r, email)
    users.disable_user(r, record["id"])
    ended = sessions.end_user_sessions(r, record["id"])
    _audit_user(r, actor, "user.disable", record, sessions_ended=ended)
    return UserChange(user_view(r, users.get_user(r, record["id"]) or record), ended)


@acknowledged
def enable_user(r: redis.Redis, *, actor: Actor, email: str) -> UserChange:
    record = users.get_user_by_email(r, email)
    users.enable_user(r, record["id"])
    _audit_user(r, actor, "user.enable", record)
    return UserChange(user_view(r, users.get_user(r, record["id"]) or record))


@acknowledged
def log_out_everywhere(r: redis.Redis, *, actor: Actor, email: str) -> UserChange:
    """End every session of the user, the caller's own included when it is theirs."""
    record = users.get_user_by_email(r, email)
    epoch = users.end_epoch(r, record["id"])
    ended = sessions.end_user_sessions(r, record["id"])
    _audit_user(r, actor, "user.logout_all", record, sessions_ended=ended)
    return UserChange(user_view(r, record), ended, epoch)
