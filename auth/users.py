"""Admin users: creation, password hashing (argon2id), login checks and the account lifecycle
(password change, disable, enable).

Redis layout (names in core.redis.KEYS): the user's record (hash: id, email, password_hash,
created_at, created_by, disabled_at, password_changed_at, auth_epoch),
the e-mail's look-up -> id, the index (zset of ids by creation)
and the enabled set (set of enabled ids: the one key that decides, atomically,
that the last enabled user is never disabled). Only the argon2id hash is stored,
never the password.

``auth_epoch`` counts the events that end a user's sessions (password change,
disable, log out everywhere). A session remembers the epoch it was made in and
stops working once they differ, so no session outlives such an event, even one
the per-user session index (auth.sessions) does not know of.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from auth.keys import now_iso
from core.redis import KEYS, LuaScript

MIN_PASSWORD_LENGTH = 12
# Bounds the hashing work an attacker can ask for with one login attempt.
MAX_PASSWORD_LENGTH = 1024
MAX_EMAIL_LENGTH = 254
T = TypeVar("T")


# The session field holding the user's auth_epoch at login (see the module docstring).
SESSION_EPOCH = "_auth_epoch"


class UserExistsError(ValueError):
    """An admin user with that email already exists."""


class UnknownUserError(LookupError):
    """No admin user has that email."""


class LastEnabledUserError(ValueError):
    """Disabling this user would leave no enabled admin user."""


# KEYS[1] the set of enabled ids; ARGV[1] the user to disable. 1: done (or already disabled),
# 0: refused, it is the last enabled user. One key, so it is atomic on a cluster too.
_DISABLE_SCRIPT = LuaScript(
    """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 1 end
if redis.call('SCARD', KEYS[1]) <= 1 then return 0 end
redis.call('SREM', KEYS[1], ARGV[1])
return 1
"""
)


@lru_cache(maxsize=1)
def hasher() -> PasswordHasher:
    """argon2-cffi's defaults: argon2id with the RFC 9106 low-memory profile."""
    return PasswordHasher()


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Verified when the email is unknown, so that answer costs the same hashing
    # work as a wrong password and timing does not reveal which emails exist.
    return _hash(secrets.token_urlsafe(24))


# At most this many hashes run at once per worker: each takes 64 MiB of memory.
HASH_THREADS = 2


