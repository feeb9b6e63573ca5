"""What the console pages ask of ``auth``: thin calls into its services with this request's
actor, Redis client and pepper filled in (the views stay free of plumbing)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from auth import audit, keys, login, management, users
from auth.loaders import key_cache, pepper
from core.extensions import get_redis

AUDIT_PAGE = 200


@dataclass(frozen=True)
class NewKey:
    """A validated create-key form."""

    name: str
    scopes: tuple[str, ...]
    rate_limit: str | None
    quota: str | None
    expires_in_days: int | None
    token_quota: str | None = None
    allowed_ips: tuple[str, ...] = ()


def log_in(*, email: str, password: str) -> bool:
    """Start a new server-side session for a matching admin user (same as POST /auth/login)."""
    return login.log_in(email=email, password=password) is not None


def log_out() -> None:
    """Delete the session record on the server, so the old cookie stops working."""
    login.log_out()


def list_keys() -> list[dict[str, Any]]:
    """Every key as people may see it, newest first."""
    return [keys.public_view(record) for record in reversed(keys.list_keys(get_redis()))]


def get_key(key_id: str) -> dict[str, Any] | None:
    record = keys.get_key(get_redis(), key_id)
    return keys.public_view(record) if record else None


def ip_lines(text: str | None) -> list[str]:
    """The allow-list textarea: one address or CIDR per line (commas and spaces also split)."""
    return (text or "").replace(",", " ").split()


def _days(value: Any) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        raise ValueError("expires_in_days must be a whole number of days") from None


def _checked_form(form: dict[str, Any], *, with_expiry: bool) -> dict[str, Any]:
    """The form's fields through the same checks as the CLI and the JSON API (ValueError)."""
    if not form.get("scopes"):
        raise ValueError("choose at least one scope")
    fields = {
        "name": form.get("name") or "",
        "scopes": list(form["scopes"]),
        "rate_limit": form.get("rate_limit"),
        "quota": form.get("quota"),
        "token_quota": form.get("token_quota"),
        "allowed_ips": ip_lines(form.get("allowed_ips")),
    }
    if with_expiry:
        fields["expires_in_days"] = _days(form.get("expires_in_days"))
    return management.validate_key_fields(fields)


def validate_new_key(form: dict[str, Any]) -> NewKey:
    """The create form's values, checked (ValueError)."""
    fields = _checked_form(form, with_expiry=True)
    return NewKey(
        name=fields["name"],
        scopes=tuple(fields["scopes"]),
        rate_limit=fields["rate_limit"],
        quota=fields["quota"],
        expires_in_days=fields["expires_in_days"],
        token_quota=fields["token_quota"],
        allowed_ips=tuple(fields["allowed_ips"]),
    )


def validate_key_edit(form: dict[str, Any]) -> dict[str, Any]:
    """The edit form's changes, checked (ValueError). Expiry changes only when asked:
    ``never_expires`` clears it, a number of days sets it from now, empty keeps it."""
    changes = _checked_form(form, with_expiry=False)
    if form.get("never_expires"):
        changes["expires_in_days"] = None
    elif form.get("expires_in_days"):
        changes["expires_in_days"] = management.validate_expires_in_days(_days(form["expires_in_days"]))
    return changes


def create_key(new: NewKey) -> tuple[dict[str, Any], str]:
    record, secret = management.create_key(
        get_redis(),
        pepper=pepper(),
        actor=login.request_actor(),
        name=new.name,
        scopes=new.scopes,
        rate_limit=new.rate_limit,
        quota=new.quota,
        token_quota=new.token_quota,
        allowed_ips=new.allowed_ips,
        expires_in_days=new.expires_in_days,
    )
    return keys.public_view(record), secret


def update_key(key_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Apply an edit (audited with this admin as actor); ValueError when the key is gone or revoked."""
    record = management.update_key(
        get_redis(), actor=login.request_actor(), key_id=key_id, cache=key_cache(), changes=changes
    )
    if record is None:
        raise ValueError(f"key {key_id} no longer exists")
    return keys.public_view(record)


def revoke_key(key_id: str) -> None:
    management.revoke_key(get_redis(), actor=login.request_actor(), key_id=key_id, cache=key_cache())


def rotate_key(key_id: str) -> tuple[dict[str, Any], str]:
    """(record, new secret); ValueError (KeyStateError) for a revoked or expired key."""
    rotated = management.rotate_key(
        get_redis(), pepper=pepper(), actor=login.request_actor(), key_id=key_id, cache=key_cache()
    )
    if rotated is None:
        raise ValueError(f"key {key_id} no longer exists")
    return keys.public_view(rotated[0]), rotated[1]


def audit_entries() -> list[dict[str, Any]]:
    return audit.recent(get_redis(), AUDIT_PAGE)


@dataclass(frozen=True)
class UserAction:
    """One lifecycle action of the users page: its confirmation text and what it calls."""

    heading: str
    explanation: str
    button: str
    done: str  # the flash message; {email} and {ended} are filled in
    run: Callable[..., management.UserChange]


USER_ACTIONS: dict[str, UserAction] = {
    "disable": UserAction(
        "Disable this admin user?",
        "They can no longer log in, and every session of theirs ends at once.",
        "Disable user",
        "{email} is disabled; {ended} session(s) ended.",
        management.disable_user,
    ),
    "enable": UserAction(
        "Enable this admin user?",
        "They can log in again with their password.",
        "Enable user",
        "{email} is enabled again.",
        management.enable_user,
    ),
    "logout-all": UserAction(
        "Log this user out everywhere?",
        "Every session of theirs ends at once, in every browser (yours too, if they are you).",
        "Log out everywhere",
        "{email} is logged out everywhere; {ended} session(s) ended.",
        management.log_out_everywhere,
    ),
}


def list_users() -> list[dict[str, Any]]:
    """Every admin user as people may see it (never a password hash), oldest first."""
    return management.list_users(get_redis())


def get_user(email: str) -> dict[str, Any] | None:
    try:
        return management.user_view(get_redis(), users.get_user_by_email(get_redis(), email))
    except users.UnknownUserError:
        return None


def run_user_action(name: str, email: str) -> str:
    """Run a users-page action; the sentence to show. ValueError (LastEnabledUserError) when refused."""
    action = USER_ACTIONS[name]
    change = action.run(get_redis(), actor=login.request_actor(), email=email)
    return action.done.format(email=change.user["email"], ended=change.sessions_ended)
