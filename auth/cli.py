"""``flask --app wsgi keys ...`` and ``users create|list|passwd|disable|enable|logout-all``
(CONTRACT sections 6 and 8).

Changes are audited with the actor ``cli``. Revocation and rotation reach every
worker within the key cache's TTL (auth.cache), well under one second.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

import click
import redis
from flask import current_app
from flask.cli import AppGroup

from auth import keys, management
from auth.audit import Actor
from auth.keys import KeyStateError
from auth.loaders import pepper
from auth.scopes import ALL_SCOPES
from auth.users import LastEnabledUserError, UnknownUserError, UserExistsError
from core.redis import redis_from_config

keys_cli = AppGroup("keys", help="Create, list, revoke and rotate API keys.")
users_cli = AppGroup("users", help="Manage admin users of the console.")


def _redis() -> redis.Redis:
    return redis_from_config(current_app.config)


def _actor() -> Actor:
    # The OS account is the best "who" a shell offers; the owner stays "cli".
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return Actor(owner="cli", name=name)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _print_secret(view: dict[str, Any], verb: str) -> None:
    click.echo(f"{verb} key {view['id']} ({view['name']}), scopes: {', '.join(view['scopes']) or '(none)'}")
    click.echo(f"  key: {view['key']}")
    click.echo("  Store it now: it is shown only this once and cannot be recovered.")


@keys_cli.command("create")
@click.option("--name", required=True, help="What the key is for, shown in lists and audit entries.")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(ALL_SCOPES), help="Repeat for each.")
@click.option("--rate-limit", default=None, help="e.g. 100/minute (default: RATELIMIT_DEFAULT).")
@click.option("--quota", default=None, help="e.g. 10000/day.")
@click.option("--token-quota", default=None, help="Tokens of agent replies, e.g. 100000/day.")
@click.option(
    "--allow-ip", "allowed_ips", multiple=True, help="IP or CIDR the key works from; repeat for each."
)
@click.option("--expires-in-days", type=click.IntRange(1, management.MAX_EXPIRES_IN_DAYS), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def create_key(
    name: str,
    scopes: tuple[str, ...],
    rate_limit: str | None,
    quota: str | None,
    token_quota: str | None,
    allowed_ips: tuple[str, ...],
    expires_in_days: int | None,
    as_json: bool,
) -> None:
    """Create an API key and print its secret once."""
    try:
        _check_limit_options(rate_limit=rate_limit, quota=quota, token_quota=token_quota)
        record, secret = management.create_key(
            _redis(),
            pepper=pepper(),
            actor=_actor(),
            name=name,
            scopes=scopes,
            rate_limit=rate_limit,
            quota=quota,
            token_quota=token_quota,
            allowed_ips=allowed_ips,
            expires_in_days=expires_in_days,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    view = keys.secret_view(record, secret)
    if as_json:
        _print_json(view)
    else:
        _print_secret(view, "Created")


def _check_limit_options(**values: str | None) -> None:
    # Checked here first only so that the message names the option the operator typed.
    for name, value in values.items():
        management.validate_limit("--" + name.replace("_", "-"), value)


def _describe(v: dict[str, Any]) -> str:
    """One key on one line (no secret)."""
    limits = [f"{name} {v[name]}" for name in ("rate_limit", "quota", "token_quota") if v.get(name)]
    ips = ", ".join(v.get("allowed_ips") or []) or "any"
    return (
        f"{v['id']}  {v['status']:<8} {v['prefix']}...{v['last4']}  {v['name']}  [{', '.join(v['scopes'])}]"
        f"{'  ' + '  '.join(limits) if limits else ''}  ips {ips}"
        f"  created {v['created_at']}  expires {v['expires_at'] or 'never'}"
        f"  last used {v['last_used_at'] or 'never'}"
    )


@keys_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (no secrets).")
def list_keys(as_json: bool) -> None:
    """List keys: id, name, prefix and last four, scopes, status."""
    views = [keys.public_view(record) for record in keys.list_keys(_redis())]
    if as_json:
        _print_json(views)
        return
    if not views:
        click.echo("No keys yet: flask --app wsgi keys create --name NAME --scope SCOPE")
    for v in views:
        click.echo(_describe(v))
        # The replaced secret still in its grace period, so nobody forgets it still works.
        for secret in v["secrets"][1:]:
            click.echo(f"    also live: {secret['prefix']}...{secret['last4']} until {secret['expires_at']}")


@keys_cli.command("show")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (no secret).")
def show_key(key_id: str, as_json: bool) -> None:
    """Show one key (no secret)."""
    record = keys.get_key(_redis(), key_id)
    if record is None:
        raise click.ClickException(f"no key with id {key_id}")
    view = keys.public_view(record)
    click.echo(json.dumps(view, indent=2) if as_json else _describe(view))


def _update_changes(options: dict[str, Any]) -> dict[str, Any]:
    """The edit the options ask for: only what was given; the --no-*/--clear-* flags clear."""
    changes: dict[str, Any] = {}
    if options["name"] is not None:
        changes["name"] = options["name"]
    if options["scopes"] or options["clear_scopes"]:
        changes["scopes"] = list(options["scopes"])
    for field in ("rate_limit", "quota", "token_quota", "expires_in_days"):
        if options[f"no_{field}"]:
            changes[field] = None
        elif options[field] is not None:
            changes[field] = options[field]
    if options["allowed_ips"] or options["clear_allowed_ips"]:
        changes["allowed_ips"] = list(options["allowed_ips"])
    return changes


@keys_cli.command("update")
@click.argument("key_id")
@click.option("--name", default=None, help="A new name.")
@click.option(
    "--scope", "scopes", multiple=True, type=click.Choice(ALL_SCOPES), help="The new scopes; repeat."
)
@click.option("--clear-scopes", is_flag=True, help="Remove every scope.")
@click.option("--rate-limit", default=None, help="e.g. 100/minute.")
@click.option("--no-rate-limit", is_flag=True, help="Back to RATELIMIT_DEFAULT.")
@click.option("--quota", default=None, help="e.g. 10000/day.")
@click.option("--no-quota", is_flag=True, help="Remove the quota.")
@click.option("--token-quota", default=None, help="e.g. 100000/day.")
@click.option("--no-token-quota", is_flag=True, help="Remove the token quota.")
@click.option("--expires-in-days", type=click.IntRange(1, management.MAX_EXPIRES_IN_DAYS), default=None,
              help="Expire N days from now.")  # fmt: skip
@click.option("--no-expires-in-days", "--never-expires", is_flag=True, help="Never expire.")
@click.option("--allow-ip", "allowed_ips", multiple=True, help="The new allow-list (replaces it); repeat.")
@click.option("--clear-allowed-ips", "--allow-any-ip", is_flag=True, help="Allow any client IP again.")
@click.option("--json", "as_json", is_flag=True, help="Print the key as one JSON object (no secret).")
def update_key(key_id: str, as_json: bool, **options: Any) -> None:
    """Edit a key in place (same secret); every worker sees the change within one second."""
    changes = _update_changes(options)
    if not changes:
        raise click.UsageError("nothing to change: give at least one option (see --help)")
    try:
        _check_limit_options(
            **{k: changes[k] for k in ("rate_limit", "quota", "token_quota") if k in changes}
        )
        record = management.update_key(_redis(), actor=_actor(), key_id=key_id, cache=None, changes=changes)
    except KeyStateError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if record is None:
        raise click.ClickException(f"no key with id {key_id}")
    view = keys.public_view(record)
    click.echo(json.dumps(view, indent=2) if as_json else "Updated " + _describe(view))


@keys_cli.command("revoke")
@click.argument("key_id")
def revoke_key(key_id: str) -> None:
    """Revoke a key (every worker refuses it within one second)."""
    # This process serves no requests, so it has no cached look-up to forget.
    record = management.revoke_key(_redis(), actor=_actor(), key_id=key_id, cache=None)
    if record is None:
        raise click.ClickException(f"no key with id {key_id}")
    click.echo(f"Revoked key {key_id} ({record['name']}) at {record['revoked_at']}")


@keys_cli.command("rotate")
@click.argument("key_id")
@click.option("--grace-seconds", type=click.IntRange(0, management.MAX_GRACE_SECONDS), default=0)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def rotate_key(key_id: str, grace_seconds: int, as_json: bool) -> None:
    """Give a key a new secret; the old one stays valid for --grace-seconds (default 0)."""
    try:
        rotated = management.rotate_key(
            _redis(), pepper=pepper(), actor=_actor(), key_id=key_id, cache=None, grace_seconds=grace_seconds
        )
    except KeyStateError as exc:
        raise click.ClickException(str(exc)) from None
    if rotated is None:
        raise click.ClickException(f"no key with id {key_id}")
    view = keys.secret_view(*rotated)
    if as_json:
        _print_json(view)
    else:
        _print_secret(view, "Rotated")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        # One line: the trailing newline of `echo` or a file is not part of the password.
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@users_cli.command("create")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def create_user(email: str, password_stdin: bool) -> None:
    """Create an admin user (argon2id-hashed password; holds the admin scope)."""
    password = _read_password(password_stdin)
    try:
        user = management.create_user(_redis(), actor=_actor(), email=email, password=password)
    except UserExistsError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"Created admin user {user['email']} ({user['id']}); log in at POST /auth/login or /admin/")


def _user_change(action: Callable[[], management.UserChange]) -> management.UserChange:
    """Run a lifecycle action, turning its refusals into one line for the operator."""
    try:
        return action()
    except (UnknownUserError, LastEnabledUserError) as exc:
        raise click.ClickException(str(exc.args[0])) from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@users_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (never a password hash).")
def list_users(as_json: bool) -> None:
    """List admin users: email, id, status, live sessions."""
    views = management.list_users(_redis())
    if as_json:
        _print_json(views)
        return
    for v in views:
        click.echo(
            f"{v['email']}  {v['id']}  {v['status']:<8}  sessions {v['active_sessions']}"
            f"  created {v['created_at']}"
        )


@users_cli.command("passwd")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
def change_password(email: str, password_stdin: bool) -> None:
    """Set a user's password; every session of theirs ends."""
    password = _read_password(password_stdin)
    change = _user_change(
        lambda: management.change_password(_redis(), actor=_actor(), email=email, password=password)
    )
    click.echo(f"Changed the password of {change.user['email']}; {change.sessions_ended} session(s) ended")


@users_cli.command("disable")
@click.argument("email")
def disable_user(email: str) -> None:
    """Disable a user: no login, and every session ends at once (never the last enabled user)."""
    change = _user_change(lambda: management.disable_user(_redis(), actor=_actor(), email=email))
    click.echo(f"Disabled {change.user['email']}; {change.sessions_ended} session(s) ended")


@users_cli.command("enable")
@click.argument("email")
def enable_user(email: str) -> None:
    """Enable a disabled user again."""
    change = _user_change(lambda: management.enable_user(_redis(), actor=_actor(), email=email))
    click.echo(f"Enabled {change.user['email']}")


@users_cli.command("logout-all")
@click.argument("email")
def logout_all(email: str) -> None:
    """End every session of a user ("log out everywhere")."""
    change = _user_change(lambda: management.log_out_everywhere(_redis(), actor=_actor(), email=email))
    click.echo(f"Logged {change.user['email']} out everywhere; {change.sessions_ended} session(s) ended")