@lru_cache(maxsize=1)
def _hash_pool() -> Any:
    from gevent.threadpool import ThreadPool

    return ThreadPool(HASH_THREADS)


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run CPU-heavy hashing (~0.25 s, 64 MiB) beside the gevent loop, not on it.

    Under gunicorn's gevent worker one slow call would stall every greenlet of
    the worker (streams, health probes); argon2-cffi releases the GIL, so a
    small native thread pool lets the loop keep serving meanwhile.
    """
    from gevent import monkey

    if not monkey.is_module_patched("threading"):
        return fn(*args)
    return _hash_pool().apply(fn, args)  # type: ignore[no-any-return]


def _hash(password: str) -> str:
    return off_loop(hasher().hash, password)


def _matches(stored: str, password: str) -> bool:
    try:
        return bool(hasher().verify(stored, password))
    except (VerificationError, InvalidHashError):
        return False


def _verify(stored: str, password: str) -> bool:
    # The exception is caught inside the pool: gevent would print the traceback of a task that raises.
    return off_loop(_matches, stored, password)


def record_key(user_id: str) -> str:
    return KEYS.user_record(user_id)


def email_key(email: str) -> str:
    return KEYS.user_email(normalize_email(email))


def index_key() -> str:
    return KEYS.users_index()


def enabled_key() -> str:
    return KEYS.users_enabled()


def _indexed_flag_key() -> str:
    return KEYS.users_indexed()


def normalize_email(email: str) -> str:
    return email.strip().lower()


def validate_email(email: str) -> str:
    """The normalized email, or ValueError with a sentence for the operator."""
    value = normalize_email(email)
    local, _, domain = value.partition("@")
    if not local or "." not in domain or len(value) > MAX_EMAIL_LENGTH or any(c.isspace() for c in value):
        # Quote at most a short prefix: the input may be a hostile megabyte (bounded echoes).
        raise ValueError(f"{email[:64]!r} is not an email address")
    return value


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")
    return password


def create_user(r: redis.Redis, *, email: str, password: str, created_by: str = "") -> dict[str, Any]:
    """Store a new admin user; raises ValueError for bad input, UserExistsError for a taken email."""
    email = validate_email(email)
    validate_password(password)
    user_id = "usr_" + secrets.token_hex(8)
    # Claim the email first (SET NX), so two concurrent creations cannot both win.
    if not r.set(email_key(email), user_id, nx=True):
        raise UserExistsError(f"an admin user with email {email} already exists")
    record = {
        "id": user_id,
        "email": email,
        "password_hash": _hash(password),
        "created_at": now_iso(),
        "created_by": created_by,
        "disabled_at": "",
        "password_changed_at": "",
        "auth_epoch": "0",
    }
    pipe = r.pipeline(transaction=False)
    pipe.hset(record_key(user_id), mapping=record)
    pipe.zadd(index_key(), {user_id: time.time()}, nx=True)
    pipe.sadd(enabled_key(), user_id)
    pipe.execute()
    return public_view(record)


def get_user(r: redis.Redis, user_id: str) -> dict[str, Any] | None:
    raw = r.hgetall(record_key(user_id))
    return raw or None


def get_user_by_email(r: redis.Redis, email: str) -> dict[str, Any]:
    """The record of the user with ``email``; UnknownUserError when there is none."""
    user_id = r.get(email_key(email)) if len(email) <= MAX_EMAIL_LENGTH else None
    record = get_user(r, user_id) if user_id else None
    if record is None:
        raise UnknownUserError(f"no admin user with email {normalize_email(email)}")
    return record


def list_users(r: redis.Redis) -> list[dict[str, Any]]:
    """Every user record, oldest first."""
    _ensure_indexed(r)
    pipe = r.pipeline(transaction=False)
    for user_id in r.zrange(index_key(), 0, -1):
        pipe.hgetall(record_key(user_id))
    return [raw for raw in pipe.execute() if raw]


def _ensure_indexed(r: redis.Redis) -> None:
    # Users made before the index existed are indexed once, by a SCAN of their email keys only.
    if not r.set(_indexed_flag_key(), "1", nx=True):
        return
    for name in r.scan_iter(match=KEYS.user_email("*"), count=1000):
        user_id = r.get(name)
        record = get_user(r, user_id) if user_id else None
        if record is not None:
            r.zadd(index_key(), {user_id: time.time()}, nx=True)
            if not record.get("disabled_at"):
                r.sadd(enabled_key(), user_id)


def is_enabled(record: dict[str, Any]) -> bool:
    return not record.get("disabled_at")


def session_is_current(record: dict[str, Any], session_epoch: Any) -> bool:
    """True while a session made at ``session_epoch`` may act as this user."""
    return is_enabled(record) and str(session_epoch or "0") == str(record.get("auth_epoch") or "0")


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    view = {name: record.get(name) or None for name in ("id", "email", "created_at", "created_by")}
    view["status"] = "enabled" if is_enabled(record) else "disabled"
    view["disabled_at"] = record.get("disabled_at") or None
    view["password_changed_at"] = record.get("password_changed_at") or None
    return view


def set_password(r: redis.Redis, user_id: str, password: str) -> int:
    """Store a new password hash; returns the new auth epoch (every session made before ends)."""
    validate_password(password)
    pipe = r.pipeline(transaction=True)
    pipe.hset(
        record_key(user_id), mapping={"password_hash": _hash(password), "password_changed_at": now_iso()}
    )
    pipe.hincrby(record_key(user_id), "auth_epoch", 1)
    return int(pipe.execute()[1])


def end_epoch(r: redis.Redis, user_id: str) -> int:
    """Start a new auth epoch: every session made before it stops working."""
    return int(r.hincrby(record_key(user_id), "auth_epoch", 1))


def disable_user(r: redis.Redis, user_id: str) -> None:
    """Disable a user (idempotent); LastEnabledUserError when no enabled user would be left."""
    _ensure_indexed(r)
    if not _DISABLE_SCRIPT(r, [enabled_key()], [user_id]):
        raise LastEnabledUserError(
            "refused: this is the last enabled admin user; enable or create another first"
        )
    if not r.hget(record_key(user_id), "disabled_at"):
        r.hset(record_key(user_id), "disabled_at", now_iso())
    end_epoch(r, user_id)


def enable_user(r: redis.Redis, user_id: str) -> None:
    """Enable a user (idempotent)."""
    pipe = r.pipeline(transaction=False)
    pipe.hset(record_key(user_id), "disabled_at", "")
    pipe.sadd(enabled_key(), user_id)
    pipe.execute()


def authenticate(r: redis.Redis, *, email: str, password: str) -> dict[str, Any] | None:
    """The user record when email and password match, else None (same work either way)."""
    dummy = _dummy_hash()  # made before the look-up, so a process's first attempt is not slower
    user_id = r.get(email_key(email)) if len(email) <= MAX_EMAIL_LENGTH else None
    record = get_user(r, user_id) if user_id else None
    stored = record["password_hash"] if record else dummy
    # A disabled user is refused after the same hashing work, with the same answer.
    if not _verify(stored, password) or record is None or not is_enabled(record):
        return None
    if hasher().check_needs_rehash(stored):
        # Parameters were raised since this hash was made: upgrade it while we hold the password.
        r.hset(record_key(record["id"]), "password_hash", _hash(password))
    return record
